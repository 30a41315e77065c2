"""A scripted grey-box model for control-flow tests: FakeLLM's scripted text plus token
probabilities that are garbage on purpose (NaN, infinities, empty rows)."""
from __future__ import annotations

import torch

from ctxflow.llm.fake import FakeLLM

V = 50


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return [sum(map(ord, text.strip().lower())) % V] if text.strip() else []


class GarbageGreyLLM(FakeLLM):
    """Scripted answers; ``next_token_logits`` and ``logprobs`` return NaN / inf / random rows
    (``mode="garbage"``) or a fixed preference for 'yes' on prompts containing ``yes_if``."""

    capabilities = frozenset({"generate", "logprobs", "logits"})

    def __init__(self, responses=None, mode="garbage", yes_if=None, **kw):
        super().__init__(responses=responses, **kw)
        self.mode, self.yes_if, self.tokenizer = mode, yes_if, _Tok()
        self.grey_calls = 0

    def next_token_logits(self, prompts, chat=True):
        self.grey_calls += 1
        g = torch.Generator().manual_seed(len(prompts))
        out = torch.randn((len(prompts), V), generator=g)
        yes, no = self.tokenizer.encode("yes")[0], self.tokenizer.encode("no")[0]
        for i, p in enumerate(prompts):
            text = p if isinstance(p, str) else str(p)
            if self.mode == "garbage":  # NaN rows, infinite yes and no, or -inf everywhere
                if i % 3 == 0:
                    out[i] = float("nan")
                elif i % 3 == 1:
                    out[i, [yes, no]] = float("inf")
                else:
                    out[i] = float("-inf")
            elif self.yes_if is not None:
                passage = text.split("Passage:", 1)[-1].split("Question:", 1)[0]
                out[i, yes if self.yes_if in passage else no] += 20.0
        return out

    def logprobs(self, prompts, continuations, chat=True):
        self.grey_calls += 1
        rows = []
        for i, c in enumerate(continuations):
            if self.mode == "garbage":
                rows.append([[], [float("nan")], [float("-inf"), 1.0]][i % 3])
            else:
                rows.append([-1.0] * max(1, len(c.split())))
        return rows
