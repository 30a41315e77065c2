"""A scripted LLM for control-flow tests: no weights, instant, black box only."""
from __future__ import annotations

import threading
from typing import Any, Sequence

from ..errors import ContextOverflowError
from ..events import emit
from ..graph.registry import register_model
from .base import BLACK_BOX, LLM, _WORDS, Generation, Prompt


@register_model("fake")
class FakeLLM(LLM):
    """Returns ``responses`` in order, cycling (shared across calls), or echoes the prompt (its last
    message) when ``echo``; with neither it answers "". Tokens are words and punctuation marks.
    ``max_new_tokens`` and ``stop`` apply to the scripted text as they would to a real model;
    prompts longer than ``context`` tokens raise :class:`ContextOverflowError`. Every prompt seen
    is appended to ``self.prompts``."""

    capabilities = BLACK_BOX
    model_id = "fake"

    def __init__(self, responses: list[str] | None = None, echo: bool = False, context: int = 2048):
        if context < 1:
            raise ValueError(f"context must be positive, got {context}")
        self.responses = list(responses) if responses is not None else None
        self.echo = echo
        self.context = context
        self.prompts: list[Prompt] = []
        self.n_calls = 0
        self._next = 0
        self._lock = threading.Lock()

    @property
    def context_length(self) -> int:
        return self.context

    def count_tokens(self, text: str) -> int:
        return len(_WORDS.findall(text))

    def _text(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return "\n\n".join(m["content"] for m in prompt)

    def prompt_tokens(self, prompt: Prompt, chat: bool = True) -> int:
        return self.count_tokens(self._text(prompt))

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, stop: Sequence[str] | None = None,
                 temperature: float = 0.0, chat: bool = True, seed: int | None = None) -> list[Generation]:
        if isinstance(prompts, (str, dict)):
            raise TypeError("prompts must be a list of prompts (wrap a single prompt in a list)")
        if isinstance(stop, str):
            stop = [stop]
        out: list[Generation] = []
        with self._lock:
            self.n_calls += 1
            for i, p in enumerate(prompts):
                n_prompt = self.prompt_tokens(p, chat)
                if n_prompt > self.context:
                    raise ContextOverflowError(f"prompt {i} has {n_prompt} tokens but the context of fake is {self.context} tokens.")
                self.prompts.append(p)
                if self.echo:
                    text = p if isinstance(p, str) else (p[-1]["content"] if p else "")
                elif self.responses:
                    text = self.responses[self._next % len(self.responses)]
                    self._next += 1
                else:
                    text = ""
                reason = "eos"
                hits = [k for k in (text.find(s) for s in (stop or []) if s) if k >= 0]
                if hits:
                    text, reason = text[: min(hits)], "stop"
                spans = self.token_spans(text)
                if len(spans) > max(max_new_tokens, 0):
                    text = text[: spans[max_new_tokens][0]].rstrip() if max_new_tokens > 0 else ""
                    reason = "length"
                out.append(Generation(text, n_prompt_tokens=n_prompt, n_tokens=self.count_tokens(text), finish_reason=reason))
        emit("llm_call", model=self.model_id, op="generate", n_prompts=len(out), prompt_tokens=sum(g.n_prompt_tokens for g in out),
             completion_tokens=sum(g.n_tokens for g in out), cached=0)
        return out

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "fake"}
        if self.responses is not None:
            d["responses"] = list(self.responses)
        if self.echo:
            d["echo"] = True
        if self.context != 2048:
            d["context"] = self.context
        return d

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_lock", None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeLLM({', '.join(f'{k}={v!r}' for k, v in self.spec().items() if k != 'type')})"
