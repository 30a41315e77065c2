"""Chunkers: split a document into :class:`~ctxflow.types.Chunk` s with exact character offsets.

Importing this package registers the components ``chunk.tokens``, ``chunk.sentences``,
``chunk.recursive``, ``chunk.code`` and ``chunk.markdown``. From Python::

    from ctxflow.chunking import chunk_text
    chunks = chunk_text(text, "sentences", size=128)
"""
from __future__ import annotations

from .base import TokenCounter, chunk_text
from .code import CodeChunker
from .markdown import MarkdownChunker
from .recursive import RecursiveChunker
from .sentences import SentenceChunker, split_sentences
from .tokens import TokenChunker

#: short kind -> chunker class (``chunk_text``'s ``kind``)
CHUNKERS = {
    "tokens": TokenChunker,
    "sentences": SentenceChunker,
    "recursive": RecursiveChunker,
    "code": CodeChunker,
    "markdown": MarkdownChunker,
}

__all__ = [
    "CHUNKERS", "CodeChunker", "MarkdownChunker", "RecursiveChunker", "SentenceChunker", "TokenChunker",
    "TokenCounter", "chunk_text", "split_sentences",
]
