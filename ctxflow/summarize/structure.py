"""Book structure: parts, chapters and headings found in plain text or Markdown, as a tree.

Heading detection, most explicit first (the first rule that finds at least two headings wins):

1. **Markdown** headings (ATX ``## Title`` and setext underlines), via ``chunk.markdown``'s parser;
2. **named divisions**: lines such as ``PART II``, ``Book 3: ...``, ``Chapter 12. ...``,
   ``CHAPTER IV``, ``Appendix A. ...``, ``Prologue``, ``Epilogue`` (parts above chapters);
   in a document whose body is indented, the short *outdented* lines between them become
   sub-headings (DocBook and man-page style renders such as the Jargon File);
3. otherwise none: the document is one node, and the caller cuts it into size-based sections.

Every node has exact character offsets ``[start, end)`` and 1-based ``line``; a node's children
cover the rest of its text after its ``intro`` (the text between its heading and its first child).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from ..chunking.base import LineIndex
from ..chunking.markdown import find_headings

_NUM = r"(?:[IVXLC]+|\d+|[A-Z]|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|[a-z]+teen|twenty[- a-z]*)"
_PART = re.compile(rf"^(part|book|volume)\s+{_NUM}\b.*$", re.I)
_CHAPTER = re.compile(rf"^(chapter|appendix)\s+{_NUM}\b.*$|^(prologue|epilogue|preface|introduction|foreword|afterword)\b\W*$", re.I)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # \n, \r\n or a lone \r ends a line


@dataclass
class Node:
    title: str
    level: int  # 0 = the whole document
    start: int
    end: int
    line: int = 1
    end_line: int = 1
    children: list["Node"] = field(default_factory=list)
    body_start: int = 0  # where the text after the heading line begins
    summary: str = ""

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class _Head:
    start: int
    body: int
    level: int
    title: str


def _lines(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(0).rstrip("\r\n")) for m in _LINE.finditer(text)]


def _named_headings(text: str) -> list[_Head]:
    lines = _lines(text)
    heads: list[_Head] = []
    has_part = any(_PART.match(ln.strip()) for _, _, ln in lines if len(ln.strip()) < 100)
    for k, (s, e, ln) in enumerate(lines):
        t = ln.strip()
        if not t or len(t) > 100:
            continue
        # a heading stands alone: blank (or no) lines around it
        if (k > 0 and lines[k - 1][2].strip()) or (k + 1 < len(lines) and lines[k + 1][2].strip()):
            continue
        if _PART.match(t):
            heads.append(_Head(s, e, 1, t))
        elif _CHAPTER.match(t):
            heads.append(_Head(s, e, 2 if has_part else 1, t))
    if len(heads) < 2:
        return heads
    # indented body: outdented short lines are sub-headings of the division they fall in
    nonblank = [ln for _, _, ln in lines if ln.strip()]
    indented = sum(1 for ln in nonblank if ln[:1] in (" ", "\t"))
    if nonblank and indented / len(nonblank) >= 0.8:
        known = {h.start for h in heads}
        first = heads[0].start
        for s, e, ln in lines:
            t = ln.strip()
            if (s > first and s not in known and t and ln[:1] not in (" ", "\t") and len(t) <= 80
                    and re.search(r"[A-Za-z]", t) and not re.match(r"^[\W_]+$", t)):
                # one level below the named division this line falls in
                owner = [h for h in heads if h.start < s and h.start in known]
                heads.append(_Head(s, e, owner[-1].level + 1 if owner else 1, t))
        heads.sort(key=lambda h: h.start)
    return heads


def detect_headings(text: str) -> tuple[str, list[_Head]]:
    """``(method, headings)``: method is "markdown", "named" or "none"."""
    md = [h for h in find_headings(text) if h.title]
    if len(md) >= 2:
        return "markdown", [_Head(h.start, h.body, h.level, h.title) for h in md]
    named = _named_headings(text)
    if len(named) >= 2:
        return "named", named
    return "none", []


def build_tree(text: str, title: str = "") -> tuple[str, Node]:
    """``(method, root)``: the document as a tree of headed sections (see module doc)."""
    starts = LineIndex(text).starts

    def line(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    method, heads = detect_headings(text)
    root = Node(title or "Document", 0, 0, len(text), 1, line(max(0, len(text) - 1)), body_start=0)
    stack = [root]
    for k, h in enumerate(heads):
        while len(stack) > 1 and stack[-1].level >= h.level:
            stack.pop()
        node = Node(h.title, h.level, h.start, len(text), line(h.start), 1, body_start=h.body)
        stack[-1].children.append(node)
        stack.append(node)
    # ends: a node ends where the next heading of the same or a higher level starts
    def close(node: Node, end: int) -> None:
        node.end = end
        node.end_line = line(max(node.start, end - 1))
        for i, c in enumerate(node.children):
            close(c, node.children[i + 1].start if i + 1 < len(node.children) else end)

    close(root, len(text))
    return method, root


def intro_range(node: Node) -> tuple[int, int]:
    """The node's own text: after its heading, before its first child."""
    return node.body_start, (node.children[0].start if node.children else node.end)
