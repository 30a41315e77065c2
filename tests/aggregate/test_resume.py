"""Summarizing a slice of the bundled book with Map-Reduce on the real model: progress per level,
and a run killed mid-way (SIGKILL) resumes from the LLM-call cache without repeating a finished call."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The child summarizes ~500 tokens of the Jargon File's glossary with an emulated 160-token
# window (so the map has ~9 chunks and the notes need a collapse level), prints every progress
# event, and at the end one JSON line: prompts sent, prompts the model really computed (not served
# from the cache), the levels and the summary.
CHILD = r"""
import json, sys
from ctxflow.aggregate.map_reduce import MapReduce
from ctxflow.chunking.base import chunk_text
from ctxflow.events import EventBus, use_bus
from ctxflow.llm.local import LocalLM

book = open(sys.argv[1], encoding="utf-8").read()
start = book.index("\n   :hack:")
llm = LocalLM(max_context=160, batch_tokens=170, threads=1)  # 1 prompt per micro-batch, committed as it ends
text = book[start:start + 2000]
chunks = chunk_text(text, "recursive", size=60, llm=llm)
seen = {"sent": 0, "cached": 0}

def show(ev):
    if ev.kind == "progress":
        print("PROGRESS", ev.data["desc"], flush=True)
    elif ev.kind == "llm_call":
        seen["sent"] += ev.data["n_prompts"]
        seen["cached"] += ev.data["cached"]

mr = MapReduce(llm=llm, mode="summary", map_tokens=12, collapse_tokens=12, max_new_tokens=8, map_batch=2)
with use_bus(EventBus([show])):
    ans = mr.run(chunks=chunks)["answer"]
print("RESULT", json.dumps({"chunks": len(chunks), "sent": seen["sent"], "computed": seen["sent"] - seen["cached"],
                            "levels": ans.trace["levels"], "calls": ans.trace["calls"], "text": ans.text}), flush=True)
"""


def _rows(db: Path) -> set[str]:
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(str(db), timeout=5) as c:
            return {k for (k,) in c.execute("SELECT key FROM calls")}
    except sqlite3.OperationalError:  # table not created yet
        return set()


def _run(env: dict, kill_after: int | None = None) -> tuple[list[str], dict | None, set[str]]:
    db = Path(env["CTXFLOW_CACHE_DIR"]) / "llm_calls.sqlite"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "examples" / "data" / "jargon.txt")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    killed_with: set[str] = set()
    if kill_after is not None:
        while p.poll() is None and len(_rows(db)) < kill_after:
            time.sleep(0.2)
        assert p.poll() is None, "the child finished before it could be killed; lower kill_after"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        killed_with = _rows(db)
    out = p.communicate(timeout=900)[0] if kill_after is None else p.stdout.read()
    lines = out.splitlines()
    result = next((json.loads(x[len("RESULT "):]) for x in lines if x.startswith("RESULT ")), None)
    return [x[len("PROGRESS "):] for x in lines if x.startswith("PROGRESS ")], result, killed_with


def test_book_summary_progress_and_resume_after_sigkill(tmp_path):
    env = {**os.environ, "CTXFLOW_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CTXFLOW_NO_CACHE", None)
    db = tmp_path / "llm_calls.sqlite"

    # run 1: killed once 2 map outputs are in the cache (the map has ~9 chunks)
    progress1, result1, done = _run(env, kill_after=2)
    assert result1 is None and len(done) >= 2
    assert progress1 and progress1[0] == "map"

    # run 2: resumes; the calls finished before the kill come from the cache, the rest are computed once
    progress2, result2, _ = _run(env)
    assert result2 is not None, "the resumed run did not finish"
    after = _rows(db)
    assert done <= after
    assert result2["computed"] == len(after - done)  # only the missing calls reached the model
    assert result2["computed"] == result2["sent"] - len(done) and result2["computed"] < result2["sent"]
    # progress per level: map slices, at least one collapse level, the final combine
    assert progress2[0] == "map" and any(p.startswith("map ") and p.endswith(" chunks") for p in progress2)
    assert result2["levels"] >= 1 and f"collapse level {result2['levels']}" in progress2
    assert progress2[-2:] == ["combine", "done"]
    assert result2["text"].strip()
