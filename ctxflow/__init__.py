"""ctxflow: run long documents through a local LLM with a short context window.

    import ctxflow
    pipe = ctxflow.load("pipelines/book_qa.yaml")
    result = pipe.run({"document": text, "question": "What is a hacker?"})
    print(result["answer"].text, result["answer"].citations)
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import CtxflowError, SpecError, UserError  # noqa: E402
from .graph.component import Component, EmbedderRef, LLMRef, component  # noqa: E402
from .graph.pipeline import Pipeline, RunResult  # noqa: E402
from .graph.spec import dump, dumps, load, loads  # noqa: E402
from .io import read_document  # noqa: E402
from .types import Answer, Chunk, Citation, Document, Scored  # noqa: E402

__all__ = [
    "Answer", "Chunk", "Citation", "Component", "CtxflowError", "Document", "EmbedderRef", "LLMRef", "Pipeline",
    "RunResult", "Scored", "SpecError", "UserError", "component", "dump", "dumps", "load", "loads", "read_document", "__version__",
]
