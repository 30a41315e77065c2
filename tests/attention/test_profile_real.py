"""Calibration objectives and the profile -> search -> validation path on the real default model."""
import pytest
import torch

from ctxflow.attention.data import OBJECTIVES, calibration_samples, sample_ids
from ctxflow.attention.profile import influence_ids, influence_one, profile, register
from ctxflow.attention.rules import Plan
from ctxflow.attention.search import pareto_plans, weightings_for


def count(text):
    return len(text) // 4


def test_objectives_mix_text_and_questions():
    assert OBJECTIVES == ("mixed", "answers", "text")
    mixed = calibration_samples(count, 300, 6, seed=3)
    assert [s.kind for s in mixed] == ["text", "entry", "text", "lines", "text", "passkey"]
    assert {s.kind for s in calibration_samples(count, 300, 4, objective="text")} == {"text"}
    assert "text" not in {s.kind for s in calibration_samples(count, 300, 6, objective="answers")}
    long = calibration_samples(count, 300, 2, objective="text", text_tokens=600)
    assert all(500 < count(s.prompt) <= 600 for s in long)
    texts = [s.prompt for s in calibration_samples(count, 300, 4, seed=1, objective="text")]
    assert len(set(texts)) == 4  # different windows
    with pytest.raises(ValueError, match="objective must be one of mixed, answers, text, got 'lm'"):
        calibration_samples(count, 300, 2, objective="lm")


def test_weightings_cover_each_length_and_neighbour_pairs():
    w = weightings_for([2048, 1024, 4096])
    assert w[0] == {1024: 1.0, 2048: 1.0, 4096: 1.0}
    alone = [x for x in w if sorted(x.values()) == [1e-3, 1e-3, 1.0]]
    pairs = [x for x in w if sorted(x.values()) == [1e-3, 1.0, 1.0]]
    assert len(w) == 6 and len(alone) == 3 and len(pairs) == 2
    assert {tuple(n for n, v in p.items() if v == 1.0) for p in pairs} == {(1024, 2048), (2048, 4096)}
    assert len(weightings_for([512, 1024])) == 3


def test_influence_of_a_text_window_matches_prompt_answer_split(llm):
    model = llm.model
    old = model.config._attn_implementation
    register()
    model.set_attn_implementation("ctxflow_profile")
    try:
        ids = llm.tokenizer("The quick brown fox jumps over the lazy dog. " * 6, add_special_tokens=False)["input_ids"][:64]
        a, la = influence_ids(model, ids, 32, 16)
        b, lb = influence_one(model, ids[:32], ids[32:], 16)
        assert torch.allclose(a, b) and la == pytest.approx(lb)
        assert a.shape == (30, 9, 4, 4) and (a >= 0).all() and torch.all(a.triu(1) == 0)
        with pytest.raises(ValueError, match="loss start 64 must be inside the sequence"):
            influence_ids(model, ids, 64, 16)
    finally:
        model.set_attn_implementation(old)


def test_mixed_profile_search_and_validation_on_the_real_model(llm):
    from ctxflow.attention.cli import validation_loss_fn
    from ctxflow.attention.rules import FULL

    prof = profile(llm, [256, 384], 2, block=32, seed=0, objective="mixed")
    assert prof["objective"] == "mixed" and prof["per_sample"] == "norm"
    assert prof["kinds"][256] == ["text", "entry"]
    for n, nb in ((256, 8), (384, 12)):
        m = prof["maps"][n]
        assert m.shape == (30, 9, nb, nb) and float(m.sum()) == pytest.approx(1.0, rel=1e-4)  # mean of unit-mass maps
        assert len(prof["losses"][n]) == 2 and all(x > 0 for x in prof["losses"][n])
    s = calibration_samples(llm.count_tokens, 200, 1, objective="text", text_tokens=256)[0]
    ids, start = sample_ids(llm, s)
    assert start == len(ids) // 2 and len(ids) <= 256
    plans = pareto_plans(prof, 0.5, 32, llm.model_id, alpha_step=32, budget_lengths=[320])
    assert plans
    for p in plans:
        assert all(p.mean_density(n) <= 0.5 + 1e-9 for n in (256, 320, 384))
        assert all(len(set(layer)) <= 2 for layer in p.rules)
    loss = validation_loss_fn(llm, 320, 2, objective="mixed")
    dense = loss(Plan.uniform(llm.model_id, 30, 9, FULL, sinks=0, kind="dense"))
    sparse = loss(plans[0])
    assert 0 < dense < 10 and sparse > 0 and sparse != dense


def test_moa_profile_and_search_cli_end_to_end(llm, tmp_path, capsys):
    """`ctxflow moa profile` then `ctxflow moa search` on the real model (tiny lengths), and clear errors."""
    import json

    from ctxflow.cli import main

    prof = tmp_path / "p.pt"
    assert main(["moa", "profile", "--lengths", "256,384", "--samples", "2", "--block", "32", "-o", str(prof)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["lengths"] == [256, 384] and prof.is_file()
    plan = tmp_path / "plan.json"
    assert main(["moa", "search", str(prof), "--density", "0.5", "--validate", "320", "--val-samples", "2",
                 "--alpha-step", "32", "-o", str(plan)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    p = Plan.load(plan)
    assert p.sinks == 32 and p.validation_length == 320 and p.validation_loss == pytest.approx(res["validation_loss"])
    assert all(p.mean_density(n) <= 0.5 + 1e-9 for n in (256, 320, 384))
    assert main(["moa", "search", str(tmp_path / "missing.pt"), "--density", "0.5", "-o", str(plan)]) == 2
    assert "not found: run `ctxflow moa profile" in capsys.readouterr().err
    assert main(["moa", "profile", "--lengths", "256,x", "-o", str(prof)]) == 2
    assert "--lengths must be comma-separated integers" in capsys.readouterr().err


def test_missing_calibration_text_is_a_user_error_naming_the_file(tmp_path, monkeypatch):
    # an installed wheel has no examples/ folder beside the package
    from ctxflow.attention import data
    from ctxflow.errors import UserError

    monkeypatch.setattr(data, "JARGON", tmp_path / "examples" / "data" / "jargon.txt")
    with pytest.raises(UserError, match=r"calibration and evaluation text is missing \(.*jargon.txt\).*source checkout"):
        data.jargon_text("eval")
