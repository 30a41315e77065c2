from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ctxflow
from ctxflow.cli import main
from ctxflow.errors import SpecError

HERE = Path(__file__).parent
BAD = HERE / "bad"
EXPECTED = json.loads((BAD / "expected.json").read_text())
ROOT = HERE.parent.parent


def test_there_are_many_malformed_files():
    assert len(EXPECTED) >= 20
    assert {p.name for p in BAD.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_message(name, capsys):
    path = BAD / name
    with pytest.raises(SpecError) as ei:
        ctxflow.load(path)
    exp = EXPECTED[name]
    assert exp["expect"] in str(ei.value), str(ei.value)
    assert ei.value.file == str(path)
    assert ei.value.line == exp["line"], str(ei.value)
    # the CLI: exit 2, one message with file:line, no traceback
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{path}:{exp['line']}" in err and exp["expect"] in err
    assert "Traceback" not in err


def test_cli_subprocess_no_traceback(tmp_path):
    for name in ["syntax.yaml", "unknown_type.yaml", "cycle.yaml"]:
        r = subprocess.run([sys.executable, "-m", "ctxflow.cli", "validate", str(BAD / name)], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and name in r.stderr
    r = subprocess.run([sys.executable, "-m", "ctxflow.cli", "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_good_file_loads_and_validates(capsys):
    p = ctxflow.load(HERE / "good.yaml")
    assert p.order() == ["chunk", "bank", "pick", "answer"]
    assert p.inputs == {"document": ["chunk.text"], "question": ["bank.query", "answer.question"]}
    assert main(["validate", str(HERE / "good.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINE_FILES + [HERE / "good.yaml"], ids=lambda p: p.name)
def test_round_trip(path):
    a = ctxflow.load(path)
    text = ctxflow.dumps(a)
    b = ctxflow.loads(text, "dumped.yaml")
    assert a == b
    assert ctxflow.dumps(b) == text


def test_pipelines_dir_not_empty():
    assert PIPELINE_FILES, "pipelines/ must hold recipes"


def test_dump_file_is_atomic_and_loadable(tmp_path):
    p = ctxflow.load(HERE / "good.yaml")
    out = tmp_path / "p.yaml"
    ctxflow.dump(p, out)
    assert ctxflow.load(out) == p
    assert not list(tmp_path.glob(".*.tmp"))


def test_python_built_pipeline_dumps_to_equal_yaml():
    from ctxflow.aggregate.stuff import Stuff
    from ctxflow.llm.local import LocalLM
    from ctxflow.select.topk import TopK

    p = ctxflow.Pipeline(models={"llm": LocalLM(max_context=512)})
    p.add("pick", TopK(k=2))
    p.add("answer", Stuff(llm="llm", max_new_tokens=32))
    p.connect("pick.selected", "answer.chunks")
    p.expose_input("hits", "pick.candidates")
    p.expose_input("question", "answer.question")
    p.expose_output("answer", "answer.answer")
    q = ctxflow.loads(p.dumps())
    assert q == p
    assert q.models["llm"].context_length if False else True


def _make_wheel(dist: Path) -> Path:
    """Build a real wheel of a tiny third-party package that registers a component."""
    import zipfile

    dist.mkdir(parents=True, exist_ok=True)
    whl = dist / "ctxflow_plugin_demo-0.1-py3-none-any.whl"
    code = textwrap.dedent('''
        from ctxflow.graph.component import Component, component

        @component("demo.shout", outputs={"text": str})
        class Shout(Component):
            def __init__(self, times: int = 1):
                self.times = times

            def run(self, text: str) -> dict:
                return {"text": text.upper() + "!" * self.times}
    ''')
    files = {
        "ctxflow_plugin_demo/__init__.py": code,
        "ctxflow_plugin_demo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: ctxflow-plugin-demo\nVersion: 0.1\n",
        "ctxflow_plugin_demo-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "ctxflow_plugin_demo-0.1.dist-info/entry_points.txt": "[ctxflow.components]\nshout = ctxflow_plugin_demo\n",
    }
    record = "".join(f"{n},,\n" for n in files) + "ctxflow_plugin_demo-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for n, t in files.items():
            z.writestr(n, t)
        z.writestr("ctxflow_plugin_demo-0.1.dist-info/RECORD", record)
    return whl


def test_entry_point_component_usable_from_yaml(tmp_path):
    whl = _make_wheel(tmp_path / "dist")
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "p.yaml"
    spec.write_text("version: 1\ncomponents:\n  s: {type: demo.shout, times: 2}\ninputs: {text: s.text}\noutputs: {out: s.text}\n")
    import os

    env = dict(os.environ, PYTHONPATH=str(target) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "ctxflow.cli", "run", str(spec), "--input", "text=hello", "--json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"]["out"] == "HELLO!!"
    # without the package installed, the same file is a clear error
    r = subprocess.run([sys.executable, "-m", "ctxflow.cli", "validate", str(spec)], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown component type 'demo.shout'" in r.stderr


def test_yaml_never_imports(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("version: 1\ncomponents:\n  s: {type: os.system}\n")
    with pytest.raises(SpecError, match="unknown component type 'os.system'"):
        ctxflow.load(spec)


def test_nested_aliases_are_read_once_not_expanded():
    """A 'billion laughs' file (9 levels of 9 aliases: 387 million paths if expanded) loads at once."""
    lines = ["version: 1", "components: {e: {type: test.echo}}", "inputs: {text: e.text}", "meta:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    from . import components  # noqa: F401  (registers test.echo)

    p = ctxflow.loads("\n".join(lines) + "\n", "laughs.yaml")
    assert p.meta["l9"][0][0] is p.meta["l7"]  # shared, as YAML aliases are


def test_absurdly_deep_nesting_is_a_spec_error():
    with pytest.raises(SpecError, match="nested too deeply"):
        ctxflow.loads("version: 1\nmeta: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")


def test_run_refuses_an_unwritable_trace_path_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    doc = tmp_path / "doc.txt"
    doc.write_text("hello")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("version: 1\ncomponents: {e: {type: test.echo}}\ninputs: {text: e.text}\n")
    from . import components as tc

    before = tc.Echo.calls
    assert main(["run", str(pipe), "-i", f"text=@{doc}", "--trace", str(blocker / "t.json"), "--quiet"]) == 2
    assert "cannot make its folder" in capsys.readouterr().err and tc.Echo.calls == before  # nothing ran
    assert main(["run", str(pipe), "-i", f"text=@{doc}", "--trace", str(tmp_path / "new" / "t.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "new" / "t.json").read_text())["order"] == ["e"]


def test_bundled_recipes_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ctxflow.load("book_qa") == ctxflow.load(ROOT / "pipelines" / "book_qa.yaml")
    assert ctxflow.load("pipelines/codebase_qa.yaml").name == "codebase_qa"
    with pytest.raises(SpecError, match="pipeline file not found: nope.yaml \\(the bundled recipes load by name"):
        ctxflow.load("nope.yaml")


def test_local_model_override_on_a_malformed_file_is_a_spec_error():
    import pytest

    from ctxflow.errors import SpecError
    from ctxflow.graph.spec import loads

    with pytest.raises(SpecError, match="models"):
        loads("version: 1\nmodels: [a, b]\ncomponents:\n  c: {type: chunk.tokens}\n", local_model="default")


def test_alias_bomb_given_as_a_parameter_is_a_quick_bounded_error():
    """A 'billion laughs' list given for a number: the error quotes a few items, not 387 million."""
    import time

    lines = ["version: 1", "meta:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines += ["components:", "  c: {type: chunk.tokens, size: *l9}", "inputs: {text: c.text}"]
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="parameter 'size' of chunk.tokens: expected int") as ei:
        ctxflow.loads("\n".join(lines) + "\n", "laughs.yaml")
    assert time.perf_counter() - t0 < 5 and len(str(ei.value)) < 300 and ei.value.line == 12  # the anchor's line
    with pytest.raises(SpecError, match="unsupported version") as ei:
        ctxflow.loads("\n".join(lines[1:12] + ["version: *l9"] + lines[12:]) + "\n", "laughs.yaml")
    assert len(str(ei.value)) < 300


def test_true_is_not_version_1_nor_a_number_and_nan_inf_are_no_value():
    from . import components  # noqa: F401  (registers test.echo)

    with pytest.raises(SpecError, match="unsupported version True"):
        ctxflow.loads("version: true\ncomponents: {e: {type: test.echo}}\ninputs: {text: e.text}\n", "v.yaml")
    # plain `int` / `float` parameters of models (and components) too, not only the constrained ones
    for model, param in [("{type: local, max_context: true}", "max_context"), ("{type: fake, context: yes}", "context"),
                         ("{type: http, base_url: 'http://h:1', timeout: .inf}", "timeout"),
                         ("{type: http, base_url: 'http://h:1', backoff: .nan}", "backoff")]:
        text = f"version: 1\nmodels:\n  llm: {model}\ncomponents:\n  a: {{type: aggregate.stuff, llm: llm}}\ninputs: {{q: a.question, c: a.chunks}}\n"
        with pytest.raises(SpecError, match=f"parameter '{param}' of .*(not true/false|finite number)") as ei:
            ctxflow.loads(text, "m.yaml")
        assert ei.value.line == 3
    p = ctxflow.loads("version: 1\nmodels:\n  llm: {type: fake, echo: true}\ncomponents:\n  a: {type: aggregate.stuff, llm: llm}\n"
                      "inputs: {q: a.question, c: a.chunks}\n", "ok.yaml")
    assert p.models["llm"].echo is True  # a real bool parameter still takes true


def test_a_control_character_is_located():
    with pytest.raises(SpecError, match="control character '\\\\x00'") as ei:
        ctxflow.loads("version: 1\ncomponents:\n  c: {type: chunk.tokens}\x00\n", "nul.yaml")
    assert (ei.value.line, ei.value.column) == (3, 26)


def test_a_model_given_as_a_path_in_python_dumps_and_loads_back(tmp_path):
    from ctxflow.aggregate.stuff import Stuff
    from ctxflow.llm.embed import STEmbedder
    from ctxflow.llm.local import LocalLM
    from ctxflow.memory.cosine import CosineMemory

    p = ctxflow.Pipeline(models={"llm": LocalLM(model=tmp_path / "my-model"), "embed": STEmbedder(model=tmp_path / "emb")})
    p.add("bank", CosineMemory(embedder="embed"))
    p.add("answer", Stuff(llm="llm"))
    p.connect("bank.hits", "answer.chunks")
    p.expose_input("question", "bank.query", "answer.question")
    q = ctxflow.loads(p.dumps())
    assert q == p and q.models["llm"].model_name == str(tmp_path / "my-model")
