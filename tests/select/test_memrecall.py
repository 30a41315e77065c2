import numpy as np
import pytest

from ctxflow.errors import UserError
from ctxflow.eval.lines import make_lines_task
from ctxflow.select.blocks import blocks_of_chunks, make_blocks
from ctxflow.select.memrecall import MemRecall
from ctxflow.select.scoring import zscore
from ctxflow.select.topk import TopK
from ctxflow.types import Chunk, Scored

from .fakes import GarbageGreyLLM

PROSE = ("The kettle boiled at noon. Nobody noticed, because the radio was loud; the cat slept. "
         "A very long sentence follows here, and it goes on, and on, with many clauses, commas and words, "
         "until it is much longer than a tiny block size could ever hold in one piece. Short end.")


def test_blocks_exact_small_and_line_aware():
    for size in (8, 16, 63):
        bs = make_blocks(PROSE, size)
        assert bs and all(PROSE[b.start:b.end] == b.text and b.n_tokens <= size for b in bs)
        assert [b.start for b in bs] == sorted(b.start for b in bs)
    assert make_blocks(PROSE, 8)[0].text == "The kettle boiled at noon."
    # whole sentences are packed up to the size
    assert [b.text for b in make_blocks("One two. Three four.\n\nFive six.", 63)] == ["One two. Three four.\n\nFive six."]
    assert [b.text for b in make_blocks("One two. Three four.\n\nFive six.", 6)] == ["One two. Three four.", "Five six."]
    (ex,) = make_lines_task(30, 1, seed=0)
    lines = ex.document.split("\n")
    assert [b.text for b in make_blocks(ex.document, 63)] == lines  # one record line per block
    assert make_blocks("   ", 63) == []
    # blocks of chunks map back to the source
    text = ex.document
    chunks = [Chunk(doc_id="d", index=0, start=0, end=200, text=text[:200]), Chunk(doc_id="d", index=1, start=150, end=400, text=text[150:400])]
    bb = blocks_of_chunks(chunks, 63)
    assert all(text[b.start:b.end] == b.text for b in bb) and len({(b.start, b.end) for b in bb}) == len(bb)


def test_blocks_of_chunks_carry_document_line_numbers():
    """A block's line is counted in the document (from its chunk's line), not inside its chunk."""
    from ctxflow.chunking import chunk_text

    text = "".join(f"Line {i}: the value of key{i} is {7 * i}.\n" for i in range(1, 61))
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    bb = blocks_of_chunks(chunk_text(text, "sentences", size=48, doc_id="d"), 16)
    assert len(bb) > 20
    for b in bb:
        assert b.meta["line"] == text.count("\n", 0, b.start) + 1 and text[starts[b.meta["line"] - 1]:].startswith(b.text)
        assert b.meta["end_line"] == text.count("\n", 0, b.end - 1) + 1
    # chunks without line numbers: the blocks claim none (their own would count inside the chunk)
    bare = [Chunk(doc_id="d", index=0, start=40, end=400, text=text[40:400])]
    assert all("line" not in b.meta for b in blocks_of_chunks(bare, 16))


def test_zscore_handles_garbage():
    assert zscore([]).size == 0 and list(zscore([1, 1, 1])) == [0, 0, 0]
    z = zscore([1.0, float("nan"), 3.0, float("inf")])
    assert np.isfinite(z).all() and z[0] < 0 < z[2]


def _two_hop(n=40, seed=3):
    (ex,) = make_lines_task(n, 1, seed=seed, two_hop=True)
    lines = ex.document.split("\n")
    return ex, lines[ex.line_index], lines[ex.hop_line_index]


@pytest.mark.parametrize("judge_llm", [None, "garbage"])
def test_iterations_follow_a_pointer(judge_llm):
    ex, pointer, target = _two_hop()
    llm = GarbageGreyLLM() if judge_llm else None
    kw = dict(llm=llm, keep=1, increment=1, budget=64)
    one = MemRecall(iterations=1, **kw).run(question=ex.question, text=ex.document)["selected"]
    two = MemRecall(iterations=2, **kw).run(question=ex.question, text=ex.document)["selected"]
    assert [s.item.text for s in one] == [pointer]
    assert {s.item.text for s in two} == {pointer, target}
    assert [s.item.start for s in two] == sorted(s.item.start for s in two)  # document order
    assert all(ex.document[s.item.start:s.item.end] == s.item.text for s in two)
    if llm is not None:
        assert llm.grey_calls > 0  # the judge was asked (and its NaNs did no harm)


def test_prior_from_candidates_and_budget():
    (ex,) = make_lines_task(60, 1, seed=1)
    lines = ex.document.split("\n")
    # a query with no lexical match: the retrieval prior decides
    hit = Chunk(doc_id="", index=0, start=ex.document.index(lines[7]), end=ex.document.index(lines[7]) + len(lines[7]), text=lines[7])
    out = MemRecall(llm=None, iterations=1, keep=1, budget=32).run(question="zzz qqq?", text=ex.document,
                                                                      candidates=[Scored[Chunk](item=hit, score=1.0)])
    assert [s.item.text for s in out["selected"]] == [lines[7]]
    m = MemRecall(llm=None, budget=None)
    assert m.token_budget() == 64
    with pytest.raises(UserError):
        MemRecall(judge="embedding")
    with pytest.raises(UserError):
        MemRecall(llm=None).run(question="q?")


def test_real_model_two_hop(llm):
    ex, pointer, target = _two_hop(30, seed=5)
    out = MemRecall(llm=llm, keep=1, increment=1).run(question=ex.question, text=ex.document)["selected"]
    texts = [s.item.text for s in out]
    assert pointer in texts and target in texts and len(texts) == 2


def test_real_embedding_judge(embedder):
    text = ("Volcanoes erupt molten rock called lava. The violin has four strings tuned in fifths. "
            "Penguins are flightless birds of the southern hemisphere. Lava cools into basalt.")
    out = MemRecall(llm=None, embedder=embedder, judge="embedding", iterations=2, keep=1, increment=0, budget=20, block_size=12).run(
        question="Which musical instrument has four strings?", text=text)["selected"]
    assert [s.item.text for s in out] == ["The violin has four strings tuned in fifths."]


def test_topk_mmr_drops_near_duplicates():
    def sc(t, s, i):
        return Scored[Chunk](item=Chunk(doc_id="d", index=i, start=i * 100, end=i * 100 + len(t), text=t), score=s)
    c = [sc("alpha beta gamma delta", 1.0, 0), sc("alpha beta gamma delta!", 0.99, 1), sc("omega sigma tau", 0.5, 2)]
    assert [x.item.index for x in TopK(k=2).run(candidates=c)["selected"]] == [0, 1]
    assert [x.item.index for x in TopK(k=2, mmr=0.5).run(candidates=c)["selected"]] == [0, 2]
    assert [x.item.index for x in TopK(k=2, mmr=0.5, document_order=True).run(candidates=c[::-1])["selected"]] == [0, 2]
