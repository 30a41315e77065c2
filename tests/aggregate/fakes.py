"""A scripted black-box model for the aggregation tests: whitespace tokens, a small context,
and a reply function that sees every prompt (so tests can check what was sent)."""
from __future__ import annotations

from typing import Callable, Sequence

from ctxflow.llm.base import LLM, Generation
from ctxflow.types import Chunk


class ScriptedLLM(LLM):
    """``reply(prompt, max_new_tokens) -> str``; tokens are whitespace-separated words.

    ``obey_max=False`` returns replies longer than ``max_new_tokens`` (a misbehaving model)."""

    def __init__(self, reply: Callable[[str, int], str], context: int = 200, obey_max: bool = True):
        self.reply, self.context, self.obey_max = reply, context, obey_max
        self.prompts: list[str] = []
        self.batches: list[int] = []

    @property
    def context_length(self) -> int:
        return self.context

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, prompt, chat: bool = True) -> int:
        return self.count_tokens(prompt) + 4

    def truncate(self, text: str, max_tokens: int) -> str:
        words = text.split(" ")
        out, n = [], 0
        for w in words:
            k = len(w.split())
            if n + k > max_tokens:
                break
            out.append(w)
            n += k
        return " ".join(out)

    def generate(self, prompts: Sequence, max_new_tokens: int = 256, stop=None, temperature: float = 0.0,
                 chat: bool = True, seed=None) -> list[Generation]:
        self.batches.append(len(prompts))
        out = []
        for p in prompts:
            assert self.prompt_tokens(p) + max_new_tokens <= self.context, (
                f"prompt of {self.prompt_tokens(p)} tokens + {max_new_tokens} new > context {self.context}")
            self.prompts.append(p)
            text = self.reply(p, max_new_tokens)
            if self.obey_max:
                text = " ".join(text.split()[:max_new_tokens])
            out.append(Generation(text=text, n_prompt_tokens=self.prompt_tokens(p), n_tokens=self.count_tokens(text)))
        return out


def make_chunks(texts: list[str], doc_id: str = "doc") -> list[Chunk]:
    """Consecutive chunks of one document (texts joined by a single space)."""
    out, pos = [], 0
    for i, t in enumerate(texts):
        out.append(Chunk(doc_id=doc_id, index=i, start=pos, end=pos + len(t), text=t, n_tokens=len(t.split())))
        pos += len(t) + 1
    return out
