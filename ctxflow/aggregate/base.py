"""Shared helpers for answerers: unwrap scored chunks, pack under a token budget, cite."""
from __future__ import annotations

import re
from typing import Any, Sequence, Union

from ..chunking.base import CJK_RUN
from ..errors import ContextOverflowError, UserError
from ..llm.base import LLM
from ..types import Chunk, Citation, Scored

ChunkList = Union[list[Chunk], list[Scored[Chunk]]]
_W = re.compile(r"\w+", re.UNICODE)
_CJK_SPLIT = re.compile(f"({CJK_RUN.pattern})")
_END_MARK = re.compile(r"(?:[.!?:;]|[\u3002\uff01\uff1f])[\"'\u2019\u201d)\]]*$")  # a line that ends a sentence
_LINE = re.compile(r"[^\r\n]+")


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


class SpanScores:
    """Incoming scores looked up by a chunk's span (document and offsets), not its id: after
    ``select.merge`` a bank's chunks and MemRecall's blocks can share ids (``#0``) while being
    different text. A piece of a chunk (cut to fit a window) gets the score of the chunk it lies in."""

    def __init__(self, items: Sequence[tuple[Chunk, float | None]]):
        self.items = [(c.doc_id, c.start, c.end, s) for c, s in items]

    def get(self, c: Chunk, default: float | None = None) -> float | None:
        for d, a, b, s in self.items:
            if d == c.doc_id and a == c.start and b == c.end:
                return s
        for d, a, b, s in self.items:
            if d == c.doc_id and a <= c.start < b:
                return s
        return default


def in_order(chunks: Sequence[Chunk | Scored[Chunk]], max_chunks: int | None, order: str) -> tuple[list[Chunk], SpanScores]:
    """The first ``max_chunks`` chunks (all when None) and their incoming scores;
    ``order="document"`` re-sorts them by position in the source, "score" keeps them as given."""
    items = unwrap(chunks)[: max_chunks or None]
    used = [c for c, _ in items]
    if order == "document":
        used = sorted(used, key=lambda c: (c.doc_id, c.start))
    return used, SpanScores(items)


def check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise UserError("the question is empty: ask something, e.g. \"What does 'foo' mean?\".")
    return question.strip()


def budget_for(llm: LLM, template_tokens: int, max_new_tokens: int, reserve: float = 0.0) -> int:
    """Tokens left for context in one call: the model's window minus prompt and answer, and one token
    of margin (``template_tokens`` is counted with an empty slot; text in the slot can change how the
    template's own characters around it are tokenized)."""
    left = llm.context_length - template_tokens - max_new_tokens - int(reserve * llm.context_length) - 1
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
        n = chunk_tokens(llm, c)
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


def chunk_tokens(llm: Any, c: Chunk) -> int:
    # counted with this model's tokenizer: a chunk's own n_tokens may come from another one (a chunker
    # given no llm counts words)
    return llm.count_tokens(c.text)


def split_to_fit(llm: Any, chunk: Chunk, budget: int) -> list[Chunk]:
    """``chunk`` cut into consecutive pieces of at most ``budget`` tokens (exact offsets)."""
    if chunk_tokens(llm, chunk) <= budget:
        return [chunk]
    out, text, start = [], chunk.text, chunk.start
    while text.strip():
        piece = llm.truncate(text, budget) or text[:1]
        meta = dict(chunk.meta)
        if isinstance(meta.get("line"), int):  # the piece's own lines, counted from the chunk's first line
            meta["line"] = chunk.meta["line"] + _newlines(chunk.text[:start - chunk.start])
            meta["end_line"] = meta["line"] + _newlines(piece[:max(0, len(piece.rstrip()) - 1)])
        out.append(chunk.model_copy(update={"start": start, "end": start + len(piece), "text": piece, "meta": meta,
                                            "n_tokens": llm.count_tokens(piece)}))
        start, text = start + len(piece), text[len(piece):]
    return out


def best_span(chunk: Chunk, answer: str, question: str = "") -> Citation:
    """Narrow a chunk to the sentence that best supports ``answer`` (exact source offsets).

    Scores each sentence by the answer's words it contains (question words count a little);
    falls back to the whole chunk when nothing matches."""
    aw, qw = terms(answer, 2), terms(question, 4)
    best, best_s = None, 0.0
    for a, b in citation_units(chunk.text):
        words = terms(chunk.text[a:b])
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


def terms(text: str, min_len: int = 1) -> set[str]:
    """Lower-cased words of ``text`` (at least ``min_len`` characters) for overlap scores; Chinese,
    Japanese and Korean runs, written without spaces, give their character pairs instead."""
    out: set[str] = set()
    for w in _W.findall(text.lower()):
        if not CJK_RUN.search(w):
            if len(w) >= min_len:
                out.add(w)
            continue
        for part in _CJK_SPLIT.split(w):
            if CJK_RUN.fullmatch(part):
                out.update([part] if len(part) == 1 else (part[i:i + 2] for i in range(len(part) - 1)))
            elif len(part) >= min_len:
                out.add(part)
    return out


def citation_units(text: str) -> list[tuple[int, int]]:
    """What a citation may quote: whole sentences, where hard-wrapped prose stays one sentence across
    its line breaks. A sentence spanning lines is still cut at a line that ends with a sentence mark
    (glossaries, "key: value." lists), at a line much shorter than the longest (a title, a short list
    item: wrapped prose fills its lines), and into single lines when no line ends a sentence (records,
    table rows). ``\n``, ``\r\n`` and a lone ``\r`` all end lines. Ranges are stripped and non-empty."""
    from ..chunking.base import strip_range
    from ..chunking.sentences import split_sentences

    out: list[tuple[int, int]] = []
    for s, e in split_sentences(text):
        lines = [strip_range(text, m.start(), m.end()) for m in _LINE.finditer(text, s, e)]
        lines = [(a, b) for a, b in lines if b > a]
        if len(lines) < 2:
            out.append((s, e))
            continue
        ends = [bool(_END_MARK.search(text[a:b])) for a, b in lines]
        if not any(ends):  # records: one unit per line
            out.extend(lines)
            continue
        # widths of whole lines of the text (a sentence may start mid-line), indentation left out
        width = [b - _line_start(text, a) - _indent(text, _line_start(text, a)) for a, b in lines]
        longest = max(width)
        start = lines[0][0]
        for i, (a, b) in enumerate(lines):
            last = i == len(lines) - 1
            if last or ends[i] or width[i] < 0.6 * longest:
                out.append((start, b))
                if not last:
                    start = lines[i + 1][0]
    return out


def _line_start(text: str, pos: int) -> int:
    return max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1


def _indent(text: str, pos: int) -> int:
    n = pos
    while n < len(text) and text[n] in " \t":
        n += 1
    return n - pos


def _newlines(text: str) -> int:
    """Line breaks in ``text`` (\n, \r\n or a lone \r each count once, as the chunkers count lines)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def support(chunk: Chunk, answer: str) -> float:
    """Share of the answer's words found in the chunk (0..1)."""
    aw = terms(answer, 2)
    if not aw:
        return 0.0
    words = terms(chunk.text)
    return len(aw & words) / len(aw)
