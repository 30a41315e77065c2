"""``select.merge``: candidates from several sources (a memory bank's chunks, MemRecall's blocks, a
knowledge graph's facts) in one list, fairly interleaved.

Scores from different sources live on different scales (a BM25/dense fusion, z-scores, cosine
similarities), so they are not compared directly: within each source the candidates are ranked by
their own score, and the merged score is the reciprocal rank ``1 / (1 + rank)`` — the best of every
source comes first, then the second best of every source, and so on (ties keep the sources' order).
The same span offered by two sources is kept once, with its better rank.
"""
from __future__ import annotations

from ..errors import UserError
from ..graph.component import Component, component
from ..graph.params import NonNegativeInt, PositiveInt
from ..types import Chunk, Scored


@component("select.merge", outputs={"selected": list[Scored[Chunk]]})
class Merge(Component):
    """Interleave ``first``, ``second`` and optional ``third`` by rank; ``limits`` caps how many
    each source contributes (e.g. ``[3, 2]``), ``k`` the total."""

    def __init__(self, limits: list[NonNegativeInt] | None = None, k: PositiveInt | None = None):
        if limits is not None and not limits:
            raise UserError(f"select.merge: limits must be a list of counts >= 0, one per source; got {limits!r}.")
        self.limits, self.k = limits, k

    def run(self, first: list[Scored[Chunk]], second: list[Scored[Chunk]] | None = None,
            third: list[Scored[Chunk]] | None = None) -> dict:
        best: dict[tuple, tuple[float, int, int, Scored[Chunk]]] = {}
        for s, source in enumerate((first, second, third)):  # s: the socket's own position, whichever are fed
            if source is None:
                continue
            ranked = sorted(source, key=lambda c: -c.score)
            if self.limits is not None:
                ranked = ranked[: self.limits[s] if s < len(self.limits) else 0]
            for r, c in enumerate(ranked):
                key = (c.item.doc_id, c.item.start, c.item.end)
                if key not in best or r < best[key][1]:
                    best[key] = (1.0 / (1.0 + r), r, s, c)
        merged = sorted(best.values(), key=lambda t: (t[1], t[2]))
        out = [Scored[Chunk](item=c.item, score=score, meta={**c.meta, "source": s, "source_score": c.score})
               for score, _, s, c in merged]
        return {"selected": out[: self.k] if self.k else out}
