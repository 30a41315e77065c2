import math

import pytest

from ctxflow.errors import SpecError, UserError
from ctxflow.graph.pipeline import Pipeline
from ctxflow.llm.fake import FakeLLM
from ctxflow.select.map_rerank import MapRerank, parse_score
from ctxflow.types import Chunk, Scored

from .fakes import GarbageGreyLLM

GARBAGE = ["", "Score: abc", "\x00\ufffd\u202e }{ {context} %s", "It is 7. Score: 999", "Paris. Score: 87", "Score:", "   "]


def cands(texts, scores=None):
    scores = scores or [1.0] * len(texts)
    out, pos = [], 0
    for i, (t, s) in enumerate(zip(texts, scores)):
        out.append(Scored[Chunk](item=Chunk(doc_id="d", index=i, start=pos, end=pos + len(t), text=t), score=s))
        pos += len(t) + 1
    return out


@pytest.mark.parametrize("reply,expected", [
    ("Paris. Score: 87", ("Paris.", 87.0)), ("score=100", ("", 100.0)), ("Score: 101", ("Score: 101", None)),
    ("no score here", ("no score here", None)), ("Score: -3", ("Score: -3", None)), ("", ("", None)),
    ("a Score: 10 b Score: 20", ("a Score: 10 b", 20.0)), (None, ("", None)),
])
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_parse_mode_black_box_never_raises_and_counts_failures():
    llm = FakeLLM(responses=GARBAGE)
    texts = [f"passage number {i} {{braces}}" for i in range(len(GARBAGE))]
    out = MapRerank(llm=llm, method="parse", top_k=2, max_candidates=10).run(candidates=cands(texts), question="What is it?")
    ans = out["answer"]
    tr = ans.trace
    assert tr["parse_failures"] == len(GARBAGE) - 1  # only "Paris. Score: 87" obeys the format
    assert len(tr["candidates"]) == len(GARBAGE)
    assert all(math.isfinite(c["score"]) for c in tr["candidates"])
    assert ans.text == "Paris."  # the one parsed score beats every fallback
    assert ans.citations and ans.citations[0].start == out["selected"][0].item.start
    assert len(out["selected"]) == 2 and llm.n_calls == 1  # all candidates in ONE batched call


def test_grey_box_garbage_probabilities_never_raise():
    llm = GarbageGreyLLM(responses=GARBAGE)
    for method in ("combined", "relevance", "answer_gain", "parse"):
        out = MapRerank(llm=llm, method=method, max_candidates=10).run(
            candidates=cands([f"text {i}" for i in range(6)], [0.1, float("nan"), 3, -1, float("inf"), 0]), question="q?")
        scores = [c["score"] for c in out["answer"].trace["candidates"]]
        assert len(scores) == 6 and all(isinstance(s, float) for s in scores)
        assert isinstance(out["answer"].text, str)


def test_confidence_comes_from_token_probabilities():
    # the yes/no judge prefers the passage with "Paris": it wins although retrieval put it last
    llm = GarbageGreyLLM(responses=["Rome.", "Paris.", "Berlin."], mode="yes", yes_if="Paris")
    out = MapRerank(llm=llm, method="relevance").run(
        candidates=cands(["Rome is in Italy.", "Paris is the capital of France.", "Berlin is in Germany."], [3, 1, 2]),
        question="What is the capital of France?")
    assert out["answer"].text == "Paris."
    assert out["selected"][0].item.text.startswith("Paris")
    assert out["answer"].trace["candidates"][0]["relevance"] > 10


def test_empty_and_bad_params():
    out = MapRerank(llm=FakeLLM()).run(candidates=[], question="q?")
    assert out["selected"] == [] and out["answer"].text == ""
    with pytest.raises(UserError):
        MapRerank(llm=FakeLLM()).run(candidates=cands(["x"]), question="  ")
    with pytest.raises(UserError, match="method must be one of"):
        MapRerank(method="vote")


def test_validate_needs_grey_box_except_parse_mode():
    for method, ok in (("parse", True), ("combined", False)):
        p = Pipeline(models={"llm": FakeLLM()})
        p.add("pick", MapRerank(llm="llm", method=method))
        p.expose_input("candidates", "pick.candidates")
        p.expose_input("question", "pick.question")
        if ok:
            p.validate()
        else:
            with pytest.raises(SpecError, match="grey-box"):
                p.validate()


def test_real_model_picks_the_passage_that_answers(llm):
    texts = ["Bananas are yellow fruit rich in potassium.", "The Pacific Ocean is the largest ocean on Earth.",
             "Chess is played on a board of 64 squares."]
    out = MapRerank(llm=llm, max_new_tokens=16).run(candidates=cands(texts, [0.5, 0.5, 0.5]), question="Which ocean is the largest?")
    ans = out["answer"]
    assert "Pacific" in ans.text
    assert out["selected"][0].item.text == texts[1]
    assert [c["start"] for c in ans.trace["candidates"]][0] == ans.citations[0].start or "Pacific" in ans.citations[0].text
    assert ans.score is not None and 0 <= ans.score <= 1


def test_real_model_parse_mode_falls_back(llm):
    texts = ["The Pacific Ocean is the largest ocean on Earth.", "Chess is played on a board of 64 squares."]
    out = MapRerank(llm=llm, method="parse", max_new_tokens=16).run(candidates=cands(texts), question="Which ocean is the largest?")
    tr = out["answer"].trace
    assert 0 <= tr["parse_failures"] <= 2 and len(tr["candidates"]) == 2
    assert all(math.isfinite(c["score"]) for c in tr["candidates"])
