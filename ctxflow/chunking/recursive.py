"""``chunk.recursive``: LangChain-style recursive splitting, with exact offsets."""
from __future__ import annotations

from ..errors import SpecError
from ..graph.component import component
from ..graph.params import NonNegativeInt, PositiveInt
from ..types import Chunk
from .base import DEFAULT_SEPARATORS, Chunker, build_chunks, check_size, recursive_ranges
from ..graph.component import OptionalLLMRef


@component("chunk.recursive", outputs={"chunks": list[Chunk]})
class RecursiveChunker(Chunker):
    """Cut at the first of ``separators`` that occurs (paragraphs, then lines, sentences, words),
    recurse into parts still bigger than ``size`` tokens with the remaining separators, then merge
    neighbouring parts back up to ``size`` tokens; each chunk starts with the previous chunk's last
    parts, up to ``overlap`` tokens of them. A separator stays at the end of the part before it, so
    parts are contiguous ranges of the source and the offsets are exact. The separator ``""`` cuts
    between tokens (never inside one); text with none of the separators is cut between tokens too."""

    def __init__(self, size: PositiveInt = 256, overlap: NonNegativeInt = 0, separators: list[str] | None = None,
                 llm: OptionalLLMRef = None):
        check_size(size, overlap)
        if separators is not None and any(not isinstance(s, str) for s in separators):
            e = SpecError(f"parameter 'separators' must be a list of strings, got {separators!r}.")
            e.param = "separators"  # type: ignore[attr-defined]
            raise e
        self.size, self.overlap, self.llm = size, overlap, llm
        self.separators = list(DEFAULT_SEPARATORS if separators is None else separators)

    def split(self, text: str, doc_id: str) -> list[Chunk]:
        counter = self.counter()
        p = counter.pieces(text)
        ranges = recursive_ranges(p, 0, len(text), self.size, self.overlap, self.separators)
        return build_chunks(text, ranges, counter, p, doc_id=doc_id, size=self.size)
