"""Streaming the final answer through pipeline events.

The component that writes the answer calls :func:`answer_generate` instead of
``llm.generate([prompt])[0]``. When a subscriber of the running pipeline wants tokens (it has
``wants_tokens = True``, like :class:`TokenPrinter`), the answer is generated with the model's
``generate_stream`` and every new piece of text is emitted as a ``token`` event
(``ev.data["text"]``); otherwise nothing changes (one batched ``generate``, no events). A model
without ``generate_stream`` sends its whole answer as one ``token`` event.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

from ..events import Event, current_bus, emit


def wants_tokens() -> bool:
    """True when the running pipeline has a subscriber that wants ``token`` events."""
    bus = current_bus()
    return bus is not None and any(getattr(s, "wants_tokens", False) for s in bus.subscribers)


def answer_generate(llm: Any, prompt: Any, **kw: Any) -> Any:
    """``llm.generate([prompt], **kw)[0]``, streamed as ``token`` events when someone listens."""
    if not wants_tokens():
        return llm.generate([prompt], **kw)[0]
    stream = getattr(llm, "generate_stream", None)
    if stream is not None:
        return stream(prompt, lambda text: emit("token", text=text), **kw)
    g = llm.generate([prompt], **kw)[0]
    if g.text:
        emit("token", text=g.text)
    return g


class TokenPrinter:
    """A subscriber printing ``token`` events as they come (``ctxflow ask --stream``)."""

    wants_tokens = True

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.printed = 0

    def __call__(self, ev: Event) -> None:
        if ev.kind != "token":
            return
        text = ev.data.get("text", "")
        if not self.printed:
            text = text.lstrip()
        if text:
            self.out.write(text)
            self.out.flush()
            self.printed += len(text)
