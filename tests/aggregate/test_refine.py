"""Refine with a scripted model: sequential steps, keep-if-unhelpful, early stop, citations."""
from __future__ import annotations

import re

from ctxflow.aggregate.refine import Refine, normalise

from .fakes import ScriptedLLM, make_chunks

Q = "What is the secret number?"


def _reply(p: str, n: int) -> str:
    m = re.search(r"secret number is (\d+)", p.split("Question", 1)[0] if p.startswith("Answer") else p.split("more context:", 1)[-1])
    if p.startswith("Answer the question"):
        return f"It is {m.group(1)}." if m else "Unknown."
    old = re.search(r"The existing answer is: (.*)\n", p).group(1)
    return f"It is {m.group(1)}." if m else old


def _chunks(n=8, at=(5,)):
    texts = [" ".join(f"w{i}_{j}" for j in range(20)) for i in range(n)]
    for a in at:
        texts[a] = f"the secret number is {100 + a} ." + texts[a]
    return make_chunks(texts)


def test_refines_and_cites_the_changing_chunk():
    llm = ScriptedLLM(_reply, context=110)
    chunks = _chunks(8, at=(5,))
    ans = Refine(llm=llm, max_new_tokens=10, chunks_per_step=1).run(chunks=chunks, question=Q)["answer"]
    assert ans.text == "It is 105."
    t = ans.trace
    assert t["steps"] == 8 and t["calls"] == 8 and t["changes"] == 2  # step 0 and step 5
    assert [h["changed"] for h in t["history"]] == [True, False, False, False, False, True, False, False]
    assert [c.start for c in ans.citations][0] >= chunks[5].start and "105" in ans.citations[0].text
    assert all(llm.prompt_tokens(p) <= llm.context_length for p in llm.prompts)


def test_early_stop():
    llm = ScriptedLLM(_reply, context=110)
    ans = Refine(llm=llm, max_new_tokens=10, chunks_per_step=1, early_stop=2).run(chunks=_chunks(8, at=(1,)), question=Q)["answer"]
    assert ans.text == "It is 101."
    assert ans.trace["stopped_early"] and ans.trace["steps"] == 4  # 0 (change), 1 (change), 2, 3 (unchanged x2)


def test_packs_chunks_per_step_to_the_budget():
    llm = ScriptedLLM(_reply, context=120)
    ans = Refine(llm=llm, max_new_tokens=10).run(chunks=_chunks(8, at=(6,)), question=Q)["answer"]
    assert ans.text == "It is 106."
    assert ans.trace["steps"] < 8  # several 20-word chunks per step
    assert all(llm.prompt_tokens(p) <= 120 for p in llm.prompts)


def test_oversized_chunk_is_split_across_steps():
    llm = ScriptedLLM(_reply, context=80)
    big = make_chunks(["the secret number is 9 . " + " ".join(f"x{j}" for j in range(100))])
    ans = Refine(llm=llm, max_new_tokens=8).run(chunks=big, question=Q)["answer"]
    assert ans.text == "It is 9." and ans.trace["steps"] >= 3 and ans.trace["changes"] == 1
    assert all(llm.prompt_tokens(p) <= 80 for p in llm.prompts)
    # every word of the chunk was shown exactly once
    shown = " ".join(p.split("Context:\n", 1)[-1].split("more context:\n", 1)[-1].split("\n\n")[0] for p in llm.prompts)
    assert shown.split() == big[0].text.split()


def test_normalise():
    assert normalise("It is 9.") == normalise("  it is   9 ")
