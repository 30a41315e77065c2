"""Prose questions about a whole book through a QA pipeline: is the answer right, and does the
citation point into the passage that holds it?

The document is the bundled Jargon File (1.7 MB, ~41k lines, far beyond the 8k-token window of the
embedded model). Questions come from ``examples/data/jargon_questions.json`` (the held-out set, never
used to tune a pipeline) and ``examples/data/jargon_questions_dev.json`` (20 definition/etymology
questions used while developing ``pipelines/book_qa.yaml``); each names the glossary ``entry`` that
answers it. Per question:

* ``correct`` — the answer contains one of ``answer_keywords`` (case-insensitive);
* ``cited`` — the first citation's span overlaps the entry (from its ``:name:`` line to the next entry);
* seconds (the document's vectors come from the embedding disk cache after the first question).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/prose_qa.py [--pipeline pipelines/book_qa.yaml] [--sets heldout,dev]

Writes ``bench/results/prose_qa.json`` (one row per question, with the top candidates' answers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "examples" / "data" / "jargon.txt"
SETS = {"heldout": ROOT / "examples/data/jargon_questions.json", "dev": ROOT / "examples/data/jargon_questions_dev.json"}


def entry_span(doc: str, entry: str) -> tuple[int, int]:
    m = re.search(rf"^   :{re.escape(entry)}:", doc, re.M)
    if not m:
        raise SystemExit(f"entry {entry!r} not found in {DOC.name}")
    nxt = re.compile(r"^   :[^:\n]+:", re.M).search(doc, m.end())
    return m.start(), nxt.start() if nxt else len(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines/book_qa.yaml"))
    ap.add_argument("--sets", default="heldout,dev")
    ap.add_argument("--limit", type=int, default=0, help="first N questions of each set (0 = all)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/prose_qa.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ctxflow

    pipe = ctxflow.load(a.pipeline)
    doc = DOC.read_text(encoding="utf-8")
    rows = []
    for name in a.sets.split(","):
        qs = json.loads(SETS[name].read_text(encoding="utf-8"))
        for q in qs[: a.limit or None]:
            lo, hi = entry_span(doc, q["entry"])
            t = time.perf_counter()
            ans = pipe.run({"document": doc, "question": q["question"]})["answer"]
            secs = time.perf_counter() - t
            cit = ans.citations[0] if ans.citations else None
            row = {"set": name, "question": q["question"], "entry": q["entry"], "answer": ans.text,
                   "correct": any(k.lower() in ans.text.lower() for k in q["answer_keywords"]),
                   "cited": bool(cit and cit.start < hi and lo < cit.end),
                   "citation": [cit.start, cit.end] if cit else None, "seconds": round(secs, 1),
                   "candidates": [{"start": c["start"], "end": c["end"], "score": c["score"], "answer": c["answer"][:120],
                                   "in_entry": c["start"] < hi and lo < c["end"]}
                                  for c in ans.trace.get("candidates", [])[:6]]}
            rows.append(row)
            print(f"[{name}] ok={row['correct']!s:5} cited={row['cited']!s:5} {secs:5.1f}s {q['question'][:60]!r} -> {ans.text[:90]!r}",
                  flush=True)
    summary = {}
    for name in a.sets.split(","):
        rs = [r for r in rows if r["set"] == name]
        if rs:
            summary[name] = {"n": len(rs), "correct": sum(r["correct"] for r in rs), "cited": sum(r["cited"] for r in rs),
                             "seconds_mean": round(sum(r["seconds"] for r in rs) / len(rs), 1)}
    out = {"pipeline": os.path.relpath(a.pipeline, ROOT), "document": DOC.name, "summary": summary,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
           "command": "HF_HUB_OFFLINE=1 .venv/bin/python bench/prose_qa.py " + " ".join(sys.argv[1:]), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
