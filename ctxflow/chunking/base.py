"""Shared machinery of the chunkers.

Every chunker works on *character ranges* of the source and only ever slices the source at the
end, so ``source[c.start:c.end] == c.text`` holds by construction. Sizes are measured in tokens:

* :class:`TokenCounter` wraps an :class:`~ctxflow.llm.base.LLM` (its ``count_tokens`` and
  ``token_spans``) or, without one, a regex tokenizer (words and single punctuation marks, as
  ``LLM.token_spans``'s fallback, except that each CJK character is a token);
* :class:`Pieces` is the document cut into *pieces*: one per token start, each stripped of
  whitespace, so consecutive pieces are separated by whitespace only and together they hold
  every non-whitespace character (whatever the tokenizer's offsets look like: leading spaces,
  overlapping byte-level tokens, skipped characters). A piece weighs the number of tokens that
  start in it (at least 1); when the LLM has no offsets of its own (it keeps ``LLM.token_spans``'s
  word fallback) words are weighed by the model's average tokens per word in the document.
  ``Pieces.tokens(a, b)`` weighs a range in O(log n);
* :func:`token_windows` and :func:`recursive_ranges` split ranges; :func:`build_chunks` strips
  ranges, drops empty ones, re-splits any chunk whose own token count (``llm.count_tokens`` of
  its text) exceeds the size, numbers them and attaches line numbers.
"""
from __future__ import annotations

import bisect
import re
from typing import Any, Iterable, Sequence

from ..errors import SpecError, UserError
from ..graph.component import Component
from ..llm.base import LLM
from ..types import Chunk

#: an optional LLM reference: a model name (bound by the pipeline), an LLM object, or None for
#: the built-in regex tokenizer. (``LLMRef | None`` would hide the reference from
#: ``resource_params``, which only looks at the top-level annotation.)

#: Han ideographs and kana: scripts written without spaces, one token per character
_CJK = "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
#: the fallback tokenizer: runs of word characters, one CJK character, or one other non-space
#: character (``LLM.token_spans``'s rule, except that a run of CJK text is not one huge "word")
_FALLBACK = re.compile(rf"[^\W{_CJK}]+|[{_CJK}]|[^\w\s]")
#: a run of CJK characters (lexical search and overlap scores split it into characters and pairs)
CJK_RUN = re.compile(f"[{_CJK}]+")
_NONSPACE = re.compile(r"\S")
_NEWLINE = re.compile(r"\r\n|\r|\n")

Range = tuple[int, int]


def fallback_spans(text: str) -> list[Range]:
    """Character spans of the regex tokenizer's tokens."""
    return [m.span() for m in _FALLBACK.finditer(text)]


def strip_range(text: str, a: int, b: int) -> Range:
    """``(a, b)`` shrunk so that ``text[a:b]`` has no leading or trailing whitespace (may be empty)."""
    seg = text[a:b]
    left = len(seg) - len(seg.lstrip())
    if left == len(seg):
        return a, a
    right = len(seg) - len(seg.rstrip())
    return a + left, b - right


class Pieces:
    """The document as whitespace-separated pieces, one per token start (see module doc)."""

    def __init__(self, text: str, starts: list[int], ends: list[int], weights: list[int]):
        self.text = text
        self.starts, self.ends = starts, ends
        self.cum = [0]
        for w in weights:
            self.cum.append(self.cum[-1] + w)

    @classmethod
    def from_spans(cls, text: str, spans: Iterable[Sequence[int]]) -> "Pieces":
        n = len(text)
        m = _NONSPACE.search(text)
        if m is None:
            return cls(text, [], [], [])
        first = m.start()
        counts: dict[int, int] = {first: 0}
        for sp in spans:
            s, e = int(sp[0]), int(sp[1])
            if e <= s or s >= n:
                continue  # empty (special) tokens and out-of-range offsets
            s = max(s, first)
            counts[s] = counts.get(s, 0) + 1
        bounds = sorted(counts)
        starts: list[int] = []
        ends: list[int] = []
        weights: list[int] = []
        carry = 0
        for i, b0 in enumerate(bounds):
            b1 = bounds[i + 1] if i + 1 < len(bounds) else n
            s, e = strip_range(text, b0, b1)
            w = counts[b0] + carry
            if e <= s:  # a whitespace-only token: its weight goes to the next piece
                carry = w
                continue
            carry = 0
            starts.append(s)
            ends.append(e)
            weights.append(max(1, w))
        if carry and weights:
            weights[-1] += carry
        return cls(text, starts, ends, weights)

    def __len__(self) -> int:
        return len(self.starts)

    def rescale(self, factor: float) -> None:
        """Multiply every piece's weight by ``factor`` (weights become floats)."""
        if factor > 0 and factor != 1:
            self.cum = [c * factor for c in self.cum]

    def index_range(self, a: int, b: int) -> Range:
        """Indices ``[i, j)`` of the pieces that overlap the character range ``[a, b)``."""
        i = bisect.bisect_right(self.ends, a)
        j = bisect.bisect_left(self.starts, b)
        return i, max(i, j)

    def weight(self, i: int, j: int) -> float:
        return self.cum[j] - self.cum[i] if j > i else 0

    def tokens(self, a: int, b: int) -> float:
        """Tokens of the pieces overlapping ``[a, b)`` (a piece cut by the range counts whole)."""
        return self.weight(*self.index_range(a, b))

    def glued(self, j: int) -> bool:
        """True when pieces ``j-1`` and ``j`` touch (no whitespace between: cutting there splits a word)."""
        return 0 < j < len(self.starts) and self.starts[j] == self.ends[j - 1]


class TokenCounter:
    """Counts tokens with an LLM's tokenizer, or with the regex fallback when ``llm`` is None."""

    def __init__(self, llm: LLM | None = None):
        if isinstance(llm, str):
            raise UserError(
                f"the chunker's llm {llm!r} names a model that was not bound: run the chunker inside a Pipeline "
                f"that declares model {llm!r}, or pass an LLM object (or None for the built-in word tokenizer)."
            )
        self.llm = llm

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.llm is not None:
            return int(self.llm.count_tokens(text))
        return sum(1 for _ in _FALLBACK.finditer(text))

    def spans(self, text: str) -> list[Range]:
        if self.llm is not None:
            return [(int(s), int(e)) for s, e in self.llm.token_spans(text)]
        return fallback_spans(text)

    @property
    def has_offsets(self) -> bool:
        """Does the LLM report its own token offsets (rather than the base class's word fallback)?"""
        return self.llm is not None and getattr(type(self.llm), "token_spans", None) is not LLM.token_spans

    def pieces(self, text: str) -> Pieces:
        p = Pieces.from_spans(text, self.spans(text))
        if self.llm is not None and not self.has_offsets and len(p):
            # word-level offsets but the model's own counts: weigh each word by the document's
            # average tokens per word, so windows come out near ``size`` real tokens
            p.rescale(self.count(text) / p.cum[-1])
        return p


def _snap(p: Pieces, j: int, lo: int, hi: int, reach: int, backward: bool) -> int:
    """Move boundary ``j`` (between pieces j-1 and j) to a nearby whitespace gap, within ``[lo, hi]``."""
    if not p.glued(j):
        return j
    rng = range(j - 1, max(lo, j - reach) - 1, -1) if backward else range(j + 1, min(hi, j + reach) + 1)
    for k in rng:
        if not p.glued(k):
            return k
    return j


def token_windows(p: Pieces, i0: int, i1: int, size: int, overlap: int = 0) -> list[Range]:
    """Windows ``[i, j)`` of piece indices over ``[i0, i1)``: at most ``size`` tokens each (a single
    heavier piece stands alone), consecutive windows sharing about ``overlap`` tokens. A boundary that
    would cut a word moves to a whitespace gap when one is within an eighth of the window."""
    out: list[Range] = []
    i = i0
    cum = p.cum
    while i < i1:
        j = bisect.bisect_right(cum, cum[i] + size, i + 1, i1 + 1) - 1
        j = max(j, i + 1)
        if j < i1:
            j = _snap(p, j, i + 1, j, max(1, (j - i) // 8), backward=True)
        out.append((i, j))
        if j >= i1:
            break
        if overlap > 0:
            k = bisect.bisect_left(cum, cum[j] - overlap, i + 1, j)
            k = _snap(p, k, i + 1, j - 1, max(1, (j - k) // 4), backward=False) if k < j else k
            i = k
        else:
            i = j
    return out


def window_ranges(p: Pieces, a: int, b: int, size: int, overlap: int = 0) -> list[Range]:
    """Character ranges of :func:`token_windows` over the pieces of ``[a, b)``, clipped to it."""
    i0, i1 = p.index_range(a, b)
    return [(max(a, p.starts[i]), min(b, p.ends[j - 1])) for i, j in token_windows(p, i0, i1, size, overlap)]


#: LangChain's default separators; "" means "between tokens" here (never inside a token)
DEFAULT_SEPARATORS = ["\n\n", "\n", ". ", " ", ""]


def split_units(p: Pieces, a: int, b: int, size: int, seps: Sequence[str]) -> list[Range]:
    text = p.text
    if p.tokens(a, b) <= size:
        return [(a, b)]
    for idx, sep in enumerate(seps):
        if sep == "":
            return window_ranges(p, a, b, size)
        pos = text.find(sep, a, b)
        if pos < 0:
            continue
        out: list[Range] = []
        s = a
        while pos >= 0:
            e = pos + len(sep)  # the separator stays with the part before it
            parts = [(s, e)]
            s = e
            pos = text.find(sep, s, b)
            if pos < 0 and s < b:
                parts.append((s, b))
            for ps, pe in parts:
                if not text[ps:pe].strip():
                    continue
                if p.tokens(ps, pe) <= size:
                    out.append((ps, pe))
                else:
                    out.extend(split_units(p, ps, pe, size, seps[idx + 1:]))
        return out
    return window_ranges(p, a, b, size)


def merge_units(p: Pieces, units: Sequence[Range], size: int, overlap: int = 0) -> list[Range]:
    """Greedily merge consecutive ranges up to ``size`` tokens; each new chunk starts with the tail of
    the previous one, as many whole units as fit in ``overlap`` tokens (LangChain's merge)."""
    out: list[Range] = []
    cur: list[Range] = []
    h = 0  # cur[h:] is the current group
    for u in units:
        if len(cur) > h and p.tokens(cur[h][0], u[1]) > size:
            out.append((cur[h][0], cur[-1][1]))
            while len(cur) > h and (p.tokens(cur[h][0], cur[-1][1]) > overlap or p.tokens(cur[h][0], u[1]) > size):
                h += 1
        cur.append(u)
    if len(cur) > h:
        out.append((cur[h][0], cur[-1][1]))
    return out


def recursive_ranges(p: Pieces, a: int, b: int, size: int, overlap: int = 0,
                     separators: Sequence[str] = DEFAULT_SEPARATORS) -> list[Range]:
    """LangChain-style recursive splitting of ``[a, b)``: cut at the first separator that occurs,
    recurse into parts still too big with the next separators, then merge the parts back up to
    ``size`` tokens with ``overlap``. Offsets stay exact: parts are contiguous ranges."""
    units = split_units(p, a, b, size, list(separators))
    return merge_units(p, units, size, overlap)


class LineIndex:
    """1-based line numbers of character offsets (``\\n``, ``\\r\\n`` and ``\\r`` end lines, as in Python)."""

    def __init__(self, text: str):
        self.text = text
        self.starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]

    def line(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def __len__(self) -> int:
        return len(self.starts)

    def start(self, line: int) -> int:
        """Offset of the first character of 1-based ``line`` (``len(text)`` past the end)."""
        if line < 1:
            return 0
        return self.starts[line - 1] if line <= len(self.starts) else len(self.text)

    def end(self, line: int) -> int:
        """Offset just past ``line``'s line break."""
        return self.starts[line] if line < len(self.starts) else len(self.text)


def _fit(text: str, counter: TokenCounter, p: Pieces, a: int, b: int, size: int) -> list[Range]:
    """Split ``[a, b)`` so each part's own token count is <= size (needed only when the tokenizer
    counts a slice differently from the document's tokenization)."""
    out: list[Range] = []
    i, i1 = p.index_range(a, b)
    while i < i1:
        lo, hi = i + 1, i1  # find the largest j with count(pieces[i:j]) <= size
        if counter.count(text[p.starts[i]:p.ends[hi - 1]]) > size:
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if counter.count(text[p.starts[i]:p.ends[mid - 1]]) <= size:
                    lo = mid
                else:
                    hi = mid - 1
            j = lo
        else:
            j = hi
        out.append((max(a, p.starts[i]), min(b, p.ends[j - 1])))
        i = j
    return out


def build_chunks(text: str, ranges: Iterable[tuple[int, int, dict[str, Any]] | Range], counter: TokenCounter,
                 pieces: Pieces | None = None, doc_id: str = "", size: int | None = None,
                 strip: bool = True, lines: LineIndex | None = None) -> list[Chunk]:
    """Ranges (with optional meta) -> numbered chunks. Ranges are stripped of surrounding whitespace
    (``strip=False`` keeps leading whitespace, e.g. code indentation), empty ones dropped, chunks
    whose own token count exceeds ``size`` split between tokens, and ``line``/``end_line`` added."""
    lines = lines or LineIndex(text)
    items: list[tuple[int, int, dict[str, Any], int]] = []
    for r in ranges:
        a, b = r[0], r[1]
        meta = dict(r[2]) if len(r) > 2 else {}  # type: ignore[misc]
        s0, e = strip_range(text, a, b)
        if e <= s0:
            continue
        # strip=False keeps the first line's indentation: start at its line start
        s = s0
        if not strip:
            line_start = max(text.rfind("\n", 0, s0), text.rfind("\r", 0, s0)) + 1
            s = line_start if line_start >= a else s0
        n = counter.count(text[s:e])
        if size is not None and n > size:
            if s != s0 and counter.count(text[s0:e]) <= size:  # the indentation tipped it over
                s, n = s0, counter.count(text[s0:e])
            else:
                p = pieces or counter.pieces(text)
                parts = _fit(text, counter, p, s0, e, size)
                if len(parts) > 1:
                    for k, (ps, pe) in enumerate(parts):
                        if k == 0 and s != s0 and counter.count(text[s:pe]) <= size:
                            ps = s
                        items.append((ps, pe, meta, counter.count(text[ps:pe])))
                    continue
        items.append((s, e, meta, n))
    items.sort(key=lambda t: (t[0], t[1]))
    out = []
    for idx, (s, e, meta, n) in enumerate(items):
        meta.setdefault("line", lines.line(s))
        meta.setdefault("end_line", lines.line(max(s, e - 1)))
        out.append(Chunk(doc_id=doc_id, index=idx, start=s, end=e, text=text[s:e], n_tokens=n, meta=meta))
    return out


def check_size(size: int, overlap: int | None = None, what: str = "overlap") -> None:
    """Raise :class:`SpecError` unless ``size >= 1`` and ``0 <= overlap < size``."""
    if size < 1:
        e = SpecError(f"parameter 'size' must be at least 1 token, got {size}.")
        e.param = "size"  # type: ignore[attr-defined]
        raise e
    if overlap is not None and not 0 <= overlap < size:
        e = SpecError(f"parameter {what!r} must be at least 0 and smaller than size ({size}), got {overlap}; "
                      f"valid values: 0..{size - 1}.")
        e.param = what  # type: ignore[attr-defined]
        raise e


class Chunker(Component):
    """Base of the chunkers: ``run(text, doc_id="") -> {"chunks": list[Chunk]}``."""

    llm: Any = None
    size: int = 256

    def counter(self) -> TokenCounter:
        return TokenCounter(self.llm)

    def run(self, text: str, doc_id: str = "") -> dict:
        if text is None or not text.strip():
            return {"chunks": []}
        return {"chunks": self.split(text, doc_id)}

    def split(self, text: str, doc_id: str) -> list[Chunk]:  # pragma: no cover - abstract
        raise NotImplementedError


def chunk_text(text: str, kind: str = "tokens", *, doc_id: str = "", **params: Any) -> list[Chunk]:
    """Chunk ``text`` with the chunker ``chunk.<kind>`` (tokens, sentences, recursive, code, markdown).

    ``params`` are the chunker's parameters, e.g. ``chunk_text(text, "tokens", size=128, overlap=16)``;
    ``llm=`` takes an LLM object whose tokenizer measures sizes."""
    from . import CHUNKERS

    key = kind[len("chunk."):] if kind.startswith("chunk.") else kind
    if key not in CHUNKERS:
        from ..graph.registry import suggest

        raise UserError(f"unknown chunker kind {kind!r}.{suggest(key, CHUNKERS)} Valid kinds: {', '.join(sorted(CHUNKERS))}.")
    return CHUNKERS[key](**params).run(text, doc_id=doc_id)["chunks"]
