"""Events: what a running pipeline tells its subscribers.

A pipeline run installs an :class:`EventBus` in a context variable; anything running inside it
(components, LLMs, embedders) calls :func:`emit` or :func:`progress` without holding a reference
to the pipeline. Outside a run these calls are cheap no-ops.

Kinds: ``component_start``, ``component_end``, ``progress`` (done, total, desc), ``llm_call``
(model, n_prompts, prompt_tokens, completion_tokens, cached), ``token`` (streamed text),
``error``.
"""
from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Callable

Subscriber = Callable[["Event"], None]


@dataclass
class Event:
    kind: str
    component: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class EventBus:
    def __init__(self, subscribers: list[Subscriber] | None = None):
        self.subscribers: list[Subscriber] = list(subscribers or [])
        self.component: str | None = None
        self.counters: dict[str, dict[str, float]] = {}

    def emit(self, kind: str, **data: Any) -> None:
        ev = Event(kind, self.component, data)
        if kind == "llm_call" and self.component is not None:
            c = self.counters.setdefault(self.component, {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached": 0})
            c["llm_calls"] += data.get("n_prompts", 1)
            c["prompt_tokens"] += data.get("prompt_tokens", 0)
            c["completion_tokens"] += data.get("completion_tokens", 0)
            c["cached"] += data.get("cached", 0)
        for s in self.subscribers:
            s(ev)


_current: contextvars.ContextVar[EventBus | None] = contextvars.ContextVar("ctxflow_bus", default=None)


def current_bus() -> EventBus | None:
    return _current.get()


def emit(kind: str, **data: Any) -> None:
    bus = _current.get()
    if bus is not None:
        bus.emit(kind, **data)


def progress(done: int, total: int | None = None, desc: str = "") -> None:
    """Report progress of the current component (shown as a progress bar by the CLI)."""
    emit("progress", done=done, total=total, desc=desc)


class use_bus:
    """Context manager installing ``bus`` as the current event bus."""

    def __init__(self, bus: EventBus):
        self.bus = bus
        self._token: contextvars.Token | None = None

    def __enter__(self) -> EventBus:
        self._token = _current.set(self.bus)
        return self.bus

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        _current.reset(self._token)
