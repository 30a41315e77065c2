"""``ctxflow bench lines``: the LongEval lines task through a pipeline and the full-context
baseline, on the same seeded examples, side by side in one run."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..llm.base import LLM


def _lengths(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--lines must be comma-separated integers such as 200,400,600, got {text!r}.") from None
    if not out or any(n < 2 for n in out):
        raise UserError(f"--lines needs record lengths of at least 2 lines, got {text!r}.")
    return out


def full_context_system(llm: LLM, max_new_tokens: int = 16):
    """The baseline: the whole LongEval prompt in one call. When it exceeds the window, the
    record is cut from the front (its most recent lines kept) so the question still fits."""

    def run(ex: Any) -> str:
        prompt = ex.full_prompt
        limit = llm.context_length - max_new_tokens
        if llm.prompt_tokens(prompt) > limit:
            lines = ex.document.split("\n")
            lo, hi = 0, len(lines)
            while lo < hi:  # fewest lines dropped from the front that make it fit
                mid = (lo + hi) // 2
                if llm.prompt_tokens(ex.prompt_with("\n".join(lines[mid:]))) <= limit:
                    hi = mid
                else:
                    lo = mid + 1
            prompt = ex.prompt_with("\n".join(lines[lo:]))
        return llm.generate([prompt], max_new_tokens=max_new_tokens)[0].text

    return run


def pipeline_system(pipe: Any):
    def run(ex: Any) -> str:
        res = pipe.run({"document": ex.document, "question": ex.question})
        ans = res.outputs.get("answer")
        return getattr(ans, "text", str(ans))

    return run


def _machine_note() -> str:
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        load = float("nan")
    return (f"{os.cpu_count()} CPU cores; load average {load:.1f} at the end of the run "
            "(a load far above the core count means the machine was shared by other work, so seconds are inflated)")


def bench_main(args: argparse.Namespace) -> int:
    if args.task != "lines":
        raise UserError("choose a benchmark: ctxflow bench lines --lines 200,400,600 --per 10")
    from ..cli import default_pipeline
    from ..graph.spec import load
    from .lines_bench import run_lines_bench
    from .report import format_table, plot_results, write_json

    lengths = _lengths(args.lines)
    if args.per < 1:
        raise UserError(f"--per must be at least 1, got {args.per}.")
    base_per = getattr(args, "baseline_per", None)
    if base_per is not None and not 0 <= base_per <= args.per:
        raise UserError(f"--baseline-per must be between 0 and --per ({args.per}), got {base_per}.")
    paths = args.pipeline or [str(default_pipeline())]
    paths = [paths] if isinstance(paths, str) else list(paths)
    systems: dict[str, Any] = {}
    llms: list[LLM] = []
    for path in paths:
        pipe = load(path)
        if "document" not in pipe.inputs or "question" not in pipe.inputs:
            raise UserError(f"{path}: the bench feeds inputs 'document' and 'question'; this pipeline takes {sorted(pipe.inputs)}.")
        pipe.warm_up()
        name = f"ctxflow ({Path(path).name})"
        if name in systems:
            name = f"ctxflow ({path})"
        systems[name] = pipeline_system(pipe)
        llms += [m for m in pipe.models.values() if isinstance(m, LLM)]
    per_system: dict[str, int] = {}
    if not args.no_baseline:
        if not llms:
            raise UserError(f"{paths[0]} declares no LLM to run the full-context baseline with; pass --no-baseline.")
        base = f"full context ({llms[0].model_id})"
        systems[base] = full_context_system(llms[0])
        if base_per is not None:
            per_system[base] = base_per
    res = run_lines_bench(lengths, args.per, systems, seed=args.seed, two_hop=args.two_hop, per_system=per_system)
    res["pipeline"] = paths[0] if len(paths) == 1 else paths
    res["model"] = llms[0].model_id if llms else None
    res["context_length"] = llms[0].context_length if llms else None
    res["machine"] = _machine_note()
    print(format_table(res))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(res, out)
        png = plot_results(res, out.with_suffix(".png"))
        print(f"wrote {out} and {png}", file=sys.stderr)
    return 0
