"""Aggregation strategies side by side on documents longer than the model's (emulated) window.

Each task is a question whose evidence sits at a random place in a document of at least
``--factor`` x the window (default 4.5 x 512 tokens, measured with the model's tokenizer):

* **planted** — a slice of the Jargon File glossary (random start) with one made-up fact
  (random template, name, number) inserted at a random paragraph boundary;
* **jargon** — the questions of ``examples/data/jargon_questions.json`` on a slice of the
  Jargon File around the entry that answers them, the entry at a random place in the slice.

Every strategy gets the same chunks (``chunk.recursive``, ``--chunk`` tokens) and the same
emulated context (``LocalLM(max_context=--window)``, call cache off) and runs on each task in
turn, so the numbers are side by side in one process:

truncation (the first window's worth of text, one call), stuff over top-k (MiniLM cosine top-k,
one call), map_reduce, refine, pcw_paper (PCW exactly as the paper: no attention rescale), pcw
(all the chunks, as many windows as they fill, attention rescaled by 1/windows), pcw_topk
(PCW over only the ``--pcw-keep`` windows most similar to the question by MiniLM cosine, the
paper's retrieval-QA setting), nbce. A reply is correct when it contains one of the
answer's keywords (case-insensitive). Reported per strategy: accuracy, LLM calls (prompts
sent; PCW/NBCE: 1 each), tokens processed (prompt + generated tokens run through the model;
NBCE counts every row), wall time. Results are written after every task (an interrupted run
keeps what it finished) to ``bench/results/aggregate.json`` and plotted to ``aggregate.png``.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/aggregate.py [--tasks 10] [--window 512] [--threads 1]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/aggregate.py --plot-only
    # on a busy machine: shards in parallel processes, then merge
    for i in 0 1 2; do .venv/bin/python bench/aggregate.py --tasks 8 --threads 1 --shard $i/3 & done; wait
    .venv/bin/python bench/aggregate.py --merge 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "examples" / "data" / "jargon.txt"
QUESTIONS = ROOT / "examples" / "data" / "jargon_questions.json"
OUT = ROOT / "bench" / "results" / "aggregate.json"
STRATEGIES = ("truncation", "stuff_topk", "map_reduce", "refine", "pcw_paper", "pcw", "pcw_topk", "nbce")

ADJ = ["amber", "northern", "silent", "copper", "eastern", "hidden", "granite", "scarlet", "frozen", "velvet"]
NOUN = ["vault", "archive", "lighthouse", "observatory", "greenhouse", "workshop", "tower", "library"]
NAMES = ["Mirela Osk", "Tobin Vashti", "Ilse Marrow", "Dario Quell", "Hanne Strom", "Kofi Adler", "Petra Lind"]
TOWNS = ["Bergholm", "Castelnau", "Varkaus", "Oldcastle", "Tremadoc", "Lindau", "Porvoo"]
COLORS = {"truncation": "#999", "stuff_topk": "#6a9", "map_reduce": "#58c", "refine": "#58c", "pcw_paper": "#dba", "pcw": "#c63",
          "pcw_topk": "#e96", "nbce": "#c63"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def planted_fact(rng: random.Random) -> tuple[str, str, list[str]]:
    """(fact sentence, question, answer keywords) from a random template."""
    a, n = rng.choice(ADJ), rng.choice(NOUN)
    kind = rng.randrange(4)
    if kind == 0:
        code = str(rng.randint(1000, 9999))
        return f"The access code of the {a} {n} is {code}.", f"What is the access code of the {a} {n}?", [code]
    if kind == 1:
        who = rng.choice(NAMES)
        return f"The keeper of the {a} {n} is {who}.", f"Who is the keeper of the {a} {n}?", [who, who.split()[1]]
    if kind == 2:
        town = rng.choice(TOWNS)
        return f"The {a} {n} was built in the town of {town}.", f"In which town was the {a} {n} built?", [town]
    day = rng.choice(DAYS)
    return f"The {a} {n} opens only on {day}.", f"On which day does the {a} {n} open?", [day]


def slice_tokens(llm, text: str, start: int, n_tokens: int) -> str:
    """``text`` from ``start`` (snapped to a line start) until it holds ``n_tokens`` tokens."""
    start = text.rfind("\n", 0, start) + 1
    end = start + n_tokens * 4
    while llm.count_tokens(text[start:end]) < n_tokens and end < len(text):
        end += n_tokens
    end = text.find("\n", end)
    return text[start:end if end > 0 else len(text)]


def build_tasks(llm, n: int, n_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    book = DOC.read_text(encoding="utf-8")
    glossary = book.index("\n   :")  # first entry
    jq = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    tasks = []
    for i in range(n):
        if i % 2 == 1 and i // 2 < len(jq):  # a real question, its entry at a random place in the slice
            q = jq[i // 2]
            at = re.search(rf"^   :{re.escape(q['entry'])}:", book, re.M).start()
            doc = slice_tokens(llm, book, max(glossary, at - int(rng.random() * n_tokens * 3.6)), n_tokens)
            if at >= book.find(doc) + len(doc) - 400:  # keep the entry's first lines inside
                doc = slice_tokens(llm, book, at - int(0.8 * len(doc)), n_tokens)
            tasks.append({"kind": "jargon", "question": q["question"], "keywords": q["answer_keywords"], "document": doc,
                          "evidence_at": doc.find(f":{q['entry']}:") / len(doc)})
        else:
            fact, question, keys = planted_fact(rng)
            doc = slice_tokens(llm, book, rng.randrange(glossary, len(book) - n_tokens * 6), n_tokens)
            paras = [m.end() for m in re.finditer(r"\n\n", doc)]
            cut = rng.choice(paras) if paras else len(doc)
            doc = doc[:cut] + "   " + fact + "\n\n" + doc[cut:]
            tasks.append({"kind": "planted", "question": question, "keywords": keys, "document": doc,
                          "evidence_at": cut / len(doc)})
    return tasks


def correct(answer: str, keywords: list[str]) -> bool:
    return any(k.lower() in answer.lower() for k in keywords)


def run_strategy(name: str, llm, emb, chunks, question: str, args) -> dict:
    from ctxflow.aggregate import map_reduce, nbce, pcw, refine, stuff
    from ctxflow.events import EventBus, use_bus

    calls = {"n": 0, "tokens": 0}

    def count(ev):
        if ev.kind == "llm_call":
            calls["n"] += ev.data.get("n_prompts", 1)
            calls["tokens"] += ev.data.get("prompt_tokens", 0) + ev.data.get("completion_tokens", 0)

    t = time.perf_counter()
    with use_bus(EventBus([count])):
        if name == "truncation":
            comp, given = stuff.Stuff(llm=llm, max_new_tokens=args.new_tokens), chunks  # document order: a prefix
        elif name == "stuff_topk":
            import numpy as np

            if isinstance(emb, list):  # top-k computed beforehand (--topk-json)
                order = emb[: args.top_k]
            else:
                qv = emb.embed([question], kind="query")[0]
                cv = emb.embed([c.text for c in chunks])
                order = np.argsort(-(cv @ qv))[: args.top_k]
            comp, given = stuff.Stuff(llm=llm, max_new_tokens=args.new_tokens), [chunks[i] for i in order]
        elif name == "map_reduce":
            comp, given = map_reduce.MapReduce(llm=llm, max_new_tokens=args.new_tokens, map_tokens=args.map_tokens,
                                               collapse_tokens=args.map_tokens), chunks
        elif name == "refine":
            comp, given = refine.Refine(llm=llm, max_new_tokens=args.new_tokens), chunks
        elif name in ("pcw", "pcw_topk", "pcw_paper"):
            kw = dict(llm=llm, max_new_tokens=args.new_tokens, dedupe=args.pcw_dedupe,
                      rescale=0.0 if name == "pcw_paper" else args.pcw_rescale,
                      question_in_windows=args.pcw_question_in_windows, answer_prefix=args.pcw_answer_prefix)
            given = chunks
            if name == "pcw_topk" and isinstance(emb, list):  # precomputed top-k: rank windows by those scores
                from ctxflow.types import Scored

                best = {int(j): len(emb) - r for r, j in enumerate(emb)}
                given = [Scored(item=c, score=float(best.get(j, -1))) for j, c in enumerate(chunks)]
                kw.update(keep_windows=args.pcw_keep, rank="score")
            elif name == "pcw_topk":
                kw.update(keep_windows=args.pcw_keep, rank="embedding", embedder=emb)
            comp = pcw.PCW(**kw)
        else:
            comp, given = nbce.NBCE(llm=llm, max_new_tokens=args.new_tokens), chunks
        try:
            ans = comp.run(chunks=given, question=question)["answer"]
            text, err, trace = ans.text, None, ans.trace
        except Exception as e:  # a strategy that fails counts as wrong, with the reason recorded
            text, err, trace = "", f"{type(e).__name__}: {e}", {}
    wall = time.perf_counter() - t
    return {"answer": text, "error": err, "calls": calls["n"], "tokens": calls["tokens"], "wall_s": wall,
            "windows": trace.get("windows") or trace.get("contexts") or trace.get("steps")}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for s in STRATEGIES:
        rs = [r["results"][s] for r in rows if s in r["results"]]
        if rs:
            out[s] = {"accuracy": sum(r["correct"] for r in rs) / len(rs), "n": len(rs),
                      "llm_calls": sum(r["calls"] for r in rs) / len(rs), "tokens": sum(r["tokens"] for r in rs) / len(rs),
                      "wall_s": sum(r["wall_s"] for r in rs) / len(rs), "errors": sum(bool(r["error"]) for r in rs)}
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = data["summary"]
    names = [k for k in STRATEGIES if k in s]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for a, key, label in zip(ax, ("accuracy", "tokens", "wall_s"), ("accuracy", "tokens processed / question", "wall s / question")):
        a.bar(names, [s[n][key] for n in names], color=[COLORS[n] for n in names])
        a.set_title(label)
        a.tick_params(axis="x", rotation=35)
    fig.suptitle(f"{data['config']['model']} , window {data['config']['window']} tokens, documents "
                 f"{data['config']['doc_tokens']} tokens, {len(data['tasks'])} questions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--window", type=int, default=512, help="emulated context (max_context)")
    ap.add_argument("--factor", type=float, default=4.5, help="document tokens = factor x window")
    ap.add_argument("--chunk", type=int, default=160)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--map-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="default")
    ap.add_argument("--pcw-dedupe", default="prefix", choices=["prefix", "bos", "none"])
    ap.add_argument("--pcw-rescale", type=float, default=1.0, help="PCW attention rescale (0: the paper's PCW)")
    ap.add_argument("--pcw-keep", type=int, default=3, help="pcw_topk: windows kept (MiniLM cosine)")
    ap.add_argument("--pcw-question-in-windows", action="store_true")
    ap.add_argument("--pcw-answer-prefix", default="")
    ap.add_argument("--note", default=None, help="the config note (e.g. the machine's load during the run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--topk-json", default=None, help="precomputed MiniLM top-k chunk indices per task (no embedder here)")
    ap.add_argument("--write-topk", default=None, help="only compute the top-k chunk indices per task into this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(STRATEGIES))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--shard", default="0/1", help="i/n: run tasks i, i+n, ... into <out>.shard<i>.json (then --merge)")
    ap.add_argument("--merge", type=int, default=0, help="merge n shard files into --out and plot")
    ap.add_argument("--merge-extra", default=None, help="with --merge: also fold in the n shards of this --out "
                                                          "(other strategies run later on the same tasks), by task index")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return
    if args.merge:
        parts = [json.loads(out.with_suffix(f".shard{i}.json").read_text()) for i in range(args.merge)]
        data = {**parts[0], "tasks": sorted((t for p in parts for t in p["tasks"]), key=lambda t: t["index"])}
        if args.merge_extra:
            extra = Path(args.merge_extra)
            more = {t["index"]: t for i in range(args.merge) for t in json.loads(extra.with_suffix(f".shard{i}.json").read_text())["tasks"]}
            for t in data["tasks"]:
                e = more.get(t["index"])
                if e is not None:
                    assert e["question"] == t["question"], f"task {t['index']} differs between the runs"
                    t["results"].update(e["results"])
            data["config"]["merged_extra"] = sorted({s for e in more.values() for s in e["results"]})
        data["config"]["shards"] = args.merge
        if args.note:
            data["config"]["note"] = args.note
        data["summary"] = summarize(data["tasks"])
        out.write_text(json.dumps(data, indent=1))
        plot(data, out.with_suffix(".png"))
        print(json.dumps(data["summary"], indent=1))
        return
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    if n_shards > 1:
        out = out.with_suffix(f".shard{shard}.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ctxflow.chunking.base import chunk_text
    from ctxflow.llm.embed import STEmbedder
    from ctxflow.llm.local import LocalLM

    llm = LocalLM(model=args.model, max_context=args.window, cache=False, threads=args.threads, device=args.device)
    llm.warm_up()
    n_tokens = int(args.factor * args.window)
    tasks = build_tasks(llm, args.tasks, n_tokens, args.seed)
    topk = json.loads(Path(args.topk_json).read_text()) if args.topk_json else None
    emb = None
    if topk is None:
        emb = STEmbedder(disk_cache=False)
        emb.warm_up()
    if args.write_topk:
        import numpy as np

        res = {}
        for i, task in enumerate(tasks):
            chunks = chunk_text(task["document"], "recursive", size=args.chunk, llm=llm, doc_id=f"task{i}")
            qv = emb.embed([task["question"]], kind="query")[0]
            cv = emb.embed([c.text for c in chunks])
            res[str(i)] = [int(x) for x in np.argsort(-(cv @ qv))[: args.top_k]]
        Path(args.write_topk).write_text(json.dumps(res))
        return
    only = [s for s in args.only.split(",") if s]
    data = {"config": {"model": llm.model_id, "window": args.window, "doc_tokens": n_tokens, "chunk_tokens": args.chunk,
                       "top_k": args.top_k, "new_tokens": args.new_tokens, "map_tokens": args.map_tokens, "seed": args.seed,
                       "calls_note": "LLM calls = prompts sent; PCW is one grey-box generation; NBCE one batched generation "
                                     "whose rows (no-context row + one per context) are counted as prompts",
                       "threads": args.threads, "tasks": args.tasks, "pcw_dedupe": args.pcw_dedupe, "pcw_rescale": args.pcw_rescale,
                       "pcw_keep": args.pcw_keep, "pcw_question_in_windows": args.pcw_question_in_windows,
                       "pcw_answer_prefix": args.pcw_answer_prefix, "device": args.device, "topk_precomputed": bool(topk), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                       "note": args.note or "CPU machine shared with other jobs: wall times are inflated, compare "
                                            "them only with each other"},
            "tasks": [], "summary": {}}
    for i, task in enumerate(tasks):
        if i % n_shards != shard:
            continue
        chunks = chunk_text(task["document"], "recursive", size=args.chunk, llm=llm, doc_id=f"task{i}")
        row = {"index": i, "kind": task["kind"], "question": task["question"], "keywords": task["keywords"],
               "doc_tokens": llm.count_tokens(task["document"]), "evidence_at": round(task["evidence_at"], 3),
               "chunks": len(chunks), "results": {}}
        for s in only:
            r = run_strategy(s, llm, topk[str(i)] if topk else emb, chunks, task["question"], args)
            r["correct"] = correct(r["answer"], task["keywords"])
            row["results"][s] = r
            print(f"[{i + 1}/{len(tasks)}] {s:11s} ok={r['correct']!s:5} calls={r['calls']:3d} tokens={r['tokens']:6d} "
                  f"{r['wall_s']:6.1f}s  {r['answer'][:60]!r} {r['error'] or ''}", file=sys.stderr, flush=True)
        data["tasks"].append(row)
        data["summary"] = summarize(data["tasks"])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out)
    if n_shards == 1:
        plot(data, out.with_suffix(".png"))
    print(json.dumps(data["summary"], indent=1))


if __name__ == "__main__":
    main()
