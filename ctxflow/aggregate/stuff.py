"""``aggregate.stuff``: put as many selected chunks as fit into one prompt and answer."""
from __future__ import annotations

from ..graph.component import Component, LLMRef, component
from ..graph.params import PositiveInt, check_template
from ..types import Answer
from .base import ChunkList, SpanScores, best_span, budget_for, check_question, echo_stops, pack, support, unwrap

PROMPT = (
    "Answer the question using only the context below. Answer briefly.\n\n"
    "Context:\n{context}\n\n"
    "Question: {question}"
)


@component("aggregate.stuff", outputs={"answer": Answer})
class Stuff(Component):
    """One call: context = the chunks (best first, as many as fit the model's window).

    ``order``: "score" keeps the incoming order (best first); "document" re-sorts the packed
    chunks by position in the source (helps when they are consecutive passages)."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 96, prompt: str = PROMPT, order: str = "score",
                 max_chunks: PositiveInt | None = None):
        check_template("prompt", prompt, ("context", "question"))
        if order not in ("score", "document"):
            raise ValueError(f"order must be 'score' or 'document', got {order!r}")
        self.llm, self.max_new_tokens, self.prompt, self.order, self.max_chunks = llm, max_new_tokens, prompt, order, max_chunks

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        items = unwrap(chunks)[: self.max_chunks or None]
        scores = SpanScores(items)
        base = llm.prompt_tokens(self.prompt.format(context="", question=question))  # type: ignore[union-attr]
        budget = budget_for(llm, base, self.max_new_tokens)  # type: ignore[arg-type]
        used = pack(llm, [c for c, _ in items], budget)  # type: ignore[arg-type]
        if self.order == "document":
            used = sorted(used, key=lambda c: (c.doc_id, c.start))
        context = "\n\n".join(c.text for c in used)
        from ..run.stream import answer_generate  # streams `token` events when a subscriber wants them

        gen = answer_generate(llm, self.prompt.format(context=context, question=question), max_new_tokens=self.max_new_tokens,
                              stop=echo_stops(self.prompt))
        text = gen.text.strip()
        ranked = sorted(used, key=lambda c: -support(c, text))
        citations = [best_span(c, text, question).model_copy(update={"score": scores.get(c)}) for c in ranked]
        return {"answer": Answer(text=text, citations=citations, score=None,
                                 trace={"strategy": "stuff", "chunks_used": len(used), "chunks_given": len(items),
                                        "context_tokens": sum(c.n_tokens or 0 for c in used)})}
