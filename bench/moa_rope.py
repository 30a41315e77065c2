"""Perplexity by position past the trained window, for RoPE scaling variants (CPU, real model).

    python bench/moa_rope.py [--length 16384] [--factor 2] [--bins 8]  -> bench/results/moa_rope.json

One window of ``--length`` tokens of the bundled Jargon File (from its last third, never used for
profiling) goes through SmolLM2-135M-Instruct (trained window 8192) once per variant: no scaling,
linear interpolation, dynamic NTK and YaRN (factor 2 = 16k). NLL per token is averaged in equal
position bins. One sample per variant (CPU cost: a 16k forward takes minutes on 2 shared cores).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def nll_by_token(model, ids):
    """(T-1,) NLL of each next token; logits computed in chunks (a 16k x 49k logit matrix is 3 GB)."""
    import torch

    with torch.inference_mode():
        base = model.get_decoder()
        h = base(input_ids=ids[None], use_cache=False).last_hidden_state[0]  # (T, hidden)
        out = []
        for s in range(0, h.shape[0] - 1, 1024):
            lg = model.get_output_embeddings()(h[s:min(s + 1024, h.shape[0] - 1)]).float()
            tgt = ids[s + 1:s + 1 + lg.shape[0]]
            out.append(-torch.log_softmax(lg, -1).gather(1, tgt[:, None])[:, 0])
        return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "moa_rope.json"))
    ap.add_argument("--png", default=str(ROOT / "bench" / "results" / "moa_rope.png"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from ctxflow.llm.local import LocalLM

    text = (ROOT / "examples" / "data" / "jargon.txt").read_text(errors="replace")
    tail = text[2 * len(text) // 3:]
    variants = {"none": None, "linear": {"type": "linear", "factor": args.factor},
                "dynamic_ntk": {"type": "dynamic", "factor": args.factor}, "yarn": {"type": "yarn", "factor": args.factor}}
    res = {"model": "SmolLM2-135M-Instruct (trained window 8192)", "length": args.length, "factor": args.factor,
           "bins": args.bins, "samples": 1, "text": "examples/data/jargon.txt, last third",
           "note": f"one {args.length}-token window per variant (CPU, {args.threads} torch threads); the machine was shared by other work",
           "variants": {}}
    ids = None
    for name, rope in variants.items():
        llm = LocalLM(cache=False, rope_scaling=rope, threads=args.threads)
        llm.warm_up()
        res["attn_implementation"] = llm.model.config._attn_implementation  # sdpa: eager would need T^2 memory
        if ids is None:
            ids = torch.tensor(llm.tokenizer(tail, add_special_tokens=False)["input_ids"][: args.length])
        t0 = time.time()
        nll = nll_by_token(llm.model, ids)
        w = len(nll) // args.bins
        bins = [math.exp(float(nll[i * w:(i + 1) * w].mean())) for i in range(args.bins)]
        res["variants"][name] = {"ppl_by_bin": bins, "ppl_first_half": math.exp(float(nll[: len(nll) // 2].mean())),
                                 "ppl_second_half": math.exp(float(nll[len(nll) // 2:].mean())), "seconds": time.time() - t0}
        print(name, [round(b, 2) for b in bins], flush=True)
        del llm
        Path(args.out).write_text(json.dumps(res, indent=1))
    edges = [(i * (args.length // args.bins), (i + 1) * (args.length // args.bins)) for i in range(args.bins)]
    res["bin_edges"] = edges
    Path(args.out).write_text(json.dumps(res, indent=1))
    plot(res, args.png)
    print("| positions | " + " | ".join(variants) + " |")
    for i, (a, b) in enumerate(edges):
        print(f"| {a}-{b} | " + " | ".join(f"{res['variants'][v]['ppl_by_bin'][i]:.2f}" for v in variants) + " |")


def plot(res, path):
    """Perplexity per position bin, one line per variant; the trained window marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    mids = [(a + b) / 2 for a, b in res["bin_edges"]]
    for name, v in res["variants"].items():
        ax.plot(mids, v["ppl_by_bin"], marker="o", label=name)
    ax.axvline(8192, color="grey", ls="--", lw=1)
    ax.text(8192, ax.get_ylim()[1], " trained window", va="top", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("token position (bin centre)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"SmolLM2-135M-Instruct, RoPE scaling x{res['factor']:g}, one {res['length']}-token window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
