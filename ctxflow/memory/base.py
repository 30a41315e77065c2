"""The memory-bank protocol and the pipeline component shape shared by every bank.

A bank: ``add(chunks)`` (an existing ``chunk.id`` is replaced), ``search(query, k)`` ->
``list[Scored[Chunk]]`` (higher score = better; ``meta`` holds ``rank`` (0-based) and ``bank``),
``remove(ids)`` -> number removed, ``len(bank)``, ``bank.save(path)`` and
``Bank.open(path, embedder=..., llm=...)`` (see :mod:`ctxflow.memory.store`).

A bank component (:class:`BankComponent`) has the inputs ``query``, ``chunks`` (optional) and
``top_k`` (optional) and the output ``hits``. With ``chunks`` it indexes them (cached by a hash of
the chunks, so the same document asked twice is embedded once) and searches; without, it searches
the persisted store named by its ``store`` parameter (reopened when a writer commits a new version).
"""
from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Iterable

from ..errors import StoreError, UserError
from ..graph.component import Component
from ..types import Chunk, Scored
from .store import check_bank, check_embedder, commit, embedder_from_manifest, load, store_version


def chunks_to_jsonl(chunks: Iterable[Chunk]) -> bytes:
    return "".join(json.dumps(c.model_dump(mode="json"), ensure_ascii=False) + "\n" for c in chunks).encode("utf-8")


def chunks_from_jsonl(blob: bytes) -> list[Chunk]:
    # split on "\n" only: str.splitlines() also breaks at U+2028/U+2029/U+0085, which JSON strings
    # may hold unescaped (ensure_ascii=False), and would cut such a chunk's line in two
    return [Chunk.model_validate_json(line) for line in blob.decode("utf-8").split("\n") if line.strip()]


def chunks_key(chunks: Iterable[Chunk]) -> str:
    """A hash of the chunks' identities, offsets and texts."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(f"{c.doc_id}\x1e{c.index}\x1e{c.start}\x1e{c.end}\x1e".encode("utf-8", "replace"))
        h.update(c.text.encode("utf-8", "replace"))
        h.update(b"\x1f")
    return h.hexdigest()


def hit(chunk: Chunk, score: float, rank: int, bank: str, **meta: Any) -> Scored[Chunk]:
    return Scored[Chunk](item=chunk, score=float(score), meta={"rank": rank, "bank": bank, **meta})


class MemoryBank(ABC):
    """Base of the banks. Subclasses implement the four operations plus ``_state``/``_restore``."""

    bank_type: ClassVar[str] = ""
    #: True when the bank stores vectors: the store then records (and checks) the embedder
    needs_embedder: ClassVar[bool] = False
    embedder: Any = None
    _origin: tuple[str, int] | None = None

    @abstractmethod
    def add(self, chunks: Iterable[Chunk]) -> None: ...

    @abstractmethod
    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]: ...

    @abstractmethod
    def remove(self, ids: Iterable[str]) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    # -- persistence ----------------------------------------------------------------------
    @abstractmethod
    def _state(self) -> tuple[dict[str, bytes], dict[str, int], dict[str, Any]]:
        """``(files, counts, params)`` to persist."""

    @classmethod
    @abstractmethod
    def _restore(cls, files: dict[str, bytes], manifest: dict[str, Any], embedder: Any, llm: Any) -> "MemoryBank":
        """Rebuild a bank from its files (checksums already verified)."""

    def save(self, path: str | os.PathLike, hook: Any = None) -> int:
        """Commit this bank as the next version of the store at ``path`` (atomic; see store.py).

        If the bank was opened from ``path`` and another writer committed since, StoreError."""
        files, counts, params = self._state()
        key = str(Path(path).resolve())
        base = self._origin[1] if self._origin and self._origin[0] == key else None
        v = commit(path, self.bank_type, files, embedder=self.embedder if self.needs_embedder else None,
                   counts=counts, params=params, base_version=base, hook=hook)
        self._origin = (key, v)
        return v

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any = None, llm: Any = None) -> "MemoryBank":
        """Load the committed version of the store at ``path`` (no lock; never a half-written one)."""
        p = Path(path)
        m, files = load(p)
        check_bank(m, p, cls.bank_type)
        if cls.needs_embedder:
            if embedder is None:
                embedder = embedder_from_manifest(m, p)
            check_embedder(m, p, embedder)
        try:
            bank = cls._restore(files, m, embedder, llm)
        except StoreError:
            raise
        except Exception as exc:  # checksums matched, so this is a bug or a foreign writer
            raise StoreError(f"store {p}: could not load its {m.get('bank')!r} data ({type(exc).__name__}: {exc}).") from None
        bank._origin = (str(p.resolve()), int(m.get("version", 0)))
        return bank


def bound(value: Any, what: str, owner: str) -> Any:
    """``value`` unless it is still a model *name* (not bound by a pipeline): then a UserError."""
    if isinstance(value, str):
        raise UserError(f"{owner}: {what} {value!r} is a model name that was never bound; run the component in a pipeline "
                        f"whose models: section defines {value!r}, or pass the model object itself.")
    return value


class BankComponent(Component):
    """The pipeline shape of a bank. Subclasses set ``bank_class`` and implement ``new_bank``."""

    bank_class: ClassVar[type[MemoryBank]]
    cache_size: ClassVar[int] = 4

    def _setup(self, top_k: int, store: str | None) -> None:
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}.")
        self.top_k = top_k
        self.store = store
        self._cache: OrderedDict[str, MemoryBank] = OrderedDict()
        self._store_bank: MemoryBank | None = None
        self._store_version: int | None = None

    def new_bank(self) -> MemoryBank:  # pragma: no cover - abstract
        raise NotImplementedError

    def open_kwargs(self) -> dict[str, Any]:
        """Models to open the store with (``embedder=``, ``llm=``)."""
        emb = getattr(self, "embedder", None)
        return {"embedder": None if isinstance(emb, str) else emb}

    def warm_up(self) -> None:
        if self.store:
            self.store_bank()

    def store_bank(self) -> MemoryBank:
        assert self.store
        v = store_version(self.store)
        if self._store_bank is None or v != self._store_version:
            self._store_bank = self.bank_class.open(self.store, **self.open_kwargs())
            self._store_version = self._store_bank._origin[1] if self._store_bank._origin else v
        return self._store_bank

    def bank_for(self, chunks: list[Chunk]) -> MemoryBank:
        key = chunks_key(chunks)
        bank = self._cache.get(key)
        if bank is None:
            bank = self.new_bank()
            bank.add(chunks)
            self._cache[key] = bank
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return bank

    def run(self, query: str, chunks: list[Chunk] | None = None, top_k: int | None = None) -> dict:
        k = top_k or self.top_k
        if chunks is not None:
            bank = self.bank_for(list(chunks))
        elif self.store:
            bank = self.store_bank()
        else:
            raise UserError(f"{self.type_name} has nothing to search: connect its 'chunks' input (e.g. chunk.chunks -> "
                            f"bank.chunks) or give it a persisted store (store: DIR, built with `ctxflow index`).")
        return {"hits": bank.search(query, k)}
