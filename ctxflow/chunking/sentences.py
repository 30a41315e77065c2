"""``chunk.sentences``: whole sentences packed greedily up to ``size`` tokens."""
from __future__ import annotations

import re

from ..graph.component import component
from ..graph.params import NonNegativeInt, PositiveInt
from ..types import Chunk
from .base import Chunker, Range, build_chunks, check_size, strip_range, window_ranges
from ..graph.component import OptionalLLMRef

#: lower-cased words that end with a period without ending a sentence
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt rev hon gen col capt lt sgt gov pres sen rep fr
vs etc cf al approx ca est dept univ inc ltd co corp llc bros assn
e.g i.e a.k.a a.m p.m u.s u.k u.n ph.d b.a m.a b.sc m.sc
fig figs eq eqs no nos vol vols ch chap sec secs p pp para art ed eds op cit ibid viz resp
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
""".split())

# one or more sentence-ending marks, then closing quotes or brackets
_END = re.compile(r"[.!?\u2026\u203c\u2047-\u2049]+[\"'\u2019\u201d\u00bb)\]]*|[\u3002\uff01\uff1f\uff61]+[\"'\u2019\u201d\u300d\u300f)\]\uff09]*")
_CJK_END = frozenset("\u3002\uff01\uff1f\uff61")
# a blank line (paragraph break) or a paragraph separator
_PARA = re.compile(r"\n[^\S\n]*\n|\u2029")
# a line break before a list item, a heading, a quote or a table row
_BLOCK = re.compile(r"\n(?=[^\S\n]*(?:[-*+\u2022]\s|\d{1,3}[.)]\s|#{1,6}\s|>|\|))")
# the end of a markdown heading line
_HEADING_LINE = re.compile(r"^[^\S\n]{0,3}#{1,6}[^\S\n].*$", re.M)
_WORD_BEFORE = re.compile(r"(\S+)$")
_NEXT = re.compile(r"\s*(\S)")


def _is_abbreviation(text: str, end_mark: int) -> bool:
    """Does the word ending at ``end_mark`` (the position of its final ".") look like an abbreviation?"""
    m = _WORD_BEFORE.search(text, max(0, end_mark - 24), end_mark)
    if m is None:
        return False
    word = m.group(1).lstrip("([{\"'\u2018\u201c").lower()
    if not word:
        return False
    if word in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    # dotted acronyms: "U.S.A" (the final "." is the mark itself)
    return bool(re.fullmatch(r"(?:\w\.)+\w", word)) and len(word) <= 12


def sentence_boundaries(text: str) -> list[int]:
    """Offsets where sentences end (sorted, without 0 and len(text))."""
    cuts: set[int] = set()
    for m in _END.finditer(text):
        s, e = m.span()
        marks = m.group(0)
        if marks[-1] in _CJK_END or any(c in _CJK_END for c in marks):
            cuts.add(e)
            continue
        if e < len(text) and not text[e].isspace():
            continue  # "3.14", "e.g.x", "file.txt"
        nxt = _NEXT.match(text, e)
        if nxt is not None and nxt.group(1).islower():
            continue  # "approx. five", "said 'hi!' and"
        if marks.rstrip("\"'\u2019\u201d\u00bb)]") == "." and _is_abbreviation(text, s):
            continue
        cuts.add(e)
    for rx in (_PARA, _BLOCK):
        for m in rx.finditer(text):
            cuts.add(m.start())
    for m in _HEADING_LINE.finditer(text):
        cuts.add(m.end())
    return sorted(c for c in cuts if 0 < c < len(text))


def split_sentences(text: str) -> list[Range]:
    """Sentence ranges ``(start, end)``: stripped, non-empty, in order, covering every non-space character."""
    out: list[Range] = []
    prev = 0
    for c in sentence_boundaries(text) + [len(text)]:
        s, e = strip_range(text, prev, c)
        if e > s:
            out.append((s, e))
        prev = c
    return out


@component("chunk.sentences", outputs={"chunks": list[Chunk]})
class SentenceChunker(Chunker):
    """Whole sentences, packed greedily up to ``size`` tokens.

    Sentences end at ``.``, ``!``, ``?`` (and CJK marks) followed by a space and not by a lower-case
    word, unless the period ends a known abbreviation or an initial. Paragraph breaks, line breaks
    before list items, quotes, table rows or headings, and the end of a heading line end sentences
    too. A sentence longer than ``size`` is split between tokens. Each chunk after the first repeats
    the last ``overlap_sentences`` sentences of the previous one (as many as fit).
    ``meta["sentences"]`` is the number of sentences in the chunk."""

    def __init__(self, size: PositiveInt = 256, overlap_sentences: NonNegativeInt = 0, llm: OptionalLLMRef = None):
        check_size(size)
        self.size, self.overlap_sentences, self.llm = size, overlap_sentences, llm

    def split(self, text: str, doc_id: str) -> list[Chunk]:
        counter = self.counter()
        p = counter.pieces(text)
        units: list[Range] = []
        for s, e in split_sentences(text):
            if p.tokens(s, e) > self.size:
                units.extend(window_ranges(p, s, e, self.size))
            else:
                units.append((s, e))
        groups: list[list[Range]] = []
        cur: list[Range] = []
        for u in units:
            if cur and p.tokens(cur[0][0], u[1]) > self.size:
                groups.append(cur)
                keep = cur[len(cur) - min(self.overlap_sentences, len(cur)):] if self.overlap_sentences else []
                while keep and p.tokens(keep[0][0], u[1]) > self.size:
                    keep = keep[1:]
                cur = list(keep)
            cur.append(u)
        if cur:
            groups.append(cur)
        ranges = [(g[0][0], g[-1][1], {"sentences": len(g)}) for g in groups]
        return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=self.size)
