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
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "moa_rope.json"))
    args = ap.parse_args()
    import torch

    from ctxflow.llm.local import LocalLM

    text = (ROOT / "examples" / "data" / "jargon.txt").read_text(errors="replace")
    tail = text[2 * len(text) // 3:]
    variants = {"none": None, "linear": {"type": "linear", "factor": args.factor},
                "dynamic_ntk": {"type": "dynamic", "factor": args.factor}, "yarn": {"type": "yarn", "factor": args.factor}}
    res = {"model": "SmolLM2-135M-Instruct (trained window 8192)", "length": args.length, "factor": args.factor,
           "bins": args.bins, "samples": 1, "text": "examples/data/jargon.txt, last third",
           "note": "one 16k window per variant (CPU); the machine was shared by other work", "variants": {}}
    ids = None
    for name, rope in variants.items():
        llm = LocalLM(cache=False, rope_scaling=rope)
        llm.warm_up()
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
    print("| positions | " + " | ".join(variants) + " |")
    for i, (a, b) in enumerate(edges):
        print(f"| {a}-{b} | " + " | ".join(f"{res['variants'][v]['ppl_by_bin'][i]:.2f}" for v in variants) + " |")


if __name__ == "__main__":
    main()
