"""Executors: how map steps run. ``local`` batches into the in-process model."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from ..errors import SpecError


class LocalExecutor:
    """Runs ``fn`` over items in-process, in batches (a batch is one call into the model)."""

    type_name = "local"

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size

    def map_batches(self, fn: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not self.batch_size:
            return list(fn(items))
        out: list[Any] = []
        for i in range(0, len(items), self.batch_size):
            out.extend(fn(items[i : i + self.batch_size]))
        return out

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "local"}
        if self.batch_size:
            d["batch_size"] = self.batch_size
        return d


EXECUTORS: dict[str, type] = {"local": LocalExecutor}


def make_executor(spec: dict[str, Any]) -> Any:
    spec = dict(spec)
    kind = spec.pop("type", "local")
    if kind not in EXECUTORS:
        raise SpecError(f"unknown executor type {kind!r}; available: {', '.join(sorted(EXECUTORS))}.")
    from ..graph.component import validate_params

    cls = EXECUTORS[kind]
    cls.type_name = kind
    return cls(**validate_params(cls, spec))
