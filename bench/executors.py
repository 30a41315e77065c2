"""Map-step throughput: the local executor vs a local Ray cluster with 2 actors, side by side.

Workload (a map-reduce map step and a memory bank's embedding, both on real text):
* generate: N map prompts (one per ~200-token chunk of examples/data/jargon.txt, the map prompt of
  aggregate.map_reduce), greedy, ``--tokens`` new tokens each, LLM-call cache off;
* embed: M chunks embedded with all-MiniLM-L6-v2.
``local``: one process, the model with all cores (torch threads = cores), one batched call.
``ray``: ``ray.init(num_cpus=cores)``, 2 actors x 1 CPU, each its own model (1 thread), the map
step cut into 2 shards. Models are loaded and warmed before timing (load times recorded apart).
Rounds alternate local / ray so that a busy machine slows both alike; we report the median.

    HF_HUB_OFFLINE=1 python bench/executors.py [--prompts 16] [--tokens 32] [--texts 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU node (then each actor takes --gpus-per-actor)")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "executors.json"))
    args = ap.parse_args()

    import ray
    import torch

    from ctxflow.aggregate.map_reduce import MAP_PROMPT
    from ctxflow.llm.embed import STEmbedder
    from ctxflow.llm.local import LocalLM
    from ctxflow.run import LocalExecutor, make_executor

    cores = len(os.sched_getaffinity(0))
    text = (ROOT / "examples" / "data" / "jargon.txt").read_text(encoding="utf-8")
    llm, emb = LocalLM(cache=False, device=args.device), STEmbedder(device=args.device, disk_cache=False)
    t = time.perf_counter()
    llm.warm_up(), emb.warm_up()
    load_local = time.perf_counter() - t
    # chunks of ~200 tokens from the middle of the file (past the front matter)
    words = text[200_000:].split()
    chunks = [" ".join(words[i * 150:(i + 1) * 150]) for i in range(max(args.prompts, args.texts // 4))]
    prompts = [MAP_PROMPT.format(context=c, question="What does the word mean and where does it come from?") for c in chunks[: args.prompts]]
    texts = [" ".join(words[i * 40:(i + 1) * 40]) for i in range(args.texts)]

    local = LocalExecutor()
    t = time.perf_counter()
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default nice 15 would starve the actors on a shared machine
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    remote = make_executor({"type": "ray", "address": "local", "actors": args.actors,
                            "cpus_per_actor": args.cpus_per_actor, "gpus_per_actor": args.gpus_per_actor})
    remote.map_generate(llm, ["Say hi."] * args.actors, max_new_tokens=2)  # start actors, load the LLM there
    remote.map_embed(emb, ["warm up"] * args.actors)
    load_ray = time.perf_counter() - t
    local.map_generate(llm, ["Say hi."], max_new_tokens=2)

    rows: dict[str, dict[str, list[float]]] = {"local": {"generate_s": [], "embed_s": []}, "ray": {"generate_s": [], "embed_s": []}}
    outs: dict[str, list[str]] = {}
    completion = {}
    load0 = os.getloadavg()
    for r in range(args.rounds):
        for name, ex in (("local", local), ("ray", remote)) if r % 2 == 0 else (("ray", remote), ("local", local)):
            t = time.perf_counter()
            gens = ex.map_generate(llm, prompts, max_new_tokens=args.tokens, temperature=0.0)
            rows[name]["generate_s"].append(time.perf_counter() - t)
            outs[name] = [g.text for g in gens]
            completion[name] = sum(g.n_tokens for g in gens)
            emb._memo.clear()  # the embedder memoises texts in-process (and disk_cache=False): time real work every round
            t = time.perf_counter()
            ex.map_embed(emb, [f"{x} [{r}]" for x in texts])
            rows[name]["embed_s"].append(time.perf_counter() - t)
    load1 = os.getloadavg()

    res = {"bench": "executors", "what": "map-step throughput, local executor vs Ray actors, same run",
           "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "ray": ray.__version__, "loadavg_before": load0, "loadavg_after": load1,
                       "note": ("the machine was shared with other work (load average above the core count)"
                                if max(load0[0], load1[0]) > cores + 0.5 else "no other heavy work ran beside the bench")
                               + "; ratios come from alternating rounds of one run"},
           "workload": {"map_prompts": len(prompts), "new_tokens": args.tokens, "prompt_tokens_mean": round(statistics.mean(
               llm.prompt_tokens(p) for p in prompts), 1), "embed_texts": len(texts), "rounds": args.rounds,
               "model": llm.model_id, "embedder": emb.model_id},
           "setup": {"local": {"processes": 1, "torch_threads": torch.get_num_threads()},
                     "ray": {"actors": args.actors, "cpus_per_actor": args.cpus_per_actor, "gpus_per_actor": args.gpus_per_actor,
                             "torch_threads_per_actor": max(1, round(args.cpus_per_actor))}, "device": args.device},
           "load_seconds": {"local_models": round(load_local, 2), "ray_start_and_actor_models": round(load_ray, 2)},
           "results": {}, "same_greedy_outputs": outs["local"] == outs["ray"],
           "corpus_facts": {"jargon_chars": len(text), "jargon_tokens": llm.count_tokens(text),
                            "chars_per_token": round(len(text) / llm.count_tokens(text), 3)}}
    for name in ("local", "ray"):
        g, e = statistics.median(rows[name]["generate_s"]), statistics.median(rows[name]["embed_s"])
        res["results"][name] = {"generate_s_median": round(g, 3), "generate_s_all": [round(x, 3) for x in rows[name]["generate_s"]],
                                "prompts_per_s": round(len(prompts) / g, 3), "completion_tokens": completion[name],
                                "completion_tokens_per_s": round(completion[name] / g, 2),
                                "embed_s_median": round(e, 3), "embed_s_all": [round(x, 3) for x in rows[name]["embed_s"]],
                                "texts_per_s": round(len(texts) / e, 1)}
    L, R = res["results"]["local"], res["results"]["ray"]
    res["ratios_ray_over_local"] = {"generate_throughput": round(R["prompts_per_s"] / L["prompts_per_s"], 3),
                                    "embed_throughput": round(R["texts_per_s"] / L["texts_per_s"], 3)}
    remote.close()
    ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"results": res["results"], "ratios": res["ratios_ray_over_local"], "same": res["same_greedy_outputs"]}, indent=2))


if __name__ == "__main__":
    main()
