"""``summarize.book``: a long text summarized section -> chapter -> book, as Markdown with its outline.

1. **structure** — :func:`~ctxflow.summarize.structure.build_tree` finds parts, chapters and
   headings (or none). Every node's own text (the text under its heading before its first
   child; the whole text of a leaf node) is cut into *sections* of at most the section budget,
   at paragraph, line and sentence boundaries (size-based sections when there is no structure).
2. **sections** — every section is summarized (batched, one progress bar).
3. **fold** — bottom-up, deepest nodes first: a node's summary folds its sections' and its
   children's summaries (:meth:`~ctxflow.summarize.fold.Summarizer.fold`; all nodes of one depth
   go through the model together). The root's summary is the book's.

Budgets come from the model (``llm.context_length``, ``llm.count_tokens``); ``section_tokens``
caps a section (default: a quarter of the context). Every call goes through the LLM-call cache,
so an interrupted run resumes where it stopped. The Markdown keeps line numbers of everything.
"""
from __future__ import annotations

from typing import Any

from ..chunking.base import TokenCounter, recursive_ranges
from ..chunking.markdown import SECTION_SEPARATORS
from ..errors import UserError
from ..graph.component import Component, LLMRef, component
from ..graph.params import PositiveInt, check_template
from .fold import Summarizer
from .structure import Node, build_tree, intro_range

SECTION_PROMPT = (
    "Summarize this passage from \"{title}\" in 2 or 3 sentences. Say what it is about and give its key facts, "
    "with names and numbers.\n\nPassage:\n{text}"
)
FOLD_PROMPT = (
    "Below are notes on consecutive parts of \"{name}\". Write one summary of 3 or 4 sentences that keeps the "
    "most important names, facts and numbers.\n\nNotes:\n{text}"
)


def _fmt_lines(a: int, b: int) -> str:
    return f"line {a}" if a == b else f"lines {a}–{b}"


@component("summarize.book", outputs={"summary": str, "outline": dict})
class BookSummary(Component):
    """Hierarchical summary of one long text (a book, a manual, a report).

    ``section_tokens``: most tokens of text per section call (default ``context_length // 4``;
    never more than the context leaves). ``max_new_tokens``: length of every summary.
    ``step``: prompts per batched call (one cache commit and one progress tick each)."""

    def __init__(self, llm: LLMRef = "llm", section_tokens: PositiveInt | None = None, max_new_tokens: PositiveInt = 96, step: PositiveInt = 16,
                 section_prompt: str = SECTION_PROMPT, fold_prompt: str = FOLD_PROMPT):
        if section_tokens is not None and section_tokens < 64:
            raise UserError(f"section_tokens must be at least 64 (or left out for a quarter of the context), got {section_tokens}.")
        if max_new_tokens < 8:
            raise UserError(f"max_new_tokens must be at least 8, got {max_new_tokens}.")
        check_template("section_prompt", section_prompt, ("title", "text"))
        check_template("fold_prompt", fold_prompt, ("name", "text"))
        self.llm, self.section_tokens, self.max_new_tokens, self.step = llm, section_tokens, max_new_tokens, step
        self.section_prompt, self.fold_prompt = section_prompt, fold_prompt

    def run(self, document: str, title: str = "") -> dict:
        if not isinstance(document, str) or not document.strip():
            raise UserError("the document is empty: give a text to summarize.")
        llm = self.llm
        title = title.strip() or "the document"
        sm = Summarizer(llm, self.max_new_tokens, self.section_tokens, self.step)
        budget = sm.budget(self.section_prompt, title=title)
        method, root = build_tree(document, title)
        root.title = title
        counter = TokenCounter(llm)  # type: ignore[arg-type]
        pieces = counter.pieces(document)
        line_starts = _line_starts(document)

        # 1. sections: each node's own text cut to the budget
        sections: list[tuple[Node, int, int]] = []
        for node in root.walk():
            a, b = intro_range(node)
            if not document[a:b].strip():
                continue
            for s, e in recursive_ranges(pieces, a, b, budget, 0, SECTION_SEPARATORS):
                if document[s:e].strip():
                    sections.append((node, s, e))
        if not sections:
            raise UserError("the document has no text to summarize.")
        prompts = [self.section_prompt.format(title=title, text=sm.fit(document[s:e], budget)) for _, s, e in sections]
        outs = sm.many(prompts, f"sections ({len(sections)})")
        parts: dict[int, list[dict[str, Any]]] = {}
        for (node, s, e), out in zip(sections, outs):
            parts.setdefault(id(node), []).append({"line": _line(line_starts, s), "end_line": _line(line_starts, max(s, e - 1)),
                                                   "start": s, "end": e, "summary": out})

        # 2. fold bottom-up: deepest nodes first, all nodes of one depth in one batch per level
        by_depth: dict[int, list[Node]] = {}

        def depth_walk(n: Node, d: int) -> None:
            by_depth.setdefault(d, []).append(n)
            for c in n.children:
                depth_walk(c, d + 1)

        depth_walk(root, 0)
        for d in sorted(by_depth, reverse=True):
            items = []
            for n in by_depth[d]:
                texts = [p["summary"] for p in parts.get(id(n), [])] + [c.summary for c in n.children]
                items.append((str(id(n)), [t for t in texts if t]))
            names = {str(id(n)): n.title for n in by_depth[d]}
            folded = sm.fold(items, self.fold_prompt, f"fold depth {d}", fields=lambda k: {"name": names[k]})
            for n, text in zip(by_depth[d], folded):
                n.summary = text
        outline = {"title": title, "structure": method, "tokens": int(pieces.cum[-1]) if len(pieces) else 0,
                   "sections": len(sections), "section_budget": budget, "model": getattr(llm, "model_id", "llm"),
                   "calls": sm.calls, "root": _node_dict(root, parts)}
        return {"summary": render(outline), "outline": outline}


def _line_starts(text: str) -> list[int]:
    from ..chunking.base import LineIndex

    return LineIndex(text).starts


def _line(starts: list[int], pos: int) -> int:
    import bisect

    return bisect.bisect_right(starts, pos)


def _node_dict(n: Node, parts: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"title": n.title, "level": n.level, "line": n.line, "end_line": n.end_line, "summary": n.summary,
            "parts": parts.get(id(n), []), "children": [_node_dict(c, parts) for c in n.children]}


def render(outline: dict[str, Any]) -> str:
    """The Markdown of a book summary: abstract, outline with line numbers, then every section."""
    root = outline["root"]
    out = [f"# {outline['title']} — summary", "",
           f"> {outline['tokens']:,} tokens in {outline['sections']} sections of at most {outline['section_budget']} tokens "
           f"(structure: {outline['structure']}); {outline['calls']} model calls; model `{outline['model']}`. "
           "Written by `ctxflow summarize`; every summary is the model's own text.", "",
           "## Summary", "", root["summary"] or "(no summary)", "", "## Outline", ""]

    def toc(n: dict[str, Any], depth: int) -> None:
        for c in n["children"]:
            out.append(f"{'  ' * depth}- {c['title']} ({_fmt_lines(c['line'], c['end_line'])})")
            toc(c, depth + 1)

    toc(root, 0)
    if not root["children"]:
        out.append(f"- (no headings found: {outline['sections']} size-based sections)")
    out += ["", "## Sections", ""]

    def body(n: dict[str, Any], depth: int) -> None:
        if depth > 0:
            out.append(f"{'#' * min(6, depth + 2)} {n['title']} ({_fmt_lines(n['line'], n['end_line'])})")
            out.append("")
            out.append(n["summary"] or "(no text)")
            out.append("")
        own = n["parts"]
        if own and (len(own) > 1 or n["children"] or depth == 0):
            label = "Introduction" if n["children"] else "Sections"
            if depth == 0:
                label = "Front matter" if n["children"] else "Sections"
            out.append(f"{label}:")
            out.append("")
            for p in own:
                out.append(f"- *{_fmt_lines(p['line'], p['end_line'])}*: {p['summary']}")
            out.append("")
        for c in n["children"]:
            body(c, depth + 1)

    body(root, 0)
    return "\n".join(out).rstrip() + "\n"
