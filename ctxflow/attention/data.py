"""Calibration and evaluation text for MoA, built from the bundled Jargon File and the lines task.

Calibration (profiling) uses the first two thirds of the document; evaluation (perplexity, pass
keys) uses the last third, so the quality table measures held-back text. Every sample is a chat
prompt whose answer depends on something far back in the prompt:

* ``entry``: a run of glossary entries; the question asks what one entry near the start says;
* ``lines``: a LongEval lines record; the question asks for a line's value;
* ``passkey``: glossary text with a pass key stated near the start; the question asks for it.

The targets are the dense model's own greedy answers (MoA: generic targets profile badly).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..eval.lines import make_lines_task

JARGON = Path(__file__).resolve().parents[2] / "examples" / "data" / "jargon.txt"
_ENTRY = re.compile(r"^   :([^:\n]{2,40}):", re.M)


def jargon_text(part: str = "calibration") -> str:
    """The first two thirds (``calibration``) or the last third (``eval``) of the Jargon File."""
    text = JARGON.read_text(errors="replace")
    cut = 2 * len(text) // 3
    cut = text.index("\n   :", cut) + 1  # start the eval part on an entry
    return text[:cut] if part == "calibration" else text[cut:]


@dataclass
class Sample:
    kind: str
    prompt: str  # user message
    answer: str | None = None  # the dense model's own answer (filled by :func:`answer_with`)
    expected: str | None = None  # ground truth where one exists (pass key, line value)


def _passage(text: str, rng: random.Random, n_chars: int) -> str:
    starts = [m.start() for m in _ENTRY.finditer(text)]
    s = rng.choice([x for x in starts if x < len(text) - n_chars] or starts[:1])
    return text[s:s + n_chars]


def _fit(count, build, n_tokens: int, lo: int = 200, hi: int = 200_000) -> str:
    """The longest ``build(n_chars)`` whose token count stays within ``n_tokens`` (bisection)."""
    best = build(lo)
    while lo < hi - 64:
        mid = (lo + hi) // 2
        cand = build(mid)
        if count(cand) <= n_tokens:
            best, lo = cand, mid
        else:
            hi = mid
    return best


def entry_sample(count, n_tokens: int, rng: random.Random, text: str) -> Sample:
    seed = rng.random()

    def build(n):
        r = random.Random(seed)
        p = _passage(text, r, n)
        names = _ENTRY.findall(p[: max(200, len(p) // 4)]) or _ENTRY.findall(p)
        term = r.choice(names) if names else "hacker"
        return f"Here is part of a glossary.\n\n{p}\n\nAccording to the glossary above, what does the entry '{term}' mean? Answer in one sentence."

    return Sample("entry", _fit(count, build, n_tokens))


def passkey_sample(count, n_tokens: int, rng: random.Random, text: str, depth: float | None = None) -> Sample:
    key = rng.randint(10000, 99999)
    seed = rng.random()
    depth = rng.uniform(0.05, 0.3) if depth is None else depth

    def build(n):
        p = _passage(text, random.Random(seed), n)
        cut = p.rfind("\n", 0, int(len(p) * depth)) + 1
        needle = f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
        return (f"There is a pass key hidden inside the text below. Find it and memorize it.\n\n{p[:cut]}{needle}{p[cut:]}\n\n"
                "What is the pass key? The pass key is")

    return Sample("passkey", _fit(count, build, n_tokens), expected=str(key))


def lines_sample(count, n_tokens: int, rng: random.Random) -> Sample:
    seed = rng.randint(0, 10**6)

    lo, hi, best = 2, 400, None
    while lo <= hi:
        mid = (lo + hi) // 2
        ex = make_lines_task(mid, 1, seed)[0]
        if count(ex.full_prompt) <= n_tokens:
            best, lo = ex, mid + 1
        else:
            hi = mid - 1
    ex = best or make_lines_task(2, 1, seed)[0]
    return Sample("lines", ex.full_prompt, expected=str(ex.answer))


def calibration_samples(count, n_tokens: int, n: int, seed: int = 0) -> list[Sample]:
    """``n`` samples of about ``n_tokens`` prompt tokens, cycling entry / lines / passkey."""
    rng = random.Random(seed * 7919 + n_tokens)
    text = jargon_text("calibration")
    makers = [lambda: entry_sample(count, n_tokens, rng, text), lambda: lines_sample(count, n_tokens, rng),
              lambda: passkey_sample(count, n_tokens, rng, text)]
    return [makers[i % 3]() for i in range(n)]


def answer_with(llm, samples: list[Sample], max_new_tokens: int = 24) -> list[Sample]:
    """Fill each sample's ``answer`` with the (dense) model's own greedy answer."""
    gens = llm.generate([s.prompt for s in samples], max_new_tokens=max_new_tokens)
    for s, g in zip(samples, gens):
        s.answer = g.text if g.text.strip() else " "
    return samples
