"""``select.memrecall``: CogLTX MemRecall (Ding et al., NeurIPS 2020), training-free.

The text is cut into blocks (<= ``block_size`` tokens, on sentence boundaries; see
:mod:`ctxflow.select.blocks`). A working memory ``z`` with a token ``budget`` (by default a
share of the model's own context) is built over ``iterations`` rounds:

1. *coarse* — every block is scored against the question plus the current ``z``: BM25 over all
   blocks for the question joined with the terms ``z`` adds to it (a bridging name), the retrieval
   prior (``candidates`` from a memory bank), dense similarity where an embedder is given; then
   the ``prefilter`` best new blocks are judged: ``judge: llm`` (default) adds the model's own
   relevance log-odds ("does this passage help answer the question, given the known facts?" —
   yes vs no next-token probabilities, one batched forward); ``judge: embedding`` uses the dense
   similarity alone;
2. *fill* — ``z`` is filled greedily with the best judged blocks until the budget is reached;
3. *fine* — the blocks of ``z`` are re-scored jointly, each against the question plus the rest
   of ``z`` (BM25 for the question joined with the rest's new terms, and the judge, batched), and only the best ``keep + it * increment``
   survive.

Because round 2 queries with what round 1 found, a fact that names another fact (a two-hop
question) pulls the second one in — which single-shot top-k retrieval cannot do. The final ``z``
is returned in document order. The original judge is a trained RoBERTa; ours needs no training.
"""
from __future__ import annotations

import numpy as np

from ..aggregate.base import check_question, unwrap
from ..errors import UserError
from ..events import progress
from ..graph.component import Component, OptionalEmbedderRef, OptionalLLMRef, component
from ..graph.params import NonNegativeFloat, NonNegativeInt, PositiveInt
from ..llm.base import LLM, Embedder
from ..memory.bm25 import BM25Bank, tokenize
from ..types import Chunk, Scored
from .blocks import blocks_of_chunks, make_blocks
from .scoring import relevance_logodds, zscore

JUDGES = ("llm", "embedding")
MEMORY_JUDGE_PROMPT = (
    "Known facts:\n{memory}\n\nPassage:\n{context}\n\nQuestion: {question}\n"
    "Does the passage help answer the question, given the known facts? Answer yes or no."
)


def novel(memory: str, question: str) -> str:
    """The terms of ``memory`` that the question does not already contain: what the memory adds
    (a bridging name, a number), as a lexical query."""
    seen = set(tokenize(question))
    return " ".join(t for t in tokenize(memory) if t not in seen)


@component("select.memrecall", outputs={"selected": list[Scored[Chunk]]})
class MemRecall(Component):
    """CogLTX MemRecall over ``text`` (the whole document) or ``chunks``; ``candidates`` (hits
    of a memory bank) add a retrieval prior. Outputs the final working memory in document order."""

    def __init__(self, llm: OptionalLLMRef = "llm", embedder: OptionalEmbedderRef = None, judge: str = "llm",
                 budget: PositiveInt | None = None, block_size: PositiveInt = 63, iterations: PositiveInt = 2, keep: PositiveInt = 2,
                 increment: NonNegativeInt = 2, prefilter: PositiveInt = 16, judge_weight: NonNegativeFloat = 1.0,
                 prior_weight: NonNegativeFloat = 1.0):
        if judge not in JUDGES:
            raise UserError(f"select.memrecall: judge must be one of {', '.join(JUDGES)}; got {judge!r}.")
        if judge == "embedding" and embedder is None:
            raise UserError("select.memrecall: judge 'embedding' needs an embedder (embedder: embed).")
        if block_size < 8:
            raise UserError(f"select.memrecall: block_size must be at least 8 tokens, got {block_size}.")
        if budget is not None and budget < 8:
            raise UserError(f"select.memrecall: budget must be at least 8 tokens, got {budget}.")
        self.llm, self.embedder, self.judge, self.budget = llm, embedder, judge, budget
        self.block_size, self.iterations, self.keep, self.increment = block_size, iterations, keep, increment
        self.prefilter, self.judge_weight, self.prior_weight = prefilter, judge_weight, prior_weight
        self.requires = frozenset({"logits"}) if judge == "llm" else frozenset()

    # -- helpers --------------------------------------------------------------------------
    def _llm(self) -> LLM | None:
        return self.llm if isinstance(self.llm, LLM) else None

    def token_budget(self) -> int:
        """Working-memory budget: ``budget``, else 1/32 of the model's context (64..512 tokens)."""
        if self.budget:
            return self.budget
        llm = self._llm()
        ctx = llm.context_length if llm is not None else 2048
        return int(max(64, min(512, ctx // 32)))

    def _judge(self, texts: list[str], question: str, memory: list[str]) -> np.ndarray:
        llm = self._llm()
        if self.judge != "llm" or llm is None or not texts or "logits" not in getattr(llm, "capabilities", ()):
            return np.zeros(len(texts))
        if not any(memory):
            return relevance_logodds(llm, texts, question)
        prompts = [MEMORY_JUDGE_PROMPT.format(memory=m or "(none)", context=t, question=question)
                   for t, m in zip(texts, memory)]
        return relevance_logodds(llm, [""] * len(texts), "", prompts=prompts)

    def _dense(self, idx: list[int], blocks: list[Chunk], query: str, cache: dict[int, np.ndarray]) -> np.ndarray:
        if not isinstance(self.embedder, Embedder) or not idx:
            return np.zeros(len(idx))
        todo = [i for i in idx if i not in cache]
        if todo:
            vecs = np.asarray(self.embedder.embed([blocks[i].text for i in todo], kind="passage"), dtype=float)
            cache.update(zip(todo, vecs))
        q = np.asarray(self.embedder.embed([query], kind="query"), dtype=float)[0]
        return np.array([float(cache[i] @ q) for i in idx])

    # -- run ------------------------------------------------------------------------------
    def run(self, question: str, text: str | None = None, chunks: list[Chunk] | list[Scored[Chunk]] | None = None,
            candidates: list[Scored[Chunk]] | None = None, doc_id: str = "") -> dict:
        question = check_question(question)
        llm = self._llm()
        if text is not None:
            blocks = make_blocks(text, self.block_size, llm, doc_id)
        elif chunks is not None or candidates is not None:
            blocks = blocks_of_chunks([c for c, _ in unwrap(chunks if chunks is not None else candidates)], self.block_size, llm)
        else:
            raise UserError("select.memrecall needs the document ('text') or its 'chunks'.")
        if not blocks:
            return {"selected": []}
        lex = BM25Bank()
        lex.add(blocks)
        prior = self._prior(blocks, candidates)
        cache: dict[int, np.ndarray] = {}
        budget = self.token_budget()
        ntok = [b.n_tokens or (llm.count_tokens(b.text) if llm else len(b.text.split())) for b in blocks]
        q_lex = zscore(lex.scores(question))
        z: list[int] = []
        scores: dict[int, float] = {}
        rounds = []
        for it in range(self.iterations):
            progress(it, self.iterations, "memrecall")
            mem = [blocks[i].text for i in z]
            # (1) coarse: every block against question + memory
            coarse = (zscore(lex.scores(question + "\n" + novel(" ".join(mem), question))) if mem else q_lex) + self.prior_weight * prior
            order = [int(i) for i in np.argsort(-coarse, kind="stable") if int(i) not in z]
            cand = order[: self.prefilter]
            judged = coarse[cand] + zscore(self._dense(cand, blocks, question + ("\n" + "\n".join(mem) if mem else ""), cache))
            if self.judge == "llm":
                judged = judged + self.judge_weight * zscore(self._judge([blocks[i].text for i in cand], question, ["\n".join(mem)] * len(cand)))
            # (2) fill the memory greedily up to the budget
            used = sum(ntok[i] for i in z)
            for j in np.argsort(-judged, kind="stable"):
                i = cand[int(j)]
                if used + ntok[i] <= budget or not z:
                    z.append(i)
                    used += ntok[i]
            # (3) fine: each block of z against the question and the rest of z, jointly
            rest = ["\n".join(blocks[k].text for k in z if k != i) for i in z]
            fine = np.array([zscore(lex.scores(question + "\n" + novel(r, question)))[i] + self.prior_weight * prior[i] for r, i in zip(rest, z)])
            fine = fine + zscore(self._dense(z, blocks, question, cache))
            if self.judge == "llm" and len(z) > 1:
                fine = fine + self.judge_weight * zscore(self._judge([blocks[i].text for i in z], question, rest))
            n_keep = self.keep + it * self.increment
            ranked = [z[int(j)] for j in np.argsort(-fine, kind="stable")]
            scores = {z[j]: float(fine[j]) for j in range(len(z))}
            z = ranked[:n_keep]
            rounds.append({"filled": len(ranked), "kept": [blocks[i].start for i in z]})
        progress(self.iterations, self.iterations, "memrecall")
        z = sorted(z, key=lambda i: (blocks[i].doc_id, blocks[i].start))
        return {"selected": [Scored[Chunk](item=blocks[i], score=scores.get(i, 0.0), meta={"strategy": "memrecall", "rounds": rounds})
                             for i in z]}

    def _prior(self, blocks: list[Chunk], candidates: list[Scored[Chunk]] | None) -> np.ndarray:
        """Reciprocal-rank prior from a bank's hits: a block inside the hit of rank r gets 1/(1+r).
        Kept on that 0..1 scale (not standardised): a hit is a whole chunk, coarser evidence than a
        block's own match, so it breaks ties rather than outvoting an exact match."""
        out = np.zeros(len(blocks))
        if not candidates:
            return out
        hits = sorted(unwrap(candidates), key=lambda cs: -(cs[1] if cs[1] is not None else 0.0))
        for r, (c, _) in enumerate(hits):
            for i, b in enumerate(blocks):
                if b.doc_id == c.doc_id and b.start < c.end and c.start < b.end:
                    out[i] = max(out[i], 1.0 / (1.0 + r))
        return out
