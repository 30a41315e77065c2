"""Summarize a codebase: file -> folder -> repository, with a tree and path:line facts
(pipelines/codebase_summary.yaml), then ask it a question (pipelines/codebase_qa.yaml).

    python examples/summarize_code.py                              # the small fixture repository
    python examples/summarize_code.py ctxflow "Where is the YAML loaded?"

Same as ``ctxflow summarize FOLDER`` and ``ctxflow ask FOLDER "QUESTION"``.
examples/output/ctxflow_summary.md is the result for this repository's own ctxflow/ package.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctxflow  # noqa: E402
from ctxflow.cli import ProgressBars, print_answer  # noqa: E402


def main(argv: list[str]) -> int:
    folder = argv[0] if argv else os.path.relpath(ROOT / "tests/summarize/fixture_repo")
    question = argv[1] if len(argv) > 1 else "Where is the YAML loaded?"
    bars = ProgressBars()
    summary = ctxflow.load(ROOT / "pipelines/codebase_summary.yaml").run({"path": folder}, subscribers=[bars])
    bars.close()
    report = summary["report"]
    print(summary["summary"])
    print(f"{len(report['files'])} files, {len(report['skipped'])} skipped, {report['calls']} model calls", file=sys.stderr)
    answer = ctxflow.load(ROOT / "pipelines/codebase_qa.yaml").run({"path": folder, "question": question})["answer"]
    print(f"\nQ: {question}")
    print_answer(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
