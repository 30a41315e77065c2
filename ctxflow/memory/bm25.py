"""Lexical retrieval: BM25 (the ``bm25s`` package) over a tokeniser that keeps exact keys.

:func:`tokenize` lower-cases and emits every *compound* token whole and by its parts: a run of
word characters joined by ``- _ . / : @ + #`` (or a comma between digits) such as
``swift-apple``, ``v1.2.3``, ``12,345`` or ``user@host`` is indexed as itself and as each
alphanumeric part (``swift``, ``apple``), so a query for the whole key or for a part finds it.
Numbers are kept as they are; a short list of English stop words is dropped. Chinese, Japanese
and Korean text, written without spaces, is indexed by characters and character pairs (bigrams).

The index is rebuilt lazily on the first search after an ``add``/``remove`` (bm25s indexes are
not incremental, and building one is fast). A store holds only the chunks.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

from ..chunking.base import CJK_RUN
from ..graph.component import component
from ..graph.params import NonNegativeFloat, PositiveInt, UnitFloat
from ..types import Chunk, Scored
from .base import BankComponent, MemoryBank, chunks_from_jsonl, chunks_to_jsonl, hit
from .store import register_bank

_COMPOUND = re.compile(r"\w+(?:(?:[-_./:@+#]|(?<=\d),(?=\d))\w+)*", re.UNICODE)
_PART = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by for from has have he her his i in is it its of on or she that the their them they this "
    "to was were will with what which who whom whose when where why how do does did you your we our me my".split()
)


def tokenize(text: str, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """Lower-cased tokens of ``text``: compounds whole and by parts, numbers kept, stop words dropped;
    a run of CJK characters (written without spaces) gives each character and each pair of neighbours."""
    out: list[str] = []
    for m in _COMPOUND.finditer(CJK_RUN.sub(lambda r: f" {r.group(0)} ", text.lower())):
        tok = m.group(0)
        if CJK_RUN.fullmatch(tok):
            out.extend(tok)
            out.extend(tok[i:i + 2] for i in range(len(tok) - 1))
            continue
        parts = _PART.findall(tok)
        if len(parts) == 1 and parts[0] == tok:
            if tok not in stopwords:
                out.append(tok)
            continue
        out.append(tok)
        out.extend(p for p in parts if p not in stopwords)
    return out


@register_bank
class BM25Bank(MemoryBank):
    bank_type = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene"):
        self.params = {"k1": k1, "b": b, "method": method}
        self.chunks: list[Chunk] = []
        self._tokens: list[list[str]] = []
        self._pos: dict[str, int] = {}
        self._retriever: Any = None
        self._vocab: set[str] = set()

    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list({c.id: c for c in chunks}.values())
        self.remove([c.id for c in chunks if c.id in self._pos])
        for c in chunks:
            self._pos[c.id] = len(self.chunks)
            self.chunks.append(c)
            self._tokens.append(tokenize(c.text))
        self._retriever = None

    def remove(self, ids: Iterable[str]) -> int:
        drop = {i for i in ids if i in self._pos}
        if drop:
            keep = [r for r, c in enumerate(self.chunks) if c.id not in drop]
            self.chunks = [self.chunks[r] for r in keep]
            self._tokens = [self._tokens[r] for r in keep]
            self._pos = {c.id: r for r, c in enumerate(self.chunks)}
            self._retriever = None
        return len(drop)

    def _build(self) -> None:
        import bm25s  # imported on first use: it pulls in scipy

        r = bm25s.BM25(k1=self.params["k1"], b=self.params["b"], method=self.params["method"])
        r.index(self._tokens, show_progress=False)
        self._retriever = r
        self._vocab = set(r.vocab_dict)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (zeros when no query token is indexed)."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        if self._retriever is None:
            self._build()
        q = [t for t in dict.fromkeys(tokenize(query)) if t in self._vocab and t]
        if not q:
            return np.zeros(len(self.chunks), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(q), dtype=np.float32)

    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]:
        s = self.scores(query)
        if not len(s) or k < 1:
            return []
        order = np.argsort(-s, kind="stable")[:k]
        return [hit(self.chunks[i], s[i], r, self.bank_type) for r, i in enumerate(order.tolist()) if s[i] > 0]

    def __len__(self) -> int:
        return len(self.chunks)

    def ids(self) -> list[str]:
        return [c.id for c in self.chunks]

    def _state(self) -> tuple[dict[str, bytes], dict[str, int], dict[str, Any]]:
        return ({"chunks.jsonl": chunks_to_jsonl(self.chunks)},
                {"chunks": len(self), "docs": len({c.doc_id for c in self.chunks})}, dict(self.params))

    @classmethod
    def _restore(cls, files: dict[str, bytes], manifest: dict[str, Any], embedder: Any, llm: Any) -> "BM25Bank":
        bank = cls(**(manifest.get("params") or {}))
        bank.add(chunks_from_jsonl(files["chunks.jsonl"]))
        return bank


@component("memory.bm25", outputs={"hits": list[Scored[Chunk]]})
class BM25Memory(BankComponent):
    """Lexical BM25 retrieval: finds exact keys, names and numbers that embeddings blur."""

    bank_class = BM25Bank

    def __init__(self, top_k: PositiveInt = 5, store: str | None = None, k1: NonNegativeFloat = 1.5, b: UnitFloat = 0.75):
        self.k1, self.b = k1, b
        self._setup(top_k, store)

    def open_kwargs(self) -> dict[str, Any]:
        return {}

    def new_bank(self) -> BM25Bank:
        return BM25Bank(k1=self.k1, b=self.b)
