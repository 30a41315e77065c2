"""Coverage of ctxflow's summaries with the embedded model (SmolLM2-135M-Instruct by default).

Codebases: for every Python file with public top-level functions or classes, the share of those
names that its summary names, measured twice: in the model's **prose** alone (the honest number)
and in the file's whole Markdown entry (prose + the deterministic *Defines* list read with ast,
which names everything by construction).

Books: ``--facts`` invented key facts (a distinctive name each) are planted at paragraph breaks
spread evenly through a copy of the book; the copy is summarized; a fact is kept at a level when
its key name appears in that level's text: its own section summary, the summary of the top-level
division (part/chapter) holding it, the book's abstract, and anywhere in the Markdown.

    python bench/summary_coverage.py --json bench/results/summary_coverage.json
    python bench/summary_coverage.py --device cuda --batch-tokens 65536   (same numbers, faster)

The model calls go through the LLM-call cache, so a rerun is instant and an interrupted run resumes.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# invented facts: (sentence planted, key name that must survive)
FACTS = [
    ("The Quillfeather Protocol was written by Marta Quillfeather in 1987 to synchronize tape drives.", "Quillfeather"),
    ("Hackers at the Zorbington lab kept a pet iguana named Vexilla that slept on the PDP-10.", "Vexilla"),
    ("The word 'plinkover' was coined by Dorrit Amsel in 1979 for a program that crashes only on Tuesdays.", "plinkover"),
    ("The Grommet Society of Lund printed 4,096 copies of its famous manual on orange paper.", "Grommet"),
    ("Engineer Tobias Wrenfield wrote the first Wrenfield compiler on a train between Oslo and Bergen.", "Wrenfield"),
    ("The Kessler-Vane test decides whether a terminal is haunted by counting its dropped characters.", "Kessler-Vane"),
    ("At Brimcastle University the student hackers ate only marmalade sandwiches during exam week.", "Brimcastle"),
    ("The Ostrava Incident of 1991 erased the mail spool of 312 users in a single night.", "Ostrava"),
    ("The legendary Zephyrine terminal had a keyboard made of walnut and brass.", "Zephyrine"),
    ("Programmer Ilse Marchetti proved that the Marchetti loop always halts after 17 iterations.", "Marchetti"),
]


def plant(text: str, n: int) -> tuple[str, list[dict]]:
    """``text`` with the first ``n`` facts inserted as their own paragraphs at evenly spread breaks."""
    breaks = [m.end() for m in re.finditer(r"\n[ \t]*\n", text)]
    facts = FACTS[:n]
    picks = [breaks[int(len(breaks) * (k + 0.5) / len(facts))] for k in range(len(facts))]
    out, last, planted = [], 0, []
    for (sentence, key), pos in zip(facts, picks):
        out.append(text[last:pos])
        line = "".join(out).count("\n") + 1
        out.append(f"   {sentence}\n\n")
        planted.append({"key": key, "sentence": sentence, "line": line})
        last = pos
    out.append(text[last:])
    return "".join(out), planted


def has(text: str, key: str) -> bool:
    return re.search(rf"\b{re.escape(key)}\b", text or "", re.I) is not None


def book_coverage(llm, path: Path, n_facts: int, section_tokens: int | None = None) -> dict:
    from ctxflow.summarize.book import BookSummary

    text, planted = plant(path.read_text(encoding="utf-8"), n_facts)
    t = time.time()
    res = BookSummary(llm=llm, section_tokens=section_tokens).run(document=text, title=path.name)
    seconds = time.time() - t
    root = res["outline"]["root"]

    def locate(node: dict, line: int, chain: list[dict]) -> list[dict]:
        for c in node["children"]:
            if c["line"] <= line <= c["end_line"]:
                return locate(c, line, chain + [c])
        return chain

    rows = []
    for f in planted:
        chain = locate(root, f["line"], [])
        node = chain[-1] if chain else root
        section = next((p for p in node["parts"] if p["line"] <= f["line"] <= p["end_line"]), None)
        top = chain[0] if chain else root
        rows.append({**f, "section": bool(section and has(section["summary"], f["key"])),
                     "node": has(node["summary"], f["key"]), "node_title": node["title"],
                     "top_division": has(top["summary"], f["key"]), "top_title": top["title"],
                     "abstract": has(root["summary"], f["key"]), "anywhere_in_markdown": has(res["summary"], f["key"])})
    share = {k: sum(r[k] for r in rows) / len(rows) for k in ("section", "node", "top_division", "abstract", "anywhere_in_markdown")}
    return {"document": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), "facts": len(rows), "share_kept": share, "rows": rows,
            "sections": res["outline"]["sections"], "section_budget": res["outline"]["section_budget"],
            "model_calls": res["outline"]["calls"], "seconds": round(seconds, 1), "abstract": root["summary"]}


def code_coverage(llm, folder: Path) -> dict:
    from ctxflow.summarize.code import CodeSummary

    t = time.time()
    res = CodeSummary(llm=llm).run(path=str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder))
    seconds = time.time() - t
    md = res["summary"]
    files, prose_hits, md_hits, total = [], 0, 0, 0
    for f in res["report"]["files"]:
        names = f["public_names"]
        if not names:
            continue
        shown = f"{res['report']['root']}/{f['path']}"
        entry = md.split(f"#### `{shown}`", 1)[1].split("\n#### ", 1)[0].split("\n### ", 1)[0]
        p = [n for n in names if has(f["summary"], n)]
        m = [n for n in names if has(entry, n)]
        files.append({"path": f["path"], "public": len(names), "named_in_prose": len(p), "named_in_markdown": len(m),
                      "prose_share": len(p) / len(names), "missing_in_prose": [n for n in names if n not in p]})
        prose_hits, md_hits, total = prose_hits + len(p), md_hits + len(m), total + len(names)
    n = len(files)
    return {"folder": res["report"]["root"], "files_with_public_names": n, "public_names": total,
            "prose": {"mean_file_share": sum(f["prose_share"] for f in files) / n, "share_of_all_names": prose_hits / total},
            "markdown_with_outline": {"mean_file_share": sum(f["named_in_markdown"] / f["public"] for f in files) / n,
                                      "share_of_all_names": md_hits / total},
            "model_calls": res["report"]["calls"], "seconds": round(seconds, 1), "files": files}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--book", default=str(ROOT / "examples/data/jargon.txt"))
    ap.add_argument("--code", default=str(ROOT / "ctxflow"))
    ap.add_argument("--facts", type=int, default=10)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--section-tokens", type=int, help="book section budget (default: the component's)")
    ap.add_argument("--only", choices=["book", "code"], help="measure one of the two")
    ap.add_argument("--json", default=str(ROOT / "bench/results/summary_coverage.json"))
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ctxflow.llm.local import LocalLM

    llm = LocalLM(args.model, device=args.device, batch_tokens=args.batch_tokens)
    llm.warm_up()
    out = {"model": llm.model_id, "device": args.device, "machine": platform.platform(),
           "note": "Coverage is a property of the model's text, not of the machine; the LLM-call cache makes a rerun "
                   "on another machine (CPU or GPU) give the same numbers for the same model."}
    if args.only in (None, "code"):
        out["codebase"] = code_coverage(llm, Path(args.code).resolve())
        print(json.dumps({k: out["codebase"][k] for k in ("folder", "prose", "markdown_with_outline", "model_calls")}), flush=True)
    if args.only in (None, "book"):
        out["book"] = book_coverage(llm, Path(args.book).resolve(), args.facts, args.section_tokens)
        print(json.dumps({k: out["book"][k] for k in ("document", "share_kept", "model_calls")}), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
