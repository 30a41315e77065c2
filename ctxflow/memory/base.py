"""The memory-bank protocol: ``add(chunks)``, ``search(query, k)``, ``remove(ids)``, ``save``/``open``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

from ..types import Chunk, Scored


class MemoryBank(ABC):
    @abstractmethod
    def add(self, chunks: Iterable[Chunk]) -> None: ...

    @abstractmethod
    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]: ...

    @abstractmethod
    def remove(self, ids: Iterable[str]) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...
