"""Shared checks and fake tokenizers for the chunker tests."""
from __future__ import annotations

import math
import re
from typing import Sequence

from ctxflow.llm.base import LLM, Generation
from ctxflow.types import Chunk


def check_chunks(text: str, chunks: list[Chunk], doc_id: str = "", size: int | None = None,
                 overlapping: bool = False, strip_start: bool = True) -> None:
    """The invariants every chunker keeps."""
    if not text.strip():
        assert chunks == []
        return
    assert chunks, "non-blank text gave no chunks"
    covered = bytearray(len(text))
    prev = None
    for k, c in enumerate(chunks):
        assert c.index == k
        assert c.doc_id == doc_id
        assert 0 <= c.start < c.end <= len(text)
        assert text[c.start:c.end] == c.text
        assert c.text.strip(), "pure-whitespace chunk"
        assert not c.text[-1].isspace(), "trailing whitespace"
        if strip_start:
            assert not c.text[0].isspace(), "leading whitespace"
        if prev is not None:
            assert (c.start, c.end) > (prev.start, prev.end), "chunks out of document order"
            if not overlapping:
                assert c.start >= prev.end, "chunks overlap"
        if size is not None:
            assert c.n_tokens <= size, (c.n_tokens, size, c.text)
        assert c.n_tokens >= 1
        assert isinstance(c.meta.get("line"), int) and 1 <= c.meta["line"] <= c.meta["end_line"]
        covered[c.start:c.end] = b"\x01" * (c.end - c.start)
        prev = c
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"characters not covered: {[text[i] for i in missing[:10]]} at {missing[:10]}"


class _FakeLLM(LLM):
    model_id = "fake"

    @property
    def context_length(self) -> int:
        return 4096

    def generate(self, prompts: Sequence, max_new_tokens: int = 256, stop=None, temperature: float = 0.0,
                 chat: bool = True, seed=None) -> list[Generation]:
        return [Generation(text="") for _ in prompts]


class TrigramLLM(_FakeLLM):
    """Tokens are 3-character slices, whitespace included (offsets with leading spaces), so a slice of
    the document counts differently from the document's own tokenization."""

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / 3)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(i, min(i + 3, len(text))) for i in range(0, len(text), 3)]


class ByteLLM(_FakeLLM):
    """Byte-level BPE-like: words are tokens, but every non-ASCII character is one token per UTF-8
    byte, all with the same (overlapping) character span, plus whitespace tokens."""

    _RX = re.compile(r"\s+|[A-Za-z0-9]+|.", re.S)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        out = []
        for m in self._RX.finditer(text):
            n = len(m.group(0).encode("utf-8")) if len(m.group(0)) == 1 and ord(m.group(0)) > 127 else 1
            out.extend([m.span()] * n)
        return out

    def count_tokens(self, text: str) -> int:
        return len(self.token_spans(text))


class WordPairLLM(_FakeLLM):
    """No offsets of its own (the base class's word fallback), but two tokens per word."""

    def count_tokens(self, text: str) -> int:
        return 2 * len(re.findall(r"\w+|[^\w\s]", text))
