"""The executor interface: how map steps run, and which executor is current.

A *map step* is many independent calls into a model (map-reduce's map, map-rerank's scoring,
embedding a memory bank's chunks). Components never loop over a model themselves; they ask the
current executor:

    from ctxflow.run import current_executor
    gens = current_executor().map_generate(llm, prompts, max_new_tokens=64)   # list[Generation]
    vecs = current_executor().map_embed(embedder, texts)                     # (N, dim) float32

``Pipeline.run`` installs the pipeline's executor (YAML ``executor:`` or ``--executor``) in a
context variable for the run; outside a run (or without one) the current executor is a plain
:class:`~ctxflow.run.local.LocalExecutor`, which calls the model in-process in true batches, so
a component written this way behaves exactly as if it called ``llm.generate`` itself.

``map(fn, items)`` runs a *stateless* picklable function over items (Ray: one task per item).
"""
from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np


class Executor(ABC):
    """One interface, several engines (``local``, ``ray``)."""

    type_name = "executor"

    @abstractmethod
    def map_generate(self, llm: Any, prompts: Sequence[Any], **kw: Any) -> list[Any]:
        """``llm.generate(prompts, **kw)``, possibly spread over workers; results in order."""

    @abstractmethod
    def map_embed(self, embedder: Any, texts: Sequence[str], kind: str = "passage", batch_size: int = 64) -> np.ndarray:
        """``embedder.embed(texts)`` as one (N, dim) float32 matrix, possibly spread over workers."""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` for a stateless, picklable ``fn``."""

    def map_batches(self, fn: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
        """``fn`` over the whole list (a batch is one call); kept for callers of the first draft."""
        return list(fn(list(items)))

    def spec(self) -> dict[str, Any]:
        """The ``executor:`` entry that recreates this executor (for YAML dump)."""
        return {"type": self.type_name}

    def close(self) -> None:
        """Release workers (no-op for in-process executors)."""


_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("ctxflow_executor", default=None)
_default: Executor | None = None


def current_executor() -> Executor:
    """The executor of the running pipeline, else a shared in-process :class:`LocalExecutor`."""
    ex = _current.get()
    if ex is not None:
        return ex
    global _default
    if _default is None:
        from .local import LocalExecutor

        _default = LocalExecutor()
    return _default


class use_executor:
    """Context manager making ``executor`` current (``None`` keeps the one already current)."""

    def __init__(self, executor: Executor | None):
        self.executor = executor
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Executor:
        if self.executor is not None:
            self._token = _current.set(self.executor)
        return current_executor()

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
