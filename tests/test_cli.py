from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ctxflow.cli import main

ROOT = Path(__file__).parent.parent
GOOD = ROOT / "tests" / "graph" / "good.yaml"


def test_version(capsys):
    import pytest

    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert "ctxflow 0.1.0" in capsys.readouterr().out


def test_draw_png_and_mermaid(tmp_path, capsys):
    png, mmd = tmp_path / "p.png", tmp_path / "p.mmd"
    assert main(["draw", str(GOOD), "-o", str(png)]) == 0
    assert main(["draw", str(GOOD), "-o", str(mmd)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = mmd.read_text()
    assert text.startswith("flowchart LR") and "chunks → chunks" in text and "aggregate.stuff" in text
    assert main(["draw", str(GOOD), "-o", str(tmp_path / "p.gif")]) == 2
    assert ".mmd" in capsys.readouterr().err


def test_run_with_inputs_and_trace(tmp_path, capsys):
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "version: 1\ncomponents:\n  chunk: {type: chunk.sentences, size: 8}\n"
        "inputs: {document: chunk.text}\noutputs: {chunks: chunk.chunks}\n"
    )
    doc = tmp_path / "doc.txt"
    doc.write_text("One sentence here. Another one there! And a third?")
    trace = tmp_path / "trace.json"
    assert main(["run", str(spec), "--input", f"document=@{doc}", "--json", "--trace", str(trace), "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    chunks = out["outputs"]["chunks"]
    text = doc.read_text()
    assert chunks and all(text[c["start"]:c["end"]] == c["text"] for c in chunks)
    assert "chunk" in json.loads(trace.read_text())["components"]


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["run", str(GOOD), "--input", "document"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["run", str(GOOD), "--input", "document=@/nonexistent/file.txt"]) == 2
    assert "not found" in capsys.readouterr().err
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["ask", str(binary), "what?"]) == 2
    assert "binary" in capsys.readouterr().err
    empty = tmp_path / "e.txt"
    empty.write_text("   \n")
    assert main(["ask", str(empty), "what?"]) == 2
    assert "holds only whitespace" in capsys.readouterr().err
    empty.write_text("")
    assert main(["ask", str(empty), "what?"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["ask", str(GOOD), "  "]) == 2
    assert "question is empty" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2


def test_ask_says_why_a_very_long_question_is_slow(tmp_path, capsys):
    assert main(["ask", str(tmp_path / "missing.txt"), "why? " * 600]) == 2
    err = capsys.readouterr().err
    assert "note: the question is 3,000 characters long" in err and "document not found" in err
    assert main(["ask", str(tmp_path / "missing.txt"), "why? " * 600, "-q"]) == 2
    assert "note:" not in capsys.readouterr().err


def test_ask_store_refuses_an_executor(tmp_path, capsys):
    assert main(["ask", "--store", str(tmp_path / "s"), "What?", "--executor", "local"]) == 2
    assert "--executor cannot be combined with --store" in capsys.readouterr().err


def test_wheel_ships_every_module_and_the_data_files_the_code_reads(tmp_path):
    """What `pip install ctxflow` gets: a wheel built from the source tree holds every module under
    ctxflow/, the recipes (as ctxflow.pipelines) and the MoA plans, and nothing from tests/ or bench/;
    from another folder, with only the wheel's ctxflow importable, every recipe loads by name."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for d in ("ctxflow", "pipelines", "tests", "bench"):  # tests/bench: to see that none of them leak in
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (whl,) = (tmp_path / "dist").glob("ctxflow-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ctxflow").rglob("*.py")}
    recipes = {f"ctxflow/pipelines/{p.name}" for p in (ROOT / "pipelines").glob("*.yaml")}
    plans = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ctxflow" / "attention" / "plans").glob("*.json")}
    assert recipes and plans
    assert modules - names == set() and recipes - names == set() and plans - names == set()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"ctxflow"}  # no tests/, bench/

    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, ctxflow; from ctxflow.cli import default_pipeline; from ctxflow.attention.rules import shipped_plans\n"
            "print(ctxflow.__file__); print(default_pipeline().parent); print(','.join(shipped_plans()))\n"
            "for name in sys.argv[1:]: print(ctxflow.load(name).name)\n")
    stems = sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml"))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code, *stems], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.split()
    assert lines[0].startswith(str(site)) and lines[1] == str(site / "ctxflow" / "pipelines")
    assert lines[2] == ",".join(sorted(p.rsplit("/", 1)[1][:-5] for p in plans)) and lines[3:] == stems


def _refuse_reading(monkeypatch, path):
    """Reading ``path`` fails as a file without read permission does (also when the tests run as root)."""
    import pathlib

    real_bytes, real_text = pathlib.Path.read_bytes, pathlib.Path.read_text

    def guard(real):
        def read(self, *a, **k):
            if self.resolve() == Path(path).resolve():
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *a, **k)
        return read

    monkeypatch.setattr(pathlib.Path, "read_bytes", guard(real_bytes))
    monkeypatch.setattr(pathlib.Path, "read_text", guard(real_text))


def test_unreadable_files_are_one_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    doc, spec = tmp_path / "doc.txt", tmp_path / "p.yaml"
    doc.write_text("hello")
    spec.write_text(GOOD.read_text())
    _refuse_reading(monkeypatch, doc)
    for argv in (["text", str(doc)], ["ask", str(doc), "what?"], ["run", str(GOOD), "-i", f"document=@{doc}", "-i", "question=q"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"cannot read {doc}: Permission denied" in err, (argv, err)
    _refuse_reading(monkeypatch, spec)
    assert main(["validate", str(spec)]) == 2
    assert f"{spec}: cannot read the pipeline file: Permission denied" in capsys.readouterr().err
    # a folder the system refuses elsewhere (here: a store under a file): the path and why, status 1
    assert main(["index", str(GOOD), "--store", str(GOOD / "store"), "-q"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {GOOD / 'store'}: Not a directory"


def test_input_name_mistakes(capsys):
    assert main(["run", str(GOOD), "-i", "=x", "-i", "question=q"]) == 2
    assert "--input '=x' has no NAME before '='" in capsys.readouterr().err
    assert main(["run", str(GOOD), "-i", "document=a", "-i", "document=b", "-i", "question=q"]) == 2
    assert "--input document is given twice" in capsys.readouterr().err


def test_a_trace_that_cannot_be_written_keeps_the_outputs(tmp_path, capsys, monkeypatch):
    import pathlib

    spec = tmp_path / "p.yaml"
    spec.write_text("version: 1\ncomponents:\n  chunk: {type: chunk.sentences, size: 8}\n"
                    "inputs: {document: chunk.text}\noutputs: {chunks: chunk.chunks}\n")
    trace = tmp_path / "trace.json"
    real = pathlib.Path.write_text

    def full_disk(self, *a, **k):
        if self == trace:
            raise OSError(28, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    assert main(["run", str(spec), "-i", "document=One. Two.", "--json", "--trace", str(trace), "-q"]) == 1
    out, err = capsys.readouterr()
    assert [c["text"] for c in json.loads(out)["outputs"]["chunks"]] == ["One. Two."]
    assert "--trace" in err and "No space left on device" in err and "outputs above are complete" in err


def test_json_output_is_strict_json_whatever_a_component_puts_in_its_answer():
    import math

    import numpy as np

    from ctxflow.cli import jsonable
    from ctxflow.types import Answer, Citation

    ans = Answer(text="x", citations=[Citation(doc_id="d", start=0, end=1, text="x", score=float("nan"))], score=-math.inf,
                 trace={"gain": np.float32(0.5), "scores": np.array([1.5, np.inf]), "seen": {"a"}})
    d = json.loads(json.dumps(jsonable(ans), allow_nan=False))
    assert d["score"] is None and d["citations"][0]["score"] is None
    assert d["trace"] == {"gain": 0.5, "scores": [1.5, None], "seen": ["a"]}


def test_bench_without_a_task_names_the_benchmarks(capsys):
    assert main(["bench"]) == 2
    assert "choose a benchmark: ctxflow bench lines" in capsys.readouterr().err


def test_a_document_can_be_piped_in_as_dash(tmp_path, capsys, monkeypatch):
    """``-`` reads the document from standard input (``ctxflow text -``, ``ask -``, ``run -i document=@-``)."""
    import io as _io

    html = "<html><body><h1>Kluge</h1><p>A clever hack.</p></body></html>".encode()
    monkeypatch.setattr(sys, "stdin", _io.TextIOWrapper(_io.BytesIO(html)))
    assert main(["text", "-", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == "# Kluge\n\nA clever hack." and out["meta"]["path"] == "<stdin>"

    class Tty(_io.TextIOWrapper):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(_io.BytesIO(b"")))
    assert main(["text", "-"]) == 2
    assert "nothing is piped in" in capsys.readouterr().err
