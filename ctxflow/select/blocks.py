"""CogLTX blocks: a text cut into small units on sentence boundaries, each at most ``size`` tokens.

Consecutive whole sentences are packed into a block up to ``size`` tokens, across paragraph
breaks (as CogLTX does: a dictionary headword and its first sense often sit in separate short
paragraphs). A sentence longer than ``size`` is cut at its line breaks first (records, lists,
tables and code put one item per line), then at clause marks, then between words, then between
tokens — never inside a token — and its pieces are NOT packed back together: the text's own
line structure is kept, so one record line is one block (what a small model reads best). Offsets are exact: ``text[b.start:b.end] == b.text``.
"""
from __future__ import annotations

from typing import Any

from ..chunking.base import TokenCounter, build_chunks, split_units
from ..chunking.sentences import split_sentences
from ..types import Chunk

#: where an over-long sentence is cut, in order of preference ("" = between tokens)
SEPARATORS = ["\n", "; ", ", ", " ", ""]


def make_blocks(text: str, size: int = 63, llm: Any = None, doc_id: str = "") -> list[Chunk]:
    """Blocks of ``text`` (sentences, or pieces of over-long sentences), in document order."""
    if not text or not text.strip():
        return []
    counter = TokenCounter(llm)
    p = counter.pieces(text)
    ranges: list[tuple[int, int]] = []
    group: tuple[int, int] | None = None  # consecutive whole sentences packed so far
    for s, e in split_sentences(text):
        if p.tokens(s, e) > size:  # an over-long sentence: its pieces stay apart
            if group:
                ranges.append(group)
            group = None
            ranges.extend(split_units(p, s, e, size, SEPARATORS))
        elif group and p.tokens(group[0], e) <= size:
            group = (group[0], e)
        else:
            if group:
                ranges.append(group)
            group = (s, e)
    if group:
        ranges.append(group)
    return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=size)


def blocks_of_chunks(chunks: list[Chunk], size: int = 63, llm: Any = None) -> list[Chunk]:
    """Blocks inside each chunk, with offsets mapped back to the chunk's source; blocks that
    overlapping chunks produce twice are kept once."""
    out: list[Chunk] = []
    seen: set[tuple[str, int, int]] = set()
    for c in sorted(chunks, key=lambda c: (c.doc_id, c.start)):
        for b in make_blocks(c.text, size, llm, c.doc_id):
            key = (c.doc_id, c.start + b.start, c.start + b.end)
            if key in seen:
                continue
            seen.add(key)
            meta = {**c.meta, **b.meta, "chunk": c.id}
            if isinstance(c.meta.get("line"), int):  # the block's lines count from its chunk's first line
                for k in ("line", "end_line"):
                    if isinstance(b.meta.get(k), int):
                        meta[k] = c.meta["line"] + b.meta[k] - 1
            else:  # lines within the chunk only, not the document's: none
                meta.pop("line", None)
                meta.pop("end_line", None)
            out.append(b.model_copy(update={"start": key[1], "end": key[2], "index": len(out), "meta": meta}))
    return out
