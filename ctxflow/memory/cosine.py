"""Exact cosine similarity over an embedder: faiss inner product on L2-normalised vectors."""
from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np

from ..errors import UserError
from ..graph.component import Component, EmbedderRef, component
from ..llm.base import Embedder
from ..types import Chunk, Scored
from .base import MemoryBank


class CosineBank(MemoryBank):
    """In-memory exact cosine search. ``ids`` are ``chunk.id`` (doc_id#index)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.chunks: list[Chunk] = []
        self._vecs = np.zeros((0, 0), dtype=np.float32)
        self._index: faiss.Index | None = None

    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list(chunks)
        if not chunks:
            return
        vecs = np.asarray(self.embedder.embed([c.text for c in chunks], kind="passage"), dtype=np.float32)
        if self._index is None:
            self._index = faiss.IndexFlatIP(vecs.shape[1])
        self._index.add(vecs)
        self._vecs = vecs if not len(self.chunks) else np.vstack([self._vecs, vecs])
        self.chunks.extend(chunks)

    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]:
        if self._index is None or not self.chunks:
            return []
        q = np.asarray(self.embedder.embed([query], kind="query"), dtype=np.float32)
        k = min(k, len(self.chunks))
        scores, idx = self._index.search(q, k)
        return [Scored[Chunk](item=self.chunks[i], score=float(s), meta={"rank": r, "bank": "cosine"})
                for r, (s, i) in enumerate(zip(scores[0], idx[0])) if i >= 0]

    def remove(self, ids: Iterable[str]) -> int:
        drop = set(ids)
        keep = [i for i, c in enumerate(self.chunks) if c.id not in drop]
        removed = len(self.chunks) - len(keep)
        if removed:
            self.chunks = [self.chunks[i] for i in keep]
            self._vecs = self._vecs[keep]
            self._index = faiss.IndexFlatIP(self._vecs.shape[1]) if len(keep) else None
            if self._index is not None:
                self._index.add(self._vecs)
        return removed

    def __len__(self) -> int:
        return len(self.chunks)


@component("memory.cosine", outputs={"hits": list[Scored[Chunk]]})
class CosineMemory(Component):
    """Embeds the incoming chunks and returns the ``top_k`` most similar to ``query``."""

    def __init__(self, embedder: EmbedderRef = "embed", top_k: int = 5):
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}.")
        self.embedder = embedder
        self.top_k = top_k

    def run(self, chunks: list[Chunk], query: str, top_k: int | None = None) -> dict:
        bank = CosineBank(self.embedder)  # type: ignore[arg-type]
        bank.add(chunks)
        return {"hits": bank.search(query, top_k or self.top_k)}
