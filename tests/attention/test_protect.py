"""Retrieval heads kept full: gains, the constrained re-solve, the choice of k; then the real model and the CLI."""
import json

import pytest
import torch

from ctxflow.attention.protect import head_gains, protect, protected_plan, top_heads, with_full
from ctxflow.attention.rules import FULL, Plan, Rule

LENGTHS = [1024, 2048]


def toy_profile(L=2, H=3, block=64, far=()):
    """Influence maps: every head reads its diagonal block; heads in ``far`` also read block 1 from the last."""
    maps = {}
    for n in LENGTHS:
        nb = n // block
        m = torch.zeros(L, H, nb, nb)
        m[:] = torch.eye(nb)
        for l, h in far:
            m[l, h, nb - 1, 1] = 3.0
        maps[n] = m
    return {"maps": maps, "block": block}


def searched(prof=None, density=0.5, sinks=8):
    """A plan as a search leaves it: every head narrow, a density budget."""
    return Plan("toy", [[Rule(0.0, 0.25)] * 3 for _ in range(2)], sinks=sinks, block_size=64, density=density,
                profiled_lengths=LENGTHS, kind="moa")


def scripted(need=(1, 2), n=2048):
    """Loss 1 unless head ``need`` reads the whole length; accuracy 1 only when it does."""
    calls = []

    def loss(plan):
        calls.append(plan)
        return float(plan.rules[need[0]][need[1]].span(n) < n)

    def acc(plan):
        return float(plan.rules[need[0]][need[1]].span(n) >= n)

    loss.calls = calls
    return loss, acc


def test_gains_and_top_heads():
    prof = toy_profile(far=[(0, 1)])
    p = searched(prof)
    loss, _ = scripted()
    _, g = head_gains(p, loss)
    assert g.shape == (2, 3) and len(loss.calls) == 1 + 6  # the plan, then each head made full alone
    assert g[1, 2] == 1.0 and g.sum() == 1.0
    assert top_heads(g, 1) == [(1, 2)] and top_heads(g, 4) == [(1, 2)]  # only heads that gain
    assert head_gains(with_full(p, [(1, 2)]), loss)[1][1, 2] == 0  # a full head has nothing to gain


def test_protected_plan_keeps_heads_full_within_the_budget():
    prof = toy_profile(far=[(0, 1)])
    p = searched(prof)
    new = protected_plan(p, prof, [(1, 2), (0, 0)])
    assert new.rules[1][2] == FULL and new.rules[0][0] == FULL
    assert new.meta["full_heads"] == [[1, 2], [0, 0]]
    for n in LENGTHS:
        assert new.mean_density(n) <= 0.5 + 1e-9
    assert all(len(set(layer)) <= 2 for layer in new.rules)
    with pytest.raises(ValueError, match="density budget"):
        protected_plan(Plan("toy", p.rules, density=None), prof, [(0, 0)])
    assert protected_plan(p, prof, [(l, h) for l in range(2) for h in range(3)]) is None  # all full: over budget


def test_protect_picks_the_k_with_the_best_accuracy_and_records_all():
    prof = toy_profile(far=[(0, 1)])
    p = searched(prof)
    loss, acc = scripted()
    logged = []
    out = protect(p, prof, loss, acc, ks=(1, 2), log=logged.append)
    rec = out.meta["protect"]
    assert [r["k"] for r in rec["tried"]] == [0, 1, 2] and logged == rec["tried"]
    assert rec["tried"][0]["accuracy"] == 0.0 and rec["tried"][1]["accuracy"] == 1.0
    assert rec["chosen_k"] == 1  # k = 2 is as accurate and as low: the tie goes to the smaller k
    assert "only 1 heads gain" in rec["tried"][2]["note"]
    assert out.rules[1][2] == FULL and acc(out) == 1.0
    assert out.validation_length == p.validation_length
    # nothing gains: the plan itself is kept (k = 0)
    flat = protect(p, prof, lambda plan: 1.0, lambda plan: 0.0, ks=(2,))
    assert flat.rules == p.rules and flat.meta["protect"]["chosen_k"] == 0
    assert "only 0 heads gain" in flat.meta["protect"]["tried"][1]["note"] and not flat.meta["protect"]["tried"][1]["feasible"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        protect(p, prof, loss, acc, ks=(0,))


def test_protect_on_the_real_model_and_cli(llm, tmp_path, capsys):
    """A narrow plan with a synthetic profile, protected on the real model with pass keys of 256
    tokens: the heads kept full are the ones whose full window lowers the answer loss most, the budget
    holds, and `ctxflow moa protect` gives clear errors."""
    from ctxflow.attention.data import sample_ids
    from ctxflow.attention.evaluate import plan_loss_fn
    from ctxflow.attention.profile import save_profile
    from ctxflow.attention.protect import passkey_calibration
    from ctxflow.cli import main

    cfg = llm.model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    torch.manual_seed(0)
    prof = {"maps": {n: torch.rand(L, H, n // 64, n // 64).tril() for n in (512, 1024)}, "block": 64}
    plan = Plan(llm.model_id, [[Rule(0.0, 0.25)] * H for _ in range(L)], sinks=16, density=0.5, profiled_lengths=[512, 1024])
    assert plan.mean_density(512) < 0.5 and plan.mean_density(1024) < 0.5
    cal = passkey_calibration(llm, 1, 256, seed=3)
    assert all(s.expected in s.prompt and s.answer.endswith(f"{s.expected}.") for s in cal)
    loss_fn = plan_loss_fn(llm, [sample_ids(llm, s) for s in cal])
    layers = [21, 22, 23]  # a few layers keep it short on CPU (each head is a forward)
    base, g = head_gains(plan, loss_fn, layers=layers)
    assert not g[[l for l in range(L) if l not in layers]].any()
    (l, h), = top_heads(g, 1)
    assert g[l, h] > 0 and loss_fn(with_full(plan, [(l, h)])) == pytest.approx(base - g[l, h], rel=1e-3)  # batch rounding

    pp, pf = tmp_path / "p.json", tmp_path / "prof.pt"
    plan.save(pp)
    save_profile(prof, pf, llm.model_id)
    out = tmp_path / "q.json"
    assert main(["moa", "protect", str(pp), "--profile", str(pf), "--ks", "2", "--samples", "1", "--length", "256", "--layers", "21,22,23",
                 "--seed", "3", "--alpha-step", "256", "--time-limit", "30", "-o", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    q = Plan.load(out)
    rec = q.meta["protect"]
    assert [r["k"] for r in rec["tried"]] == [0, 2] and res["full_heads"] == rec["chosen_k"]
    tried2 = rec["tried"][1]
    assert tried2["heads"][0] == [l, h]  # the same best head as measured above
    assert 0 <= res["passkey_accuracy"] <= 1 and res["dense_passkey_accuracy"] == rec["dense_accuracy"]
    if rec["chosen_k"] == 2:
        assert all(q.rules[a][b] == FULL for a, b in tried2["heads"])
    for n in (512, 1024):
        assert q.mean_density(n) <= 0.5 + 1e-9
    # clear errors
    save_profile({"maps": {2048: prof["maps"][1024]}, "block": 64}, tmp_path / "other.pt", llm.model_id)
    assert main(["moa", "protect", str(pp), "--profile", str(tmp_path / "other.pt"), "-o", str(out)]) == 2
    assert "give the profile the plan came from" in capsys.readouterr().err
    Plan.uniform(llm.model_id, L, H, FULL, sinks=0, kind="dense").save(tmp_path / "d.json")
    assert main(["moa", "protect", str(tmp_path / "d.json"), "--profile", str(pf), "-o", str(out)]) == 2
    assert "protect takes a searched MoA plan" in capsys.readouterr().err
    assert main(["moa", "protect", str(pp), "--profile", str(pf), "--layers", "30", "-o", str(out)]) == 2
    assert "the plan has layers 0..29" in capsys.readouterr().err
    assert main(["moa", "protect", str(pp), "--profile", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "run `ctxflow moa profile" in capsys.readouterr().err
