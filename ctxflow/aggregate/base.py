"""Shared helpers for answerers: unwrap scored chunks, pack under a token budget, cite."""
from __future__ import annotations

import re
from typing import Sequence, Union

from ..errors import ContextOverflowError, UserError
from ..llm.base import LLM
from ..types import Chunk, Citation, Scored

ChunkList = Union[list[Chunk], list[Scored[Chunk]]]
_W = re.compile(r"\w+", re.UNICODE)
_MARK = re.compile(r"[.!?\u3002\uff01\uff1f]")
_LINE = re.compile(r"[^\n]+")


def unwrap(items: Sequence[Chunk | Scored[Chunk]]) -> list[tuple[Chunk, float | None]]:
    out = []
    for it in items or []:
        if isinstance(it, Scored):
            out.append((it.item, it.score))
        elif isinstance(it, Chunk):
            out.append((it, None))
        else:
            raise UserError(f"expected chunks, got {type(it).__name__}.")
    return out


def in_order(chunks: Sequence[Chunk | Scored[Chunk]], max_chunks: int | None, order: str) -> tuple[list[Chunk], dict[str, float | None]]:
    """The first ``max_chunks`` chunks (all when None) and their incoming scores by chunk id;
    ``order="document"`` re-sorts them by position in the source, "score" keeps them as given."""
    items = unwrap(chunks)[: max_chunks or None]
    used = [c for c, _ in items]
    if order == "document":
        used = sorted(used, key=lambda c: (c.doc_id, c.start))
    return used, {c.id: s for c, s in items}


def check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise UserError("the question is empty: ask something, e.g. \"What does 'foo' mean?\".")
    return question.strip()


def budget_for(llm: LLM, template_tokens: int, max_new_tokens: int, reserve: float = 0.0) -> int:
    """Tokens left for context in one call: the model's window minus prompt and answer."""
    left = llm.context_length - template_tokens - max_new_tokens - int(reserve * llm.context_length)
    if left <= 0:
        raise ContextOverflowError(
            f"the prompt alone takes {template_tokens} tokens plus {max_new_tokens} for the answer, more than the model's "
            f"context of {llm.context_length}; shorten the question or lower max_new_tokens."
        )
    return left


_LABEL = re.compile(r"^\s*([A-Z][A-Za-z ]{0,24}):")


def echo_stops(template: str) -> list[str]:
    """Stop strings that end an answer where a small model starts echoing its prompt: a new line
    opening with one of the labels that introduce the template's inputs (``Context:`` before
    ``{context}``, ``Question: {question}``); labels that describe the expected output (``Sources:``)
    are not stops. At most 4 (the most an OpenAI-compatible server takes)."""
    lines = template.splitlines()
    labels = []
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        nxt = next((x for x in lines[i + 1:] if x.strip()), "")
        if m and any(f in line or f in nxt for f in ("{context}", "{question}")):
            labels.append(m.group(1))
    return sorted(f"\n{label}:" for label in dict.fromkeys(labels))[:4]


def pack(llm: LLM, chunks: list[Chunk], budget: int, sep: str = "\n\n") -> list[Chunk]:
    """The longest prefix of ``chunks`` whose texts joined by ``sep`` fit in ``budget`` tokens.
    A first chunk too long on its own is cut (with its offsets kept exact)."""
    used, out = 0, []
    sep_t = llm.count_tokens(sep) if sep.strip() else 1
    for c in chunks:
        n = llm.count_tokens(c.text)  # not c.n_tokens: the chunker may have counted with another tokenizer (or words)
        if used + n + (sep_t if out else 0) <= budget:
            out.append(c)
            used += n + (sep_t if len(out) > 1 else 0)
        elif not out:
            text = llm.truncate(c.text, budget)
            if text:
                out.append(c.model_copy(update={"text": text, "end": c.start + len(text), "n_tokens": llm.count_tokens(text)}))
            break
        else:
            break
    return out


def best_span(chunk: Chunk, answer: str, question: str = "") -> Citation:
    """Narrow a chunk to the sentence that best supports ``answer`` (exact source offsets).

    Scores each sentence by the answer's words it contains (question words count a little);
    falls back to the whole chunk when nothing matches."""
    aw = {w.lower() for w in _W.findall(answer) if len(w) > 1}
    qw = {w.lower() for w in _W.findall(question) if len(w) > 3}
    best, best_s = None, 0.0
    for a, b in citation_units(chunk.text):
        words = {w.lower() for w in _W.findall(chunk.text[a:b])}
        score = len(aw & words) + 0.3 * len(qw & words)
        if score > best_s:
            best, best_s = (a, b), score
    if best is None or not aw:
        return Citation.from_chunk(chunk)
    a, b = best
    cit = Citation.from_chunk(chunk)
    meta = {**cit.meta, "chunk": [chunk.start, chunk.end]}
    if isinstance(meta.get("line"), int):  # the chunk's line numbers, moved to the quoted sentence
        meta["line"] = chunk.meta["line"] + _newlines(chunk.text[:a])
        meta["end_line"] = meta["line"] + _newlines(chunk.text[a:max(a, b - 1)])
    return cit.model_copy(update={"start": chunk.start + a, "end": chunk.start + b, "text": chunk.text[a:b], "meta": meta})


def citation_units(text: str) -> list[tuple[int, int]]:
    """What a citation may quote: whole sentences (hard-wrapped prose stays one sentence across its
    line breaks), except that a run of lines without any sentence mark (records, list items, table
    rows) is one unit per line. Ranges are stripped and non-empty."""
    from ..chunking.base import strip_range
    from ..chunking.sentences import split_sentences

    out: list[tuple[int, int]] = []
    for s, e in split_sentences(text):
        if "\n" in text[s:e] and not _MARK.search(text, s, e):
            for m in _LINE.finditer(text, s, e):
                a, b = strip_range(text, m.start(), m.end())
                if b > a:
                    out.append((a, b))
        else:
            out.append((s, e))
    return out


def _newlines(text: str) -> int:
    """Line breaks in ``text`` (\n, \r\n or a lone \r each count once, as the chunkers count lines)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def support(chunk: Chunk, answer: str) -> float:
    """Share of the answer's words found in the chunk (0..1)."""
    aw = {w.lower() for w in _W.findall(answer) if len(w) > 1}
    if not aw:
        return 0.0
    words = {w.lower() for w in _W.findall(chunk.text)}
    return len(aw & words) / len(aw)
