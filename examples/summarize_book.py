"""Summarize a book: section -> chapter -> book, as Markdown with the outline (pipelines/book_summary.yaml).

    python examples/summarize_book.py                          # a short excerpt of the Jargon File
    python examples/summarize_book.py examples/data/jargon.txt summary.md   # the whole book

Same as ``ctxflow summarize BOOK --out summary.md``. Every model call is cached, so stopping and
re-running resumes where it stopped. examples/output/jargon_summary.md is the whole book's result.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctxflow  # noqa: E402
from ctxflow.cli import ProgressBars  # noqa: E402
from ctxflow.io import read_document  # noqa: E402


def main(argv: list[str]) -> int:
    if argv:
        path = Path(argv[0])
        text = read_document(path).text
    else:  # the first two chapters of the bundled book keep the demo short
        path = ROOT / "examples/data/jargon.txt"
        lines = read_document(path).text.splitlines(keepends=True)
        text = "".join(lines[274:465])
    pipeline = ctxflow.load(ROOT / "pipelines/book_summary.yaml")
    bars = ProgressBars()  # one progress bar per level, on stderr
    result = pipeline.run({"document": text, "title": path.name}, subscribers=[bars])
    bars.close()
    outline = result["outline"]
    print(f"{outline['sections']} sections, {outline['calls']} model calls, structure: {outline['structure']}", file=sys.stderr)
    if len(argv) > 1:
        Path(argv[1]).write_text(result["summary"], encoding="utf-8")
        print(f"wrote {argv[1]}", file=sys.stderr)
    else:
        print(result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
