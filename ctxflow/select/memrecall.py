"""``select.memrecall``: CogLTX MemRecall (Ding et al., NeurIPS 2020), training-free.

The text is cut into blocks (<= ``block_size`` tokens, on sentence boundaries). A working
memory ``z`` with a token ``budget`` is built over ``iterations`` rounds:

1. *coarse* — every block is scored against (question + current z): lexical BM25 and, when an
   embedder is given, cosine similarity; with ``judge: llm`` the best ``prefilter`` blocks are
   re-scored by the model's own relevance log-odds (yes/no next-token probabilities);
2. *fill* — z is filled greedily with the best new blocks until the budget is reached;
3. *fine* — the blocks of z are re-scored jointly (each against the question plus the rest of
   z) and only the best ``keep`` (growing by ``increment`` each round) survive.

Because round 2 queries with what round 1 found, a fact that names another fact (a two-hop
question) pulls the second one in — what single-shot top-k retrieval cannot do. The final z
keeps document order and goes to the reasoner. The original judge is a trained RoBERTa; ours
is pluggable: ``llm`` (default), ``embedding`` or ``lexical``.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Union

import numpy as np

from ..chunking import chunk_text
from ..events import progress
from ..graph.component import Component, _Ref, component
from ..llm.base import LLM, Embedder
from ..types import Chunk, Scored
from ..aggregate.base import check_question, unwrap
from .map_rerank import relevance_logodds

OptionalLLMRef = Annotated[Union[str, LLM, None], _Ref("llm")]
OptionalEmbedderRef = Annotated[Union[str, Embedder, None], _Ref("embedder")]
_TOK = re.compile(r"\w+", re.UNICODE)
JUDGES = ("llm", "embedding", "lexical")
MEMORY_JUDGE_PROMPT = (
    "Known facts:\n{memory}\n\nPassage:\n{context}\n\nQuestion: {question}\n"
    "Does the passage help answer the question, given the known facts? Answer yes or no."
)


def tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOK.findall(text)]


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if len(x) < 2 or float(x.std()) < 1e-9:
        return np.zeros_like(x)
    return (x - x.mean()) / x.std()


class _Lexical:
    """BM25 over the blocks (the maintained ``bm25s`` package)."""

    def __init__(self, texts: list[str]):
        import bm25s

        self.r = bm25s.BM25()
        self.r.index([tokens(t) or ["_"] for t in texts], show_progress=False)
        self.n = len(texts)

    def scores(self, query: str) -> np.ndarray:
        q = tokens(query)
        return np.asarray(self.r.get_scores(q), dtype=float) if q else np.zeros(self.n)


@component("select.memrecall", outputs={"selected": list[Scored[Chunk]]})
class MemRecall(Component):
    def __init__(self, llm: OptionalLLMRef = "llm", embedder: OptionalEmbedderRef = None, judge: str = "llm",
                 budget: int | None = None, block_size: int = 63, iterations: int = 2, keep: int = 2,
                 increment: int = 2, prefilter: int = 24):
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {', '.join(JUDGES)}; got {judge!r}")
        if iterations < 1 or keep < 1 or block_size < 8:
            raise ValueError("iterations and keep must be >= 1 and block_size >= 8")
        self.llm, self.embedder, self.judge, self.budget = llm, embedder, judge, budget
        self.block_size, self.iterations, self.keep, self.increment, self.prefilter = block_size, iterations, keep, increment, prefilter
        self.requires = frozenset({"logits"}) if judge == "llm" else frozenset()

    # -- blocks ---------------------------------------------------------------------------
    def blocks(self, text: str | None, chunks: list[Chunk] | None, doc_id: str) -> list[Chunk]:
        llm = self.llm if isinstance(self.llm, LLM) else None
        if text is not None:
            return chunk_text(text, "sentences", doc_id=doc_id, size=self.block_size, llm=llm)
        out: list[Chunk] = []
        for c in sorted(chunks or [], key=lambda c: (c.doc_id, c.start)):
            for b in chunk_text(c.text, "sentences", doc_id=c.doc_id, size=self.block_size, llm=llm):
                out.append(b.model_copy(update={"start": c.start + b.start, "end": c.start + b.end, "index": len(out),
                                                "meta": {**c.meta, **b.meta}}))
        # drop duplicates from overlapping chunks
        seen, uniq = set(), []
        for b in out:
            if (b.doc_id, b.start, b.end) not in seen:
                seen.add((b.doc_id, b.start, b.end))
                uniq.append(b)
        return uniq

    def _budget(self) -> int:
        if self.budget:
            return self.budget
        ctx = self.llm.context_length if isinstance(self.llm, LLM) else 2048
        return max(64, min(512, ctx // 4))

    # -- scoring --------------------------------------------------------------------------
    def _coarse(self, blocks: list[Chunk], lex: _Lexical, emb: np.ndarray | None, question: str, memory: list[int]) -> np.ndarray:
        mem_text = " ".join(blocks[i].text for i in memory)
        s = _z(lex.scores(question)) + 0.7 * _z(lex.scores(mem_text)) if memory else _z(lex.scores(question))
        if emb is not None:
            q = self.embedder.embed([question + ("\n" + mem_text if mem_text else "")], kind="query")[0]
            s = s + _z(emb @ q)
        if self.judge == "llm" and isinstance(self.llm, LLM):
            top = [i for i in np.argsort(-s)[: self.prefilter] if i not in memory]
            if top:
                rel = self._judge([blocks[i].text for i in top], question, mem_text)
                bonus = np.full(len(blocks), -np.inf)
                bonus[top] = _z(rel) + 0.5 * _z(s[top])
                s = np.where(np.isfinite(bonus), 10.0 + bonus, s)  # judged blocks rank above the rest
        return s

    def _judge(self, texts: list[str], question: str, memory: str) -> np.ndarray:
        if memory:
            prompt = MEMORY_JUDGE_PROMPT.replace("{memory}", memory.replace("{", "{{").replace("}", "}}"))
            return relevance_logodds(self.llm, texts, question, prompt=prompt)
        return relevance_logodds(self.llm, texts, question)

    def _fine(self, blocks: list[Chunk], z: list[int], question: str, lex: _Lexical, emb: np.ndarray | None) -> np.ndarray:
        """Score each block of z against the question plus the rest of z (joint, leave-one-out)."""
        out = np.zeros(len(z))
        for j, i in enumerate(z):
            rest = " ".join(blocks[k].text for k in z if k != i)
            qs = lex.scores(question)[i]
            rs = lex.scores(rest)[i] if rest else 0.0
            out[j] = qs + 0.5 * rs
        out = _z(out)
        if emb is not None:
            q = self.embedder.embed([question], kind="query")[0]
            out = out + _z(emb[z] @ q)
        if self.judge == "llm" and isinstance(self.llm, LLM) and len(z) > 1:
            rel = np.array([self._judge([blocks[i].text], question, " ".join(blocks[k].text for k in z if k != i))[0] for i in z])
            out = out + _z(rel)
        return out

    # -- run ------------------------------------------------------------------------------
    def run(self, question: str, text: str | None = None, chunks: list[Chunk] | list[Scored[Chunk]] | None = None,
            doc_id: str = "") -> dict:
        question = check_question(question)
        if text is None and chunks is None:
            raise ValueError("select.memrecall needs 'text' or 'chunks'")
        plain = [c for c, _ in unwrap(chunks)] if chunks is not None else None
        blocks = self.blocks(text, plain, doc_id)
        if not blocks:
            return {"selected": []}
        lex = _Lexical([b.text for b in blocks])
        emb = None
        if isinstance(self.embedder, Embedder):
            emb = np.asarray(self.embedder.embed([b.text for b in blocks], kind="passage"), dtype=float)
        budget = self._budget()
        count = (self.llm.count_tokens if isinstance(self.llm, LLM) else (lambda t: len(tokens(t))))
        ntok = [b.n_tokens or count(b.text) for b in blocks]
        z: list[int] = []
        history = []
        final_scores: dict[int, float] = {}
        for it in range(self.iterations):
            progress(it, self.iterations, "recall")
            coarse = self._coarse(blocks, lex, emb, question, z)
            used = sum(ntok[i] for i in z)
            for i in np.argsort(-coarse):
                i = int(i)
                if i in z:
                    continue
                if used + ntok[i] > budget:
                    if used >= budget * 0.9:
                        break
                    continue
                z.append(i)
                used += ntok[i]
            fine = self._fine(blocks, z, question, lex, emb)
            keep = self.keep + it * self.increment
            ranked = [z[j] for j in np.argsort(-fine)]
            final_scores = {z[j]: float(fine[j]) for j in range(len(z))}
            z = ranked[:keep]
            history.append([blocks[i].id for i in z])
        progress(self.iterations, self.iterations, "recall")
        z = sorted(z, key=lambda i: (blocks[i].doc_id, blocks[i].start))
        selected = [Scored[Chunk](item=blocks[i], score=final_scores.get(i, 0.0), meta={"memrecall": True}) for i in z]
        return {"selected": selected}
