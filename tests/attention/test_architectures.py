"""The sparse backend on other transformers architectures (tiny random models, CPU): it computes the
model's own attention where it can (sliding windows, GQA), refuses what it cannot (logit soft-capping,
learned sink logits) instead of silently dropping it, and its kernel prefill path only takes masks that
are causal + left padding."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxflow.attention.kernels import _left_padded_lengths, apply_plan, remove_plan
from ctxflow.attention.rules import FULL, Plan, Rule


def tiny(model_type, **kw):
    cfg = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=100,
                               max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def plan_for(model, rule, sinks=4):
    c = model.config
    return Plan.uniform("tiny", c.num_hidden_layers, c.num_attention_heads, rule, sinks=sinks, kind="moa")


@pytest.mark.parametrize("model_type,kw", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 16})])
def test_full_plan_equals_the_models_own_attention(model_type, kw):
    m = tiny(model_type, **kw)
    x = torch.randint(3, 100, (2, 40))
    with torch.no_grad():
        ref = m(input_ids=x).logits
        apply_plan(m, plan_for(m, FULL))
        got = m(input_ids=x).logits
    remove_plan(m, "eager")
    assert (got - ref).abs().max() < 1e-5


def test_sliding_window_model_keeps_its_window_on_the_kernel_prefill_path(monkeypatch):
    """Mistral's sliding window (16) is part of transformers' mask; the kernel path (which never reads the
    mask's interior) must not take such a mask: the masked path ANDs the plan's window (24 + 4 sinks,
    wider) with the model's, so the result is the model's own attention."""
    from ctxflow.attention import window_flash

    calls = []
    real = window_flash.window_prefill
    monkeypatch.setattr(window_flash, "window_prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = tiny("mistral", sliding_window=16)
    x = torch.randint(3, 100, (1, 40))
    wide = plan_for(m, Rule(24, 0.0), sinks=4)
    with torch.no_grad():
        own = m(input_ids=x).logits
        apply_plan(m, wide, prefill="sdpa")
        assert calls == []  # apply_plan's 4-token check forward takes the masked path
        got = m(input_ids=x).logits
        assert calls == []
        got_short = m(input_ids=x[:, :16]).logits  # within the model's window the mask is plain causal:
        assert len(calls) == 2  # the kernel path runs, once per layer (its window 24 covers all 16 tokens)
    remove_plan(m, "eager")
    assert (got - own).abs().max() < 1e-5
    assert (got_short - own[:, :16]).abs().max() < 1e-5


def test_models_whose_attention_the_backend_cannot_compute_are_refused():
    gemma = tiny("gemma2", attn_logit_softcapping=5.0, query_pre_attn_scalar=16)
    with pytest.raises(ValueError, match="caps its attention logits .*use attention type 'dense'"):
        apply_plan(gemma, plan_for(gemma, FULL))
    oss = tiny("gpt_oss", num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(ValueError, match="learned attention-sink logits"):
        apply_plan(oss, plan_for(oss, Rule(8, 0.0)))
    assert oss.config._attn_implementation == "eager"  # nothing was switched


def left_padded(K: int, pads: list[int]):
    """(causal (K, K), valid (B, K), mask (B, 1, K, K) as transformers builds it) for left pads per row."""
    i = torch.arange(K)
    causal = i[None, :] <= i[:, None]
    valid = i[None, :] >= torch.tensor(pads)[:, None]
    return causal, valid, (causal[None] & valid[:, None, :])[:, None]


def test_kernel_prefill_takes_only_causal_plus_left_padding_masks():
    K = 12
    i = torch.arange(K)
    causal, valid, left = left_padded(K, [0, 5])
    assert _left_padded_lengths(left, K) == [12, 7]
    assert _left_padded_lengths(torch.where(left, 0.0, float("-inf")), K) == [12, 7]  # additive float masks too
    packed = causal & ((i[:, None] < 6) == (i[None, :] < 6))  # two sequences packed in one row
    assert _left_padded_lengths(packed[None, None].expand(2, 1, K, K).clone(), K) is None
    sliding = causal & (i[:, None] - i[None, :] < 4)
    assert _left_padded_lengths(sliding[None, None].clone(), K) is None
    right = (causal[None] & valid.flip(-1)[:, None, :])[:, None]
    assert _left_padded_lengths(right, K) is None


def test_kernel_prefill_mask_edge_cases():
    from ctxflow.attention.kernels import LayerRules, sparse_sdpa

    K = 10
    causal, _, mask = left_padded(K, [0, 4, K])  # row 2 has no real token
    assert _left_padded_lengths(mask, K) == [10, 6, 0]
    assert _left_padded_lengths(mask[:, :, 1:], K) is None  # queries != keys
    swap = causal.clone()
    swap[9, 9], swap[0, 9] = False, True  # the same number of visible pairs, one of them non-causal
    assert _left_padded_lengths(swap[None, None].clone(), K) is None
    m = causal[None, None].clone()
    assert _left_padded_lengths(m, K) == [10]
    m[0, 0, 5, 2] = False  # changed in place after being read: the version counter moves on
    assert _left_padded_lengths(m, K) is None

    class Mod:
        pass

    mod = Mod()
    mod._ctxflow_rules = LayerRules([3.0] * 2, [0.0] * 2, 2, "torch")
    q, k, v = torch.randn(3, 2, K, 8), torch.randn(3, 1, K, 8), torch.randn(3, 1, K, 8)
    out, _ = sparse_sdpa(mod, q, k, v, mask)
    assert torch.isfinite(out).all() and (out[2] == 0).all() and (out[1, :4] == 0).all()  # pad queries: zeros
    ref_mod = Mod()
    ref_mod._ctxflow_rules = LayerRules([3.0] * 2, [0.0] * 2, 2, "masked")
    ref, _ = sparse_sdpa(ref_mod, q, k, v, mask)
    assert torch.allclose(out[0], ref[0], atol=1e-5) and torch.allclose(out[1, 4:], ref[1, 4:], atol=1e-5)
    # one mask row broadcast over a batch of three: the masked path (the kernel path needs one row per row)
    one = mask[:2][1:2]
    out1, _ = sparse_sdpa(mod, q, k, v, one)
    ref1, _ = sparse_sdpa(ref_mod, q, k, v, one)
    assert torch.equal(out1, ref1)
    with pytest.raises(ValueError, match="neither attention logit soft-capping nor learned sink logits"):
        sparse_sdpa(mod, q, k, v, mask, softcap=30.0)
    with pytest.raises(ValueError, match="neither attention logit soft-capping nor learned sink logits"):
        sparse_sdpa(mod, q, k, v, mask, s_aux=torch.zeros(2))


def test_ring_cache_refuses_models_with_windows_of_their_own():
    from ctxflow.attention.ring import ring_cache

    m = tiny("mistral", sliding_window=16)
    apply_plan(m, plan_for(m, Rule(8, 0.0)))
    with pytest.raises(ValueError, match="limits its sliding_attention layers to a window of its own \\(16 tokens\\) and this generation reaches 20 tokens.*use cache 'dynamic'"):
        ring_cache(m, [10], 20)
    assert len(ring_cache(m, [10], 16).layers) == 2  # within the model's window: nothing to keep
    ok = tiny("llama")
    apply_plan(ok, plan_for(ok, Rule(8, 0.0)))
    assert len(ring_cache(ok, [10], 20).layers) == 2


def test_a_refused_model_is_left_as_it_was():
    """BLOOM keeps its own attention code: the verification forward sees no layer run the backend, so the
    plan is refused and the model keeps its attention implementation and no rules."""
    from transformers import BloomConfig, BloomForCausalLM

    from ctxflow.attention.kernels import NAME, attention_modules

    m = BloomForCausalLM(BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=2)).eval()
    before = m.config._attn_implementation
    with pytest.raises(ValueError, match="does not run through transformers' attention interface"):
        apply_plan(m, Plan.uniform("tiny", 2, 2, Rule(8, 0.0), sinks=4))
    assert m.config._attn_implementation == before != NAME
    assert not any(hasattr(x, "_ctxflow_rules") for x in attention_modules(m))
