"""NBCE: the fusion rule on synthetic log-probs, and the oracles on the real model."""
from __future__ import annotations

import math

import pytest
import torch

from ctxflow.aggregate.nbce import NBCE, entropy, fuse, nbce_prefill, top_p_cut
from ctxflow.aggregate.stuff import PROMPT
from ctxflow.errors import UserError
from ctxflow.llm.local import LocalLM
from ctxflow.types import Chunk

Q = "What colour is the door of the lighthouse?"
TEXT = "The lighthouse on Karsk island has a red door and a white tower. Its keeper is Ada Moll."


def _lp(*rows):
    return torch.log_softmax(torch.tensor(rows, dtype=torch.float32), -1)


def test_top_p_keeps_the_smallest_set_over_p():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cut = top_p_cut(lp, 0.95)
    assert torch.isfinite(cut[0, :3]).all() and cut[0, 3] == float("-inf")
    assert torch.isfinite(top_p_cut(lp, 0.45)[0, 0]) and (top_p_cut(lp, 0.45)[0, 1:] == float("-inf")).all()


def test_min_entropy_pooling_beta_and_stickiness():
    uncond = [1.0, 1.0, 1.0, 1.0]
    flat = [1.0, 1.0, 1.1, 1.0]  # high entropy
    sharp = [0.0, 9.0, 0.0, 0.0]  # low entropy, favours token 1
    lp = _lp(uncond, flat, sharp)
    fused, k = fuse(lp, beta=0.25, top_p=1.0)
    assert k == 1 and int(fused.argmax()) == 1
    assert torch.allclose(fused, 1.25 * lp[2] - 0.25 * lp[0])
    # stickiness: a previously chosen row wins when its entropy is within eta of the best
    a, b = _lp([0.0, 2.0, 0.0, 0.0])[0], _lp([0.0, 0.0, 2.05, 0.0])[0]
    ea, eb = float(entropy(a[None])), float(entropy(b[None]))
    assert eb < ea < eb + 0.1
    lp2 = torch.stack([_lp(uncond)[0], a, b])
    assert fuse(lp2, top_p=1.0)[1] == 1
    assert fuse(lp2, top_p=1.0, prev=0)[1] == 0
    # mean pooling
    fused_m, _ = fuse(lp, beta=0.0, pooling="mean", top_p=1.0)
    assert torch.allclose(fused_m, lp[1:].mean(0))


def test_very_unlikely_unconditional_tokens_use_the_context_alone():
    lp = torch.tensor([[0.0, -200.0, -1.0], [-1.0, -0.5, -2.0]])
    fused, _ = fuse(lp, beta=0.25, top_p=1.0)
    assert fused[1] == lp[1, 1]  # log p(T) < -100 there: the chosen context's log-prob alone
    assert math.isclose(float(fused[0]), 1.25 * -1.0 - 0.25 * 0.0)


@pytest.fixture(scope="module")
def raw(llm):
    m = LocalLM(cache=False)
    m.warm_up()
    return m


def test_one_context_beta_zero_is_plain_greedy_generation(raw):
    chunk = Chunk(doc_id="d", index=0, start=0, end=len(TEXT), text=TEXT)
    ans = NBCE(llm=raw, beta=0.0, max_new_tokens=12).run(chunks=[chunk], question=Q)["answer"]
    ref = raw.generate([PROMPT.format(context=TEXT, question=Q)], max_new_tokens=12)[0]
    assert ans.trace["contexts"] == 1 and ans.trace["rows"] == 2
    assert ans.text == ref.text.strip() and ans.trace["finish_reason"] == ref.finish_reason
    assert ans.text


def test_left_padded_batch_gives_each_row_its_own_logits(raw):
    """The batched, left-padded prefill equals each row computed on its own."""
    prompts = [PROMPT.format(context=c, question=Q) for c in ("", TEXT, "Tides at Karsk are strongest in March.")]
    rows = [raw.encode(p, chat=True) for p in prompts]
    last, cache, real, nxt = nbce_prefill(raw, rows)
    ref = raw.next_token_logits(prompts)  # (B, V) log-softmax, one row at a time (right padding)
    assert torch.allclose(torch.log_softmax(last, -1), ref, atol=1e-4)
    assert nxt.tolist() == [len(r) for r in rows] and real.sum(1).tolist() == [len(r) for r in rows]


def test_bad_parameters():
    with pytest.raises(UserError):
        NBCE(llm="llm", pooling="max")
    with pytest.raises(UserError):
        NBCE(llm="llm", top_p=0)
    with pytest.raises(UserError):
        fuse(_lp([1.0, 2.0], [2.0, 1.0]), pooling="median")
