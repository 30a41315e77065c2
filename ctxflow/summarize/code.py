"""``summarize.code``: a codebase summarized file -> folder -> repository, as Markdown.

1. **walk** — :func:`~ctxflow.summarize.walk.walk_codebase` keeps the text sources (``.gitignore``
   respected; binaries, vendored and generated files skipped and reported).
2. **facts** — every file gets a deterministic outline (Python through ``ast``: module docstring,
   functions, classes, methods with signatures and line numbers; Markdown headings).
3. **chunks** — a file longer than the file budget is cut by ``chunk.code`` (Python: one chunk per
   function or class; other languages: blank-line blocks) and each chunk gets a one-sentence note.
4. **files** — one call per file: its names, then its source (or, when too long, its chunk notes).
5. **folders** — bottom-up, deepest first: a folder's summary folds its files' and sub-folders'
   summaries; the root folder's summary is the repository's.

The Markdown puts the model's prose beside the outline facts, with ``path:line`` references, so
it is useful with the 135M default model and better with a bigger one. Budgets come from the
model's context; every call goes through the LLM-call cache (a rerun resumes).
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chunking.code import CodeChunker, guess_language
from ..errors import UserError
from ..graph.component import Component, LLMRef, component
from ..graph.params import PositiveInt
from ..io import read_source_text
from .fold import Summarizer
from .outline import Outline, outline_for
from .walk import walk_codebase

CHUNK_PROMPT = "Here is part of the file {path}:\n\n{text}\n\nIn one sentence, say what this code does."
FILE_PROMPT = (
    "Here is the file {path}.{names}\n\n{text}\n\n"
    "In 2 or 3 sentences, say what this file is for. Name its main functions and classes."
)
FOLDER_PROMPT = (
    "The folder {path} contains these files and folders:\n{text}\n\n"
    "In 2 or 3 sentences, say what this folder is for."
)
_LANG_OF_EXT = {".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text", ".yaml": "yaml", ".yml": "yaml",
                ".toml": "toml", ".json": "json", ".cfg": "ini", ".ini": "ini", ".sh": "shell"}


@dataclass
class FileInfo:
    path: str  # relative to the root, POSIX
    text: str
    language: str
    outline: Outline
    tokens: int = 0
    notes: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""


def language_of(path: str) -> str:
    ext = posixpath.splitext(path)[1].lower()
    if ext in _LANG_OF_EXT:
        return _LANG_OF_EXT[ext]
    if ext == "":
        return "text"
    return guess_language(path)


def short(text: str, n: int = 110) -> str:
    first = text.split(". ")[0].strip()
    first = first if first.endswith(".") else first + "."
    return first if len(first) <= n else first[: n - 3].rstrip() + "..."


@component("summarize.code", outputs={"summary": str, "report": dict})
class CodeSummary(Component):
    """Hierarchical summary of a codebase folder (see the module doc).

    ``file_tokens``: most tokens of source per file call (default ``context_length // 4``);
    ``chunk_tokens``: size of ``chunk.code`` chunks for longer files; ``max_new_tokens``: length of
    each summary; ``max_bytes``: bigger files are skipped; ``max_files``: a safety bound."""

    def __init__(self, llm: LLMRef = "llm", file_tokens: PositiveInt | None = None, chunk_tokens: PositiveInt = 512, max_new_tokens: PositiveInt = 80,
                 max_bytes: PositiveInt = 200_000, max_files: PositiveInt = 2000, step: PositiveInt = 16):
        if chunk_tokens < 32:
            raise UserError(f"chunk_tokens must be at least 32, got {chunk_tokens}.")
        if file_tokens is not None and file_tokens < 64:
            raise UserError(f"file_tokens must be at least 64 (or left out), got {file_tokens}.")
        self.llm, self.file_tokens, self.chunk_tokens, self.max_new_tokens = llm, file_tokens, chunk_tokens, max_new_tokens
        self.max_bytes, self.max_files, self.step = max_bytes, max_files, step

    def run(self, path: str) -> dict:
        llm = self.llm
        walk = walk_codebase(path, self.max_bytes)
        if not walk.files:
            raise UserError(f"{path}: no source files to summarize ({len(walk.skipped)} skipped: "
                            f"{walk.skipped_by_reason() or 'the folder is empty'}).")
        if len(walk.files) > self.max_files:
            raise UserError(f"{path}: {len(walk.files)} files, more than max_files={self.max_files}; summarize a sub-folder "
                            "or raise max_files.")
        display = Path(path).as_posix().rstrip("/") or "."
        sm = Summarizer(llm, self.max_new_tokens, self.file_tokens, self.step)
        files: list[FileInfo] = []
        for rel in walk.files:
            text = read_source_text(walk.root / rel)  # exact: BOM dropped, CRLF kept
            lang = language_of(rel)
            files.append(FileInfo(rel, text, lang, outline_for(text, rel, lang), llm.count_tokens(text)))  # type: ignore[union-attr]

        # chunks of long files -> one-sentence notes
        budget = sm.budget(FILE_PROMPT, path="x" * 40, names=" " * 200)
        chunk_budget = sm.budget(CHUNK_PROMPT, path="x" * 40)
        chunk_jobs: list[tuple[FileInfo, Any]] = []
        for f in files:
            if f.tokens > budget:
                chunker = CodeChunker(size=min(self.chunk_tokens, chunk_budget), language="python" if f.language == "python" else "text",
                                      path=rel_display(display, f.path), llm=llm)
                for c in chunker.split(f.text, f.path):
                    chunk_jobs.append((f, c))
        if chunk_jobs:
            prompts = [CHUNK_PROMPT.format(path=rel_display(display, f.path), text=sm.fit(c.text, chunk_budget)) for f, c in chunk_jobs]
            for (f, c), out in zip(chunk_jobs, sm.many(prompts, f"chunks of long files ({len(chunk_jobs)})", 48)):
                f.notes.append({"line": c.meta.get("line"), "end_line": c.meta.get("end_line"), "name": c.meta.get("name", ""),
                                "kind": c.meta.get("kind", ""), "summary": out})

        # files
        prompts = []
        for f in files:
            names = f.outline.public_names()
            names_txt = f" It defines: {', '.join(names[:30])}." if names else ""
            if f.notes:
                body = (f.outline.text() + "\n\n" if f.outline.symbols else "") + "\n".join(
                    f"- lines {n['line']}-{n['end_line']} {n['name']}: {n['summary']}" for n in f.notes)
            else:
                body = f.text
            prompts.append(FILE_PROMPT.format(path=rel_display(display, f.path), names=names_txt, text=sm.fit(body, budget)))
        for f, out in zip(files, sm.many(prompts, f"files ({len(files)})")):
            f.summary = out

        # folders, deepest first; the root ("") last
        dirs: dict[str, list[str]] = {"": []}
        for f in files:
            parts = f.path.split("/")[:-1]
            for i in range(len(parts)):
                dirs.setdefault("/".join(parts[: i + 1]), [])
        dir_summary: dict[str, str] = {}
        for depth in sorted({0 if d == "" else d.count("/") + 1 for d in dirs}, reverse=True):
            level = [d for d in dirs if (0 if d == "" else d.count("/") + 1) == depth]
            items = []
            for d in level:
                entries = [f"{posixpath.basename(f.path)}: {f.summary or '(no summary)'}" for f in files if posixpath.dirname(f.path) == d]
                entries += [f"{posixpath.basename(s)}/: {dir_summary[s]}" for s in sorted(dirs)
                            if s and posixpath.dirname(s) == d and dir_summary.get(s)]
                items.append((d, entries))
            folded = sm.fold(items, FOLDER_PROMPT, f"folders at depth {depth}",
                             fields=lambda k: {"path": rel_display(display, k) + "/"})
            for (d, entries), text in zip(items, folded):
                # a folder with one entry: its summary is that entry's (no call was made)
                dir_summary[d] = text.split(": ", 1)[1] if len(entries) == 1 and ": " in text else text
        report = {"root": display, "model": getattr(llm, "model_id", "llm"), "calls": sm.calls,
                  "files": [{"path": f.path, "language": f.language, "lines": f.outline.lines, "tokens": f.tokens,
                             "summary": f.summary, "public_names": f.outline.public_names(), "module_doc": f.outline.doc,
                             "symbols": [_sym(s) for s in f.outline.symbols], "notes": f.notes} for f in files],
                  "folders": {rel_display(display, d) + "/": s for d, s in sorted(dir_summary.items())},
                  "skipped": [{"path": p, "reason": r} for p, r in walk.skipped],
                  "skipped_by_reason": walk.skipped_by_reason(),
                  "tokens": sum(f.tokens for f in files)}
        from .render import render_code

        return {"summary": render_code(report), "report": report}


def rel_display(display: str, rel: str) -> str:
    if not rel:
        return display
    return rel if display in (".", "") else f"{display}/{rel}"


def _sym(s) -> dict[str, Any]:
    return {"kind": s.kind, "name": s.name, "line": s.line, "end_line": s.end_line, "signature": s.signature, "doc": s.doc,
            "public": s.public, "children": [_sym(c) for c in s.children]}
