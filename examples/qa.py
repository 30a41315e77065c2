"""Long-document question answering with citations (pipelines/book_qa.yaml).

    python examples/qa.py                                   # the bundled Jargon File excerpt, its questions
    python examples/qa.py examples/data/jargon.txt "From which novel does the word 'grok' come?"

Prints each answer and the character spans (and lines) of the text it rests on.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctxflow  # noqa: E402
from ctxflow.cli import print_answer  # noqa: E402
from ctxflow.io import read_document  # noqa: E402


def main(argv: list[str]) -> int:
    if argv:
        doc_path, questions = argv[0], argv[1:] or ["What is this document about?"]
    else:  # the excerpt and the bundled questions whose answers are inside it
        doc_path = str(ROOT / "tests/data/jargon_excerpt.txt")
        bundled = json.loads((ROOT / "examples/data/jargon_questions.json").read_text())
        questions = [q["question"] for q in bundled if q["in_excerpt"]]
    doc = read_document(doc_path)
    pipeline = ctxflow.load(ROOT / "pipelines/book_qa.yaml")
    for q in questions:
        result = pipeline.run({"document": doc.text, "question": q})
        print(f"Q: {q}")
        print_answer(result["answer"])
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
