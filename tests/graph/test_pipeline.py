from __future__ import annotations

import pytest

from ctxflow import Pipeline
from ctxflow.errors import SpecError
from ctxflow.graph.component import compatible
from ctxflow.types import Chunk, Scored

from . import components as tc  # noqa: F401  (registers test.* components)


def _linear(order):
    p = Pipeline()
    comps = {"words": tc.Words(), "score": tc.ScoreLen(), "join": tc.Join(sep="+")}
    for n in order:
        p.add(n, comps[n])
    p.connect("words.chunks", "score.chunks")
    p.connect("score.scored", "join.scored")
    p.expose_input("text", "words.text")
    p.expose_output("joined", "join.text")
    return p


def test_run_in_dependency_order_regardless_of_insertion():
    a = _linear(["join", "score", "words"])
    b = _linear(["words", "join", "score"])
    assert a.order() == b.order() == ["words", "score", "join"]
    ra, rb = a.run({"text": "one two three"}), b.run({"text": "one two three"})
    assert ra["joined"] == rb["joined"] == "one+two+three"
    assert a == b


def test_deterministic_tie_break_by_name():
    p = Pipeline()
    for n in ["zeta", "alpha", "mid"]:
        p.add(n, tc.Echo(tag=n))
        p.expose_input("text", f"{n}.text")
    assert p.order() == ["alpha", "mid", "zeta"]
    out = p.run({"text": "x"})
    assert set(out.keys()) == {"alpha.text", "mid.text", "zeta.text"}
    assert out["zeta.text"] == "zetax"


def test_trace_has_timing_and_order():
    p = _linear(["words", "score", "join"])
    res = p.run({"text": "a b"})
    assert res.trace["order"] == ["words", "score", "join"]
    for n in ["words", "score", "join"]:
        assert res.trace["components"][n]["seconds"] >= 0
        assert res.trace["components"][n]["type"].startswith("test.")


def test_any_mapping_is_taken_as_inputs():
    from types import MappingProxyType

    assert _linear(["words", "score", "join"]).run(MappingProxyType({"text": "a b"}))["joined"] == "a+b"


def test_trace_shows_what_each_stage_passed_on():
    """The trace glimpses every output: list length and its first items' spans and scores (a bank's hits,
    a selector's picks), short texts whole, long ones cut; never the whole document."""
    p = _linear(["words", "score", "join"])
    words = " ".join(f"w{i}" for i in range(30))
    res = p.run({"text": words})
    got = res.trace["components"]["words"]["outputs"]["chunks"]
    assert got["count"] == 30 and len(got["first"]) == 10
    assert got["first"][1] == {"start": 3, "end": 5, "text": "w1"}
    scored = res.trace["components"]["score"]["outputs"]["scored"]
    assert scored["first"][0]["score"] == 2.0 and scored["first"][0]["text"] == "w0"
    joined = res.trace["components"]["join"]["outputs"]["text"]
    assert joined == res["joined"] if len(res["joined"]) <= 200 else joined["chars"] == len(res["joined"])
    long = p.run({"text": "word " * 100}).trace["components"]["join"]["outputs"]["text"]
    assert long["chars"] == len("+".join(["word"] * 100)) and long["start"].endswith("…")
    import json

    json.dumps(res.trace)  # plain JSON data


def test_events_reach_subscribers():
    p = Pipeline()
    p.add("e", tc.Echo())
    p.expose_input("text", "e.text")
    seen = []
    p.run({"text": "hi"}, subscribers=[seen.append])
    kinds = [(e.kind, e.component) for e in seen]
    assert kinds[0] == ("component_start", "e") and kinds[-1] == ("component_end", "e")
    prog = [e for e in seen if e.kind == "progress"]
    assert [(e.data["done"], e.data["total"]) for e in prog] == [(1, 2), (2, 2)]


def test_error_event_and_exception():
    @tc.component("test.boom", outputs={"text": str})
    class Boom(tc.Component):
        def run(self, text: str) -> dict:
            raise RuntimeError("kaboom")

    p = Pipeline()
    p.add("b", Boom())
    p.expose_input("text", "b.text")
    seen = []
    with pytest.raises(RuntimeError):
        p.run({"text": "x"}, subscribers=[seen.append])
    assert any(e.kind == "error" and "kaboom" in e.data["error"] for e in seen)


def test_warm_up_called_once_after_validate():
    p = Pipeline()
    e = tc.Echo()
    p.add("e", e)
    p.expose_input("text", "e.text")
    assert not e.warmed
    p.run({"text": "a"})
    assert e.warmed


@pytest.mark.parametrize(
    "src,dst,msg",
    [
        ("nope.chunks", "score.chunks", "unknown component 'nope'"),
        ("words.chunkz", "score.chunks", "Its output sockets: chunks"),
        ("words.chunks", "score.chunkz", "Its input sockets: chunks"),
        ("words.chunks", "join.scored", "type mismatch"),
        ("join.count", "score.chunks", r"type mismatch: join.count gives int but score.chunks takes list\[Chunk\]"),
    ],
)
def test_connect_checks(src, dst, msg):
    p = Pipeline()
    p.add("words", tc.Words())
    p.add("score", tc.ScoreLen())
    p.add("join", tc.Join())
    with pytest.raises(SpecError, match=msg):
        p.connect(src, dst)


def test_self_loop_and_cycle_and_double_feed():
    p = Pipeline()
    p.add("a", tc.Echo())
    p.add("b", tc.Echo())
    with pytest.raises(SpecError, match="self-loops"):
        p.connect("a.text", "a.text")
    p.connect("a.text", "b.text")
    with pytest.raises(SpecError, match="cycle"):
        p.connect("b.text", "a.text")
    p.add("c", tc.Echo())
    with pytest.raises(SpecError, match="already fed"):
        p.connect("c.text", "b.text")


def test_duplicate_name_and_bad_param():
    p = Pipeline()
    p.add("a", tc.Echo())
    with pytest.raises(SpecError, match="duplicate component name 'a'"):
        p.add("a", tc.Echo())
    with pytest.raises(SpecError, match="unknown parameter 'tga'.*Did you mean 'tag'"):
        tc.Echo(tga="x")
    with pytest.raises(SpecError, match="expected bool"):
        tc.Words(lower="perhaps")


def test_validate_required_inputs():
    p = Pipeline()
    p.add("c", tc.Concat())
    p.expose_input("a", "c.a")
    with pytest.raises(SpecError, match=r"required input c.b \(str\) is not connected"):
        p.validate()


def test_unknown_and_missing_pipeline_inputs():
    p = _linear(["words", "score", "join"])
    from ctxflow.errors import UserError

    with pytest.raises(UserError, match="unknown pipeline input 'txt'.*Did you mean 'text'"):
        p.run({"txt": "a"})
    with pytest.raises(UserError, match="missing pipeline input"):
        p.run({})
    # component.socket addressing works too, and optional sockets keep defaults
    assert p.run({"words.text": "a b"})["joined"] == "a+b"


def test_type_compatibility_rules():
    from typing import Any, Union

    assert compatible(list[Chunk], list[Chunk])
    assert compatible(list[Scored[Chunk]], Union[list[Chunk], list[Scored[Chunk]]])
    assert not compatible(list[Chunk], list[Scored[Chunk]])
    assert compatible(int, float) and not compatible(float, int)
    assert compatible(Any, str) and compatible(str, Any)
    assert not compatible(str, list[str])


def test_shared_model_single_instance():
    """A model object used by two components is registered once and injected into both."""
    from ctxflow.llm.fake import FakeLLM
    from ctxflow.graph.component import LLMRef, component, Component

    @component("test.uses_llm", outputs={"text": str})
    class UsesLLM(Component):
        def __init__(self, llm: LLMRef = "llm"):
            self.llm = llm

        def run(self, text: str) -> dict:
            return {"text": self.llm.generate([text])[0].text}

    m = FakeLLM(responses=["r1", "r2"])
    p = Pipeline()
    p.add("a", UsesLLM(llm=m))
    p.add("b", UsesLLM(llm=m))
    p.expose_input("text", "a.text", "b.text")
    assert list(p.models) == ["llm"] and p.models["llm"] is m
    p.run({"text": "x"})
    assert p.component("a").llm is p.component("b").llm is m
    d = p.to_dict()
    assert d["components"]["a"]["llm"] == "llm" and d["models"]["llm"]["type"] == "fake"


def test_errors_inside_a_run_name_the_component():
    from ctxflow.errors import UserError

    for how, exc in (("user", UserError), ("bug", KeyError)):
        p = Pipeline()
        p.add("first", tc.Echo())
        p.add("second", tc.Fail(how=how))
        p.connect("first.text", "second.text")
        p.expose_input("text", "first.text")
        with pytest.raises(exc) as ei:
            p.run({"text": "x"})
        where = "component 'second' (test.fail)"
        assert where in str(ei.value) if how == "user" else any(where in n for n in ei.value.__notes__)


def test_a_declared_output_that_is_not_returned_is_blamed_on_its_producer():
    p = Pipeline()
    p.add("f", tc.Fail(how="none"))
    p.add("e", tc.Echo())
    p.connect("f.extra", "e.text")
    p.expose_input("text", "f.text")
    with pytest.raises(Exception, match="component 'e' got no value for its required input 'text' \\('f' did not return "
                                        "its declared output 'extra'\\)"):
        p.run({"text": "x"})
    q = Pipeline()
    q.add("f", tc.Fail(how="none"))
    q.expose_input("text", "f.text")
    q.expose_output("extra", "f.extra")
    with pytest.raises(TypeError, match="component 'f' \\(test.fail\\) did not return its declared output 'extra'"):
        q.run({"text": "x"})


def test_positional_init_arguments_are_never_dropped():
    with pytest.raises(TypeError, match="too many positional arguments"):
        tc.Echo("a", "b")
    with pytest.raises(TypeError, match="multiple values for argument 'tag'"):
        tc.Echo("a", tag="b")
    assert tc.Echo("a").init_params == {"tag": "a"}


def test_a_pipeline_name_survives_dump_and_load():
    import ctxflow

    p = Pipeline(name="my_pipe")
    p.add("e", tc.Echo())
    p.expose_input("text", "e.text")
    q = ctxflow.loads(p.dumps())
    assert q.name == "my_pipe" and "name: my_pipe" in p.dumps() and q == p
    assert "name:" not in ctxflow.loads("version: 1\ncomponents: {e: {type: test.echo}}\ninputs: {text: e.text}\n",
                                        "x.yaml").dumps()


def test_a_text_input_of_another_type_is_a_clear_error():
    from pathlib import Path

    from ctxflow.errors import UserError

    p = Pipeline()
    p.add("e", tc.Echo())
    p.expose_input("text", "e.text")
    for value, hint in ((None, "NoneType"), (Path("x.txt"), "read the file first"), (b"x", "decode it first")):
        with pytest.raises(UserError, match=f"pipeline input 'text' must be text \\(str\\), got .*{hint}"):
            p.run({"text": value})
    assert p.run({"text": "ok"}).outputs["e.text"] == "ok"


def test_a_path_object_is_taken_for_a_path_socket(tmp_path):
    from pathlib import Path

    from ctxflow.summarize.qa import CodeRead

    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    p = Pipeline()
    p.add("read", CodeRead())
    p.expose_input("path", "read.path")
    assert p.run({"path": Path(tmp_path)}).outputs["read.chunks"][0].meta["path"].endswith("m.py")


def test_run_input_mistakes_in_python_are_clear_errors():
    from ctxflow.errors import UserError

    p = _linear(["words", "score", "join"])
    for bad in (["a b"], "a b"):  # not a dict
        with pytest.raises(UserError, match=r"run\(\) takes a dict of inputs, got .*'text': \.\.\."):
            p.run(bad)
    # a component.socket key is checked like a named input: text for a text socket ...
    with pytest.raises(UserError, match=r"pipeline input 'words.text' must be text \(str\), got bytes"):
        p.run({"words.text": b"a b"})
    # ... and never silently dropped for (or doubling) a socket that is fed already
    with pytest.raises(UserError, match="score.chunks is fed by words.chunks already"):
        p.run({"text": "a b", "score.chunks": []})
    with pytest.raises(UserError, match="words.text is fed by the pipeline input 'text' already"):
        p.run({"text": "a b", "words.text": "c d"})
    assert p.run({"words.text": "a b"})["joined"] == "a+b"


def test_a_pipeline_input_feeding_nothing_is_refused_as_in_yaml():
    p = _linear(["words", "score", "join"])
    with pytest.raises(SpecError, match="pipeline input 'extra' feeds no socket"):
        p.expose_input("extra")
    assert Pipeline.__eq__(p, __import__("ctxflow").loads(p.dumps()))  # what Python builds, YAML loads back
