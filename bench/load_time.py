"""Load time of the default local model, each load in a fresh subprocess.

first  = GGUF -> de-quantized Hugging Face folder conversion (in an empty, temporary CTXFLOW_MODEL_DIR)
second = load of the converted folder (same model dir)
Each child reports the seconds of ``LocalLM().warm_up()`` (model + tokenizer) and the whole process
wall time (interpreter start + imports included). Writes bench/results/load_time.json.

    HF_HUB_OFFLINE=1 python bench/load_time.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
from ctxflow.llm.local import LocalLM
t1 = time.perf_counter()
m = LocalLM()
m.warm_up()
t2 = time.perf_counter()
g = m.generate(["Say hi."], max_new_tokens=4)[0]
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_generate_s": t3 - t2, "model_id": m.model_id,
                  "threads": torch.get_num_threads()}))
"""


def child(env: dict[str, str]) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = time.perf_counter() - t
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="warm loads to time")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "load_time.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ctxflow-bench-") as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE="1", CTXFLOW_MODEL_DIR=str(Path(tmp) / "models"),
                   CTXFLOW_CACHE_DIR=str(Path(tmp) / "calls"), CTXFLOW_NO_CACHE="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        first = child(env)
        print("first (conversion):", first, flush=True)
        second = [child(env) for _ in range(a.repeat)]
        for s in second:
            print("second (converted):", s, flush=True)
    res = {
        "first": first,
        "second": second,
        "second_load_s_min": min(s["load_s"] for s in second),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
