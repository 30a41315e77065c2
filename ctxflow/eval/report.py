"""Reporting for benchmark results (the dicts returned by ``run_lines_bench``): a markdown
table, an accuracy plot and a JSON dump. Works offline; plotting uses matplotlib's Agg canvas
directly, so it never touches the global backend or needs a display."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["format_table", "plot_results", "write_json", "load_json"]


def _table(results: Mapping[str, Any]) -> tuple[Mapping[str, Mapping[str, Any]], list[int]]:
    """(per-system mapping, sorted lengths) from a full bench dict or its ``results`` part."""
    per_system = results["results"] if "results" in results else results
    if "lengths" in results:
        lengths = [int(n) for n in results["lengths"]]
    else:
        lengths = sorted({int(n) for cells in per_system.values() for n in cells})
    return per_system, lengths


def _cell(cells: Mapping[Any, Any], length: int) -> Mapping[str, Any] | None:
    return cells.get(str(length), cells.get(length))  # str keys, or int keys before a JSON dump


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per system, one column per record length (number of lines);
    cells read ``acc% (s/q)``, e.g. ``85% (1.23s)``, plus `` n=K`` where a system ran on fewer
    examples than the others; ``–`` where a system has no result."""
    per_system, lengths = _table(results)
    per = results.get("per") if "results" in results else None
    head = "| system | " + " | ".join(f"{n} lines" for n in lengths) + " |"
    rule = "|---|" + "---:|" * len(lengths)
    rows = [head, rule]
    for name, cells in per_system.items():
        out = []
        for n in lengths:
            c = _cell(cells, n)
            if c is None:
                out.append("–")
            else:
                cell = f"{100 * c['accuracy']:.0f}% ({c['seconds_per_q']:.2f}s)"
                if per is not None and c.get("n") is not None and c["n"] != per:
                    cell += f" n={c['n']}"
                out.append(cell)
        rows.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(rows) + "\n"


def plot_results(results: Mapping[str, Any], path_png: str | Path, title: str | None = None) -> Path:
    """Accuracy (%) against the number of lines, one line per system; writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_system, lengths = _table(results)
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>ph*"
    for i, (name, cells) in enumerate(per_system.items()):
        xs, ys = [], []
        for n in lengths:
            c = _cell(cells, n)
            if c is not None:
                xs.append(n)
                ys.append(100 * c["accuracy"])
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=name)
    ax.set_xlabel("number of lines in the record")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    if lengths:
        ax.set_xticks(lengths)
    tokens = results.get("prompt_tokens") if "results" in results else None
    if title is None:
        task = results.get("task", "lines") if "results" in results else "lines"
        per = results.get("per") if "results" in results else None
        title = f"LongEval {task}" + (f" ({per} questions per length)" if per else "")
    ax.set_title(title)
    if tokens:
        # second x axis: approximate prompt length in words (tokenizer-free)
        top = ax.secondary_xaxis("top")
        top.set_xticks(lengths)
        top.set_xticklabels([f"{tokens.get(str(n), 0) / 1000:.1f}k" for n in lengths], fontsize=7)
        top.set_xlabel("approx. prompt words+punct", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_json(results: Mapping[str, Any], path: str | Path) -> Path:
    """Pretty JSON (UTF-8); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return path


def load_json(path: str | Path) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as f:
        return json.load(f)
