"""`ctxflow ask` end to end on the real embedded models and a real document (issue 3)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxflow.cli import main
from ctxflow.io import document_from_bytes

ROOT = Path(__file__).parent.parent
EXCERPT = ROOT / "tests" / "data" / "jargon_excerpt.txt"
QUESTIONS = json.loads((ROOT / "examples" / "data" / "jargon_questions.json").read_text())


@pytest.mark.parametrize("q", [q for q in QUESTIONS if q.get("in_excerpt")][:2], ids=lambda q: q["entry"])
def test_ask_json_citations_quote_the_source(q, llm, embedder, capsys):
    """The default pipeline answers with citations whose spans quote the document exactly, and at
    least one citation lies inside the dictionary entry the question is about."""
    rc = main(["ask", str(EXCERPT), q["question"], "--json", "-q"])
    out = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out)
    assert isinstance(res["answer"], str) and res["answer"].strip()
    source = EXCERPT.read_text(encoding="utf-8")
    assert res["citations"], "an answer must cite the source"
    for c in res["citations"]:
        assert source[c["start"]:c["end"]] == c["text"]
    # the dictionary entry the question is about: from its headword line to the next headword
    head = source.index(f":{q['entry']}:")
    nxt = source.find("\n   :", head + 1)
    entry = (head, nxt if nxt > 0 else len(source))
    assert any(c["start"] < entry[1] and entry[0] < c["end"] for c in res["citations"]), (entry, res["citations"])
    drafts = res["answer_trace"]["candidates"]  # Map-Rerank's scored draft of every candidate (book_qa picks with it)
    assert len(drafts) >= 2 and all("score" in d for d in drafts) and "pipeline" not in res["answer_trace"]


def test_invalid_utf8_is_replaced_and_reported(tmp_path, capsys):
    doc = document_from_bytes("caf\u00e9 ".encode("latin-1") + b"ok text\n", "x.txt")
    assert doc.text.startswith("caf\ufffd") and doc.meta["replaced_bytes"] == 1
    f = tmp_path / "latin1.txt"
    f.write_bytes("na\u00efve r\u00e9sum\u00e9 of the plan.\n".encode("latin-1"))
    # an empty question is refused before any model loads; the document warning comes first
    assert main(["ask", str(f), " "]) == 2
    assert "question is empty" in capsys.readouterr().err


def test_bom_is_dropped_also_when_bytes_are_replaced():
    doc = document_from_bytes(b"\xef\xbb\xbfHello w\xf6rld\n", "x.txt")
    assert doc.text == "Hello w\ufffdrld\n" and doc.meta["replaced_bytes"] == 1
