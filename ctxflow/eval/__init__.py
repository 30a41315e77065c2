"""Evaluation tasks and reporting.

* :mod:`ctxflow.eval.lines` — the LongEval "lines" retrieval task (and a two-hop variant);
  :mod:`ctxflow.eval.lines_bench` runs systems on it.
* :mod:`ctxflow.eval.report` — markdown tables, plots and JSON for benchmark results.
"""
from ctxflow.eval.lines import (
    LinesExample,
    approx_tokens,
    lines_for_tokens,
    make_lines_task,
    parse_last_int,
    score,
)
from ctxflow.eval.lines_bench import run_lines_bench
from ctxflow.eval.report import format_table, load_json, plot_results, write_json

__all__ = [
    "LinesExample",
    "approx_tokens",
    "lines_for_tokens",
    "make_lines_task",
    "parse_last_int",
    "run_lines_bench",
    "score",
    "format_table",
    "load_json",
    "plot_results",
    "write_json",
]
