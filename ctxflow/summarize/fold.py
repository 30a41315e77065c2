"""The engine behind hierarchical summaries: batched calls with budgets, progress, and folding.

* :meth:`Summarizer.budget` — tokens a prompt template leaves for its text: the model's context
  (``llm.context_length``) minus the template (``llm.prompt_tokens``) and the answer, capped at
  ``input_tokens`` (small models summarize short inputs far better than long ones).
* :meth:`Summarizer.many` — prompts in slices of ``step``: each slice is one batched ``generate``
  (through the LLM-call cache, so an interrupted run resumes at the slice it was in) and one
  ``progress`` event per slice, shown by the CLI as one bar per level.
* :meth:`Summarizer.fold` — many summaries to one: pack them in order into groups that fit the
  budget, summarize every group (one batch per level), repeat until one text is left; depth is
  bounded because every level at least halves the number of texts.
* :func:`clean` — small models loop ("n.\\n\\nn.\\n\\n..."): keep sentences up to the first repeat.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from ..errors import ContextOverflowError
from ..events import progress

_SENT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n+")
_WORD = re.compile(r"\S+")
_WS = re.compile(r"\s+")


def _cut_phrase_loop(text: str, n: int = 6) -> str:
    """``text`` up to where a run of ``n`` words starts repeating an earlier run (a loop), ended at
    the last full sentence before that point when there is one."""
    words = list(_WORD.finditer(text))
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(re.sub(r"\W+", "", w.group(0).lower()) for w in words[i:i + n])
        if gram in seen:
            head = text[: words[i].start()].rstrip()
            end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "), -1)
            if head.endswith((".", "!", "?")):
                return head
            return head[: end + 1] if end > len(head) // 3 else head.rstrip(",;:") + "..."
        seen.add(gram)
    return text


def clean(text: str, max_sentences: int = 8) -> str:
    """The model's text without loops: repeated sentences and repeated phrases are cut, blank
    lines and chat leftovers removed."""
    text = text.replace("<|im_end|>", "").strip()
    out: list[str] = []
    seen: set[str] = set()
    for part in _SENT.split(text):
        s = _WS.sub(" ", part).strip()
        key = re.sub(r"\W+", " ", s.lower()).strip()
        if not key or len(key) < 3:
            continue
        if key in seen:
            break  # the model started looping
        seen.add(key)
        out.append(s)
        if len(out) >= max_sentences:
            break
    return _cut_phrase_loop(" ".join(out).strip())


class Summarizer:
    """Batched summarizing calls against one LLM under token budgets derived from the model."""

    def __init__(self, llm: Any, max_new_tokens: int = 96, input_tokens: int | None = None, step: int = 16):
        self.llm, self.max_new_tokens, self.step = llm, max_new_tokens, max(1, step)
        # default input cap: a quarter of the window (2048 tokens for an 8k model, 8k for a 32k one)
        self.input_tokens = input_tokens or max(256, llm.context_length // 4)
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def budget(self, template: str, **fields: str) -> int:
        """Tokens left for ``{text}`` in ``template`` (formatted with ``fields``)."""
        base = self.llm.prompt_tokens(template.format(text="", **fields))
        left = min(self.input_tokens, self.llm.context_length - base - self.max_new_tokens)
        if left < 32:
            raise ContextOverflowError(
                f"the summary prompt takes {base} tokens and the answer {self.max_new_tokens}, leaving {left} of the "
                f"model's {self.llm.context_length}-token context for text; use a model with a longer context or lower "
                "max_new_tokens.")
        return left

    def fit(self, text: str, budget: int) -> str:
        return text if self.llm.count_tokens(text) <= budget else self.llm.truncate(text, budget)

    def many(self, prompts: list[str], desc: str, max_new_tokens: int | None = None) -> list[str]:
        """Generate for every prompt (slices of ``step``), cleaned; progress per slice under ``desc``."""
        outs: list[str] = []
        total = len(prompts)
        progress(0, total, desc)
        for i in range(0, total, self.step):
            gens = self.llm.generate(prompts[i:i + self.step], max_new_tokens=max_new_tokens or self.max_new_tokens)
            for g in gens:
                self.calls += 1
                self.prompt_tokens += g.n_prompt_tokens
                self.completion_tokens += g.n_tokens
                outs.append(clean(g.text))
            progress(len(outs), total, desc)
        return outs

    def fold(self, groups_of: list[tuple[str, list[str]]], template: str, desc: str,
             fields: Callable[[str], dict[str, str]] | None = None, max_depth: int = 8) -> list[str]:
        """Reduce each ``(key, texts)`` to one text. All keys advance level by level together, so one
        level is one batch across every key. ``template`` has ``{text}`` and the ``fields(key)``."""
        fields = fields or (lambda k: {})
        state = {k: [t for t in texts if t.strip()] for k, texts in groups_of}
        for depth in range(1, max_depth + 1):
            todo: list[tuple[str, list[str]]] = []  # (key, group texts) to summarize at this level
            for k, texts in state.items():
                if len(texts) <= 1:
                    continue
                budget = self.budget(template, **fields(k))
                for g in pack(self.llm, texts, budget):
                    todo.append((k, g))
            if not todo:
                break
            prompts = [template.format(text=self.fit("\n".join(f"- {t}" for t in g), self.budget(template, **fields(k))),
                                       **fields(k)) for k, g in todo]
            outs = self.many(prompts, f"{desc} (level {depth})")
            new: dict[str, list[str]] = {k: [] for k in state if len(state[k]) > 1}
            for (k, g), o in zip(todo, outs):
                new[k].append(o or g[0])
            for k, v in new.items():
                if len(v) >= len(state[k]):  # no progress (one group per text): force a single group next
                    v = [" ".join(v)]
                state[k] = v
        return [" ".join(state[k]) if state[k] else "" for k, _ in groups_of]


def pack(llm: Any, texts: list[str], budget: int) -> list[list[str]]:
    """Consecutive groups of ``texts`` whose bullet lists fit ``budget`` tokens; every group has at
    least two texts when there are two (so each level shrinks)."""
    groups: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for t in texts:
        n = llm.count_tokens(t) + 2
        if cur and used + n > budget and len(cur) >= 2:
            groups.append(cur)
            cur, used = [], 0
        cur.append(t)
        used += n
    if cur:
        if len(cur) == 1 and groups:
            groups[-1].append(cur[0])
        else:
            groups.append(cur)
    return groups
