"""``chunk.code``: source files cut at definitions (Python via ``ast``), other files at blank lines."""
from __future__ import annotations

import ast
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..graph.component import component
from ..graph.params import PositiveInt
from ..types import Chunk
from .base import Chunker, LineIndex, Pieces, Range, build_chunks, check_size, merge_units, split_units
from ..graph.component import OptionalLLMRef

PYTHON_EXTENSIONS = frozenset({".py", ".pyi", ".pyw"})
_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".pyw": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp",
    ".cxx": "cpp", ".hpp": "cpp", ".java": "java", ".kt": "kotlin", ".go": "go", ".rs": "rust", ".rb": "ruby",
    ".php": "php", ".cs": "csharp", ".swift": "swift", ".scala": "scala", ".sh": "shell", ".bash": "shell",
    ".sql": "sql", ".r": "r", ".lua": "lua", ".pl": "perl", ".hs": "haskell", ".ml": "ocaml", ".jl": "julia",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".md": "markdown", ".txt": "text",
}
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
#: inside a block that is still too big: lines, then words, then between tokens
_LINE_SEPARATORS = ["\n", " ", ""]

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass
class _Unit:
    l0: int  # first line (1-based, inclusive)
    l1: int  # last line (inclusive)
    kind: str
    name: str
    node: Any = None  # the def/class node, when the unit is exactly one definition
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_def(self) -> bool:
        return self.node is not None


def _extension(path: str) -> str:
    return posixpath.splitext(path.replace("\\", "/").rsplit("/", 1)[-1])[1].lower()


def guess_language(path: str, language: str = "auto") -> str:
    """``language`` unless it is "auto"; else from ``path``'s extension ("python" when there is none)."""
    if language and language != "auto":
        return language.lower()
    ext = _extension(path)
    if not ext:
        return "python"  # no extension: try to parse it
    return _LANGUAGES.get(ext, ext.lstrip("."))


def block_ranges(p: Pieces, a: int, b: int, size: int) -> list[Range]:
    """``[a, b)`` cut at blank lines, blocks still bigger than ``size`` cut at lines (then words and
    tokens), and the pieces merged back greedily up to ``size`` tokens."""
    text = p.text
    units: list[Range] = []
    s = a
    bounds = [m.start() + 1 for m in _BLANK_LINE.finditer(text, a, b)] + [b]
    for e in bounds:
        if e <= s:
            continue
        if text[s:e].strip():
            units.extend(split_units(p, s, e, size, _LINE_SEPARATORS))
        s = e
    return merge_units(p, units, size)


class _Python:
    """Python-specific partitioning of a module into definition-sized line ranges."""

    def __init__(self, text: str, lines: LineIndex, pieces: Pieces, size: int, module: str):
        self.text, self.L, self.p, self.size, self.module = text, lines, pieces, size, module
        self.raw_lines = [text[lines.start(k):lines.end(k)] for k in range(1, len(lines) + 1)]

    # -- line helpers ---------------------------------------------------------------------
    def line(self, k: int) -> str:
        return self.raw_lines[k - 1] if 1 <= k <= len(self.raw_lines) else ""

    def blank(self, k: int) -> bool:
        return not self.line(k).strip()

    def indent(self, k: int) -> int:
        line = self.line(k)
        return len(line) - len(line.lstrip(" \t\f"))

    def tokens(self, l0: int, l1: int) -> int:
        return self.p.tokens(self.L.start(l0), self.L.end(l1))

    # -- partitioning ---------------------------------------------------------------------
    def partition(self, stmts: list[ast.stmt], l0: int, l1: int, prefix: str, in_class: bool,
                  other_kind: str, other_name: str) -> list[_Unit]:
        """Units covering lines ``[l0, l1]``: one per definition in ``stmts`` (decorators and the
        comment lines right above it included), the rest grouped into ``other_kind`` blocks."""
        units: list[_Unit] = []
        for node in stmts:
            start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            end = node.end_lineno or node.lineno
            start, end = max(start, l0), min(max(end, start), l1)
            if start > l1:
                continue
            if isinstance(node, _DEFS):
                kind = "class" if isinstance(node, ast.ClassDef) else ("method" if in_class else "function")
                u = _Unit(start, end, kind, prefix + node.name, node)
            else:
                u = _Unit(start, end, other_kind, other_name)
            if units and u.l0 <= units[-1].l1:  # statements sharing a line ("x = 1; def f(): ...")
                prev = units[-1]
                prev.l1 = max(prev.l1, u.l1)
                if not prev.is_def and u.is_def:
                    prev.kind, prev.name = u.kind, u.name
                prev.node = None
                continue
            units.append(u)
        # lines between units: indented lines after a definition belong to it, comment lines right
        # above a unit belong to that unit, anything else becomes an "other" block
        out: list[_Unit] = []
        cursor = l0
        for k, u in enumerate(units + [None]):  # type: ignore[list-item]
            nxt_start = u.l0 if u is not None else l1 + 1
            if out and out[-1].is_def:
                last = out[-1].l1
                j = out[-1].l1 + 1
                indent = self.indent(out[-1].node.lineno)
                while j < nxt_start and (self.blank(j) or self.indent(j) > indent):
                    if not self.blank(j):
                        last = j
                    j += 1
                out[-1].l1 = last
                cursor = last + 1
            if u is not None:
                j = u.l0 - 1
                while j >= cursor and not self.blank(j) and self.line(j).lstrip().startswith("#"):
                    j -= 1
                u.l0 = j + 1
            gap_end = nxt_start - 1 if u is None else u.l0 - 1
            if any(not self.blank(j) for j in range(cursor, gap_end + 1)):
                out.append(_Unit(cursor, gap_end, other_kind, other_name))
            if u is not None:
                out.append(u)
                cursor = u.l1 + 1
        # group neighbouring "other" units up to size
        grouped: list[_Unit] = []
        for u in out:
            if (grouped and not u.is_def and not grouped[-1].is_def and grouped[-1].kind == u.kind
                    and (self.tokens(grouped[-1].l0, u.l1) <= self.size or self.is_header(grouped[-1]))):
                grouped[-1].l1 = u.l1
            else:
                grouped.append(u)
        return grouped

    def is_header(self, u: _Unit) -> bool:
        """A short block ending in ``:`` (a ``class X(...):`` line): it stays with what follows even
        when that is over size (the oversized block is then cut, the header going with its first part)."""
        return self.line(u.l1).rstrip().endswith(":") and self.tokens(u.l0, u.l1) <= 64

    def split_class(self, u: _Unit) -> list[_Unit] | None:
        node: ast.ClassDef = u.node
        if not node.body or node.body[0].lineno <= node.lineno:
            return None
        first_body = min([getattr(d, "lineno", node.body[0].lineno) for d in getattr(node.body[0], "decorator_list", [])]
                         + [node.body[0].lineno])
        header = "".join(self.line(k) for k in range(node.lineno, max(node.lineno, first_body - 1) + 1)).strip()
        subs = self.partition(node.body, u.l0, u.l1, u.name + ".", True, "class", u.name)
        for s in subs:
            s.meta["header"] = header
        return subs

    def units(self, tree: ast.Module) -> list[_Unit]:
        top = self.partition(tree.body, 1, len(self.L), "", False, "module", self.module)
        out: list[_Unit] = []
        todo = list(top)
        while todo:
            u = todo.pop(0)
            if isinstance(u.node, ast.ClassDef) and self.tokens(u.l0, u.l1) > self.size:
                subs = self.split_class(u)
                if subs and len(subs) > 1:
                    todo[:0] = subs
                    continue
            out.append(u)
        return out


@component("chunk.code", outputs={"chunks": list[Chunk]})
class CodeChunker(Chunker):
    """Source code cut where it makes sense.

    Python (``language`` "python", or "auto" with a ``.py`` path or none): one chunk per top-level
    function or class, from its first decorator (or the comment lines right above it) to its last
    line; the module docstring, imports and other top-level statements are grouped into "module"
    blocks up to ``size`` tokens. A class bigger than ``size`` is split per method (the class line,
    docstring and attributes make a "class" chunk; each method chunk carries the class line in
    ``meta["header"]``). Anything still bigger than ``size`` is split at blank lines, then lines.
    Other languages, and Python that does not parse, are cut at blank lines and the blocks grouped
    up to ``size`` tokens.

    ``meta``: ``path`` (the ``path`` parameter, else the document id), ``line`` / ``end_line``
    (1-based), ``kind`` ("function", "class", "method", "module", or "block" outside Python),
    ``name`` (qualified, e.g. ``"Pipeline.run"``; the module name for "module" blocks), ``language``.
    A chunk keeps the indentation of its first line."""

    def __init__(self, size: PositiveInt = 256, language: str = "auto", path: str = "", llm: OptionalLLMRef = None):
        check_size(size)
        if not isinstance(language, str) or not language.strip():
            e = SpecError(f"parameter 'language' must be 'auto', 'python' or another language name, got {language!r}.")
            e.param = "language"  # type: ignore[attr-defined]
            raise e
        self.size, self.language, self.path, self.llm = size, language.strip().lower(), path, llm

    def split(self, text: str, doc_id: str) -> list[Chunk]:
        counter = self.counter()
        p = counter.pieces(text)
        lines = LineIndex(text)
        path = self.path or doc_id
        language = guess_language(path, self.language)
        base = {"path": path, "language": language}
        tree = None
        if language == "python":
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                tree = None
        ranges: list[tuple[int, int, dict[str, Any]]] = []
        if tree is None:
            for a, b in block_ranges(p, 0, len(text), self.size):
                ranges.append((a, b, {**base, "kind": "block", "name": ""}))
        else:
            stem = posixpath.splitext(path.replace("\\", "/").rsplit("/", 1)[-1])[0] if path else ""
            py = _Python(text, lines, p, self.size, stem)
            for u in py.units(tree):
                a, b = lines.start(u.l0), lines.end(u.l1)
                meta = {**base, "kind": u.kind, "name": u.name, **u.meta}
                if p.tokens(a, b) <= self.size:
                    ranges.append((a, b, meta))
                else:
                    parts = block_ranges(p, a, b, self.size)
                    for k, (pa, pb) in enumerate(parts):
                        ranges.append((pa, pb, {**meta, "part": k} if len(parts) > 1 else meta))
        return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=self.size, strip=False, lines=lines)
