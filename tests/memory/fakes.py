"""Test doubles for the memory tests: a fast deterministic embedder and chunk builders."""
from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

from ctxflow.llm.base import Embedder
from ctxflow.types import Chunk

_WORD = re.compile(r"\w+")


class HashEmbedder(Embedder):
    """Hashing bag-of-words (plus character trigrams), L2-normalised. Deterministic, instant."""

    def __init__(self, dim: int = 64, name: str = "hash-bow"):
        self._dim = dim
        self.model_id = f"{name}-{dim}"
        self.calls = 0
        self.n_texts = 0

    @property
    def dim(self) -> int:
        return self._dim

    def _slot(self, tok: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
        return h % self._dim, (1.0 if (h >> 40) & 1 else -1.0)

    def embed(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        self.calls += 1
        self.n_texts += len(texts)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.lower()):
                j, s = self._slot(w)
                out[i, j] += s
                for k in range(max(0, len(w) - 2)):
                    j, s = self._slot("#" + w[k:k + 3])
                    out[i, j] += 0.3 * s
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else out[i]
            if not n:
                out[i, 0] = 1.0
        return out

    def spec(self) -> dict:
        return {"type": "test-hash"}


def make_chunks(texts: Sequence[str], doc_id: str = "doc") -> list[Chunk]:
    out, pos = [], 0
    for i, t in enumerate(texts):
        out.append(Chunk(doc_id=doc_id, index=i, start=pos, end=pos + len(t), text=t))
        pos += len(t) + 1
    return out


def random_chunks(n: int, seed: int = 0, doc_id: str = "rnd", words: int = 12) -> list[Chunk]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(500)]
    return make_chunks([" ".join(rng.choice(vocab, words)) for _ in range(n)], doc_id)
