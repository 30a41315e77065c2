"""Plot of bench/results/moa_tune.json and moa_quality.json: held-back perplexity vs pass-key accuracy at 50%
density for dense, uniform streaming, the searched + protected plan, the tune runs that have GPU quality rows
and the bundled plan (CPU table of record).

    python bench/moa_tune_plot.py   # writes bench/results/moa_tune.png
"""
from __future__ import annotations

import json
from pathlib import Path

RES = Path(__file__).resolve().parent / "results"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = json.loads((RES / "moa_quality.json").read_text())
    t = json.loads((RES / "moa_tune.json").read_text())
    rows = q["rows"]
    prev = q.get("previous_bundled_50", {})
    pts = [("dense", rows["dense"]["perplexity"], rows["dense"]["retrieval_accuracy"], "k"),
           ("uniform streaming 50%", rows["streaming_50"]["perplexity"], rows["streaming_50"]["retrieval_accuracy"], "tab:gray")]
    if prev:
        pts.append(("search + protect (before tune)", prev["perplexity"], prev["retrieval_accuracy"], "tab:blue"))
    colors = ["tab:orange", "tab:red", "tab:olive", "tab:purple", "tab:brown", "tab:pink", "tab:cyan"]
    for i, (k, v) in enumerate(t["variants"].items()):
        r = v.get("quality", {}).get("rows", v.get("quality", {})).get("tuned_50")
        if r:  # GPU quality rows of that run's tuned plan
            pts.append((v.get("short", k) + " [GPU row]", r["perplexity"], r["retrieval_accuracy"], colors[i % len(colors)]))
        r = v.get("quality_cpu", {}).get("moa_50")
        if r:
            pts.append((v.get("short", k) + " [CPU row]", r["perplexity"], r["retrieval_accuracy"], colors[i % len(colors)]))
    pts.append(("bundled now (CPU table of record)", rows["moa_50"]["perplexity"], rows["moa_50"]["retrieval_accuracy"], "tab:green"))
    fig, ax = plt.subplots(figsize=(7, 6))
    dense = rows["dense"]["perplexity"]
    ax.axvspan(dense, dense * 1.02, color="tab:green", alpha=0.08, label="within 2% of dense (goal)")
    for name, ppl, acc, c in pts:
        ax.scatter([ppl], [acc], color=c, s=60, label=f"{name}: {ppl:.2f} ({(ppl / dense - 1) * 100:+.1f}%), keys {acc:.1f}")
    ax.set_xlabel("perplexity, 6 held-back 2048-token windows (lower is better)")
    ax.set_ylabel("pass-key accuracy, 10 held-back 1024-token prompts")
    ax.set_title("SmolLM2-135M at 50% attention density")
    ax.set_ylim(-0.05, 1.0)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    fig.tight_layout()
    fig.savefig(RES / "moa_tune.png", dpi=120, bbox_inches="tight")
    print(RES / "moa_tune.png")


if __name__ == "__main__":
    main()
