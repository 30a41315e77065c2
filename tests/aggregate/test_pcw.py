"""PCW on the real model: the correctness oracles of the method, plus packing and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctxflow.aggregate.nbce import NBCE
from ctxflow.aggregate.grey import make_windows, specials, template_parts, token_ids, with_prefix
from ctxflow.aggregate.base import SpanScores
from ctxflow.aggregate.pcw import PCW, PROMPT_Q, pcw_generate, pcw_prefill, rank_windows, window_bias
from ctxflow.aggregate.stuff import PROMPT
from ctxflow.errors import UserError
from ctxflow.llm.base import Embedder
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


@pytest.mark.parametrize("question_in_windows,answer_prefix,rescale", [
    (False, "", 1.0), (True, "", 1.0), (False, "Answer:", 0.0), (True, "Answer:", 1.0)])
def test_one_window_is_plain_greedy_generation(raw, question_in_windows, answer_prefix, rescale):
    """With one window PCW is ordinary greedy generation on the same prompt, whatever the prompt
    options (the question in the window, an answer prefix) and the rescale (zero with one window)."""
    ans = PCW(llm=raw, max_new_tokens=12, question_in_windows=question_in_windows, answer_prefix=answer_prefix,
              rescale=rescale).run(chunks=[_chunk(TEXT)], question=Q)["answer"]
    prompt = (PROMPT_Q if question_in_windows else PROMPT).format(context=TEXT, question=Q)
    ref = raw.generate([with_prefix(prompt, answer_prefix)], max_new_tokens=12)[0]
    assert ans.trace["windows"] == 1
    assert ans.text == ref.text.strip() and ans.trace["completion_tokens"] == ref.n_tokens
    assert ans.text  # the model said something


def test_question_in_windows_puts_the_question_before_the_context_and_in_the_task(raw):
    head, tail = template_parts(raw, PROMPT_Q, Q, answer_prefix="Answer:")
    assert Q in head and Q in tail and tail.endswith("Answer:")
    head0, tail0 = template_parts(raw, PROMPT, Q)
    assert Q not in head0 and Q in tail0


@pytest.mark.parametrize("dedupe,rescale", [("bos", 0.0), ("prefix", 0.0), ("prefix", 1.0), ("bos", 0.5)])
def test_task_logits_equal_one_pass_with_explicit_mask(raw, dedupe, rescale):
    """Several windows of different lengths: PCW's task-token logits equal those of ONE forward
    pass over [window 1 | window 2 (minus shared tokens) | window 3 (...) | task] with the
    block-diagonal 4-D mask and the PCW position ids; with ``rescale`` the task tokens' mask
    carries −rescale·log(3) on every window's own tokens (not on the shared prefix)."""
    head, tail = template_parts(raw, PROMPT, Q)
    sp = specials(raw, True)
    texts = [TEXT, "Tides at Karsk are strongest in March.", "The island ferry leaves at nine every morning and returns at six."]
    wins = [token_ids(raw, head + t, sp) for t in texts]
    task = token_ids(raw, tail)
    logits, _, info = pcw_prefill(raw, wins, task, dedupe, rescale)  # (m, V)

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
    bias = torch.zeros((n, n))
    for q in range(n):
        for k in range(q + 1):
            same = owner[k] == owner[q]
            shared = owner[k] == 0 and pos[k] < starts[owner[q]]  # the copy of the prefix all windows share
            allowed[q, k] = owner[q] == -1 or same or shared
            if owner[q] == -1 and owner[k] >= 0 and not (owner[k] == 0 and pos[k] < starts[1]):
                bias[q, k] = -rescale * math.log(len(wins))
    mask = bias.masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    ref, _ = raw.forward([seq], attention_mask=mask, position_ids=[pos], use_cache=False)
    assert torch.allclose(logits, ref[0, K:], atol=1e-4, rtol=1e-4), float((logits - ref[0, K:]).abs().max())
    assert logits.shape == (len(task), ref.shape[-1])
    if rescale:  # the bias changes the answer's distribution
        plain, _, _ = pcw_prefill(raw, wins, task, dedupe, 0.0)
        assert not torch.allclose(plain, logits, atol=1e-3)


def test_window_bias():
    b = window_bias([0, 5, 5], [12, 9, 7], 1.0)
    assert b.shape == (12 + 4 + 2,) and (b[:5] == 0).all() and torch.allclose(b[5:], torch.full((13,), -math.log(3)))
    assert (window_bias([0, 5, 5], [12, 9, 7], 0.0) == 0).all() and (window_bias([0], [12], 1.0) == 0).all()


def test_generation_with_several_windows_is_consistent(raw):
    """Generation continues the prefill: the first token is the argmax of the last task logits and
    the cache holds every window once (minus the shared prefix) plus the task and answer."""
    head, tail = template_parts(raw, PROMPT, Q)
    sp = specials(raw, True)
    wins = [token_ids(raw, head + t, sp) for t in (TEXT, "Tides at Karsk are strongest in March.")]
    task = token_ids(raw, tail)
    logits, _, info = pcw_prefill(raw, wins, task, "bos", 1.0)
    out = pcw_generate(raw, wins, task, max_new_tokens=4, dedupe="bos", rescale=1.0)
    assert out["ids"] and out["ids"][0] == int(logits[-1].argmax())
    assert info["cache_tokens"] == len(wins[0]) + len(wins[1]) - 1


def test_windows_pack_the_budget(raw):
    chunks = make_chunks(["alpha beta gamma delta " * 10] * 7)
    wins, dropped = make_windows(raw, chunks, budget=100)
    assert dropped == 0 and [c.index for w in wins for c in w] == list(range(7))
    assert all(sum(raw.count_tokens(c.text) for c in w) <= 100 for w in wins)
    wins2, _ = make_windows(raw, chunks, budget=400, n_windows=3)
    assert len(wins2) == 3


def test_asking_for_more_windows_never_drops_what_fits(raw):
    """Uneven pieces: n_windows at or above the number of pieces keeps every piece (two large ones
    used to share a window and one was dropped while other windows stayed empty); with fewer windows a
    piece that does not fit moves on to the next window with room (or, at the end, any window with room:
    windows are read in parallel), in order inside each window."""
    sizes = [90, 20, 90, 45, 90, 60, 90, 60, 90]
    chunks = make_chunks([" ".join(f"w{i}x{j}" for j in range(n // 3)) for i, n in enumerate(sizes)])
    n = [raw.count_tokens(c.text) for c in chunks]
    budget = max(n) + 2
    for k in (len(chunks), len(chunks) + 5, 50):
        wins, dropped = make_windows(raw, chunks, budget, n_windows=k)
        assert dropped == 0 and [c.index for w in wins for c in w] == list(range(len(chunks))), k
    wins, dropped = make_windows(raw, chunks, budget, n_windows=5)
    order = [c.index for w in wins for c in w]
    assert all([c.index for c in w] == sorted(c.index for c in w) for w in wins)  # in order inside a window
    assert len(set(order)) == len(order) and dropped == len(chunks) - len(order)
    assert all(sum(raw.count_tokens(c.text) for c in w) + 2 * (len(w) - 1) <= budget for w in wins)


def test_uneven_pieces_fill_windows_before_any_is_dropped():
    from ctxflow.llm.fake import FakeLLM

    llm = FakeLLM()
    for sizes, k, budget in (([8, 10, 1], 4, 10), ([7, 1, 5, 7, 1], 4, 7)):
        chunks = make_chunks([" ".join(f"w{i}x{j}" for j in range(n)) for i, n in enumerate(sizes)])
        wins, dropped = make_windows(llm, chunks, budget, n_windows=k)
        assert dropped == 0 and sorted(c.index for w in wins for c in w) == list(range(len(sizes))), (sizes, wins)


def test_context_slot_must_appear_once():
    with pytest.raises(UserError, match="exactly once"):
        PCW(prompt="{context}\n{question}\n{context}")
    with pytest.raises(UserError, match="exactly once"):
        NBCE(prompt="{context} {question} {context}")


def test_emulated_context_is_respected_and_long_input_uses_many_windows(raw):
    small = LocalLM(cache=False, max_context=160)
    text = " ".join(f"Sentence {i} tells nothing of note about the harbour." for i in range(60))  # ~700 tokens
    ans = PCW(llm=small, max_new_tokens=4).run(chunks=[_chunk(text)], question=Q)["answer"]
    t = ans.trace
    assert t["windows"] >= 4 and t["max_window"] + len(token_ids(small, template_parts(small, PROMPT, Q)[1])) + 4 <= 160
    assert t["chunks_dropped"] == 0


class WordEmbedder(Embedder):
    """A scripted embedder: the vector counts a few words, so similarity = shared words."""
    WORDS = ["lighthouse", "door", "red", "harbour", "ferry"]
    dim = len(WORDS)

    def embed(self, texts, kind="passage"):
        return np.array([[t.lower().count(w) for w in self.WORDS] for t in texts], dtype=float)


def test_keep_windows_keeps_the_best_in_order(raw):
    """More windows than ``keep_windows``: the best by embedding similarity are kept, in their
    original order; the others' chunks count as dropped."""
    small = LocalLM(cache=False, max_context=160)
    filler = [f"Sentence {i} says the harbour is calm and grey today, nothing more of note." for i in range(8)]
    texts = filler[:3] + [TEXT] + filler[3:6] + ["The ferry to the lighthouse leaves at nine."] + filler[6:]
    chunks = make_chunks(texts)
    ans = PCW(llm=small, max_new_tokens=8, window_tokens=40, keep_windows=2, embedder=WordEmbedder()).run(
        chunks=chunks, question=Q)["answer"]
    t = ans.trace
    assert t["windows"] == 2 and t["windows_packed"] > 2 and t["rank"] == "embedding"
    assert t["chunks_used"] + t["chunks_dropped"] == len(chunks)
    assert len(t["window_scores"]) == t["windows_packed"]
    wins, _ = make_windows(small, chunks, 40)
    best, scores = rank_windows(small, wins, Q, 2, "embedding", WordEmbedder())
    top = sorted(sorted(range(len(wins)), key=lambda i: -scores[i])[:2])
    assert best == [wins[i] for i in top] and any(TEXT in c.text for w in best for c in w)


def test_rank_by_incoming_score_and_order(raw):
    chunks = make_chunks([f"word{i} " * 30 for i in range(6)])  # ~60 model tokens each: one window apiece
    wins, _ = make_windows(raw, chunks, 70)
    assert len(wins) == 6
    scores = SpanScores([(c, float(i % 3)) for i, c in enumerate(chunks)])  # best: chunks 2 and 5
    best, _ = rank_windows(raw, wins, Q, 2, "score", scores=scores)
    assert [w[0].index for w in best] == [2, 5]
    assert rank_windows(raw, wins, Q, 2, "order")[0] == wins[:2]


@pytest.mark.parametrize("kind", ["pcw", "nbce"])
def test_stop_string_cuts_exactly_where_the_unstopped_text_has_it(raw, kind):
    """Stopped text == the unstopped text cut before the first occurrence of the stop string,
    and the reason is 'stop'."""
    chunks = [_chunk(TEXT), _chunk("Tides at Karsk are strongest in March.")]

    def run(stop=None):
        comp = PCW(llm=raw, max_new_tokens=16, stop=stop) if kind == "pcw" else NBCE(llm=raw, max_new_tokens=16, stop=stop)
        return comp.run(chunks=chunks, question=Q)["answer"]

    full = run()
    words = full.text.split()
    assert len(words) >= 4, full.text
    stop = " " + words[2]  # a string that appears mid-answer
    cut = full.text[: full.text.find(stop)]
    got = run([stop])
    assert got.text == cut.strip() and got.trace["finish_reason"] == "stop"
    assert run(["no such string anywhere"]).text == full.text


def test_bad_parameters():
    with pytest.raises(UserError):
        PCW(llm="llm", prompt="no slots here")
    with pytest.raises(UserError):
        PCW(llm="llm", dedupe="all")
    with pytest.raises(UserError):
        PCW(llm="llm", n_windows=0)
    with pytest.raises(UserError):
        PCW(llm="llm", keep_windows=0)
    with pytest.raises(UserError, match="rescale"):
        PCW(llm="llm", rescale=-1)
    with pytest.raises(UserError, match="rank"):
        PCW(llm="llm", rank="luck")
    with pytest.raises(UserError, match="embedder"):
        PCW(llm="llm", keep_windows=2)  # rank 'embedding' without an embedder
