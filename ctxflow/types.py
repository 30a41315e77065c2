"""The data that flows between components.

Everything is a pydantic model so it validates, serialises to JSON and prints well.
Offsets are *character* offsets into the source text: ``source[c.start:c.end] == c.text``.
"""
from __future__ import annotations

import hashlib
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Document(BaseModel):
    """A source text with an id (a path, a URL or a hash) and free metadata."""

    model_config = ConfigDict(frozen=False)
    id: str = ""
    text: str
    meta: dict[str, Any] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            self.id = "doc-" + hashlib.sha1(self.text.encode("utf-8", "replace")).hexdigest()[:12]


class Chunk(BaseModel):
    """A contiguous span of one document."""

    doc_id: str = ""
    index: int = 0
    start: int
    end: int
    text: str
    n_tokens: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.index}"


class Scored(BaseModel, Generic[T]):
    """An item with a score (higher is better) and where the score came from."""

    item: T
    score: float
    meta: dict[str, Any] = Field(default_factory=dict)


class Citation(BaseModel):
    """A quoted span of a source document that supports an answer."""

    doc_id: str = ""
    start: int
    end: int
    text: str
    score: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_chunk(cls, chunk: Chunk, score: float | None = None) -> "Citation":
        meta = {k: v for k, v in chunk.meta.items() if k in ("path", "line", "end_line", "title", "page", "section")}
        return cls(doc_id=chunk.doc_id, start=chunk.start, end=chunk.end, text=chunk.text, score=score, meta=meta)


class Answer(BaseModel):
    """What a pipeline answers: text, the spans it rests on, a confidence, and how it got there."""

    text: str
    citations: list[Citation] = Field(default_factory=list)
    score: float | None = None
    trace: dict[str, Any] = Field(default_factory=dict)

    def __str__(self) -> str:
        return self.text
