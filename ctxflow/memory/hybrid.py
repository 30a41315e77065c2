"""Hybrid retrieval: reciprocal-rank fusion (RRF) of a lexical (BM25) and a dense (faiss) bank.

Dense embeddings find paraphrases but blur exact keys, names and numbers ("swift-apple",
"12345"); BM25 finds those exactly. RRF combines the two rankings without calibrating their
scores: ``score(c) = sum_i w_i / (k_rrf + rank_i(c))`` with 1-based ranks over the top
``fetch`` hits of each bank (a chunk missing from a list contributes nothing for it).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..errors import UserError
from ..graph.component import EmbedderRef, component
from ..graph.params import NonNegativeFloat, PositiveFloat, PositiveInt
from ..types import Chunk, Scored
from .base import BankComponent, MemoryBank, bound, hit
from .bm25 import BM25Bank
from .knn import INDEXES, KnnBank
from .store import register_bank


def rrf(rankings: dict[str, Sequence[Scored[Chunk]]], weights: dict[str, float] | None = None, k_rrf: float = 60,
        top_k: int | None = None, bank: str = "hybrid") -> list[Scored[Chunk]]:
    """Fuse named rankings of hits by weighted reciprocal rank; meta keeps each list's rank and score."""
    fused: dict[str, dict[str, Any]] = {}
    for name, hits in rankings.items():
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        for r, h in enumerate(hits, 1):
            e = fused.setdefault(h.item.id, {"chunk": h.item, "score": 0.0, "ranks": {}, "scores": {}})
            if name in e["ranks"]:
                continue
            e["score"] += w / (k_rrf + r)
            e["ranks"][name] = r
            e["scores"][name] = h.score
    order = sorted(fused.values(), key=lambda e: (-e["score"], min(e["ranks"].values())))
    if top_k is not None:
        order = order[:top_k]
    return [hit(e["chunk"], e["score"], i, bank, ranks=e["ranks"], scores=e["scores"]) for i, e in enumerate(order)]


def _weights(weights: dict[str, float] | None) -> dict[str, float]:
    w = {"lexical": 1.0, "dense": 1.0, **(weights or {})}
    bad = set(w) - {"lexical", "dense"}
    if bad or any(v < 0 for v in w.values()):
        raise UserError(f"hybrid weights take the keys 'lexical' and 'dense' with values >= 0; got {weights!r}.")
    return w


@register_bank
class HybridBank(MemoryBank):
    bank_type = "hybrid"
    needs_embedder = True

    def __init__(self, embedder: Any, k_rrf: float = 60, weights: dict[str, float] | None = None, fetch: int = 50,
                 index: str = "auto", k1: float = 1.5, b: float = 0.75):
        if k_rrf <= 0:
            raise UserError(f"k_rrf must be > 0, got {k_rrf}.")
        self.embedder = embedder
        self.k_rrf, self.weights, self.fetch = k_rrf, _weights(weights), fetch
        self.params = {"k_rrf": k_rrf, "weights": self.weights, "fetch": fetch, "index": index, "k1": k1, "b": b}
        self.lexical = BM25Bank(k1=k1, b=b)
        self.dense = KnnBank(embedder, index=index, normalize=True)

    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list(chunks)
        self.dense.add(chunks)
        self.lexical.add(chunks)

    def remove(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        self.lexical.remove(ids)
        return self.dense.remove(ids)

    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]:
        if k < 1 or not len(self):
            return []
        n = max(self.fetch, k)
        lists = {"lexical": self.lexical.search(query, n), "dense": self.dense.search(query, n)}
        return rrf(lists, self.weights, self.k_rrf, k, self.bank_type)

    def __len__(self) -> int:
        return len(self.dense)

    def ids(self) -> list[str]:
        return self.dense.ids()

    def _state(self) -> tuple[dict[str, bytes], dict[str, int], dict[str, Any]]:
        files, counts, params = self.dense._state()
        return files, counts, {**self.params, "dense": params}

    @classmethod
    def _restore(cls, files: dict[str, bytes], manifest: dict[str, Any], embedder: Any, llm: Any) -> "HybridBank":
        params = {k: v for k, v in (manifest.get("params") or {}).items() if k != "dense"}
        bank = cls(embedder, **params)
        dense = {k: v for k, v in (manifest.get("params") or {}).get("dense", {}).items() if k != "active_index"}
        bank.dense = KnnBank(embedder, **dense) if dense else bank.dense
        bank.dense._fill(files)
        bank.lexical.add(bank.dense.chunks)
        return bank


@component("memory.hybrid", outputs={"hits": list[Scored[Chunk]]})
class HybridMemory(BankComponent):
    """BM25 + dense retrieval fused by reciprocal rank: what exact keys, names and numbers need."""

    bank_class = HybridBank

    def __init__(self, embedder: EmbedderRef = "embed", top_k: PositiveInt = 5, k_rrf: PositiveFloat = 60,
                 weights: dict[str, NonNegativeFloat] | None = None, fetch: PositiveInt = 50, index: str = "auto", store: str | None = None):
        if index not in INDEXES:
            raise UserError(f"index must be one of {', '.join(INDEXES)}; got {index!r}.")
        self.embedder = embedder
        self.bank_params = {"k_rrf": k_rrf, "weights": _weights(weights), "fetch": fetch, "index": index}
        self._setup(top_k, store)

    def new_bank(self) -> HybridBank:
        return HybridBank(bound(self.embedder, "embedder", self.type_name), **self.bank_params)
