"""``aggregate.refine``: answer on the first chunk(s), then refine the answer chunk by chunk.

Strictly sequential (LangChain / LlamaIndex ``refine``): step 1 answers from the first context;
every next step shows the existing answer and a new context and asks the model to refine the
answer *only if the new context helps, otherwise to repeat the existing answer*. Each step's
context holds as many consecutive chunks as fit the model's window (``chunks_per_step`` caps
it; budgets come from the model's tokenizer and context length).

A step "changes" the answer when its normalised text differs from the previous one; an empty
reply or one that says the context does not help keeps the old answer. ``early_stop=N`` stops
after N steps in a row without a change. Citations are the chunks of the steps that changed
the answer (narrowed to their best sentence), latest first.
"""
from __future__ import annotations

import re

from ..events import progress
from ..graph.component import Component, LLMRef, component
from ..graph.params import PositiveInt, UnitFloat, check_template
from ..types import Answer, Chunk
from .base import ChunkList, SpanScores, best_span, budget_for, check_question, pack, support, unwrap

QA_PROMPT = (
    "Answer the question using only the context below. Answer briefly.\n\n"
    "Context:\n{context}\n\n"
    "Question: {question}"
)
REFINE_PROMPT = (
    "The question is: {question}\n"
    "The existing answer is: {answer}\n\n"
    "Here is more context:\n{context}\n\n"
    "If this context helps, write a better answer to the question. "
    "If it does not help, repeat the existing answer exactly."
)
_KEEP = re.compile(  # "the context does not help ..." starts a reply; a bare "No change." is the whole reply
    r"^\W*(?:(?:the (?:new )?context (?:does not|doesn't) help|(?:it|this) does not help)\b|no changes?\W*$)", re.I)
_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: what "unchanged" compares."""
    return _WS.sub(" ", text.lower()).strip(" .!\"'`\n")


@component("aggregate.refine", outputs={"answer": Answer})
class Refine(Component):
    """Sequential refinement; ``early_stop`` = stop after that many steps without a change."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 96, qa_prompt: str = QA_PROMPT,
                 refine_prompt: str = REFINE_PROMPT, chunks_per_step: PositiveInt | None = None, early_stop: PositiveInt | None = None,
                 reserve: UnitFloat = 0.0, max_chunks: PositiveInt | None = None):
        check_template("qa_prompt", qa_prompt, ("context", "question"))
        check_template("refine_prompt", refine_prompt, ("context", "question", "answer"))
        self.llm, self.max_new_tokens, self.qa_prompt, self.refine_prompt = llm, max_new_tokens, qa_prompt, refine_prompt
        self.chunks_per_step, self.early_stop, self.reserve, self.max_chunks = chunks_per_step, early_stop, reserve, max_chunks

    def _steps(self, chunks: list[Chunk], question: str) -> list[list[Chunk]]:
        """Consecutive groups of chunks, each filling one step's budget (planned with the
        longest possible existing answer, so every step fits whatever the answer is)."""
        llm = self.llm
        filler = "x " * self.max_new_tokens
        base = max(llm.prompt_tokens(self.qa_prompt.format(context="", question=question)),  # type: ignore[union-attr]
                   llm.prompt_tokens(self.refine_prompt.format(context="", question=question, answer=filler)))  # type: ignore[union-attr]
        budget = budget_for(llm, base, self.max_new_tokens, self.reserve)  # type: ignore[arg-type]
        steps, rest = [], list(chunks)
        while rest:
            cap = rest[: self.chunks_per_step or None]
            group = pack(llm, cap, budget)  # type: ignore[arg-type]
            steps.append(group)
            taken = len(group)
            if taken and group[-1].end < rest[taken - 1].end and group[-1].start == rest[taken - 1].start:
                # an oversized chunk was cut by pack(): keep the remainder for the next step
                c = rest[taken - 1]
                cut = group[-1].end - c.start
                rest = [c.model_copy(update={"start": group[-1].end, "text": c.text[cut:], "n_tokens": 0})] + rest[taken:]
            else:
                rest = rest[max(1, taken):]
        return steps

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        items = unwrap(chunks)[: self.max_chunks or None]
        scores = SpanScores(items)
        steps = self._steps([c for c, _ in items], question) if items else [[]]
        answer, changed_by, unchanged, history = "", [], 0, []
        stats = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        stopped_early = False
        for i, group in enumerate(steps):
            progress(i, len(steps), "refine")
            context = "\n\n".join(c.text for c in group)
            if i == 0:
                prompt = self.qa_prompt.format(context=context, question=question)
            else:
                prompt = self.refine_prompt.format(context=context, question=question, answer=answer)
            gen = llm.generate([prompt], max_new_tokens=self.max_new_tokens)[0]  # type: ignore[union-attr]
            stats["calls"] += 1
            stats["prompt_tokens"] += gen.n_prompt_tokens or llm.prompt_tokens(prompt)  # type: ignore[union-attr]
            stats["completion_tokens"] += gen.n_tokens or llm.count_tokens(gen.text)  # type: ignore[union-attr]
            new = gen.text.strip()
            keep = i > 0 and (not new or bool(_KEEP.match(new)) or normalise(new) == normalise(answer))
            if keep:
                unchanged += 1
            else:
                answer, unchanged = new, 0
                changed_by.append(i)
            history.append({"step": i, "chunks": [c.id for c in group], "changed": not keep})
            if self.early_stop and unchanged >= self.early_stop and i + 1 < len(steps):
                stopped_early = True
                break
        progress(len(steps), len(steps), "refine")
        cited: list[Chunk] = []  # per changing step (latest first): its chunks that share words with the answer
        for i in reversed(changed_by):
            ranked = sorted(steps[i], key=lambda c: -support(c, answer))
            cited.extend([c for c in ranked if support(c, answer) > 0] or ranked[:1])
        citations = [best_span(c, answer, question).model_copy(update={"score": scores.get(c)}) for c in cited]
        trace = {"strategy": "refine", "steps": len(history), "steps_planned": len(steps), "changes": len(changed_by),
                 "stopped_early": stopped_early, "history": history, "chunks_given": len(items), **stats,
                 "tokens": stats["prompt_tokens"] + stats["completion_tokens"]}
        return {"answer": Answer(text=answer, citations=citations, trace=trace)}
