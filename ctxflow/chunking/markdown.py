"""``chunk.markdown``: one chunk per heading section, titled with its heading path."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..graph.component import component
from ..graph.params import NonNegativeInt, PositiveInt
from ..types import Chunk
from .base import Chunker, build_chunks, check_size, recursive_ranges
from ..graph.component import OptionalLLMRef

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*\r?$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*\r?$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r"^(?: {4}|\t| {0,3}(?:[-*+]\s|\d{1,9}[.)]\s|>|\||#{1,6}(?:[ \t]|$)|`{3,}|~{3,}|<))")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # \n, \r\n or a lone \r ends a line

#: the separators used inside a section that is too big: paragraphs, lines, sentences, words, tokens
SECTION_SEPARATORS = ["\n\n", "\n", ". ", " ", ""]


@dataclass
class Heading:
    start: int  # offset of the heading's first line
    body: int  # offset just past the heading (its underline, for setext headings)
    level: int
    title: str


def find_headings(text: str) -> list[Heading]:
    """ATX (``## Title``) and setext (``Title`` over ``===`` / ``---``) headings outside code fences."""
    lines = [(m.start(), m.end(), m.group(0).rstrip("\r\n")) for m in _LINE.finditer(text)]
    out: list[Heading] = []
    fence: str | None = None
    prev_para = False  # was the previous line a plain paragraph line (a setext candidate)?
    for k, (s, e, line) in enumerate(lines):
        fm = _FENCE.match(line)
        if fence is not None:
            if fm and fm.group(1)[0] == fence[0] and len(fm.group(1)) >= len(fence) and not line.strip()[len(fm.group(1)):].strip():
                fence = None
            prev_para = False
            continue
        if fm:
            fence = fm.group(1)
            prev_para = False
            continue
        am = _ATX.match(line)
        if am:
            title = (am.group(2) or "").strip()
            if not title.strip("#"):  # "## ##" is an empty heading
                title = ""
            out.append(Heading(s, e, len(am.group(1)), title))
            prev_para = False
            continue
        sm = _SETEXT.match(line)
        if sm and prev_para and k > 0:
            ps, _pe, pline = lines[k - 1]
            if not (out and out[-1].start == ps):
                out.append(Heading(ps, e, 1 if sm.group(1)[0] == "=" else 2, pline.strip()))
            prev_para = False
            continue
        prev_para = bool(line.strip()) and not _NOT_PARAGRAPH.match(line)
    return out


@component("chunk.markdown", outputs={"chunks": list[Chunk]})
class MarkdownChunker(Chunker):
    """One chunk per section (a heading and the text up to the next heading); ``meta["title"]`` is
    the heading path, e.g. ``"Intro > Setup"``, and ``meta["level"]`` the heading level (0 for
    text before the first heading). A heading directly followed by a deeper heading is kept with
    that subsection instead of making a chunk of its own. Sections bigger than ``size`` tokens are
    split further (paragraphs, then lines, sentences, words) with ``overlap``; text without
    headings is just split that way. Headings inside fenced code blocks are ignored."""

    def __init__(self, size: PositiveInt = 256, overlap: NonNegativeInt = 0, llm: OptionalLLMRef = None):
        check_size(size, overlap)
        self.size, self.overlap, self.llm = size, overlap, llm

    def split(self, text: str, doc_id: str) -> list[Chunk]:
        counter = self.counter()
        p = counter.pieces(text)
        heads = find_headings(text)
        # sections: (start, end, level, title path)
        sections: list[tuple[int, int, int, str]] = []
        if not heads or heads[0].start > 0:
            sections.append((0, heads[0].start if heads else len(text), 0, ""))
        stack: list[tuple[int, str]] = []
        for k, h in enumerate(heads):
            while stack and stack[-1][0] >= h.level:
                stack.pop()
            stack.append((h.level, h.title))
            end = heads[k + 1].start if k + 1 < len(heads) else len(text)
            sections.append((h.start, end, h.level, " > ".join(t for _, t in stack if t)))
        # a heading with no text of its own joins the deeper section that follows it
        merged: list[tuple[int, int, int, str]] = []
        by_start = {h.start: h for h in heads}
        pending: int | None = None
        for k, (s, e, level, title) in enumerate(sections):
            start = s if pending is None else pending
            pending = None
            nxt = sections[k + 1] if k + 1 < len(sections) else None
            head = by_start.get(s)
            body_empty = head is not None and not text[head.body:e].strip()
            if body_empty and nxt is not None and nxt[2] > level:
                pending = start
                continue
            merged.append((start, e, level, title))
        ranges = []
        for s, e, level, title in merged:
            meta = {"title": title, "level": level}
            if p.tokens(s, e) <= self.size:
                ranges.append((s, e, meta))
            else:
                ranges.extend((a, b, meta) for a, b in recursive_ranges(p, s, e, self.size, self.overlap, SECTION_SEPARATORS))
        return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=self.size)
