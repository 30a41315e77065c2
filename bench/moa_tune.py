"""Learned rule gates on the bundled plans (``ctxflow moa tune`` in one process), then the quality
table rows for dense, the bundled plans and the tuned ones.

    CTXFLOW_DEVICE=cuda python bench/moa_tune.py --out DIR [--densities 0.5,0.25] [--steps 300] [--samples 48]

Writes DIR/tuned-<d>.json (plans) and DIR/moa_tune.json (runs, validation, quality rows); prints
progress. A GPU job (the CPU works, slowly); the quality table of record is re-run on the CPU with
``ctxflow moa eval``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--densities", default="0.5,0.25")
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--passkeys", type=int, default=0)
    ap.add_argument("--passkey-length", type=int, default=1024)
    ap.add_argument("--objective", default="mixed")
    ap.add_argument("--hard", action="store_true")
    ap.add_argument("--sinks", default="", help="per density (comma list like --densities): tune with this many sinks "
                    "instead of the plan's ('' or an empty entry = the plan's)")
    ap.add_argument("--tag", default="", help="suffix of the tuned plan files")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--tau-end", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--val-samples", type=int, default=16)
    ap.add_argument("--skip-input-rows", action="store_true", help="quality rows for dense and the tuned plans only")
    ap.add_argument("--eval", default="2048,6,10,1024", help="LENGTH,WINDOWS,KEYS,RETRIEVAL_LENGTH of the quality rows ('' = none)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from ctxflow.attention.cli import validation_loss_fn
    from ctxflow.attention.data import calibration_samples, sample_ids
    from ctxflow.attention.rules import Plan
    from ctxflow.attention.tune import calibration_seqs, tune
    from ctxflow.llm.local import LocalLM

    t0 = time.time()
    llm = LocalLM(cache=False)
    lengths = [int(x) for x in a.lengths.split(",")]
    seqs = calibration_seqs(llm, lengths, a.samples, a.seed, a.objective, a.passkeys, a.passkey_length)
    print(f"calibration: {len(seqs)} samples in {time.time() - t0:.0f}s", flush=True)
    res = {"args": vars(a), "device": str(llm.model.device), "runs": {}}
    vals: dict = {}
    from ctxflow.attention.evaluate import clears_margin, paired_gain, plan_loss_fn

    text = plan_loss_fn(llm, [sample_ids(llm, s) for s in calibration_samples(llm.count_tokens, 2048, 8, 99, objective="text", text_tokens=2048)])
    res["text2048_dense"] = text(None)
    dens = [float(x) for x in a.densities.split(",")]
    sinks = [int(x) if x else None for x in a.sinks.split(",")] if a.sinks else [None] * len(dens)
    for d, sk in zip(dens, sinks + [None] * (len(dens) - len(sinks))):
        name = f"smollm2-135m-{int(d * 100)}"
        plan = Plan.load(name)
        budget = sorted(set(plan.meta.get("budget_lengths", [])) | set(plan.profiled_lengths) | set(lengths))
        t1 = time.time()

        def progress(i, k, rec):
            if i % 25 == 0 or i == k:
                print(f"  {name} step {i}/{k} nll {rec['nll']:.4f} tau {rec['tau']} density {rec['density']} ({time.time() - t1:.0f}s)", flush=True)

        new = tune(llm, plan, seqs, budget, steps=a.steps, batch_tokens=a.batch_tokens, lr=a.lr, tau_end=a.tau_end, seed=a.seed, hard=a.hard,
                   sinks=sk, progress=progress)
        secs = time.time() - t1
        vlen = plan.validation_length or 1536
        if vlen not in vals:
            vals[vlen] = validation_loss_fn(llm, vlen, a.val_samples, objective="mixed")
        val = vals[vlen]
        sb, sa = val.samples([plan])[0], val.samples([new])[0]
        before, after = float(sb.mean()), float(sa.mean())
        gain, se = paired_gain(sb, sa)
        tb, ta = text(plan), text(new)
        print(f"  text 2048 (unseen calibration windows): dense {res['text2048_dense']:.4f} before {tb:.4f} after {ta:.4f}", flush=True)
        new.validation_length, new.validation_loss = vlen, after
        # `ctxflow moa tune` keeps a result only when validation improves by > --margin (2) paired standard errors;
        # here every result is written, marked
        new.meta["tune"].update({"validation_before": before, "validation_after": after, "validation_gain": gain, "validation_gain_se": se,
                                 "kept": clears_margin(gain, se, 2.0), "seconds": round(secs, 1)})
        path = out / f"tuned-{int(d * 100)}{a.tag}.json"
        new.save(path)
        res["runs"][name] = {"tune": new.meta["tune"], "validation_before": before, "validation_after": after, "plan": path.name,
                             "text2048_before": tb, "text2048_after": ta,
                             "mean_density": {n: new.mean_density(n) for n in budget}}
        print(json.dumps({name: {"validation": [before, after], "gain_se": [gain, se], "changed": new.meta["tune"]["changed_heads"], "seconds": round(secs)}}), flush=True)
        (out / "moa_tune.json").write_text(json.dumps(res, indent=1))
    if a.eval:
        from ctxflow.attention.evaluate import quality_table

        length, windows, keys, rlen = (int(x) for x in a.eval.split(","))
        backends = {"dense": None}
        for d in [float(x) for x in a.densities.split(",")]:
            if not a.skip_input_rows:
                backends[f"moa_{int(d * 100)}"] = {"type": "moa", "plan": f"smollm2-135m-{int(d * 100)}"}
            backends[f"tuned_{int(d * 100)}"] = {"type": "moa", "plan": str(out / f"tuned-{int(d * 100)}{a.tag}.json")}
        table = quality_table(backends, length, windows, keys, retrieval_length=rlen,
                              progress=lambda i, k, n, r: print(f"  {n}: ppl {r['perplexity']:.3f} keys {r['retrieval_accuracy']:.2f}", flush=True))
        res["quality"] = table
        for n, r in table["rows"].items():
            print(f"| {n} | {r['perplexity']:.3f} | {r.get('ppl_vs_dense', 0) * 100:+.2f}% | {r['retrieval_accuracy']:.2f} |", flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    (out / "moa_tune.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
