"""Build a pipeline in Python instead of YAML: the same components, sockets and shared models.

    python examples/pipeline_in_python.py

Builds "retrieve, then answer" over the Jargon File excerpt with a BM25 bank (no embedder
needed), runs it, and prints the YAML that `ctxflow run` would accept for the same pipeline.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ctxflow  # noqa: E402
from ctxflow.aggregate.stuff import Stuff  # noqa: E402
from ctxflow.chunking import SentenceChunker  # noqa: E402
from ctxflow.cli import print_answer  # noqa: E402
from ctxflow.graph.pipeline import Pipeline  # noqa: E402
from ctxflow.llm.local import LocalLM  # noqa: E402
from ctxflow.memory.bm25 import BM25Memory  # noqa: E402
from ctxflow.select.topk import TopK  # noqa: E402


def build() -> Pipeline:
    p = Pipeline(models={"llm": LocalLM()})  # one model, shared by name by every component that needs it
    p.add("chunk", SentenceChunker(size=96, llm="llm"))
    p.add("bank", BM25Memory(top_k=8))
    p.add("pick", TopK(k=3))
    p.add("answer", Stuff(llm="llm", max_new_tokens=64))
    p.connect("chunk.chunks", "bank.chunks")  # socket names and types are checked here
    p.connect("bank.hits", "pick.candidates")
    p.connect("pick.selected", "answer.chunks")
    p.expose_input("document", "chunk.text")
    p.expose_input("question", "bank.query", "answer.question")
    p.expose_output("answer", "answer.answer")
    p.validate()  # before any weights load
    return p


def main() -> int:
    p = build()
    text = (ROOT / "tests/data/jargon_excerpt.txt").read_text(encoding="utf-8")
    result = p.run({"document": text, "question": "From which novel does the word 'grok' come?"})
    print_answer(result["answer"])
    print("\nThe same pipeline as YAML:\n")
    print(ctxflow.dumps(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
