"""External memory banks: add chunks once, search many times; persist them safely in a store.

Banks (each also a pipeline component ``memory.<name>``): ``cosine`` (exact dense), ``knn``
(faiss flat/HNSW/IVF), ``bm25`` (lexical), ``hybrid`` (reciprocal-rank fusion of both), ``graph``
(knowledge graph of extracted facts) and ``triples`` (a Ret-LLM style triple store in SQLite).
Stores: ``bank.save(path)``, ``Bank.open(path, embedder=...)``, :func:`open_store`.
"""
from __future__ import annotations

from .base import BankComponent, MemoryBank
from .store import BANKS, StoreError, open_store, read_manifest, store_lock


def _load_all() -> None:
    """Import every bank module (they register their bank types and components)."""
    from . import bm25, cosine, graph, hybrid, knn, triples  # noqa: F401


_load_all()

from .bm25 import BM25Bank, tokenize  # noqa: E402
from .cosine import CosineBank  # noqa: E402
from .graph import GraphBank  # noqa: E402
from .hybrid import HybridBank, rrf  # noqa: E402
from .knn import KnnBank  # noqa: E402
from .triples import Triple, TripleStore  # noqa: E402

__all__ = [
    "BANKS", "BM25Bank", "BankComponent", "CosineBank", "GraphBank", "HybridBank", "KnnBank", "MemoryBank", "StoreError",
    "Triple", "TripleStore", "open_store", "read_manifest", "rrf", "store_lock", "tokenize",
]
