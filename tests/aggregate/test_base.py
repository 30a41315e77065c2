"""Helpers of aggregate.base: citations narrowed to the supporting sentence keep exact offsets and the
sentence's own line numbers; answers stop where the model starts echoing its prompt."""
from ctxflow.aggregate.base import best_span, echo_stops
from ctxflow.chunking import chunk_text


def test_a_narrowed_citation_reports_the_lines_of_its_sentence():
    text = "Intro line.\r\nThe owner is Zoë Müller.\nShe runs the café.\rIt opened in 1990.\n\nThe end."
    chunk = chunk_text(text, "sentences", doc_id="d", size=200)[0]
    assert chunk.meta["line"] == 1
    cit = best_span(chunk, "It opened in 1990.")
    assert text[cit.start:cit.end] == cit.text and cit.text.startswith("It opened in 1990")
    assert (cit.meta["line"], cit.meta["end_line"]) == (4, 4)
    cit = best_span(chunk, "Zoë Müller")
    assert cit.text.startswith("The owner is Zoë Müller") and cit.meta["line"] == 2


def test_echo_stops_come_from_the_templates_own_labels():
    assert echo_stops("Context:\n{context}\n\nQuestion: {question}\nAnswer briefly.") == ["\nContext:", "\nQuestion:"]
    assert echo_stops("Use {context} to answer {question}") == []
    assert echo_stops("Context: {context}\nQuestion: {question}\nReply as:\nAnswer: <text>\nSources: <lines>") == [
        "\nContext:", "\nQuestion:"]  # labels of the expected output are not stops


def test_citations_and_support_work_for_text_without_spaces():
    from ctxflow.aggregate.base import support, terms
    from ctxflow.aggregate.pcw import cite
    from ctxflow.aggregate.base import SpanScores

    text = "東京は日本の首都です。秘密のコードは4417です。大阪は関西の中心です。"
    chunk = chunk_text(text, "sentences", doc_id="d", size=200)[0]
    assert {"首都", "コー", "4417"} <= terms(text)
    cit = best_span(chunk, "コードは4417です。")
    assert cit.text == "秘密のコードは4417です。" and text[cit.start:cit.end] == cit.text
    assert support(chunk, "秘密のコード") > 0.9
    assert [c.text for c in cite([chunk], "秘密のコード", "コードは？", SpanScores([(chunk, 1.0)]))] == ["秘密のコードは4417です。"]


def test_scores_are_found_by_span_not_by_id():
    """After select.merge a bank chunk and a MemRecall block can both be '#0': each keeps its own score,
    and a piece cut from a chunk gets that chunk's score."""
    from ctxflow.aggregate.base import SpanScores
    from ctxflow.types import Chunk

    a = Chunk(doc_id="", index=0, start=0, end=40, text="x" * 40)
    b = Chunk(doc_id="", index=0, start=100, end=120, text="y" * 20)
    scores = SpanScores([(a, 1.0), (b, 0.5)])
    assert a.id == b.id and scores.get(a) == 1.0 and scores.get(b) == 0.5
    piece = a.model_copy(update={"start": 20, "end": 40, "text": "x" * 20})
    assert scores.get(piece) == 1.0 and scores.get(Chunk(doc_id="other", start=0, end=5, text="z" * 5)) is None


def test_refine_keeps_a_better_answer_that_starts_with_no_change():
    from ctxflow.aggregate.refine import _KEEP

    assert not _KEEP.match("No changes to the API; v2 only removed the legacy CLI.")
    assert _KEEP.match("No change.") and _KEEP.match("The context does not help, so the answer stays.")


def test_map_rerank_says_the_question_leaves_no_room():
    import pytest

    from ctxflow.errors import ContextOverflowError
    from ctxflow.select.map_rerank import MapRerank

    from .fakes import ScriptedLLM, make_chunks

    llm = ScriptedLLM(lambda p, n: "x", context=100)
    with pytest.raises(ContextOverflowError, match="shorten the question"):
        MapRerank(llm=llm, method="parse", max_new_tokens=8).run(candidates=make_chunks(["a b c"]), question="why " * 90)


def test_citation_units_cut_lists_records_titles_and_lone_cr_lines():
    from ctxflow.aggregate.base import citation_units

    def units(t):
        return [t[a:b] for a, b in citation_units(t)]

    assert units("apple: a red fruit.\nbanana: a long yellow fruit.\ncherry: small.\n") == [
        "apple: a red fruit.", "banana: a long yellow fruit.", "cherry: small."]  # next line lower-case
    assert units("pear: 2.10 EUR\nhost: 10.0.0.2\n") == ["pear: 2.10 EUR", "host: 10.0.0.2"]  # dots inside, no sentence end
    assert units("alpha one\nThe lighthouse keeper is Ada.") == ["alpha one", "The lighthouse keeper is Ada."]
    assert units("a line\rsecond line.\rthird") == ["a line", "second line.", "third"]
    wrapped = ("When you claim to 'grok' some knowledge or technique, you are\n"
               "   asserting that you have not merely learned it in a detached\n   instrumental way.")
    assert units(wrapped) == [wrapped]  # hard-wrapped prose stays one sentence


def test_pieces_of_a_long_chunk_carry_their_own_lines():
    from ctxflow.aggregate.base import split_to_fit
    from ctxflow.types import Chunk

    from .fakes import ScriptedLLM

    text = "".join(f"line {i} of the chunk\n" for i in range(40))
    chunk = Chunk(doc_id="d", start=100, end=100 + len(text), text=text, meta={"line": 10})
    pieces = split_to_fit(ScriptedLLM(lambda p, n: ""), chunk, 30)
    assert len(pieces) > 2
    assert [p.meta["line"] for p in pieces] == [10 + text.count("\n", 0, p.start - chunk.start) for p in pieces]
    assert len({p.meta["line"] for p in pieces}) == len(pieces)  # not all the chunk's first line


def test_nothing_sentinels_with_explanations_are_empty_notes():
    from ctxflow.aggregate.map_reduce import says_nothing

    for empty in ("NONE. The passage does not mention Napoleon.", "NONE\n\nThe passage is about cats.",
                  "N/A - the passage is about cats.", "Nothing in the passage answers this."):
        assert says_nothing(empty), empty
    for fact in ("None of the 3 keys work; the code is 4417.", "Napoleon was born in 1769."):
        assert not says_nothing(fact), fact


def test_mmr_overlap_sees_cjk_text():
    from ctxflow.select.topk import _jaccard

    assert _jaccard("東京は日本の首都です", "東京は日本の首都です。") > 0.8
    assert _jaccard("東京は日本の首都です", "大阪は関西の中心です") < 0.3
