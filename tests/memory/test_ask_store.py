"""`ctxflow index` then `ctxflow ask --store` end to end on a slice of the bundled document (real models)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxflow.cli import main

EXCERPT = Path(__file__).resolve().parents[1] / "data" / "jargon_excerpt.txt"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The first whole glossary entries of the excerpt (a part of examples/data/jargon.txt), as a file."""
    text = EXCERPT.read_text(encoding="utf-8")
    cut = text.index("   :gronk out:")  # the entries grok and gronk
    d = tmp_path_factory.mktemp("docs")
    (d / "grok.txt").write_text(text[:cut], encoding="utf-8")
    (d / "image.bin").write_bytes(b"\x00\x01\x02binary")
    return d


def _file_text(path: str) -> str:
    return Path(path).read_bytes().decode("utf-8-sig")  # what the indexer read: no newline translation


def test_index_then_ask_store_json(source, tmp_path, capsys, llm, embedder):
    store = tmp_path / "store"
    assert main(["index", str(source), "--store", str(store), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "image.bin" in err  # the binary file is reported, not indexed
    assert (store / "manifest.json").exists()

    assert main(["ask", "--store", str(store), "What does grok mean?", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"].strip() and out["bank"] == "knn"
    assert out["retrieved"] and any("grok" in _file_text(r["path"])[r["start"]:r["end"]].lower() for r in out["retrieved"])
    assert out["citations"]
    for c in out["citations"]:
        text = _file_text(c["path"])
        assert text[c["start"]:c["end"]] == c["text"]  # quotes the source file exactly
        assert c["verified"] is True
        assert c["line"] == text.count("\n", 0, c["start"]) + 1


def test_ask_store_text_output_and_errors(source, tmp_path, capsys, llm, embedder):
    store = tmp_path / "store"
    assert main(["index", str(source / "grok.txt"), "--store", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ask", "--store", str(store), "Who wrote Stranger in a Strange Land?", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Citations:" in out and "grok.txt:" in out  # path:line [start:end] "quote"
    # a missing store is a clear user error (exit 2), not a traceback
    assert main(["ask", "--store", str(tmp_path / "nope"), "What?", "--quiet"]) == 2
    assert "no store at" in capsys.readouterr().err


def test_ask_graph_store_cites_facts(source, tmp_path, capsys, llm, embedder):
    store = tmp_path / "graph"
    assert main(["index", str(source / "grok.txt"), "--store", str(store), "--bank", "graph", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ask", "--store", str(store), "Who is Robert A. Heinlein?", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bank"] == "graph"
    facts = [f for r in out["retrieved"] for f in r["facts"]]
    assert any("heinlein" in f.lower() for f in facts)
    for c in out["citations"]:
        assert _file_text(c["path"])[c["start"]:c["end"]] == c["text"]


def test_index_extractor_needs_a_fact_bank(source, tmp_path, capsys):
    assert main(["index", str(source / "grok.txt"), "--store", str(tmp_path / "s"), "--extractor", "llm", "--quiet"]) == 2
    assert "--bank graph" in capsys.readouterr().err
    assert not (tmp_path / "s" / "manifest.json").exists()
