"""``select.map_rerank``: ask every candidate the question in one batched pass and keep the
answer the model is most confident in — confidence from the model's own token probabilities,
never from a "Score: 0-100" line it may not write.

Scoring methods (``method``):

* ``combined`` (default) — relevance log-odds + answer gain + the incoming retrieval score,
  each standardised (so no single scale dominates), with ``retrieval_weight`` on the last;
* ``relevance`` — log-odds of "yes" vs "no" to "Does the passage contain the answer?", read
  from the next-token distribution (one batched forward, no generation, no parsing);
* ``answer_gain`` — mean log-prob of the candidate's own answer given the chunk minus given no
  context (how much the passage supports what the model says);
* ``parse`` — LangChain's format: the model writes an answer and ``Score: N``; parsed
  tolerantly; where the model did not obey (or the score is out of range) the candidate falls
  back to the probability-based ``combined`` score (or the retrieval score on a black-box
  model), and the failures are counted in the trace.

Nothing the model writes can make this component raise: empty, garbled or NaN output only
lowers that candidate's confidence.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ..aggregate.base import ChunkList, best_span, check_question, echo_stops, unwrap
from ..errors import ContextOverflowError, UserError
from ..events import progress
from ..graph.component import Component, LLMRef, component
from ..graph.params import NonNegativeFloat, PositiveInt, check_template
from ..types import Answer, Chunk, Scored
from .scoring import answer_gain, relevance_logodds, zscore

ANSWER_PROMPT = "Context:\n{context}\n\nQuestion: {question}\nAnswer briefly using the context."
PARSE_PROMPT = (
    "Use the context to answer the question. Then rate from 0 to 100 how fully the context "
    "answers it, on a last line written exactly as 'Score: <number>'.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
_SCORE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.I)
METHODS = ("combined", "relevance", "answer_gain", "parse")
GREY = frozenset({"logprobs", "logits"})


def parse_score(text: str) -> tuple[str, float | None]:
    """Split "answer ... Score: 87" into ("answer ...", 87.0); (text, None) when there is no
    score in 0..100 (the last "Score:" counts)."""
    text = text if isinstance(text, str) else ""
    matches = list(_SCORE.finditer(text))
    if not matches:
        return text.strip(), None
    m = matches[-1]
    try:
        val = float(m.group(1))
    except ValueError:  # pragma: no cover - the regex only matches numbers
        return text.strip(), None
    if not (0 <= val <= 100) or math.isnan(val):
        return text.strip(), None
    return (text[: m.start()] + text[m.end():]).strip(), val


@component("select.map_rerank", outputs={"selected": list[Scored[Chunk]], "answer": Answer})
class MapRerank(Component):
    """Answer the question on each candidate (batched) and rank by the model's confidence.

    ``selected``: the candidates re-scored, best first (``top_k`` of them).
    ``answer``: the best candidate's answer, with its citation; every candidate's scores are in
    ``answer.trace["candidates"]``."""

    def __init__(self, llm: LLMRef = "llm", top_k: PositiveInt = 3, method: str = "combined", max_candidates: PositiveInt = 8,
                 max_new_tokens: PositiveInt = 48, retrieval_weight: NonNegativeFloat = 1.0, prompt: str = ANSWER_PROMPT):
        if method not in METHODS:
            raise UserError(f"select.map_rerank: method must be one of {', '.join(METHODS)}; got {method!r}.")
        check_template("prompt", prompt, ("context", "question"))
        self.llm, self.top_k, self.method, self.max_candidates = llm, top_k, method, max_candidates
        self.max_new_tokens, self.retrieval_weight, self.prompt = max_new_tokens, retrieval_weight, prompt
        # the parse mode runs on any model (black box); the others read token probabilities
        self.requires = frozenset() if method == "parse" else GREY

    def _fit(self, text: str, question: str, template: str) -> str:
        """Cut a context so the prompt leaves room for the answer in the model's window."""
        llm = self.llm
        fixed = llm.prompt_tokens(template.format(context="", question=question))
        room = llm.context_length - self.max_new_tokens - fixed - 8
        if room < 16:
            raise ContextOverflowError(
                f"select.map_rerank: the prompt with this question takes {fixed} tokens and the answer {self.max_new_tokens}, "
                f"leaving {max(room, 0)} of the model's {llm.context_length} for a passage; shorten the question or lower "
                "max_new_tokens.")
        return llm.truncate(text, room)

    def run(self, candidates: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        items = unwrap(candidates)[: self.max_candidates]
        if not items:
            return {"selected": [], "answer": Answer(text="", trace={"strategy": "map_rerank", "candidates": [], "parse_failures": 0})}
        chunks = [c for c, _ in items]
        retrieval = np.array([s if s is not None and math.isfinite(s) else 0.0 for _, s in items], dtype=float)
        grey = GREY <= set(getattr(llm, "capabilities", ()))
        template = PARSE_PROMPT if self.method == "parse" else self.prompt
        contexts = [self._fit(c.text, question, template) for c in chunks]
        prompts = [template.format(context=c, question=question) for c in contexts]
        # (1) every candidate answers, one batched call
        progress(0, 3, "answering")
        stop = None if self.method == "parse" else echo_stops(template)  # parse needs its 'Score:' line
        gens = llm.generate(prompts, max_new_tokens=self.max_new_tokens + (8 if self.method == "parse" else 0), stop=stop)
        raw = [g.text if isinstance(getattr(g, "text", None), str) else "" for g in gens]
        parsed: list[float | None] = [None] * len(raw)
        if self.method == "parse":
            answers = []
            for i, t in enumerate(raw):
                a, parsed[i] = parse_score(t)
                answers.append(a)
        else:
            answers = [t.strip() for t in raw]
        n_fail = sum(p is None for p in parsed) if self.method == "parse" else 0
        # (2) confidence from token probabilities, batched
        rel = np.zeros(len(chunks))
        gain = np.zeros(len(chunks))
        if grey:
            progress(1, 3, "judging")
            rel = relevance_logodds(llm, contexts, question)
            progress(2, 3, "answer gain")
            gain = answer_gain(llm, prompts if self.method != "parse" else
                               [self.prompt.format(context=c, question=question) for c in contexts], question, answers)
        no_answer = np.array([not a for a in answers])
        combined = zscore(rel, 1.0) + zscore(np.maximum(gain, -10.0), 0.5) + self.retrieval_weight * zscore(retrieval)
        combined = np.where(no_answer, combined - 10.0, combined)
        if self.method == "relevance":
            score = np.where(no_answer, rel - 10.0, rel)
        elif self.method == "answer_gain":
            score = gain
        elif self.method == "parse":
            # parsed scores (0..100 -> -2..2, the spread of a z-score) where the model obeyed,
            # the probability-based score (or, black box, the retrieval score) elsewhere
            fallback = combined if grey else zscore(retrieval) - 10.0 * no_answer
            score = np.array([p / 25.0 - 2.0 if p is not None else f for p, f in zip(parsed, fallback)])
        else:
            score = combined
        score = np.where(np.isfinite(score), score, -1e9)
        progress(3, 3, "done")
        order = sorted(range(len(chunks)), key=lambda i: (-score[i], i))
        per = [{"chunk": chunks[i].id, "start": chunks[i].start, "end": chunks[i].end, "answer": answers[i],
                "relevance": round(float(rel[i]), 4), "answer_gain": round(float(gain[i]), 4),
                "retrieval": round(float(retrieval[i]), 4), "score": round(float(score[i]), 4),
                **({"parsed_score": parsed[i], "raw": raw[i]} if self.method == "parse" else {})} for i in order]
        best = order[0]
        selected = [Scored[Chunk](item=chunks[i], score=float(score[i]), meta={"answer": answers[i], "method": self.method})
                    for i in order[: self.top_k]]
        cit = best_span(chunks[best], answers[best], question).model_copy(update={"score": float(score[best])})
        conf = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, float(rel[best]))))) if grey else None
        trace = {"strategy": "map_rerank", "method": self.method, "candidates": per, "parse_failures": n_fail,
                 "grey_box": grey}
        return {"selected": selected, "answer": Answer(text=answers[best], citations=[cit], score=conf, trace=trace)}
