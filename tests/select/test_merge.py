"""select.merge: rank interleaving across sources with different score scales, dedupe, limits, YAML."""
import pytest

from ctxflow.errors import UserError
from ctxflow.select.merge import Merge
from ctxflow.types import Chunk, Scored


def s(start, score, doc="d"):
    return Scored[Chunk](item=Chunk(id=f"{doc}:{start}", doc_id=doc, start=start, end=start + 10, text="x" * 10), score=score)


def test_interleaves_by_rank_not_raw_score():
    blocks = [s(0, 5.0), s(100, 3.0), s(200, 1.0)]  # z-scores
    hits = [s(500, 0.03), s(600, 0.02)]  # reciprocal-rank fusion scale
    out = Merge().run(first=blocks, second=hits)["selected"]
    assert [c.item.start for c in out] == [0, 500, 100, 600, 200]
    assert [c.meta["source"] for c in out] == [0, 1, 0, 1, 0]
    assert out[0].score == 1.0 and out[1].score == 1.0 and out[2].score == 0.5


def test_duplicate_span_kept_once_with_best_rank_and_limits():
    a = [s(0, 9.0), s(100, 8.0), s(200, 7.0)]
    b = [s(100, 1.0), s(300, 0.5)]
    out = Merge(limits=[2, 2]).run(first=a, second=b)["selected"]
    assert [c.item.start for c in out] == [0, 100, 300]  # 100 is rank 0 in b; a's third is over its limit
    assert Merge(k=2).run(first=a, second=b)["selected"][1].item.start == 100


def test_bad_params_are_user_errors():
    with pytest.raises(UserError, match="limits"):
        Merge(limits=[-1])
    with pytest.raises(UserError, match="parameter .k. of select.merge: expected int >= 1"):
        Merge(k=0)


def test_usable_from_yaml(tmp_path):
    import ctxflow

    f = tmp_path / "m.yaml"
    f.write_text("version: 1\ncomponents:\n  m: {type: select.merge, limits: [3, 2]}\n"
                 "inputs:\n  a: [m.first]\n  b: [m.second]\noutputs:\n  out: m.selected\n")
    p = ctxflow.load(str(f))
    r = p.run({"a": [s(0, 2.0)], "b": [s(50, 0.1)]})
    assert [c.item.start for c in r["out"]] == [0, 50]


def test_limits_follow_the_socket_when_second_is_not_fed():
    a = [s(0, 9.0), s(100, 8.0), s(200, 7.0)]
    c = [s(500, 3.0), s(600, 2.0), s(700, 1.0)]
    out = Merge(limits=[2, 0, 3]).run(first=a, third=c)["selected"]
    assert [x.item.start for x in out] == [0, 500, 100, 600, 700]  # third keeps its own limit of 3
    assert {x.meta["source"] for x in out if x.item.start >= 500} == {2}
