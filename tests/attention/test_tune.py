"""Learned rule gates (ctxflow moa tune): the mixture kernel against the sparse backend, the
rounding MILP, the training loop and the CLI on the real model."""
import json

import pytest
import torch

from ctxflow.attention.kernels import LayerRules, sparse_sdpa
from ctxflow.attention.rules import FULL, Plan, Rule
from ctxflow.attention.tune import Gates, expected_density, layer_candidates, ladder, mixture_attention, round_gates

LENGTHS = [256, 512]


class _Mod:
    pass


def test_mixture_with_one_hot_gates_is_the_sparse_backend():
    """p one-hot on candidate r == the masked-SDPA backend with every head on rule r; a 50/50 mixture is the mean (GQA, fresh inputs)."""
    g = torch.Generator().manual_seed(3)
    B, H, Hkv, N, D = 2, 6, 2, 200, 16
    q, k, v = (torch.randn(B, h, N, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))
    rules = [Rule(0, 0.25), Rule(48, 0), FULL]
    spans = [r.span(N) for r in rules]
    outs = []
    for r in rules:
        m = _Mod()
        m._ctxflow_rules = LayerRules([r.alpha] * H, [r.beta] * H, 16)
        outs.append(sparse_sdpa(m, q, k, v, None)[0])
    for j in range(len(rules)):
        m = _Mod()
        p = torch.zeros(H, len(rules), dtype=torch.float64)
        p[:, j] = 1
        m._ctxflow_mix = (spans, p, 16)
        got = mixture_attention(m, q, k, v)[0]
        assert torch.allclose(got, outs[j], atol=1e-10), j
    m = _Mod()
    p = torch.zeros(H, len(rules), dtype=torch.float64)
    p[:3, 0] = 1
    p[3:, 1] = p[3:, 2] = 0.5
    m._ctxflow_mix = (spans, p, 16)
    got = mixture_attention(m, q, k, v)[0]  # (B, N, H, D)
    assert torch.allclose(got[:, :, :3], outs[0][:, :, :3], atol=1e-10)
    assert torch.allclose(got[:, :, 3:], (outs[1][:, :, 3:] + outs[2][:, :, 3:]) / 2, atol=1e-10)


def test_paired_gain_separates_a_shift_from_noise():
    """The keep rule's statistic: a consistent per-sample gain is many standard errors; the same mean
    gain carried by one sample of a noisy draw is within two."""
    from ctxflow.attention.evaluate import paired_gain

    g = torch.Generator().manual_seed(0)
    before = 2 + torch.rand(64, generator=g, dtype=torch.float64)
    gain, se = paired_gain(before, before - 0.01 - 0.001 * torch.rand(64, generator=g, dtype=torch.float64))
    assert gain == pytest.approx(0.0105, abs=1e-3) and gain > 20 * se
    after = before.clone()
    after[0] -= 0.64  # same mean gain (0.01), all of it from one sample
    gain, se = paired_gain(before, after)
    assert gain == pytest.approx(0.01) and gain < 2 * se
    assert paired_gain(before[:1], before[:1] - 1)[1] == float("inf")  # one sample: no error estimate, never kept


def test_candidates_gates_and_expected_density():
    own = [Rule(-64, 0.5), Rule(128, 0)]
    plan = Plan("fake", [[own[0], own[1], own[0]], [FULL] * 3], sinks=64, density=0.5, profiled_lengths=LENGTHS)
    cands = layer_candidates(plan, LENGTHS)
    assert cands[0][:2] == own and cands[1][0] == FULL and len(set(cands[1])) == len(cands[1])
    assert all(r.valid(LENGTHS) for c in cands for r in c) and Rule(512.0, 0.0) not in ladder(LENGTHS)  # 512 > 256 tokens
    gates = Gates(plan, cands, init=50.0)  # ~one-hot on the plan's rules
    with torch.no_grad():
        p = gates.probs()
        for n in LENGTHS:
            assert abs(float(expected_density(p, gates.densities(n))) - plan.mean_density(n)) < 1e-6
    assert len(cands[1]) < gates.R and float(p[1, :, len(cands[1]):].sum()) == 0  # padding is never chosen


def test_rounding_follows_the_gates_within_budget_and_two_rules_per_layer():
    """Gates that want head (0, 1) full and the rest narrow: the rounded plan follows them while the
    budget holds at every length and no layer uses more than two rules."""
    narrow, mid = Rule(64, 0), Rule(0, 0.25)
    plan = Plan("fake", [[mid, mid, mid], [mid, mid, mid]], sinks=16, density=None, profiled_lengths=LENGTHS)
    plan.density = max(plan.mean_density(n) for n in LENGTHS)
    cands = layer_candidates(plan, LENGTHS)
    logits = torch.full((2, 3, max(len(c) for c in cands)), -5.0)
    for l in range(2):
        for h in range(3):
            want = FULL if (l, h) == (0, 1) else narrow
            logits[l, h, cands[l].index(want)] = 5.0
            logits[l, h, cands[l].index(Rule(0, 0.125))] = 4.0 if (l, h) != (0, 1) else -5.0
    p = torch.softmax(logits, -1)
    new = round_gates(plan, cands, p, LENGTHS)
    assert new is not None and new.rules[0][1] == FULL
    for n in LENGTHS:
        assert new.mean_density(n) <= plan.density + 1e-9
    assert all(len(set(layer)) <= 2 for layer in new.rules)
    # gates that agree with the plan: nothing to change
    same = torch.full_like(logits, -5.0)
    for l in range(2):
        for h in range(3):
            same[l, h, cands[l].index(mid)] = 5.0
    assert round_gates(plan, cands, torch.softmax(same, -1), LENGTHS) is None


def test_tune_on_the_real_model_trains_the_gates_and_restores_the_model(llm):
    """Hard mode on the real model with a budget that never binds (density 1), so only the loss's
    straight-through gradient can move the gates; the model is restored afterwards, also when the run
    fails half-way."""
    from ctxflow.attention.data import calibration_samples, answer_with, sample_ids
    from ctxflow.attention.rules import uniform_rule
    from ctxflow.attention.tune import tune

    cfg = llm.model.config
    n = 256
    plan = Plan.uniform(llm.model_id, cfg.num_hidden_layers, cfg.num_attention_heads, uniform_rule(0.5, n, 64), sinks=64,
                        kind="moa", density=1.0, profiled_lengths=[n])
    cal = answer_with(llm, calibration_samples(llm.count_tokens, n - 72, 2, 5, objective="mixed", text_tokens=n), max_new_tokens=8)
    seqs = [sample_ids(llm, s) for s in cal]
    impl, req = cfg._attn_implementation, [q.requires_grad for q in llm.model.parameters()]

    def restored():
        return (cfg._attn_implementation == impl and [q.requires_grad for q in llm.model.parameters()] == req
                and not any(hasattr(m, "_ctxflow_mix") for m in llm.model.modules()))

    out = tune(llm, plan, seqs, [n], steps=3, batch_tokens=2 * n, lr=0.5, tau_end=0.5, hard=True)  # the CLI test runs the soft mixture
    t = out.meta["tune"]
    assert t["steps"] == 3 and t["hard"] and t["samples"] == 2 and all(map(lambda x: x == x, (t["nll_first"], t["nll_last"])))
    assert t["lambda"] == {str(n): 0.0}  # the budget never pushed
    with torch.no_grad():
        untrained = float(Gates(plan, layer_candidates(plan, [n]), 3.0).probs(0.5).max(-1).values.mean())
    assert abs(t["confidence"] - untrained) > 1e-4  # the loss's gradient reached the gates
    assert restored() and out is not plan and plan.meta == {}

    def boom(i, k, rec):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        tune(llm, plan, seqs, [n], steps=2, batch_tokens=2 * n, progress=boom)
    assert restored()


def test_tune_cli_errors_and_run(llm, tmp_path, capsys):
    """`ctxflow moa tune` on the bundled 50% plan, a short run at 256 tokens: the plan written keeps
    the budget at every length and records the run; bad arguments give clear errors."""
    from ctxflow.cli import main

    out = tmp_path / "x.json"
    assert main(["moa", "tune", "smollm2-135m-50", "--steps", "0", "-o", str(out)]) == 2
    assert "--steps" in capsys.readouterr().err and not out.exists()
    Plan.uniform(llm.model_id, 2, 2, FULL, sinks=0, kind="dense").save(tmp_path / "d.json")
    assert main(["moa", "tune", str(tmp_path / "d.json"), "-o", str(out)]) == 2
    assert "searched MoA plan" in capsys.readouterr().err
    assert main(["moa", "tune", "smollm2-135m-50", "--lengths", "256", "--samples", "2", "--steps", "2", "--batch-tokens", "512",
                 "--validate", "256", "--val-samples", "1", "-o", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = Plan.load(out)
    t = saved.meta["tune"]
    assert t["kept"] == res["kept_tuned"] and t["steps"] == 2 and res["validation_loss"][0] > 0
    bundled = Plan.load("smollm2-135m-50")  # denser than its budget below the lengths it was searched for (256)
    assert all(d <= max(saved.density, bundled.mean_density(int(n))) + 1e-9 for n, d in res["mean_density"].items())
    assert all(len(set(layer)) <= 2 for layer in saved.rules)
    # another sink count: the run records it, and the plan written is the tuned one (16 sinks) only when kept
    assert main(["moa", "tune", "smollm2-135m-50", "--sinks", "-1", "-o", str(out)]) == 2
    assert "--sinks" in capsys.readouterr().err
    assert main(["moa", "tune", "smollm2-135m-50", "--sinks", "16", "--lengths", "256", "--samples", "2", "--steps", "1",
                 "--batch-tokens", "512", "--validate", "256", "--val-samples", "1", "-o", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = Plan.load(out)
    t = saved.meta["tune"]
    assert t["sinks"] == 16 and t["input_sinks"] == 64 and saved.sinks == (16 if res["kept_tuned"] else 64)
    assert res["validation_loss"][1] is not None  # the sink change alone is a change to validate
