"""Map-Reduce with scripted models: bounded depth, prompts always fit, batching per level."""
from __future__ import annotations

import re

import pytest

from ctxflow.aggregate.map_reduce import CollapseError, MapReduce, pack_groups, says_nothing
from ctxflow.events import EventBus, use_bus

from .fakes import ScriptedLLM, make_chunks

Q = "What is the secret number?"


def _filler(i: int, n: int = 30) -> str:
    return " ".join(f"word{i}_{j}" for j in range(n))


def _chunks(n: int = 12, secret_at: int = 7):
    texts = [_filler(i) for i in range(n)]
    texts[secret_at] = texts[secret_at][:40] + " the secret number is 4242 . " + texts[secret_at][40:]
    return make_chunks(texts)


def test_pack_groups():
    assert pack_groups([3, 3, 3, 3], budget=7, sep_tokens=1) == [[0, 1], [2, 3]]
    assert pack_groups([10, 2, 2], budget=5) == [[0], [1, 2]]  # an oversized item sits alone
    assert pack_groups([], budget=5) == []


def test_says_nothing():
    assert says_nothing("") and says_nothing("NONE") and says_nothing("None.") and says_nothing("No relevant information.")
    assert not says_nothing("The secret number is 4242.")


def test_endless_output_raises_and_every_prompt_fits():
    """A model that always answers with very long text: a clear error, never an endless loop,
    never a prompt longer than the context."""
    llm = ScriptedLLM(lambda p, n: "blah " * 500, context=200, obey_max=False)
    mr = MapReduce(llm=llm, max_depth=3, map_tokens=40, collapse_tokens=40, max_new_tokens=20)
    with pytest.raises(CollapseError, match="did not shrink|still take"):
        mr.run(chunks=_chunks(), question=Q)
    assert llm.prompts and all(llm.prompt_tokens(p) <= llm.context_length for p in llm.prompts)
    assert len(llm.batches) <= 1 + 3  # the map batch + at most max_depth collapse batches


def test_depth_bound_with_slowly_shrinking_model():
    """Outputs shrink by one token per level: the depth bound stops it with a clear error."""
    def reply(p, n):
        body = p.split("\n\n", 1)[1].rsplit("\n\nQuestion:", 1)[0]
        return " ".join(body.split()[1:])  # drop one word: barely shrinks

    llm = ScriptedLLM(reply, context=200, obey_max=False)
    mr = MapReduce(llm=llm, max_depth=2, map_tokens=60, collapse_tokens=60, max_new_tokens=20)
    with pytest.raises(CollapseError) as e:
        mr.run(chunks=_chunks(20), question=Q)
    assert "max_depth" in str(e.value) or "did not shrink" in str(e.value)
    assert len(llm.batches) <= 1 + 2
    assert all(llm.prompt_tokens(p) <= llm.context_length for p in llm.prompts)


def _shrinking(p: str, n: int) -> str:
    """Map: 'NONE' unless the passage has the secret, then a long note; collapse: halve; combine: answer."""
    body = p.split(":\n", 1)[1].rsplit("\n\nQuestion:", 1)[0]
    if p.startswith("Read the passage"):
        m = re.search(r"secret number is (\d+)", body)
        return ("NOTE the secret number is " + m.group(1) + " " + " ".join(body.split()[:40])) if m else "NONE"
    if p.startswith("Merge these notes"):
        words = body.split()
        keep = [w for w in words if w.isdigit()]
        return " ".join(words[: max(4, len(words) // 3)] + keep)
    m = re.search(r"\b(\d{3,})\b", body)
    return f"The secret number is {m.group(1)}." if m else "I don't know."


def test_converges_with_shrinking_model_one_batch_per_level():
    llm = ScriptedLLM(_shrinking, context=120)
    chunks = _chunks(12, secret_at=7)
    # every chunk holds the secret -> many long notes that need several collapse levels
    chunks = make_chunks([c.text if i == 7 else c.text[:30] + " the secret number is 4242 . " + c.text[30:]
                          for i, c in enumerate(chunks)])
    events = []
    bus = EventBus([events.append])
    with use_bus(bus):
        ans = MapReduce(llm=llm, max_depth=5, map_tokens=60, collapse_tokens=30, max_new_tokens=16).run(chunks=chunks, question=Q)["answer"]
    assert "4242" in ans.text
    t = ans.trace
    assert t["levels"] >= 1 and t["batches"] == 1 + t["levels"] + 1
    assert llm.batches[0] == t["pieces_mapped"] >= len(chunks)  # the map is one batch with every chunk (or its pieces)
    assert t["calls"] == sum(llm.batches)
    assert t["tokens"] == t["prompt_tokens"] + t["completion_tokens"] > 0
    assert all(llm.prompt_tokens(p) <= llm.context_length for p in llm.prompts)
    descs = [e.data["desc"] for e in events if e.kind == "progress"]
    assert descs[0] == "map" and any(d.startswith("collapse level") for d in descs) and "combine" in descs


def test_citations_are_the_contributing_chunks():
    llm = ScriptedLLM(_shrinking, context=200)
    chunks = _chunks(10, secret_at=6)
    ans = MapReduce(llm=llm, map_tokens=60, max_new_tokens=16).run(chunks=chunks, question=Q)["answer"]
    assert ans.text == "The secret number is 4242."
    assert ans.trace["levels"] == 0 and ans.trace["chunks_relevant"] == 1
    assert len(ans.citations) == 1
    c = ans.citations[0]
    assert c.start >= chunks[6].start and c.end <= chunks[6].end and "4242" in c.text


def test_oversized_chunk_is_cut_to_fit():
    llm = ScriptedLLM(_shrinking, context=100)
    big = make_chunks(["the secret number is 777 " + _filler(0, 400)])
    ans = MapReduce(llm=llm, map_tokens=30, max_new_tokens=16).run(chunks=big, question=Q)["answer"]
    assert "777" in ans.text
    assert all(llm.prompt_tokens(p) <= 100 for p in llm.prompts)


def test_no_chunks_and_bad_params():
    llm = ScriptedLLM(_shrinking, context=400)
    ans = MapReduce(llm=llm).run(chunks=[], question=Q)["answer"]
    assert ans.citations == [] and ans.trace["calls"] == 1
    from ctxflow.errors import UserError
    with pytest.raises(UserError):
        MapReduce(llm=llm, map_prompt="no slots")
    with pytest.raises(UserError):
        MapReduce(llm=llm).run(chunks=[], question="  ")


def test_budgets_follow_the_models_context_and_summary_mode_keeps_everything():
    """The budgets are the model's context minus the prompt and the answer: a longer context
    gives bigger budgets and fewer collapse calls; summary mode drops no passage."""
    chunks = _chunks(12, secret_at=3)
    traces = {}
    for ctx in (120, 400):
        llm = ScriptedLLM(lambda p, n: " ".join(["fact"] * n), context=ctx)
        t = MapReduce(llm=llm, mode="summary", map_tokens=20, collapse_tokens=20, max_new_tokens=10).run(chunks=chunks)["answer"].trace
        assert all(llm.prompt_tokens(p) + 20 <= ctx for p in llm.prompts)
        assert t["chunks_relevant"] == len(chunks)  # nothing dropped in summary mode
        traces[ctx] = t
    assert traces[400]["budgets"]["combine"] - traces[120]["budgets"]["combine"] == 280
    assert traces[400]["calls"] < traces[120]["calls"]


def test_real_facts_that_start_like_none_are_kept():
    for fact in ("Napoleon was born in 1769.", "NASA launched Apollo 11 in 1969.", "Nonetheless, the code is 4417.",
                 "None of the 3 keys work; the code is 4417.", "Nothing happened until 1815.", "N/A is printed when it fails."):
        assert not says_nothing(fact), fact
    for empty in ("N/A", "n/a.", "Nothing.", "Nothing relevant.", "Not mentioned in the passage.",
                  "The passage does not mention the code."):
        assert says_nothing(empty), empty


def test_a_chunk_longer_than_the_map_budget_is_mapped_piece_by_piece():
    """The end of an over-long chunk is read too (was cut, so its answer was never seen)."""
    text = _filler(0, 150) + " The secret number is 4417 ."
    chunks = make_chunks([text])
    llm = ScriptedLLM(lambda p, n: "The secret number is 4417." if "4417" in p.split("Question")[0] else "NONE", context=120)
    ans = MapReduce(llm=llm, map_tokens=16, max_new_tokens=16).run(chunks=chunks, question=Q)["answer"]
    assert ans.trace["pieces_mapped"] > 1 and ans.trace["chunks_given"] == 1 and ans.trace["chunks_relevant"] == 1
    assert any("4417" in p for p in llm.prompts[:ans.trace["pieces_mapped"]])
    assert ans.citations and "4417" in ans.citations[0].text and text[ans.citations[0].start:ans.citations[0].end] == ans.citations[0].text
