"""Short views of component outputs for the run trace (``trace["components"][name]["outputs"]``)."""
from __future__ import annotations

from typing import Any

from ..types import Answer, Chunk, Citation, Document, Scored

GLIMPSE_ITEMS = 10  # items of a list output the trace shows (e.g. a bank's first hits)


def glimpse(v: Any) -> Any:
    """A short view of an output for the run trace: what each stage passed on (which passages a bank
    found, which a selector kept) without copying the document into the trace."""
    def span(x: Any) -> dict[str, Any]:
        item, score = (x.item, x.score) if isinstance(x, Scored) else (x, None)
        if isinstance(item, (Chunk, Citation)):
            d: dict[str, Any] = {"start": item.start, "end": item.end}
            if item.doc_id:
                d["doc_id"] = item.doc_id
            if score is None:
                score = getattr(item, "score", None)
            if score is not None:
                d["score"] = round(float(score), 4)
            d["text"] = item.text[:80] + ("…" if len(item.text) > 80 else "")
            return d
        return {"value": glimpse(item), **({"score": round(float(score), 4)} if score is not None else {})}

    if isinstance(v, Answer):
        return {"text": v.text[:200], "citations": [span(c) for c in v.citations[:GLIMPSE_ITEMS]]}
    if isinstance(v, (Chunk, Citation, Scored)):
        return span(v)
    if isinstance(v, (list, tuple)):
        return {"count": len(v), "first": [span(x) if isinstance(x, (Chunk, Citation, Scored)) else glimpse(x)
                                           for x in v[:GLIMPSE_ITEMS]]}
    if isinstance(v, dict):
        return {"keys": [str(k) for k in list(v)[:GLIMPSE_ITEMS * 2]]}
    if isinstance(v, str):
        return v if len(v) <= 200 else {"chars": len(v), "start": v[:120] + "…"}
    if isinstance(v, Document):
        return {"id": v.id, "chars": len(v.text)}
    if isinstance(v, (int, float, bool)) or v is None:
        return v
    return type(v).__name__
