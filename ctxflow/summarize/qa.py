"""Question answering over a codebase with ``path:line`` citations.

* ``code.read`` — walks a folder (the rules of :mod:`ctxflow.summarize.walk`) and cuts every file
  with ``chunk.code`` (Python by ``ast``: one chunk per function or class; other files by blank-line
  blocks). Chunk ``doc_id`` and ``meta["path"]`` are the file's path as given (e.g.
  ``ctxflow/graph/spec.py``), ``meta["line"]``/``meta["end_line"]`` its lines.
* ``code.answer`` — puts the best chunks, each headed ``path:line-end (kind name)``, into one
  prompt under the model's budget and answers. Its citations are those chunks with exact file
  offsets and line numbers, ordered by retrieval score; among chunks scored within 10% of the best,
  those whose function/class (then file) the answer names come first; at equal scores a
  definition goes before a module block. The answer text ends with the top citation's ``path:line`` so even a weak
  model's answer says where to look.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..aggregate.base import ChunkList, budget_for, check_question, unwrap
from ..graph.component import OptionalLLMRef
from ..graph.params import PositiveInt, check_template
from ..chunking.code import CodeChunker
from ..errors import UserError
from ..graph.component import Component, LLMRef, component
from ..types import Answer, Chunk, Citation
from ..io import read_source_text
from .code import language_of, rel_display
from .fold import clean
from .walk import walk_codebase

PROMPT = (
    "Answer the question about the code below. Say which function or class does it, and in which file.\n\n"
    "{context}\n\nQuestion: {question}"
)


def header(c: Chunk) -> str:
    m = c.meta
    what = f" ({m.get('kind')} {m.get('name')})" if m.get("name") else ""
    return f"### {m.get('path', c.doc_id)}:{m.get('line', '?')}-{m.get('end_line', '?')}{what}"


@component("code.read", outputs={"chunks": list[Chunk], "files": list[str]})
class CodeRead(Component):
    """A folder -> code chunks of every kept file (``size`` tokens at most, counted with ``llm``)."""

    def __init__(self, size: PositiveInt = 256, max_bytes: PositiveInt = 200_000, llm: OptionalLLMRef = None):
        if size < 32:
            raise UserError(f"size must be at least 32 tokens, got {size}.")
        self.size, self.max_bytes, self.llm = size, max_bytes, llm

    def run(self, path: str) -> dict:
        if not isinstance(path, str) or not path.strip():
            raise UserError("code.read needs the path of a codebase folder.")
        walk = walk_codebase(path, self.max_bytes)
        display = Path(path).as_posix().rstrip("/") or "."
        llm = None if isinstance(self.llm, str) else self.llm
        chunks: list[Chunk] = []
        for rel in walk.files:
            text = read_source_text(walk.root / rel)  # exact: BOM dropped, CRLF kept
            shown = rel_display(display, rel)
            lang = "python" if language_of(rel) == "python" else "text"
            chunks.extend(CodeChunker(size=self.size, language=lang, path=shown, llm=llm).split(text, shown))
        if not chunks:
            raise UserError(f"{path}: no source files to read ({len(walk.skipped)} paths skipped).")
        return {"chunks": chunks, "files": [rel_display(display, r) for r in walk.files]}


@component("code.answer", outputs={"answer": Answer})
class CodeAnswer(Component):
    """Answer from code chunks with ``path:line`` citations (see the module doc)."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 96, max_chunks: PositiveInt = 6, prompt: str = PROMPT):
        check_template("prompt", prompt, ("context", "question"))
        self.llm, self.max_new_tokens, self.max_chunks, self.prompt = llm, max_new_tokens, max_chunks, prompt

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        items = unwrap(chunks)[: self.max_chunks]
        if not items:
            return {"answer": Answer(text="No code matched the question.", trace={"strategy": "code.answer", "chunks_used": 0})}
        base = llm.prompt_tokens(self.prompt.format(context="", question=question))  # type: ignore[union-attr]
        budget = budget_for(llm, base, self.max_new_tokens)  # type: ignore[arg-type]
        used, blocks, spent = [], [], 0
        for c, s in items:
            block = f"{header(c)}\n{c.text.rstrip()}"
            n = llm.count_tokens(block) + 2  # type: ignore[union-attr]
            if spent + n > budget:
                if not used:
                    block = llm.truncate(block, budget)  # type: ignore[union-attr]
                    used.append((c, s))
                    blocks.append(block)
                break
            used.append((c, s))
            blocks.append(block)
            spent += n
        gen = llm.generate([self.prompt.format(context="\n\n".join(blocks), question=question)], max_new_tokens=self.max_new_tokens)[0]  # type: ignore[union-attr]
        text = clean(gen.text, max_sentences=4) or gen.text.strip()
        low = text.lower()

        def mention(c: Chunk) -> int:
            """0: the answer names the chunk's function or class; 1: only its file; 2: neither."""
            name = str(c.meta.get("name") or "").rsplit(".", 1)[-1] if c.meta.get("kind") != "module" else ""
            base_name = str(c.meta.get("path", "")).rsplit("/", 1)[-1]
            if name and re.search(rf"\b{re.escape(name.lower())}\b", low):
                return 0
            return 1 if base_name and base_name.lower() in low else 2

        def specific(c: Chunk) -> int:
            return 0 if c.meta.get("kind") in ("function", "method", "class") else 1

        # retrieval decides; the answer only reorders chunks retrieved about as well as the best
        # (score >= 90% of the top: a small model also names code it was shown but that does not
        # answer); at equal scores a definition goes before a module/block chunk (more precise)
        best = max((s or 0.0) for _, s in used)

        def close(s: float | None) -> bool:
            return s is None or best <= 0 or s >= 0.9 * best

        ranked = sorted(range(len(used)), key=lambda i: (not close(used[i][1]), mention(used[i][0]) if close(used[i][1]) else 2,
                                                         -(used[i][1] or 0.0), specific(used[i][0]), i))
        citations = []
        for i in ranked:
            c, s = used[i]
            meta = {k: c.meta[k] for k in ("path", "line", "end_line", "name", "kind") if k in c.meta}
            citations.append(Citation(doc_id=c.doc_id, start=c.start, end=c.end, text=c.text, score=s, meta=meta))
        top = citations[0].meta
        where = f"{top.get('path')}:{top.get('line')}"
        if where not in text:
            text = f"{text}\n(see {where}" + (f", {top['name']}" if top.get("name") else "") + ")"
        return {"answer": Answer(text=text, citations=citations,
                                 trace={"strategy": "code.answer", "chunks_used": len(used), "chunks_given": len(items)})}
