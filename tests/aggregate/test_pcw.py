"""PCW on the real model: the correctness oracles of the method, plus packing and errors."""
from __future__ import annotations

import pytest
import torch

from ctxflow.aggregate.pcw import PCW, make_windows, pcw_generate, pcw_prefill, template_parts, token_ids, specials
from ctxflow.aggregate.stuff import PROMPT
from ctxflow.errors import UserError
from ctxflow.llm.local import LocalLM
from ctxflow.types import Chunk

from .fakes import make_chunks

Q = "What colour is the door of the lighthouse?"
TEXT = "The lighthouse on Karsk island has a red door and a white tower. Its keeper is Ada Moll."


@pytest.fixture(scope="module")
def raw(llm):
    """The session model's weights without the LLM-call cache (every call reaches the model)."""
    m = LocalLM(cache=False)
    m.warm_up()
    return m


def _chunk(text: str) -> Chunk:
    return Chunk(doc_id="d", index=0, start=0, end=len(text), text=text)


def test_one_window_is_plain_greedy_generation(raw):
    ans = PCW(llm=raw, max_new_tokens=12).run(chunks=[_chunk(TEXT)], question=Q)["answer"]
    ref = raw.generate([PROMPT.format(context=TEXT, question=Q)], max_new_tokens=12)[0]
    assert ans.trace["windows"] == 1
    assert ans.text == ref.text.strip() and ans.trace["completion_tokens"] == ref.n_tokens
    assert ans.text  # the model said something


@pytest.mark.parametrize("dedupe", ["bos", "prefix"])
def test_task_logits_equal_one_pass_with_explicit_mask(raw, dedupe):
    """Several windows of different lengths: PCW's task-token logits equal those of ONE forward
    pass over [window 1 | window 2 (minus shared tokens) | window 3 (...) | task] with the
    block-diagonal 4-D mask and the PCW position ids."""
    head, tail = template_parts(raw, PROMPT, Q)
    sp = specials(raw, True)
    texts = [TEXT, "Tides at Karsk are strongest in March.", "The island ferry leaves at nine every morning and returns at six."]
    wins = [token_ids(raw, head + t, sp) for t in texts]
    task = token_ids(raw, tail)
    logits, _, info = pcw_prefill(raw, wins, task, dedupe)  # (m, V)

    starts, max_len = info["starts"], info["max_len"]
    assert max_len == max(map(len, wins)) and starts[0] == 0
    assert (starts[1] == 1) if dedupe == "bos" else (starts[1] > 1)  # one BOS / one shared prefix
    seq, pos, owner = [], [], []  # owner: window index of each kept token (-1: task)
    for i, (w, s) in enumerate(zip(wins, starts)):
        seq += w[s:]
        pos += list(range(s, len(w)))
        owner += [i] * (len(w) - s)
    K = len(seq)
    seq += task
    pos += [max_len + t for t in range(len(task))]
    owner += [-1] * len(task)
    n = len(seq)
    allowed = torch.zeros((n, n), dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            same = owner[k] == owner[q]
            shared = owner[k] == 0 and pos[k] < starts[owner[q]]  # the copy of the prefix all windows share
            allowed[q, k] = owner[q] == -1 or same or shared
    mask = torch.zeros((1, 1, n, n)).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ref, _ = raw.forward([seq], attention_mask=mask, position_ids=[pos], use_cache=False)
    assert torch.allclose(logits, ref[0, K:], atol=1e-4, rtol=1e-4), float((logits - ref[0, K:]).abs().max())
    assert logits.shape == (len(task), ref.shape[-1])


def test_generation_with_several_windows_is_consistent(raw):
    """Generation continues the prefill: the first token is the argmax of the last task logits and
    the cache holds every window once (minus the shared prefix) plus the task and answer."""
    head, tail = template_parts(raw, PROMPT, Q)
    sp = specials(raw, True)
    wins = [token_ids(raw, head + t, sp) for t in (TEXT, "Tides at Karsk are strongest in March.")]
    task = token_ids(raw, tail)
    logits, _, info = pcw_prefill(raw, wins, task, "bos")
    out = pcw_generate(raw, wins, task, max_new_tokens=4, dedupe="bos")
    assert out["ids"] and out["ids"][0] == int(logits[-1].argmax())
    assert info["cache_tokens"] == len(wins[0]) + len(wins[1]) - 1


def test_windows_pack_the_budget(raw):
    chunks = make_chunks(["alpha beta gamma delta " * 10] * 7)
    wins, dropped = make_windows(raw, chunks, budget=100)
    assert dropped == 0 and [c.index for w in wins for c in w] == list(range(7))
    assert all(sum(raw.count_tokens(c.text) for c in w) <= 100 for w in wins)
    wins2, _ = make_windows(raw, chunks, budget=400, n_windows=3)
    assert len(wins2) == 3


def test_emulated_context_is_respected_and_long_input_uses_many_windows(raw):
    small = LocalLM(cache=False, max_context=160)
    text = " ".join(f"Sentence {i} tells nothing of note about the harbour." for i in range(60))  # ~700 tokens
    ans = PCW(llm=small, max_new_tokens=4).run(chunks=[_chunk(text)], question=Q)["answer"]
    t = ans.trace
    assert t["windows"] >= 4 and t["max_window"] + len(token_ids(small, template_parts(small, PROMPT, Q)[1])) + 4 <= 160
    assert t["chunks_dropped"] == 0


def test_bad_parameters():
    with pytest.raises(UserError):
        PCW(llm="llm", prompt="no slots here")
    with pytest.raises(UserError):
        PCW(llm="llm", dedupe="all")
    with pytest.raises(UserError):
        PCW(llm="llm", n_windows=0)
