"""Calibration and evaluation text for MoA, built from the bundled Jargon File and the lines task.

Calibration (profiling) uses the first two thirds of the document; evaluation (perplexity, pass
keys) uses the last third, so the quality table measures held-back text. Question samples are
chat prompts whose answer depends on something far back in the prompt:

* ``entry``: a run of glossary entries; the question asks what one entry near the start says;
* ``lines``: a LongEval lines record; the question asks for a line's value;
* ``passkey``: glossary text with a pass key stated near the start; the question asks for it.

Their targets are the dense model's own greedy answers (MoA: generic targets profile badly). An
answer is a few dozen tokens, so question samples alone say little about the local context that
every next-token prediction needs; ``text`` samples (a plain window of the calibration text, the
loss on its second half) give that signal. :func:`calibration_samples` mixes both by default
(``objective="mixed"``), ``"answers"`` and ``"text"`` give one kind only.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..eval.lines import make_lines_task

JARGON = Path(__file__).resolve().parents[2] / "examples" / "data" / "jargon.txt"
_ENTRY = re.compile(r"^   :([^:\n]{2,40}):", re.M)


def jargon_text(part: str = "calibration") -> str:
    """The first two thirds (``calibration``) or the last third (``eval``) of the Jargon File."""
    if not JARGON.is_file():  # an installed wheel: the 1.7 MB text stays in the source checkout
        raise UserError(f"the MoA calibration and evaluation text is missing ({JARGON}): it is examples/data/jargon.txt of "
                        "ctxflow's source checkout and does not ship with the package; run the moa commands from a "
                        "checkout (pip install -e .).")
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


def text_sample(count, n_tokens: int, rng: random.Random, text: str) -> Sample:
    """A plain window of ``text`` of about ``n_tokens`` tokens, starting on a glossary entry (no
    chat template; the profiling loss is the next-token NLL of its second half)."""
    seed = rng.random()
    return Sample("text", _fit(count, lambda n: _passage(text, random.Random(seed), n), n_tokens))


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


OBJECTIVES = ("mixed", "answers", "text")


def calibration_samples(count, n_tokens: int, n: int, seed: int = 0, objective: str = "mixed",
                        text_tokens: int | None = None) -> list[Sample]:
    """``n`` samples: question prompts of about ``n_tokens`` tokens (cycling entry / lines / passkey)
    and/or plain text windows of ``text_tokens`` (default ``n_tokens``) tokens. ``objective``:
    ``"answers"`` (questions only), ``"text"`` (text only) or ``"mixed"`` (alternating, text first)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    rng = random.Random(seed * 7919 + n_tokens)
    text = jargon_text("calibration")
    questions = [lambda: entry_sample(count, n_tokens, rng, text), lambda: lines_sample(count, n_tokens, rng),
                 lambda: passkey_sample(count, n_tokens, rng, text)]
    plain = lambda: text_sample(count, text_tokens or n_tokens, rng, text)  # noqa: E731
    if objective == "answers":
        return [questions[i % 3]() for i in range(n)]
    if objective == "text":
        return [plain() for _ in range(n)]
    return [plain() if i % 2 == 0 else questions[(i // 2) % 3]() for i in range(n)]


def answer_with(llm, samples: list[Sample], max_new_tokens: int = 24) -> list[Sample]:
    """Fill each question sample's ``answer`` with the (dense) model's own greedy answer (text
    samples need none)."""
    todo = [s for s in samples if s.kind != "text"]
    gens = llm.generate([s.prompt for s in todo], max_new_tokens=max_new_tokens) if todo else []
    for s, g in zip(todo, gens):
        s.answer = g.text if g.text.strip() else " "
    return samples


def sample_ids(llm, s: Sample, answer_tokens: int = 32) -> tuple[list[int], int]:
    """Token ids of a sample and the position where its loss starts: prompt (chat) + answer with the
    loss on the answer, or a text window with the loss on its second half."""
    if s.kind == "text":
        ids = llm.tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
        return ids, len(ids) // 2
    p = llm.encode([{"role": "user", "content": s.prompt}], chat=True)
    a = llm.tokenizer(s.answer or " ", add_special_tokens=False)["input_ids"][:answer_tokens]
    return p + a, len(p)
