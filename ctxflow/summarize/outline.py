"""Deterministic facts about a source file, read with ``ast`` (Python) or simple rules (Markdown).

These facts (names, signatures, first docstring lines, line numbers) go into the summary beside
the model's prose: they are right whatever the model's size, so a codebase summary is useful
even with a 135M model, and they let a coverage measure tell the model's prose apart from them.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ..chunking.base import LineIndex
from ..chunking.markdown import find_headings


@dataclass
class Symbol:
    """A definition: ``kind`` is "function", "class", "method" or "heading"."""

    kind: str
    name: str
    line: int
    end_line: int
    signature: str = ""
    doc: str = ""
    children: list["Symbol"] = field(default_factory=list)

    @property
    def public(self) -> bool:
        return not self.name.rsplit(".", 1)[-1].startswith("_")


@dataclass
class Outline:
    """What a file defines. ``doc`` is the module docstring's first paragraph (Python)."""

    path: str
    language: str
    lines: int
    doc: str = ""
    symbols: list[Symbol] = field(default_factory=list)
    parsed: bool = True

    def public_names(self) -> list[str]:
        """Public top-level functions and classes (what the coverage measure counts)."""
        return [s.name for s in self.symbols if s.kind in ("function", "class") and s.public]

    def text(self, max_items: int = 40) -> str:
        """A compact plain-text listing, for prompts (``def name(sig)  # doc``)."""
        out = []
        if self.doc:
            out.append(f'"""{self.doc}"""')
        for s in self.symbols[:max_items]:
            if s.kind == "heading":
                out.append(f"{'#' * int(s.signature or 1)} {s.name}")
                continue
            kw = "class" if s.kind == "class" else "def"
            out.append(f"{kw} {s.name}{s.signature}" + (f"  # {s.doc}" if s.doc else ""))
            for c in s.children[:12]:
                if c.public:
                    out.append(f"    def {c.name.rsplit('.', 1)[-1]}{c.signature}" + (f"  # {c.doc}" if c.doc else ""))
        return "\n".join(out)


def first_paragraph(doc: str | None, limit: int = 200) -> str:
    if not doc:
        return ""
    para = doc.strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    return para if len(para) <= limit else para[: limit - 3].rstrip() + "..."


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    try:
        sig = f"({ast.unparse(node.args)})"
        if node.returns is not None:
            sig += f" -> {ast.unparse(node.returns)}"
    except Exception:  # pragma: no cover - ast.unparse handles every parsed tree
        sig = "(...)"
    return sig if len(sig) <= 160 else sig[:157] + "..."


def _class_sig(node: ast.ClassDef) -> str:
    bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
    return f"({', '.join(bases)})" if bases else ""


def _start(node: ast.AST) -> int:
    return min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])  # type: ignore[attr-defined]


def python_outline(text: str, path: str) -> Outline:
    n_lines = count_lines(text)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Outline(path, "python", n_lines, parsed=False)
    out = Outline(path, "python", n_lines, doc=first_paragraph(ast.get_docstring(tree)))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.symbols.append(Symbol("function", node.name, _start(node), node.end_lineno or node.lineno,
                                      _signature(node), first_paragraph(ast.get_docstring(node), 120)))
        elif isinstance(node, ast.ClassDef):
            cls = Symbol("class", node.name, _start(node), node.end_lineno or node.lineno, _class_sig(node),
                         first_paragraph(ast.get_docstring(node), 120))
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    cls.children.append(Symbol("method", f"{node.name}.{sub.name}", _start(sub), sub.end_lineno or sub.lineno,
                                               _signature(sub), first_paragraph(ast.get_docstring(sub), 100)))
            out.symbols.append(cls)
    return out


def count_lines(text: str) -> int:
    """Lines as ``wc -l`` counts them, plus a last line without a line break (\r\n and a lone \r end lines too)."""
    n = len(LineIndex(text))
    return n - 1 if text.endswith(("\n", "\r")) else n


def markdown_outline(text: str, path: str) -> Outline:
    index = LineIndex(text)
    out = Outline(path, "markdown", count_lines(text))
    for h in find_headings(text):
        if h.title:
            line = index.line(h.start)
            out.symbols.append(Symbol("heading", h.title, line, line, signature=str(h.level)))
    return out


def outline_for(text: str, path: str, language: str) -> Outline:
    if language == "python":
        return python_outline(text, path)
    if language == "markdown":
        return markdown_outline(text, path)
    return Outline(path, language, count_lines(text))
