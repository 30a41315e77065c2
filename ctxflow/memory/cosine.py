"""Exact cosine similarity over an embedder: faiss inner product on L2-normalised vectors.

:class:`CosineBank` is a :class:`~ctxflow.memory.knn.KnnBank` fixed to a flat inner-product index
over vectors normalised by the bank itself (so an embedder that does not normalise still gets
cosine scores in [-1, 1]). The ``memory.cosine`` component is the default dense retriever.
"""
from __future__ import annotations

from typing import Any

from ..graph.component import EmbedderRef, component
from ..graph.params import PositiveInt
from ..types import Chunk, Scored
from .base import BankComponent, bound
from .knn import KnnBank
from .store import register_bank


@register_bank
class CosineBank(KnnBank):
    """In-memory exact cosine search. ``ids`` are ``chunk.id`` (doc_id#index)."""

    bank_type = "cosine"

    def __init__(self, embedder: Any, batch_size: int = 64, **_ignored: Any):
        super().__init__(embedder, index="flat", metric="ip", normalize=True, batch_size=batch_size)
        self.params = {"batch_size": batch_size}


@component("memory.cosine", outputs={"hits": list[Scored[Chunk]]})
class CosineMemory(BankComponent):
    """Embeds the incoming chunks and returns the ``top_k`` most similar to ``query``.

    Without ``chunks`` it searches the persisted ``store`` (a folder made by ``ctxflow index``)."""

    bank_class = CosineBank

    def __init__(self, embedder: EmbedderRef = "embed", top_k: PositiveInt = 5, store: str | None = None):
        self.embedder = embedder
        self._setup(top_k, store)

    def new_bank(self) -> CosineBank:
        return CosineBank(bound(self.embedder, "embedder", self.type_name))
