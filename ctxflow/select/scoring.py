"""Confidence from the model's own token probabilities (grey box), robust to whatever it emits.

* :func:`relevance_logodds` — log P(yes) − log P(no) as the first answer token to a yes/no
  question about a passage: one batched forward, no generation, no parsing.
* :func:`answer_gain` — mean log-prob of an answer given the passage minus given no passage.
* :func:`zscore` — standardise scores so that differently scaled signals can be added; NaN and
  infinities (a broken model) become 0 rather than poisoning the sum.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

JUDGE_PROMPT = (
    "Passage:\n{context}\n\nQuestion: {question}\n"
    "Does the passage contain the answer to the question? Answer yes or no."
)
NO_CONTEXT_PROMPT = "Question: {question}\nAnswer briefly."
#: scores closer than this are treated as ties by :func:`zscore` (no noise amplification)
MIN_SPREAD = 1e-6


def zscore(x: Sequence[float] | np.ndarray, min_std: float = 0.0) -> np.ndarray:
    """(x - mean) / max(std, min_std); non-finite entries -> 0; constant input -> zeros."""
    a = np.asarray(x, dtype=float).copy()
    ok = np.isfinite(a)
    if a.size == 0 or ok.sum() < 2:
        return np.zeros_like(a)
    mu, sd = a[ok].mean(), a[ok].std()
    if sd < MIN_SPREAD:
        return np.zeros_like(a)
    out = (a - mu) / max(sd, min_std)
    out[~ok] = 0.0
    return out


def yes_no_ids(llm: Any) -> tuple[list[int], list[int]]:
    """Token ids that start a 'yes' or a 'no' answer, in the model's own vocabulary."""
    tok = llm.tokenizer

    def ids(words: list[str]) -> list[int]:
        out = set()
        for w in words:
            t = tok.encode(w, add_special_tokens=False)
            if t:
                out.add(t[0])
        return sorted(out)

    return ids(["yes", "Yes", " yes", " Yes", "YES"]), ids(["no", "No", " no", " No", "NO"])


def relevance_logodds(llm: Any, contexts: Sequence[str], question: str, prompt: str = JUDGE_PROMPT,
                      prompts: Sequence[str] | None = None) -> np.ndarray:
    """log P(yes) − log P(no) for each context (or for each ready-made prompt in ``prompts``).
    Non-finite values (a model returning NaN) come back as 0: no opinion."""
    if prompts is None:
        prompts = [prompt.format(context=c, question=question) for c in contexts]
    if not prompts:
        return np.zeros(0)
    yes, no = yes_no_ids(llm)
    lp = llm.next_token_logits(list(prompts)).float().log_softmax(-1)  # (B, V)
    y = lp[:, yes].logsumexp(-1)
    n = lp[:, no].logsumexp(-1)
    out = (y - n).cpu().numpy().astype(float)
    out[~np.isfinite(out)] = 0.0
    return out


def mean_logprob(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean of each row's finite log-probs; -inf for an empty or all-NaN row."""
    out = []
    for r in rows:
        v = np.asarray(list(r), dtype=float)
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else float("-inf"))
    return np.array(out)


def answer_gain(llm: Any, with_prompts: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
    """Mean log-prob of each answer given its passage prompt minus given the question alone
    (nats per token). An empty or unscorable answer gets -1000 (it says nothing)."""
    conts = [a if a.strip() else " " for a in answers]
    w = mean_logprob(llm.logprobs(list(with_prompts), conts))
    o = mean_logprob(llm.logprobs([NO_CONTEXT_PROMPT.format(question=question)] * len(conts), conts))
    with np.errstate(invalid="ignore"):
        gain = w - o
    gain = np.where(np.isfinite(gain), gain, np.where(np.isfinite(w), 0.0, -1e3))  # no baseline -> no gain
    gain[[not a.strip() for a in answers]] = -1e3
    return gain
