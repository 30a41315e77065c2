"""``select.map_rerank``: ask every candidate the question in one batched pass and keep the
answer the model is most confident in — confidence from the model's own token probabilities,
never from a "Score: 0-100" line it may not write.

Scoring methods (``method``):

* ``relevance`` — log-odds of "yes" vs "no" to "Does the passage answer the question?",
  read from the next-token distribution (one batched forward, no generation needed);
* ``answer_gain`` — mean log-prob of the chunk's own answer given the chunk minus given no
  context (how much the passage supports what the model says);
* ``combined`` (default) — z-scored sum of relevance, answer gain and the retrieval score;
* ``parse`` — LangChain's format: the model writes an answer and ``Score: N``; parsed
  tolerantly, and every parse failure falls back to ``combined`` and is counted in the trace.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ..events import progress
from ..graph.component import Component, LLMRef, component
from ..types import Answer, Chunk, Scored
from ..aggregate.base import ChunkList, best_span, check_question, unwrap

ANSWER_PROMPT = "Context:\n{context}\n\nQuestion: {question}\nAnswer briefly using the context."
JUDGE_PROMPT = (
    "Passage:\n{context}\n\nQuestion: {question}\n"
    "Does the passage contain the answer to the question? Answer yes or no."
)
PARSE_PROMPT = (
    "Use the context to answer the question. Then rate from 0 to 100 how fully the context "
    "answers it, on a last line written exactly as 'Score: <number>'.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
NO_CONTEXT_PROMPT = "Question: {question}\nAnswer briefly."
_SCORE = re.compile(r"score\s*[:=]\s*(\d{1,3})", re.I)
METHODS = ("combined", "relevance", "answer_gain", "parse")


def _z(x: np.ndarray) -> np.ndarray:
    if len(x) < 2 or float(x.std()) < 1e-9:
        return np.zeros_like(x)
    return (x - x.mean()) / x.std()


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


def relevance_logodds(llm: Any, contexts: list[str], question: str, prompt: str = JUDGE_PROMPT) -> np.ndarray:
    """log P(yes) - log P(no) of the judge question for each context (one batched forward)."""
    if not contexts:
        return np.zeros(0)
    yes, no = yes_no_ids(llm)
    logits = llm.next_token_logits([prompt.format(context=c, question=question) for c in contexts])
    lp = logits.float().log_softmax(-1)
    y = lp[:, yes].logsumexp(-1)
    n = lp[:, no].logsumexp(-1)
    return (y - n).cpu().numpy().astype(float)


def parse_score(text: str) -> tuple[str, float | None]:
    """Split "answer ... Score: 87" into (answer, 87.0); (text, None) when no score is found."""
    m = None
    for m in _SCORE.finditer(text):
        pass
    if m is None:
        return text.strip(), None
    val = float(m.group(1))
    if not 0 <= val <= 100:
        return text.strip(), None
    return (text[: m.start()] + text[m.end():]).strip(), val


@component("select.map_rerank", outputs={"selected": list[Scored[Chunk]], "answer": Answer}, requires={"logprobs", "logits"})
class MapRerank(Component):
    """Answer the question on each candidate (batched) and rank by the model's confidence.

    ``selected``: the candidates re-scored, best first (``top_k`` of them).
    ``answer``: the best candidate's answer, with its citation."""

    def __init__(self, llm: LLMRef = "llm", top_k: int = 3, method: str = "combined", max_candidates: int = 8,
                 max_new_tokens: int = 48, retrieval_weight: float = 1.0, prompt: str = ANSWER_PROMPT):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if top_k < 1 or max_candidates < 1:
            raise ValueError("top_k and max_candidates must be at least 1")
        self.llm, self.top_k, self.method, self.max_candidates = llm, top_k, method, max_candidates
        self.max_new_tokens, self.retrieval_weight, self.prompt = max_new_tokens, retrieval_weight, prompt

    def _fit(self, text: str, question: str) -> str:
        """Cut a context so the prompt leaves room for the answer in the model's window."""
        llm = self.llm
        room = llm.context_length - self.max_new_tokens - llm.prompt_tokens(self.prompt.format(context="", question=question)) - 8
        return llm.truncate(text, max(16, room))

    def run(self, candidates: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        items = unwrap(candidates)[: self.max_candidates]
        if not items:
            return {"selected": [], "answer": Answer(text="", trace={"strategy": "map_rerank", "candidates": 0})}
        chunks = [c for c, _ in items]
        contexts = [self._fit(c.text, question) for c in chunks]
        retrieval = np.array([s if s is not None else 0.0 for _, s in items], dtype=float)
        progress(0, 3, "answering")
        n_fail = 0
        parsed: list[float | None] = []
        if self.method == "parse":
            gens = llm.generate([PARSE_PROMPT.format(context=c, question=question) for c in contexts],
                                max_new_tokens=self.max_new_tokens + 8)
            answers = []
            for g in gens:
                a, s = parse_score(g.text)
                answers.append(a)
                parsed.append(s)
                n_fail += s is None
        else:
            gens = llm.generate([self.prompt.format(context=c, question=question) for c in contexts], max_new_tokens=self.max_new_tokens)
            answers = [g.text.strip() for g in gens]
        progress(1, 3, "judging")
        rel = relevance_logodds(llm, contexts, question)
        progress(2, 3, "answer gain")
        with_ctx = llm.logprobs([self.prompt.format(context=c, question=question) for c in contexts], [a or " " for a in answers])
        without = llm.logprobs([NO_CONTEXT_PROMPT.format(question=question)] * len(answers), [a or " " for a in answers])
        gain = np.array([(np.mean(w) if len(w) else 0.0) - (np.mean(o) if len(o) else 0.0) for w, o in zip(with_ctx, without)])
        gain[[not a for a in answers]] = -10.0
        combined = _z(rel) + _z(gain) + self.retrieval_weight * _z(retrieval)
        if self.method == "relevance":
            score = rel
        elif self.method == "answer_gain":
            score = gain
        elif self.method == "parse":
            # parsed scores where the model obeyed; the probability-based score elsewhere
            score = np.array([p / 100.0 * 4 - 2 if p is not None else c for p, c in zip(parsed, combined)])
        else:
            score = combined
        progress(3, 3, "done")
        order = sorted(range(len(chunks)), key=lambda i: -score[i])
        per = [{"chunk": chunks[i].id, "start": chunks[i].start, "end": chunks[i].end, "answer": answers[i],
                "relevance": round(float(rel[i]), 4), "answer_gain": round(float(gain[i]), 4),
                "retrieval": round(float(retrieval[i]), 4), "score": round(float(score[i]), 4),
                **({"parsed_score": parsed[i]} if self.method == "parse" else {})} for i in order]
        best = order[0]
        selected = [Scored[Chunk](item=chunks[i], score=float(score[i]), meta={"answer": answers[i], "method": self.method})
                    for i in order[: self.top_k]]
        cit = best_span(chunks[best], answers[best], question).model_copy(update={"score": float(score[best])})
        conf = 1.0 / (1.0 + math.exp(-float(rel[best])))
        trace = {"strategy": "map_rerank", "method": self.method, "candidates": per, "parse_failures": n_fail}
        return {"selected": selected, "answer": Answer(text=answers[best], citations=[cit], score=conf, trace=trace)}
