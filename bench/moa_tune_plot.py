"""Plot of bench/results/moa_tune.json and moa_quality.json: held-back perplexity vs pass-key accuracy at 50%
density for dense, uniform streaming, the searched + protected plan and each tune run.

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
    labels = {"v0_soft_mixed": "tune: soft, mixed", "v1_soft_text_passkeys": "tune: soft, text + pass keys (rejected)",
              "v2_hard_mixed_passkeys": "tune: hard, mixed + pass keys (shipped)"}
    colors = {"v0_soft_mixed": "tab:orange", "v1_soft_text_passkeys": "tab:red", "v2_hard_mixed_passkeys": "tab:green"}
    for k, v in t["variants"].items():
        r = v.get("quality", {}).get("tuned_50")
        if r:
            pts.append((labels.get(k, k), r["perplexity"], r["retrieval_accuracy"], colors.get(k, "tab:purple")))
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
    fig.savefig(RES / "moa_tune.png", dpi=120)
    print(RES / "moa_tune.png")


if __name__ == "__main__":
    main()
