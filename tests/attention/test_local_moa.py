"""The attention= and rope_scaling= options of LocalLM on the real default model."""
import pytest
import torch

from ctxflow.attention.rules import FULL, Plan, Rule
from ctxflow.errors import UserError
from ctxflow.graph.spec import dumps, loads
from ctxflow.llm.local import LocalLM

PROMPTS = ["Name a primary colour.", "Write one sentence about the sea, then stop. Keep it short and simple please."]


@pytest.fixture(scope="module")
def full_plan(tmp_path_factory, llm):
    cfg = llm.model.config
    p = Plan.uniform(llm.model_id, cfg.num_hidden_layers, cfg.num_attention_heads, FULL, sinks=4, kind="moa")
    return str(p.save(tmp_path_factory.mktemp("plans") / "full.json"))


def test_full_window_generation_equals_dense_token_for_token(llm, full_plan):
    dense = LocalLM(cache=False)
    moa = LocalLM(cache=False, attention={"type": "moa", "plan": full_plan})
    assert moa.model is not dense.model and moa.model.config._attn_implementation == "ctxflow_sparse"
    a = dense.generate(PROMPTS, max_new_tokens=8)  # one left-padded batch
    b = moa.generate(PROMPTS, max_new_tokens=8)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.n_tokens for g in a] == [g.n_tokens for g in b] and all(g.n_tokens > 0 for g in a)


def test_narrow_windows_are_causal_and_change_far_predictions(llm):
    s = LocalLM(cache=False, attention={"type": "streaming", "density": 0.1, "sinks": 2})
    ids = s.encode("The quick brown fox jumps over the lazy dog. " * 12)  # ~120 tokens
    x = torch.tensor([ids])
    y = x.clone()
    y[0, -1] = (y[0, -1] + 7) % 1000
    lx, _ = s.forward(x, use_cache=False)
    ly, _ = s.forward(y, use_cache=False)
    assert torch.allclose(lx[0, :-1], ly[0, :-1], atol=1e-4)  # causal masking kept
    ld, _ = LocalLM(cache=False).forward(x, use_cache=False)
    assert torch.allclose(lx[0, :8], ld[0, :8], atol=1e-3)  # near the start the window holds everything
    assert (lx[0, -1] - ld[0, -1]).abs().max() > 1e-2  # far tokens were dropped


def test_yaml_attention_and_rope_dump_back():
    text = """version: 1
models:
  llm: {type: local, model: default, attention: {type: streaming, density: 0.25, sinks: 16}, rope_scaling: {type: yarn, factor: 2}}
components:
  chunk: {type: chunk.recursive, size: 128, llm: llm}
inputs: {document: chunk.text}
"""
    p = loads(text)
    m = p.models["llm"]
    assert m.attention == {"type": "streaming", "density": 0.25, "sinks": 16}
    assert m.rope_scaling == {"type": "yarn", "factor": 2.0}
    assert "attention" in dumps(p) and m.spec()["rope_scaling"]["type"] == "yarn"
    assert "+streaming-0.25-s16+rope-yarn-2" in m.model_id  # LLM-call cache keys stay apart
    with pytest.raises(Exception, match="attention type 'sparse' is not one of dense, streaming, moa"):
        loads(text.replace("type: streaming", "type: sparse"))


def test_rope_scaling_extends_context():
    m = LocalLM(cache=False, rope_scaling={"type": "linear", "factor": 2})
    assert m.context_length == 16384
    assert m.model.model.rotary_emb.rope_type == "linear"
    with pytest.raises(ValueError, match="factor must be a number >= 1"):
        LocalLM(rope_scaling={"type": "linear", "factor": 0.5})


def test_plan_for_another_model_is_refused(tmp_path):
    p = Plan("other", [[Rule(0, 1)] * 4] * 2).save(tmp_path / "p.json")
    with pytest.raises(UserError, match="2 layers x 4 heads"):
        LocalLM(cache=False, attention=str(p)).warm_up()


def test_moa_eval_cli_refuses_bad_counts(capsys):
    from ctxflow.cli import main

    assert main(["moa", "eval", "--keys", "0"]) == 2
    assert "--windows and --keys must be >= 1, got 4 and 0" in capsys.readouterr().err
    assert main(["moa", "eval", "--windows", "0"]) == 2
    assert "got 0 and 8" in capsys.readouterr().err


def test_moa_cli_names_a_file_that_is_not_a_profile_or_plan(tmp_path, capsys):
    from ctxflow.cli import main

    text, binary = tmp_path / "notes.txt", tmp_path / "blob.bin"
    text.write_text("not a profile\n")
    binary.write_bytes(b"\x80\xb7\x00binary")
    assert main(["moa", "search", str(text), "-o", str(tmp_path / "plan.json"), "--density", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"'{text}' is not a profile written by `ctxflow moa profile`" in err and "weights_only" not in err
    assert main(["moa", "eval", "--plan", str(binary)]) == 2
    assert f"attention plan '{binary}' is not a JSON text file" in capsys.readouterr().err


def test_quality_table_rows_are_paired_over_the_same_windows(llm, full_plan):
    """Real model, short windows: every row scores the same held-back windows, so a full-window MoA
    plan matches dense window by window (gap and paired SE ~0) while a narrow streaming window is
    worse, with its paired SE from the per-window differences."""
    import math

    from ctxflow.attention.evaluate import quality_table

    t = quality_table({"dense": None, "full": {"type": "moa", "plan": full_plan},
                       "narrow": {"type": "streaming", "density": 0.1, "sinks": 4, "length": 512}},
                      length=512, n_windows=3, n_keys=1, retrieval_length=256)
    rows = t["rows"]
    assert all(len(r["window_nll"]) == 3 for r in rows.values())
    for r in rows.values():
        assert r["perplexity"] == pytest.approx(math.exp(sum(r["window_nll"]) / 3))
    assert rows["dense"]["ppl_vs_dense"] == 0 and rows["dense"]["log_ratio_se"] == 0
    assert rows["full"]["window_nll"] == pytest.approx(rows["dense"]["window_nll"], abs=1e-3) and rows["full"]["log_ratio_se"] < 1e-3
    assert rows["narrow"]["ppl_vs_dense"] > 0.01 and rows["narrow"]["log_ratio_se"] > 0


@pytest.mark.parametrize("path", ["sdpa", "torch"])
def test_kernel_prefill_path_equals_masked_sdpa_on_the_real_model(llm, path, monkeypatch):
    """The prefill path that skips the (B, H, N, N) mask (window_flash; on a GPU FA4 / cuDNN / flex,
    here its CPU backends, asked for by name) gives the masked backend's logits under the bundled 50%
    plan: on an unpadded batch (one call per sparse layer), on a left-padded batch (one call per
    layer and real length, real positions compared), while a right-padded batch falls back to the
    masked path (same logits exactly)."""
    from ctxflow.attention import window_flash
    from ctxflow.attention.kernels import apply_plan, remove_plan
    from ctxflow.attention.rules import resolve_plan_path

    calls = []
    real = window_flash.window_prefill
    monkeypatch.setattr(window_flash, "window_prefill", lambda *a, **k: calls.append((k["backend"], tuple(a[0].shape[:3]))) or real(*a, **k))

    model = llm.model
    impl = model.config._attn_implementation
    plan = Plan.load(resolve_plan_path("smollm2-135m-50"))
    text = "In the beginning the Jargon File was a collection of terms from technical cultures. " * 50
    ids = llm.encode(text)[:500]
    assert len(ids) == 500
    x = torch.tensor([ids, ids[::-1], ids[3:] + ids[:3]])  # three rows, no padding
    left = torch.ones_like(x)
    left[1, :50] = 0  # left-padded: rows 0 and 2 have 500 real tokens, row 1 has 450
    right = torch.ones_like(x)
    right[1, -50:] = 0
    try:
        with torch.inference_mode():
            apply_plan(model, plan, prefill="masked")
            ref = model(input_ids=x).logits
            ref_left = model(input_ids=x, attention_mask=left).logits
            ref_right = model(input_ids=x, attention_mask=right).logits
            assert calls == []
            apply_plan(model, plan, prefill=path)
            got = model(input_ids=x).logits
            n_layers = len(calls)
            assert {c for c in calls} == {(path, (3, 9, 500))}
            del calls[:]
            got_left = model(input_ids=x, attention_mask=left).logits
            assert len(calls) == 2 * n_layers and set(calls) == {(path, (2, 9, 500)), (path, (1, 9, 450))}
            del calls[:]
            got_right = model(input_ids=x, attention_mask=right).logits
        assert calls == [] and torch.equal(got_right, ref_right)  # masked path, nothing else
        assert n_layers == sum(not all(r.alpha == 0 and r.beta >= 1 for r in layer) for layer in plan.rules) > 20
        assert plan.rules[5][0].span(500) < 500  # the plan does cut far keys at this length
        assert (got - ref).abs().max() < 1e-3 * ref.abs().max()
        for r, p0 in ((0, 0), (1, 50), (2, 0)):  # real positions of the left-padded batch
            assert (got_left[r, p0:] - ref_left[r, p0:]).abs().max() < 1e-3 * ref_left[r, p0:].abs().max()
        assert (got_left[1, 50:] - got[1, 50:]).abs().max() > 1e-2  # padding changed row 1 (windows count real tokens)
        with pytest.raises(ValueError, match="unknown prefill path 'fa5'; valid: 'auto', 'masked'"):
            apply_plan(model, plan, prefill="fa5")
    finally:
        remove_plan(model, impl)


RING_PROMPTS = ["Name a primary colour.", "What is 2+2?",
                "Write one sentence about the sea, then stop. Keep it short and simple please. " * 3]


def test_ring_cache_with_full_windows_generates_like_dense(llm, full_plan):
    """cache: ring (sinks + ring buffer per KV head, sized once) with every head at full window: the
    same tokens as dense generation, on a left-padded batch whose rows finish at different steps."""
    dense = LocalLM(cache=False)
    ring = LocalLM(cache=False, attention={"type": "moa", "plan": full_plan, "cache": "ring"})
    a, b = dense.generate(RING_PROMPTS, max_new_tokens=24), ring.generate(RING_PROMPTS, max_new_tokens=24)
    assert [g.text for g in b] == [g.text for g in a] and [g.n_tokens for g in b] == [g.n_tokens for g in a]
    assert len({g.n_tokens for g in a}) > 1  # rows did leave the batch at different steps
    assert ring.model_id.endswith("-ring") and ring.spec()["attention"]["cache"] == "ring"


def test_ring_cache_wraps_and_stays_fixed_in_size(llm, tmp_path, monkeypatch):
    """A constant window (32 tokens + 4 sinks) is the same window on both caches, so the ring (which
    wraps many times here) generates exactly what the default cache does; its buffers are sized once
    from the plan (≤ 36 slots per KV head) however many tokens are generated."""
    from ctxflow.attention import ring as ring_m

    cfg = llm.model.config
    plan = Plan.uniform(llm.model_id, cfg.num_hidden_layers, cfg.num_attention_heads, Rule(32, 0.0), sinks=4, kind="moa")
    path = str(plan.save(tmp_path / "w32.json"))
    made = []
    real = ring_m.ring_cache
    monkeypatch.setattr(ring_m, "ring_cache", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    dyn = LocalLM(cache=False, attention={"type": "moa", "plan": path})
    ring = LocalLM(cache=False, attention={"type": "moa", "plan": path, "cache": "ring"})
    a, b = dyn.generate(RING_PROMPTS, max_new_tokens=40), ring.generate(RING_PROMPTS, max_new_tokens=40)
    assert [g.text for g in b] == [g.text for g in a]
    assert max(g.n_prompt_tokens for g in a) > 60 and max(g.n_tokens for g in a) > 30  # past the window: wrapped
    layers = made[0].layers
    assert all(c == 36 for layer in layers for c in layer.caps)
    per_slot = 2 * cfg.head_dim * 4  # K and V, float32
    assert all(layer.nbytes() <= len(RING_PROMPTS) * cfg.num_key_value_heads * 36 * per_slot for layer in layers)


def test_ring_cache_option_is_validated():
    with pytest.raises(ValueError, match="attention cache must be one of dynamic, ring .* got 'paged'"):
        LocalLM(attention={"type": "streaming", "cache": "paged"})
    assert LocalLM(attention={"type": "streaming", "cache": "dynamic"}).attention == {"type": "streaming", "density": 0.5, "sinks": 64}


def test_ring_cache_streams_the_same_text_and_only_serves_its_own_steps(llm, full_plan):
    from ctxflow.attention.ring import RingLayer

    dense = LocalLM(cache=False)
    ring = LocalLM(cache=False, attention={"type": "moa", "plan": full_plan, "cache": "ring"})
    pieces = []
    g = ring.generate_stream(RING_PROMPTS[2], pieces.append, max_new_tokens=20)
    assert "".join(pieces) == g.text == dense.generate([RING_PROMPTS[2]], max_new_tokens=20)[0].text
    layer = RingLayer([8], 2, 2, [5])
    k = torch.randn(1, 1, 5, 4)
    layer.update(k, k.clone())
    step = torch.randn(1, 1, 1, 4)
    layer.update(step, step.clone())
    q = torch.randn(1, 2, 1, 4)
    assert layer.decode_step(q, step) and not layer.decode_step(q, step.clone())  # another forward's token: not ours
