import json

import pytest
import torch

from ctxflow.attention.rules import FULL, Plan, Rule, band_density, kv_fraction, resolve_plan_path, uniform_rule


def brute_density(span, n, sinks):
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None]
    keep = (j <= i) & ((j < sinks) | (i - j < span))
    return keep.sum().item() / (n * (n + 1) / 2)


@pytest.mark.parametrize("span,n,sinks", [(1, 10, 0), (5, 37, 3), (37, 37, 4), (100, 300, 64), (3, 300, 64), (250, 300, 64)])
def test_band_density_matches_brute_force(span, n, sinks):
    assert band_density(span, n, sinks) == pytest.approx(brute_density(span, n, sinks))


def test_rule_span_clamped_and_validity():
    r = Rule(-100, 0.5)
    assert r.span(1000) == 400 and r.span(100) == 1  # clamped to >= 1
    assert not r.valid([100, 1000]) and r.valid([400, 1000])
    assert FULL.span(77) == 77 and kv_fraction(10, 100, 5) == 0.15


def test_uniform_rule_meets_budget():
    for d in (0.5, 0.25):
        r = uniform_rule(d, 2048, 16)
        assert band_density(r.span(2048), 2048, 16) <= d
        assert band_density(Rule(0, r.beta + 2 / 1024).span(2048), 2048, 16) > d - 0.01


def test_plan_roundtrip_and_errors(tmp_path):
    p = Plan("m", [[Rule(0, 1), Rule(-64, 0.5)], [Rule(128, 0.25), Rule(0, 0.125)]], sinks=8, density=0.5,
             profiled_lengths=[256, 512], validation_length=384, validation_loss=1.5)
    f = p.save(tmp_path / "p.json")
    q = Plan.load(f)
    assert q.to_dict() == p.to_dict() and q.rules[1][0] == Rule(128, 0.25)
    with pytest.raises(ValueError, match="2 layers x 2 heads"):
        q.check_model(30, 9)
    (tmp_path / "bad.json").write_text(json.dumps({"model_id": "m", "rules": [[1, 2]]}))
    with pytest.raises(ValueError, match="alpha, beta"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "ragged.json").write_text(json.dumps({"model_id": "m", "rules": [[[0, 1]], [[0, 1], [0, 1]]]}))
    with pytest.raises(ValueError, match="same number of heads"):
        Plan.load(tmp_path / "ragged.json")
    with pytest.raises(FileNotFoundError, match="bundled plans"):
        resolve_plan_path("no-such-plan")


def test_attention_given_as_a_misspelt_name_is_refused_when_read(tmp_path):
    """``attention: bogus`` (a typo of a kind, or a missing plan file) is an error at once, not when the model loads."""
    from ctxflow.attention.backend import normalize_attention

    with pytest.raises(ValueError, match=r"attention 'streamin' is not dense, streaming, moa or a plan: .*bundled plans: smollm2"):
        normalize_attention("streamin")
    p = Plan("m", [[Rule(0, 1)]], sinks=8, density=0.5).save(tmp_path / "plan.json")
    assert normalize_attention(str(p)) == {"type": "moa", "plan": str(p)}
    assert normalize_attention("smollm2-135m-25") == {"type": "moa", "plan": "smollm2-135m-25"}
