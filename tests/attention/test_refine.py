"""Measured refinement of a plan: control flow on scripted losses, then the real model and the CLI."""
import json

import pytest

from ctxflow.attention.refine import candidates, neighbours, refine, solve_moves, with_rule
from ctxflow.attention.rules import FULL, Plan, Rule

LENGTHS = [1024, 2048]


def plan_of(rules, density=0.5, sinks=64):
    return Plan("fake", rules, sinks=sinks, density=density, profiled_lengths=LENGTHS)


def need_loss(need: dict[tuple[int, int], int], n: int = 2048, coupling: float = 0.0):
    """Scripted loss: head (l, h) costs 1 when its window at ``n`` is shorter than need[(l, h)] tokens,
    plus a small smooth term; ``coupling`` adds a penalty when more than two heads are wide at once
    (moves that do not add up)."""
    calls = []

    def loss(plan: Plan) -> float:
        calls.append(plan)
        tot = 0.0
        wide = 0
        for (l, h), d in need.items():
            s = plan.rules[l][h].span(n)
            tot += (s < d) + 0.01 * (1 - s / n)
            wide += s >= 1024
        return tot + coupling * max(0, wide - 2)

    loss.calls = calls
    return loss


def test_neighbours_and_candidates_stay_valid():
    r = Rule(64.0, 0.25)
    ns = neighbours(r, LENGTHS)
    assert set(ns) == {Rule(128.0, 0.25), Rule(0.0, 0.25), Rule(64.0, 0.375), Rule(64.0, 0.125)}
    assert all(x.valid(LENGTHS) for x in ns)
    assert Rule(0.0, 1.125) not in neighbours(FULL, LENGTHS) and Rule(64.0, 1.0) not in neighbours(FULL, LENGTHS)
    p = plan_of([[Rule(0, 0.25), Rule(0, 0.25), Rule(256, 0.5)], [Rule(0, 0.25)] * 3])
    c = candidates(p, LENGTHS)
    assert Rule(256, 0.5) in c[0][0] and Rule(0, 0.25) in c[0][2]  # the layer's other rule
    assert FULL in c[1][1] and Rule(0, 0.25) not in c[1][1]
    assert candidates(p, LENGTHS, layers=[1])[0] == [[], [], []]


def test_refine_moves_budget_to_the_heads_that_need_it():
    """Two layers x 3 heads; head (1, 2) needs a long window, head (0, 1) does not need its wide one.
    The measured moves + MILP pay for it by narrowing heads that lose little; the budget and the two-rules-per-layer limit hold."""
    narrow, wide = Rule(0.0, 0.25), Rule(0.0, 0.625)
    p = plan_of([[narrow, wide, narrow], [narrow, narrow, narrow]])
    budget = p.mean_density(2048)
    p.density = budget
    loss = need_loss({(0, 0): 100, (0, 1): 100, (0, 2): 100, (1, 0): 100, (1, 1): 100, (1, 2): 1200})
    new = refine(p, loss, [2048], alpha_step=64)
    hist = new.meta["refine"]["history"]
    assert hist[0]["kept"] and new.meta["refine"]["loss"] < new.meta["refine"]["start_loss"]
    assert new.rules[1][2].span(2048) >= 1200  # the head that needs far keys now reaches them
    assert loss(new) == pytest.approx(new.meta["refine"]["loss"])
    for n in LENGTHS:
        assert new.mean_density(n) <= max(budget, p.mean_density(n)) + 1e-9
    assert all(len(set(layer)) <= 2 for layer in new.rules)


def test_trust_region_halves_when_moves_do_not_add_up():
    """Each widening helps alone, but more than two wide heads at once cost a lot: the first combined
    plan is measured worse, the trust region shrinks, and only a plan measured better is kept."""
    narrow = Rule(0.0, 0.25)
    p = plan_of([[narrow] * 3, [narrow] * 3], density=0.9)
    need = {(l, h): 1200 for l in range(2) for h in range(3)}
    loss = need_loss(need, coupling=10.0)
    new = refine(p, loss, [2048])
    hist = new.meta["refine"]["history"]
    assert not hist[0]["kept"] and hist[0]["changed_heads"] > 2
    assert any(h["kept"] for h in hist) and hist[-1]["trust_region"] < hist[0]["trust_region"]
    assert loss(new) < loss(p)
    assert sum(r.span(2048) >= 1024 for layer in new.rules for r in layer) <= 2


def test_nothing_to_gain_returns_the_plan_and_bad_input():
    p = plan_of([[FULL] * 2, [FULL] * 2], density=1.0)
    loss = need_loss({(0, 0): 10})
    new = refine(p, loss, [2048])
    assert new.rules == p.rules and new.meta["refine"]["history"] == []
    assert solve_moves(p, {}, 1.0, LENGTHS, 4) is None
    with pytest.raises(ValueError, match="density budget"):
        refine(Plan("fake", [[FULL]], density=None), loss, [2048])


def test_refine_on_the_real_model_and_cli(llm, tmp_path, capsys):
    """One layer of a uniform streaming plan refined on the real model (short calibration text): the
    kept plan measures lower on the calibration loss and keeps the budget; `ctxflow moa refine` runs
    the same path with validation, and gives clear errors. (Short: each measured move is a forward.)"""
    from ctxflow.attention.data import jargon_text
    from ctxflow.attention.evaluate import plan_loss_fn
    from ctxflow.attention.rules import uniform_rule
    from ctxflow.cli import main

    cfg = llm.model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    lengths = [64, 128]
    p = Plan(llm.model_id, [[uniform_rule(0.5, 96, 8)] * H for _ in range(L)], sinks=8, density=0.5, profiled_lengths=lengths,
             kind="moa")
    ids = llm.tokenizer(jargon_text("calibration")[20000:24000], add_special_tokens=False)["input_ids"]
    loss_fn = plan_loss_fn(llm, [(ids[:96], 48)])
    assert loss_fn(p) > loss_fn(None)  # the window hurts: there is something to win back
    base = loss_fn(p)
    new = refine(p, loss_fn, [64, 96, 128], alpha_step=16, layers=[2], full=False)
    r = new.meta["refine"]
    assert r["start_loss"] == pytest.approx(base, abs=1e-4)
    assert loss_fn(new) == pytest.approx(r["loss"], abs=1e-4) and r["loss"] <= base
    assert all(new.mean_density(n) <= max(0.5, p.mean_density(n)) + 1e-9 for n in (64, 96, 128))
    assert new.rules[:2] == p.rules[:2] and new.rules[3:] == p.rules[3:]  # only layer 2 was refined
    other = with_rule(p, 5, 1, FULL)  # several plans in one batch (one per row) == each alone
    assert loss_fn.many([p, other, new], batch=2) == pytest.approx([base, loss_fn(other), r["loss"]], rel=1e-4)  # float32 batch rounding
    path = tmp_path / "p.json"
    p.save(path)
    out = tmp_path / "r.json"
    assert main(["moa", "refine", str(path), "--length", "96", "--samples", "1", "--layers", "29", "--val-samples", "1",
                 "--alpha-step", "16", "--objective", "text", "--validate", "96", "-o", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    q = Plan.load(out)
    assert q.meta["refine"]["kept"] == res["kept_refined"]
    if res["kept_refined"]:
        assert res["validation_loss"][1] < res["validation_loss"][0] and q.rules != p.rules
    else:
        assert q.rules == p.rules
    assert main(["moa", "refine", str(path), "--layers", "99", "-o", str(out)]) == 2
    assert "the plan has layers 0.." in capsys.readouterr().err
    Plan.uniform(llm.model_id, L, H, FULL, sinks=0, kind="dense").save(tmp_path / "d.json")
    assert main(["moa", "refine", str(tmp_path / "d.json"), "-o", str(out)]) == 2
    assert "refine takes a searched MoA plan" in capsys.readouterr().err
