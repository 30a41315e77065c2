"""The summarizers and codebase QA on the real embedded model (SmolLM2-135M-Instruct), small inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import ctxflow
from ctxflow.cli import main
from ctxflow.events import EventBus, use_bus
from ctxflow.summarize import BookSummary, CodeSummary
from ctxflow.summarize.outline import python_outline

HERE = Path(__file__).parent
REPO = HERE / "fixture_repo"
ROOT = HERE.parents[1]

BOOK = """Chapter 1. The Harbor

The harbor town of Kelp Bay had forty fishing boats. Captain Ada Morrow ran the largest one, the Gull.

Chapter 2. The Storm

In 1902 a storm sank eleven boats. Ada Morrow saved nine sailors and was elected mayor of Kelp Bay.
"""

# (question, file, function that answers it)
QUESTIONS = [
    ("Where is the YAML loaded?", "shop/config.py", "load_config"),
    ("Which function emails the receipt to the customer?", "shop/mail.py", "send_receipt"),
    ("Where is an order saved in the database?", "shop/db.py", "save_order"),
]


def span(rel: str, name: str) -> tuple[int, int]:
    o = python_outline((REPO / rel).read_text(), rel)
    s = next(s for s in o.symbols if s.name == name)
    return s.line, s.end_line


def qa_pipeline(llm, embedder):
    p = ctxflow.load(ROOT / "pipelines/codebase_qa.yaml")
    p.models["llm"], p.models["embed"] = llm, embedder  # the session's models (weights loaded once)
    return p


@pytest.mark.parametrize("question,rel,name", QUESTIONS)
def test_codebase_qa_cites_the_right_code(llm, embedder, question, rel, name):
    p = qa_pipeline(llm, embedder)
    ans = p.run({"path": str(REPO), "question": question})["answer"]
    top = ans.citations[0].meta
    lo, hi = span(rel, name)
    assert top["path"] == f"{REPO.as_posix()}/{rel}", (question, ans.text, [c.meta for c in ans.citations])
    assert lo <= top["line"] <= hi and top["end_line"] >= hi
    assert f"{top['path']}:{top['line']}" in ans.text  # the answer says where to look
    src = (REPO / rel).read_text()
    assert src[ans.citations[0].start:ans.citations[0].end] == ans.citations[0].text  # exact offsets in the file


def test_ask_cli_on_a_folder(llm, embedder, capsys, monkeypatch):
    # the CLI builds its own models from the YAML; LocalLM shares the already loaded weights
    assert main(["ask", "--pipeline", str(ROOT / "pipelines/codebase_qa.yaml"), str(REPO), "Where is the YAML loaded?", "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    lo, hi = span("shop/config.py", "load_config")
    c = d["citations"][0]
    assert c["path"].endswith("shop/config.py") and lo <= c["line"] <= hi


def test_book_summary_real_model_and_resume_from_cache(llm):
    comp = BookSummary(llm=llm, max_new_tokens=40)
    first = comp.run(document=BOOK, title="harbor.txt")
    out = first["outline"]
    assert [c["title"] for c in out["root"]["children"]] == ["Chapter 1. The Harbor", "Chapter 2. The Storm"]
    assert all(c["summary"].strip() for c in out["root"]["children"]) and out["root"]["summary"].strip()
    assert "## Outline" in first["summary"] and "Chapter 2. The Storm (lines 5–7)" in first["summary"]
    # a rerun is served from the LLM-call cache: same text, no new model work
    bus = EventBus()
    calls = []
    bus.subscribers.append(lambda ev: calls.append(ev.data) if ev.kind == "llm_call" else None)
    with use_bus(bus):
        again = comp.run(document=BOOK, title="harbor.txt")
    assert again["summary"] == first["summary"]
    assert calls and sum(c.get("cached", 0) for c in calls) == sum(c.get("n_prompts", 0) for c in calls)


def test_code_summary_real_model(llm):
    res = CodeSummary(llm=llm, max_new_tokens=40).run(path=str(REPO))
    rep, md = res["report"], res["summary"]
    assert all(f["summary"].strip() for f in rep["files"])
    assert rep["folders"][f"{REPO.as_posix()}/"].strip()
    lo, _ = span("shop/config.py", "load_config")
    assert f"`{REPO.as_posix()}/shop/config.py:{lo}`" in md
