"""``chunk.tokens``: fixed windows of ``size`` tokens, consecutive windows sharing ``overlap``."""
from __future__ import annotations

from ..graph.component import component
from ..graph.params import NonNegativeInt, PositiveInt
from ..types import Chunk
from .base import Chunker, build_chunks, check_size, token_windows
from ..graph.component import OptionalLLMRef


@component("chunk.tokens", outputs={"chunks": list[Chunk]})
class TokenChunker(Chunker):
    """Windows of ``size`` tokens (the LLM's tokenizer, or words and punctuation without one).

    A chunk runs from its first token's first character to its last token's last character, so it
    never starts or ends with whitespace. A window boundary that would cut a word in two moves back
    to the nearest space when one is close (within an eighth of the window); ``overlap`` tokens are
    repeated at the start of the next window. Left unset, ``overlap`` is an eighth of ``size`` but at
    most 32 (32 for the default size of 256), so a small ``size`` alone is always valid."""

    def __init__(self, size: PositiveInt = 256, overlap: NonNegativeInt | None = None, llm: OptionalLLMRef = None):
        check_size(size)
        if overlap is None:
            overlap = min(32, size // 8)
        check_size(size, overlap)
        self.size, self.overlap, self.llm = size, overlap, llm

    def split(self, text: str, doc_id: str) -> list[Chunk]:
        counter = self.counter()
        p = counter.pieces(text)
        ranges = [(p.starts[i], p.ends[j - 1]) for i, j in token_windows(p, 0, len(p), self.size, self.overlap)]
        return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=self.size)
