"""``select.topk``: keep the k best candidates, optionally diversified with MMR."""
from __future__ import annotations

from ..aggregate.base import terms
from ..graph.component import Component, component
from ..graph.params import PositiveInt, UnitFloat
from ..types import Chunk, Scored


def _jaccard(a: str, b: str) -> float:
    sa, sb = terms(a), terms(b)  # words; character pairs in CJK text
    return len(sa & sb) / max(1, len(sa | sb))


def mmr(cands: list[Scored[Chunk]], k: int, lam: float) -> list[Scored[Chunk]]:
    """Maximal marginal relevance: trade score against lexical overlap with what is already chosen."""
    if not cands:
        return []
    lo, hi = min(c.score for c in cands), max(c.score for c in cands)
    norm = {id(c): (c.score - lo) / (hi - lo) if hi > lo else 1.0 for c in cands}
    chosen: list[Scored[Chunk]] = []
    rest = list(cands)
    while rest and len(chosen) < k:
        best = max(rest, key=lambda c: lam * norm[id(c)] - (1 - lam) * max((_jaccard(c.item.text, s.item.text) for s in chosen), default=0.0))
        chosen.append(best)
        rest.remove(best)
    return chosen


@component("select.topk", outputs={"selected": list[Scored[Chunk]]})
class TopK(Component):
    """The ``k`` highest-scored candidates; ``mmr`` < 1 trades relevance for diversity."""

    def __init__(self, k: PositiveInt = 3, mmr: UnitFloat = 1.0, document_order: bool = False):
        self.k, self.mmr, self.document_order = k, mmr, document_order

    def run(self, candidates: list[Scored[Chunk]]) -> dict:
        ranked = sorted(candidates, key=lambda c: -c.score)
        out = mmr(ranked, self.k, self.mmr) if self.mmr < 1.0 else ranked[: self.k]
        if self.document_order:
            out = sorted(out, key=lambda c: (c.item.doc_id, c.item.start))
        return {"selected": out}
