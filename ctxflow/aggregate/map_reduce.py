"""``aggregate.map_reduce``: map every chunk to notes, collapse the notes level by level, combine.

1. **map** — one batched ``generate`` call: every chunk gets the map prompt (extract what helps
   answer the question, or say ``NONE``). Outputs that say nothing (empty, ``NONE``, "no
   information", ...) are dropped; the others remember which chunks they came from.
2. **collapse** — while the notes do not fit the final prompt's budget, pack them (in order)
   into groups that each fit the collapse prompt's budget and collapse *all groups as one batch*
   (one ``generate`` call per level). Budgets come from the model's tokenizer and context
   (``llm.context_length``, ``llm.prompt_tokens``), never a fixed constant. At most
   ``max_depth`` levels; when the notes do not shrink or the depth runs out,
   :class:`CollapseError` says so (the reference implementation could loop forever here).
3. **combine** — one call answers the question from the notes.

No prompt is ever longer than the context: a single item that is too long on its own is cut
with ``llm.truncate``. Progress is reported per level (``progress(level, ...)``); the answer's
trace has the levels, calls and tokens; citations are the chunks whose notes contributed,
narrowed to their best sentence.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError
from ..events import emit, progress
from ..graph.component import Component, LLMRef, component
from ..graph.params import NonNegativeInt, PositiveInt, UnitFloat, check_template
from ..types import Answer, Chunk
from .base import ChunkList, best_span, budget_for, check_question, split_to_fit, support, unwrap

MAP_PROMPT = (
    "Read the passage and write down only the facts from it that help answer the question, "
    "quoting names and numbers exactly. If the passage does not help, reply exactly: NONE\n\n"
    "Passage:\n{context}\n\n"
    "Question: {question}"
)
COLLAPSE_PROMPT = (
    "Merge these notes into shorter notes. Keep every fact that helps answer the question, "
    "with names and numbers exactly as written.\n\n"
    "Notes:\n{context}\n\n"
    "Question: {question}"
)
COMBINE_PROMPT = (
    "Answer the question using only the notes below. Answer briefly.\n\n"
    "Notes:\n{context}\n\n"
    "Question: {question}"
)
SUMMARY_MAP_PROMPT = (
    "Summarize the passage below in a few sentences, keeping names, numbers and key terms.\n\n"
    "Passage:\n{context}\n\n"
    "Focus: {question}"
)
SUMMARY_COLLAPSE_PROMPT = (
    "Combine these partial summaries of consecutive parts of one document into one shorter summary "
    "that keeps the main points in order.\n\n"
    "Summaries:\n{context}\n\n"
    "Focus: {question}"
)
SUMMARY_COMBINE_PROMPT = (
    "Write the final summary of the document from these partial summaries of its parts, in order.\n\n"
    "Summaries:\n{context}\n\n"
    "Focus: {question}"
)
SUMMARY_QUESTION = "the main topics and points of the document"
PROMPTS = {"qa": (MAP_PROMPT, COLLAPSE_PROMPT, COMBINE_PROMPT),
           "summary": (SUMMARY_MAP_PROMPT, SUMMARY_COLLAPSE_PROMPT, SUMMARY_COMBINE_PROMPT)}
SEP = "\n\n"
_NOTHING = re.compile(  # a bare sentinel ("NONE.", "N/A") is the whole reply; a sentence saying so starts it
    r"^\W*(?:(?:none|n/?a|nothing(?: relevant| useful)?)\s*(?:[.:;!\-\u2013\u2014]|\n|$)"
    r"|nothing (?:in|about) (?:the|this) (?:passage|text|context)\b"
    r"|(?:no relevant|no information|not (?:mentioned|relevant|provided|stated|specified)|"
    r"(?:the |this )?passage (?:does not|doesn't) (?:help|contain|mention|say|provide))\b)",
    re.I,
)


class CollapseError(UserError):
    """Map-Reduce could not bring the notes under the model's budget within ``max_depth`` levels."""


def says_nothing(text: str) -> bool:
    """True for a map output that carries no information (empty, "NONE", "no information", ...)."""
    return not text.strip() or bool(_NOTHING.match(text.strip()))


@dataclass
class Note:
    """A mapped or collapsed text and the indices of the chunks it came from."""

    text: str
    sources: set[int] = field(default_factory=set)


def pack_groups(sizes: list[int], budget: int, sep_tokens: int = 1) -> list[list[int]]:
    """Split items (token counts ``sizes``, in order) into consecutive groups whose total
    (with ``sep_tokens`` between items) fits ``budget``. An item larger than ``budget`` is alone
    in its group (the caller cuts it)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, n in enumerate(sizes):
        extra = n + (sep_tokens if cur else 0)
        if cur and used + extra > budget:
            groups.append(cur)
            cur, used = [], 0
            extra = n
        cur.append(i)
        used += extra
    if cur:
        groups.append(cur)
    return groups


@component("aggregate.map_reduce", outputs={"answer": Answer})
class MapReduce(Component):
    """Map every chunk (one batch), collapse level by level (one batch per level), combine.

    ``map_tokens`` / ``collapse_tokens`` / ``max_new_tokens``: answer lengths of the three
    steps. ``max_depth``: most collapse levels before :class:`CollapseError`. ``reserve``:
    share of the context kept free (a margin for tokenizer differences).

    ``mode``: "qa" (default: notes that help answer ``question``; passages that do not help are
    dropped) or "summary" (every passage is summarized and nothing is dropped; ``question`` is
    optional and only steers the focus). Prompts left unset come from the mode. ``map_batch``:
    map in slices of that many chunks with a progress event after each (None: one batch)."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 96, map_tokens: PositiveInt = 96, collapse_tokens: PositiveInt = 128,
                 max_depth: NonNegativeInt = 4, map_prompt: str | None = None, collapse_prompt: str | None = None,
                 combine_prompt: str | None = None, reserve: UnitFloat = 0.0, max_chunks: PositiveInt | None = None,
                 mode: str = "qa", map_batch: PositiveInt | None = None):
        if mode not in PROMPTS:
            raise UserError(f"mode must be one of {', '.join(PROMPTS)}, got {mode!r}.")
        defaults = PROMPTS[mode]
        map_prompt = map_prompt if map_prompt is not None else defaults[0]
        collapse_prompt = collapse_prompt if collapse_prompt is not None else defaults[1]
        combine_prompt = combine_prompt if combine_prompt is not None else defaults[2]
        for name, p in (("map_prompt", map_prompt), ("collapse_prompt", collapse_prompt), ("combine_prompt", combine_prompt)):
            check_template(name, p, ("context", "question"))
        self.llm, self.max_new_tokens, self.map_tokens, self.collapse_tokens = llm, max_new_tokens, map_tokens, collapse_tokens
        self.max_depth, self.reserve, self.max_chunks, self.mode, self.map_batch = max_depth, reserve, max_chunks, mode, map_batch
        self.map_prompt, self.collapse_prompt, self.combine_prompt = map_prompt, collapse_prompt, combine_prompt

    # -- helpers -------------------------------------------------------------------------
    def _budget(self, prompt: str, question: str, new_tokens: int) -> int:
        base = self.llm.prompt_tokens(prompt.format(context="", question=question))  # type: ignore[union-attr]
        return budget_for(self.llm, base, new_tokens, self.reserve)  # type: ignore[arg-type]

    def _fit(self, text: str, budget: int) -> str:
        """``text`` cut to ``budget`` tokens when it is longer (never a prompt over the context)."""
        llm = self.llm
        return text if llm.count_tokens(text) <= budget else llm.truncate(text, budget)  # type: ignore[union-attr]

    def _generate(self, prompts: list[str], new_tokens: int, stats: dict) -> list[str]:
        from ..run import current_executor  # local: one batched generate; ray: shards on actors

        gens = current_executor().map_generate(self.llm, prompts, max_new_tokens=new_tokens)
        stats["batches"] += 1
        stats["calls"] += len(prompts)
        for p, g in zip(prompts, gens):
            stats["prompt_tokens"] += g.n_prompt_tokens or self.llm.prompt_tokens(p)  # type: ignore[union-attr]
            stats["completion_tokens"] += g.n_tokens or self.llm.count_tokens(g.text)  # type: ignore[union-attr]
        return [g.text.strip() for g in gens]

    # -- run -----------------------------------------------------------------------------
    def _empty(self, text: str) -> bool:
        return not text.strip() if self.mode == "summary" else says_nothing(text)

    def run(self, chunks: ChunkList, question: str = "") -> dict:
        if self.mode == "summary" and not (question or "").strip():
            question = SUMMARY_QUESTION
        question = check_question(question)
        llm = self.llm
        items = unwrap(chunks)[: self.max_chunks or None]
        chunk_list: list[Chunk] = [c for c, _ in items]
        scores = [s for _, s in items]
        stats = {"calls": 0, "batches": 0, "prompt_tokens": 0, "completion_tokens": 0}
        total_levels = self.max_depth + 2

        # 1. map: one batch over all chunks (or slices of ``map_batch``, each reported)
        progress(0, total_levels, "map")
        map_budget = self._budget(self.map_prompt, question, self.map_tokens)
        # a chunk longer than the map budget is mapped piece by piece (never cut: its end may hold the answer)
        n_given = len(chunk_list)
        split = [(p, s) for c, s in zip(chunk_list, scores) for p in split_to_fit(llm, c, map_budget)]
        chunk_list, scores = [p for p, _ in split], [s for _, s in split]
        prompts = [self.map_prompt.format(context=c.text, question=question) for c in chunk_list]
        step = self.map_batch or max(1, len(prompts))
        outs = []
        for a in range(0, len(prompts), step):
            outs += self._generate(prompts[a:a + step], self.map_tokens, stats)
            if self.map_batch:
                emit("progress", done=0, total=total_levels, desc=f"map {min(a + step, len(prompts))}/{len(prompts)} chunks")
        notes = [Note(t, {i}) for i, t in enumerate(outs) if not self._empty(t)]
        mapped = len(notes)

        # 2. collapse while the notes do not fit the final prompt
        final_budget = self._budget(self.combine_prompt, question, self.max_new_tokens)
        coll_budget = None  # computed when a collapse is needed
        sep_t = max(1, llm.count_tokens(SEP))  # type: ignore[union-attr]
        level, history = 0, []

        def size(ns: list[Note]) -> int:
            return sum(llm.count_tokens(n.text) for n in ns) + sep_t * max(0, len(ns) - 1)  # type: ignore[union-attr]

        total = size(notes)
        history.append({"level": 0, "notes": len(notes), "tokens": total})
        while total > final_budget:
            if level >= self.max_depth:
                raise CollapseError(
                    f"map_reduce: after {level} collapse level(s) the notes still take {total} tokens, more than the "
                    f"{final_budget} the final prompt can hold (context {llm.context_length}). Raise max_depth "  # type: ignore[union-attr]
                    f"(now {self.max_depth}), lower collapse_tokens (now {self.collapse_tokens}) or give fewer chunks."
                )
            level += 1
            if coll_budget is None:
                coll_budget = self._budget(self.collapse_prompt, question, self.collapse_tokens)
            progress(level, total_levels, f"collapse level {level}")
            groups = pack_groups([llm.count_tokens(n.text) for n in notes], coll_budget, sep_t)  # type: ignore[union-attr]
            texts = [self._fit(SEP.join(notes[i].text for i in g), coll_budget) for g in groups]
            outs = self._generate([self.collapse_prompt.format(context=t, question=question) for t in texts],
                                  self.collapse_tokens, stats)
            new = [Note(o, set().union(*(notes[i].sources for i in g))) for g, o in zip(groups, outs) if not self._empty(o)]
            new_total = size(new)
            history.append({"level": level, "groups": len(groups), "notes": len(new), "tokens": new_total})
            if new_total >= total and len(new) >= len(notes):
                raise CollapseError(
                    f"map_reduce: collapse level {level} did not shrink the notes ({total} -> {new_total} tokens, "
                    f"{len(notes)} -> {len(new)} notes); the model's collapse outputs are too long for the budget of "
                    f"{final_budget} tokens. Lower collapse_tokens (now {self.collapse_tokens}) or use a model with a "
                    "longer context."
                )
            notes, total = new, new_total

        # 3. combine
        progress(total_levels - 1, total_levels, "combine")
        context = self._fit(SEP.join(n.text for n in notes), final_budget) if notes else "(no relevant notes)"
        text = self._generate([self.combine_prompt.format(context=context, question=question)], self.max_new_tokens, stats)[0]
        progress(total_levels, total_levels, "done")

        used = sorted(set().union(*(n.sources for n in notes))) if notes else []
        ranked = sorted(used, key=lambda i: -support(chunk_list[i], text))
        citations = [best_span(chunk_list[i], text, question).model_copy(update={"score": scores[i]}) for i in ranked]
        trace = {"strategy": "map_reduce", "mode": self.mode, "levels": level, "history": history, "chunks_given": n_given, "pieces_mapped": len(chunk_list),
                 "chunks_relevant": mapped, "budgets": {"map": map_budget, "collapse": coll_budget, "combine": final_budget},
                 **stats, "tokens": stats["prompt_tokens"] + stats["completion_tokens"]}
        return {"answer": Answer(text=text, citations=citations, trace=trace)}
