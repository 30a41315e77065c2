"""GPU smoke check of kernels.apply_plan's verification forward (4 tokens through every layer) on CUDA:
a random Llama of 4 layers with Llama-3-8B layer shapes, bf16, with each prefill backend that loads here;
then a 4096-token prefill under the plan vs masked SDPA. Prints a table, writes $OUT/moa_apply_check.json.

    python3 bench/moa_apply_check.py
"""
import json
import os
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
pkg = types.ModuleType("ctxflow")  # ctxflow/__init__ needs pydantic, absent on the GPU machine
pkg.__path__ = [str(ROOT / "ctxflow")]
sys.modules["ctxflow"] = pkg
import ctxflow.attention.kernels as kernels  # noqa: E402
import ctxflow.attention.window_flash as wf  # noqa: E402
from ctxflow.attention.rules import Plan, Rule  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192)
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
plan = Plan.uniform("llama-8b-shape", 4, 32, Rule(0.0, 0.25), sinks=64, kind="streaming")
x = torch.randint(0, 32000, (1, 4096), device="cuda")
rows = []
for prefill in ("masked", "auto", *wf.BACKENDS):
    model._ctxflow_sparse_verified = False
    row = {"prefill": prefill}
    try:
        t0 = time.perf_counter()
        kernels.apply_plan(model, plan, prefill=prefill)
        torch.cuda.synchronize()
        row["apply_plan_s"] = round(time.perf_counter() - t0, 3)
        with torch.inference_mode():
            out = model(input_ids=x).logits.float()
        row["logits_finite"] = bool(torch.isfinite(out).all())
        row["ok"] = True
        if prefill == "masked":
            ref = out
        else:
            row["max_abs_vs_masked"] = float((out - ref).abs().max())
    except Exception as exc:  # a backend that does not load here
        row["ok"], row["error"] = False, f"{type(exc).__name__}: {str(exc)[:160]}"
    kernels.remove_plan(model)
    rows.append(row)
    print(row, flush=True)
out = Path(os.environ.get("OUT", ".")) / "moa_apply_check.json"
out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1))
print("wrote", out)
