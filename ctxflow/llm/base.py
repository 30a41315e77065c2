"""The LLM and embedder protocols.

Two levels:

* **black box** — ``generate(prompts, ...) -> list[Generation]``, batched. Every backend has it.
* **grey box** (local models) — ``logprobs``, ``next_token_logits`` and ``forward`` with explicit
  position ids, 4-D attention masks and reused KV caches. Declared in ``capabilities`` so a
  component that needs them can say so at validate time.

A *prompt* is either a string (a user message: instruct models wrap it in their chat template;
pass ``chat=False`` for raw text) or a list of ``{"role": ..., "content": ...}`` messages.
Token budgets always come from the model's own tokenizer and context length.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import re

import numpy as np

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)

Message = dict[str, str]
Prompt = Union[str, list[Message]]

BLACK_BOX = frozenset({"generate"})
GREY_BOX = frozenset({"generate", "logprobs", "logits", "positions", "kv"})


@dataclass
class Generation:
    text: str
    n_prompt_tokens: int = 0
    n_tokens: int = 0
    finish_reason: str = "length"  # "stop" (stop string), "eos", "length"
    logprob: float | None = None  # sum of the generated tokens' log-probs (greedy/sampled)
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class LLM(ABC):
    """Base class of language models. Cheap to construct; weights load in ``warm_up``."""

    #: what the model can do: a subset of GREY_BOX
    capabilities: frozenset[str] = BLACK_BOX
    #: stable identifier of the weights (used in cache keys)
    model_id: str = "llm"

    def warm_up(self) -> None:  # pragma: no cover - trivial
        """Load weights. Idempotent."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the model can attend to (``max_context`` if set smaller)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes with this model's tokenizer (no special tokens)."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of ``text``'s tokens. Local models override this with the tokenizer's
        offset mapping; the fallback splits on words and punctuation."""
        return [m.span() for m in _WORDS.finditer(text)]

    def prompt_tokens(self, prompt: Prompt, chat: bool = True) -> int:
        """Tokens a whole prompt takes, chat template included."""
        return self.count_tokens(prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)) + 16

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 256,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        chat: bool = True,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continue each prompt; one batch in, one list out, in order."""

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that fits in ``max_tokens`` tokens."""
        if self.count_tokens(text) <= max_tokens:
            return text
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count_tokens(text[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo]

    def spec(self) -> dict[str, Any]:
        """The ``models:`` entry that recreates this model (for YAML dump)."""
        return {"type": getattr(self, "type_name", type(self).__name__)}


class Embedder(ABC):
    """Maps texts to L2-normalised vectors."""

    model_id: str = "embedder"

    def warm_up(self) -> None:  # pragma: no cover - trivial
        """Load weights. Idempotent."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def embed(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """(N, dim) float32, rows L2-normalised. ``kind`` is "query" or "passage"."""

    def spec(self) -> dict[str, Any]:
        return {"type": getattr(self, "type_name", type(self).__name__)}
