"""LangChain's ``map_rerank`` vs ctxflow's ``select.map_rerank``: same questions, same candidate
chunks, same model (the embedded SmolLM2-135M-Instruct, loaded once), side by side in one run.

    .venv/bin/pip install -e ".[bench]"       # langchain-classic, bench only
    HF_HUB_OFFLINE=1 .venv/bin/python bench/peers.py --lines-per 5 --out bench/results/peers.json

Questions: LongEval lines questions (200-line records) and the Jargon File questions in
``examples/data/jargon_questions.json``. Candidates: the top ``--k`` BM25 hits over recursive
chunks of the document (the same list for every system). LangChain's chain runs over a tiny
LangChain LLM class that calls ``LocalLM.generate`` with all of a chain's prompts in one batch,
so both sides use the same weights, prompts batching and greedy decoding.

Recorded per system: accuracy (lines: the last integer equals the value; jargon: an answer
keyword appears), parse failures (LangChain: a chain that raised "Could not parse output";
ctxflow parse mode: candidates whose "Score:" could not be read), seconds per question.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctxflow.chunking import chunk_text  # noqa: E402
from ctxflow.eval.lines import make_lines_task, score  # noqa: E402
from ctxflow.llm.local import LocalLM  # noqa: E402
from ctxflow.memory.bm25 import BM25Bank  # noqa: E402
from ctxflow.select.map_rerank import MapRerank  # noqa: E402


def langchain_llm(local: LocalLM, max_new_tokens: int):
    """A LangChain LLM over the already loaded LocalLM (one batched generate per call)."""
    from langchain_core.language_models.llms import LLM
    from langchain_core.outputs import Generation, LLMResult

    class LocalLangChainLLM(LLM):
        model: Any = None
        max_new_tokens: int = 64

        @property
        def _llm_type(self) -> str:
            return "ctxflow-local"

        def _call(self, prompt: str, stop=None, run_manager=None, **kw) -> str:
            return self._generate([prompt], stop=stop).generations[0][0].text

        def _generate(self, prompts, stop=None, run_manager=None, **kw) -> LLMResult:
            gens = self.model.generate(list(prompts), max_new_tokens=self.max_new_tokens, stop=stop)
            return LLMResult(generations=[[Generation(text=g.text)] for g in gens])

    return LocalLangChainLLM(model=local, max_new_tokens=max_new_tokens)


def candidates(text: str, question: str, k: int, llm: LocalLM):
    bank = BM25Bank()
    bank.add(chunk_text(text, "recursive", size=128, llm=llm))
    return bank.search(question, k)


def lines_questions(n: int) -> list[dict]:
    return [{"kind": "lines", "document": e.document, "question": e.question, "answer": e.answer, "id": e.id}
            for e in make_lines_task(200, n, seed=7)]


def jargon_questions() -> list[dict]:
    text = (ROOT / "examples/data/jargon.txt").read_text(encoding="utf-8", errors="replace")
    qs = json.loads((ROOT / "examples/data/jargon_questions.json").read_text(encoding="utf-8"))
    return [{"kind": "jargon", "document": text, "question": q["question"], "keywords": q["answer_keywords"],
             "id": f"jargon-{i}"} for i, q in enumerate(qs)]


def correct(q: dict, reply: str) -> bool:
    if q["kind"] == "lines":
        return score(reply, q["answer"])
    return any(k.lower() in (reply or "").lower() for k in q["keywords"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines-per", type=int, default=5)
    ap.add_argument("--no-jargon", action="store_true")
    ap.add_argument("--k", type=int, default=4, help="candidate chunks per question")
    ap.add_argument("--out", default=str(ROOT / "bench/results/peers.json"))
    args = ap.parse_args(argv)
    from langchain_classic.chains.question_answering import load_qa_chain
    from langchain_core.documents import Document

    llm = LocalLM()
    llm.warm_up()
    lc_chain = load_qa_chain(langchain_llm(llm, 64), chain_type="map_rerank")
    ours = {"ctxflow map_rerank (combined)": MapRerank(llm=llm, method="combined", max_new_tokens=48, max_candidates=args.k),
            "ctxflow map_rerank (parse mode)": MapRerank(llm=llm, method="parse", max_new_tokens=48, max_candidates=args.k)}
    qs = lines_questions(args.lines_per) + ([] if args.no_jargon else jargon_questions())
    names = ["langchain map_rerank"] + list(ours)
    stats = {n: {"correct": 0, "parse_failures": 0, "errors": 0, "seconds": 0.0, "n": 0} for n in names}
    rows = []
    for qi, q in enumerate(qs):
        cands = candidates(q["document"], q["question"], args.k, llm)
        row: dict[str, Any] = {"id": q["id"], "question": q["question"], "replies": {}}
        # LangChain
        t0 = time.perf_counter()
        try:
            out = lc_chain.invoke({"input_documents": [Document(page_content=c.item.text) for c in cands], "question": q["question"]})
            reply, fail, err = out.get("output_text", ""), 0, None
        except Exception as exc:  # noqa: BLE001 - what LangChain does on a small model is the measurement
            reply, err = "", f"{type(exc).__name__}: {str(exc)[:200]}"
            fail = int("parse" in str(exc).lower())
        dt = time.perf_counter() - t0
        st = stats["langchain map_rerank"]
        ok = correct(q, reply)
        st["correct"] += ok; st["parse_failures"] += fail; st["errors"] += err is not None; st["seconds"] += dt; st["n"] += 1
        row["replies"]["langchain map_rerank"] = {"reply": reply, "correct": ok, "error": err, "seconds": round(dt, 2)}
        # ctxflow
        for name, comp in ours.items():
            t0 = time.perf_counter()
            ans = comp.run(candidates=cands, question=q["question"])["answer"]
            dt = time.perf_counter() - t0
            ok = correct(q, ans.text)
            st = stats[name]
            st["correct"] += ok; st["parse_failures"] += ans.trace["parse_failures"]; st["seconds"] += dt; st["n"] += 1
            row["replies"][name] = {"reply": ans.text, "correct": ok, "parse_failures": ans.trace["parse_failures"],
                                    "seconds": round(dt, 2)}
        rows.append(row)
        print(f"[{qi + 1}/{len(qs)}] " + "  ".join(f"{n.split(' (')[0][:9]}{'+' if r['correct'] else '-'}" for n, r in row["replies"].items()),
              file=sys.stderr)
    summary = {n: {"accuracy": s["correct"] / s["n"] if s["n"] else 0.0, "n": s["n"], "parse_failures": s["parse_failures"],
                   "chain_errors": s["errors"], "seconds_per_q": s["seconds"] / s["n"] if s["n"] else 0.0} for n, s in stats.items()}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    res = {"bench": "map_rerank peers", "model": llm.model_id, "candidates_per_question": args.k,
           "questions": {"lines-200": args.lines_per, "jargon": 0 if args.no_jargon else len(qs) - args.lines_per},
           "parse_failures_unit": "langchain: questions whose chain raised a parse error; ctxflow: candidates without a readable Score",
           "machine": f"{os.cpu_count()} CPU cores, load average {load:.1f} at the end (shared with other work: seconds inflated, ratios hold)",
           "summary": summary, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("| system | accuracy | parse failures | s/question |\n|---|---:|---:|---:|")
    for n, s in summary.items():
        print(f"| {n} | {100 * s['accuracy']:.0f}% ({s['n']}) | {s['parse_failures']} | {s['seconds_per_q']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
