"""Map-step throughput of the embedded model: 32 chunks, batched vs one call per chunk.

The map step of Map-Reduce / Map-Rerank asks the same question of every chunk. LocalLM pads the
prompts to the left and runs them as one batch (split into micro-batches of at most
``batch_tokens`` padded tokens); the alternative is one ``generate`` call per chunk. Both run
here side by side, in alternating rounds (so a busy machine slows both alike), with the call
cache off, greedy decoding and the same prompts. The batched outputs are also checked to equal
the one-by-one outputs token for token.

    HF_HUB_OFFLINE=1 python bench/batching.py [--chunks 32] [--new 32] [--rounds 2]

Writes bench/results/batching.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Summarize the following passage in one sentence.\n\nPassage:\n{chunk}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--size", type=int, default=128, help="chunk size in tokens")
    ap.add_argument("--new", type=int, default=32, help="max new tokens per answer")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "batching.json"))
    args = ap.parse_args()

    from ctxflow.chunking.tokens import TokenChunker
    from ctxflow.llm.local import LocalLM

    llm = LocalLM(cache=False)
    llm.warm_up()
    text = (ROOT / "examples" / "data" / "jargon.txt").read_text(encoding="utf-8")
    start = len(text) // 3  # the glossary body, not the front matter
    chunks = TokenChunker(size=args.size, overlap=0, llm=llm).run(text=text[start : start + 200_000])["chunks"]
    chunks = chunks[: args.chunks]
    prompts = [PROMPT.format(chunk=c.text) for c in chunks]
    n_prompt = [llm.prompt_tokens(p) for p in prompts]

    llm.generate(prompts[:2], max_new_tokens=4)  # warm the kernels
    single_s, batch_s = [], []
    single_out = batch_out = None
    for r in range(args.rounds):
        t = time.perf_counter()
        single_out = [llm.generate([p], max_new_tokens=args.new)[0] for p in prompts]
        single_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch_out = llm.generate(prompts, max_new_tokens=args.new)
        batch_s.append(time.perf_counter() - t)
        print(f"round {r + 1}: one-at-a-time {single_s[-1]:.1f} s, batched {batch_s[-1]:.1f} s")
    same = [a.text == b.text for a, b in zip(single_out, batch_out)]
    gen_tokens = sum(g.n_tokens for g in batch_out)
    s_med, b_med = statistics.median(single_s), statistics.median(batch_s)
    res = {
        "task": f"map step: {len(prompts)} chunks of {args.size} tokens, greedy, max_new_tokens={args.new}",
        "model": llm.model_id,
        "chunks": len(prompts),
        "prompt_tokens_mean": round(sum(n_prompt) / len(n_prompt), 1),
        "generated_tokens": gen_tokens,
        "one_at_a_time_s": [round(x, 2) for x in single_s],
        "batched_s": [round(x, 2) for x in batch_s],
        "one_at_a_time_chunks_per_s": round(len(prompts) / s_med, 2),
        "batched_chunks_per_s": round(len(prompts) / b_med, 2),
        "speedup": round(s_med / b_med, 2),
        "goal": ">= 3x on 2 cores",
        "outputs_identical": f"{sum(same)}/{len(same)}",
        "batch_tokens": llm.batch_tokens,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "rounds alternate the two modes so that other load on the machine slows both alike"},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"\n| mode | chunks/s | seconds (median of {args.rounds}) |\n|---|---|---|")
    print(f"| one call per chunk | {res['one_at_a_time_chunks_per_s']} | {s_med:.1f} |")
    print(f"| one batched call | {res['batched_chunks_per_s']} | {b_med:.1f} |")
    print(f"\nspeedup {res['speedup']}x; batched == one-by-one outputs: {res['outputs_identical']}; wrote {args.out}")


if __name__ == "__main__":
    main()
