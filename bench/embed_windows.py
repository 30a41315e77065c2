"""Long passages in the embedder: cut to the model's input (sentence-transformers' default) vs the
token-weighted mean of windows (``STEmbedder``). Code chunks from ``codebase_qa``'s reader; for each
sampled chunk longer than the input, one query is a line from its start, one a line from past the cut;
short chunks get a line query too (to see that the change does not hurt them). Rank of the chunk among
all chunks of the codebase by cosine similarity.

    python bench/embed_windows.py ctxflow /usr/lib/python3.11/email --json bench/results/embed_windows.json
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from ctxflow import load
from ctxflow.llm.embed import STEmbedder


def measure(folder: str, per: int, seed: int) -> dict:
    read = load("codebase_qa").components["read"]
    texts = [c.text for c in next(v for v in read.run(path=folder).values() if isinstance(v, list))]
    e = STEmbedder(disk_cache=False)
    st, tok = e.model, e.model.tokenizer
    parts = STEmbedder._windows(st, texts, STEmbedder._room(st, None))
    t0 = time.perf_counter()
    cut = st.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    t_cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    whole = e.embed(texts)
    t_whole = time.perf_counter() - t0
    rng = random.Random(seed)

    def query(i: int, part: str) -> str | None:
        t = texts[i]
        first = parts[t][0][0]
        lines = [ln.strip() for ln in t.splitlines() if len(ln.strip()) > 30]
        pick = [ln for ln in lines if (t.find(ln) >= len(first)) == (part == "tail")]
        return rng.choice(pick) if pick else None

    long = [i for i, t in enumerate(texts) if len(parts[t]) > 1]
    short = [i for i, t in enumerate(texts) if len(parts[t]) == 1]
    rng.shuffle(long)
    rng.shuffle(short)
    rows = {}
    for part, pool in (("long, line from the start", long[:per]), ("long, line past the cut", long[:per]),
                       ("short, any line", short[:per])):
        qs = [(i, q) for i in pool if (q := query(i, "tail" if "past" in part else "head"))]
        qv = st.encode([q for _, q in qs], normalize_embeddings=True, convert_to_numpy=True)
        for name, m in (("cut", cut), ("windows", whole)):
            s = qv @ m.T
            ranks = [int((s[k] > s[k, i]).sum()) + 1 for k, (i, _) in enumerate(qs)]
            rows[f"{part} / {name}"] = {"n": len(qs), "hit@1": float(np.mean([r <= 1 for r in ranks])),
                                        "hit@5": float(np.mean([r <= 5 for r in ranks])), "median_rank": float(np.median(ranks))}
    return {"folder": folder, "chunks": len(texts), "longer_than_input": len(long), "max_seq_length": st.max_seq_length,
            "seconds_cut": round(t_cut, 1), "seconds_windows": round(t_whole, 1), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--per", type=int, default=60, help="chunks sampled per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = [measure(f, a.per, a.seed) for f in a.folders]
    for r in out:
        print(f"\n{r['folder']}: {r['chunks']} chunks, {r['longer_than_input']} longer than {r['max_seq_length']} tokens; "
              f"embedding {r['seconds_cut']} s cut, {r['seconds_windows']} s windows")
        print(f"{'queries / embedding':45} {'n':>4} {'hit@1':>6} {'hit@5':>6} {'median rank':>12}")
        for k, v in r["rows"].items():
            print(f"{k:45} {v['n']:4d} {v['hit@1']:6.2f} {v['hit@5']:6.2f} {v['median_rank']:12.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": "python bench/embed_windows.py " + " ".join(a.folders), "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
