"""``local``: map steps run in-process, in true batches into the one loaded model."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..events import progress
from .base import Executor


class LocalExecutor(Executor):
    """One ``generate`` call per map step (the model micro-batches it by ``batch_tokens``); embedding
    in batches of ``batch_size`` with progress. ``batch_size`` here (optional) caps how many
    prompts go into one ``generate`` call, for very large map steps."""

    type_name = "local"

    def __init__(self, batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    def map_generate(self, llm: Any, prompts: Sequence[Any], **kw: Any) -> list[Any]:
        prompts = list(prompts)
        step = self.batch_size or max(1, len(prompts))
        out: list[Any] = []
        for i in range(0, len(prompts), step):
            out.extend(llm.generate(prompts[i:i + step], **kw))
        return out

    def map_embed(self, embedder: Any, texts: Sequence[str], kind: str = "passage", batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        parts = []
        for i in range(0, len(texts), batch_size):
            parts.append(np.asarray(embedder.embed(texts[i:i + batch_size], kind=kind), dtype=np.float32))
            progress(min(i + batch_size, len(texts)), len(texts), "embedding")
        return np.vstack(parts) if parts else np.zeros((0, int(embedder.dim)), dtype=np.float32)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [fn(x) for x in items]

    def map_batches(self, fn: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not self.batch_size:
            return list(fn(items))
        out: list[Any] = []
        for i in range(0, len(items), self.batch_size):
            out.extend(fn(items[i:i + self.batch_size]))
        return out

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "local"}
        if self.batch_size:
            d["batch_size"] = self.batch_size
        return d

    def __repr__(self) -> str:
        return f"LocalExecutor(batch_size={self.batch_size})"
