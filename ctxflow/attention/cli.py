"""``ctxflow moa profile | search | eval``: MoA plans for a local model, from profile to quality table.

    ctxflow moa profile [--model default] [--lengths 1024,2048] [--samples 6] [--objective mixed] [--block 64] -o PROFILE.pt
    ctxflow moa search PROFILE.pt --density 0.5 [--sinks 64] [--validate 1536] [--budget-lengths 4096] -o PLAN.json
    ctxflow moa refine PLAN.json [--length 2048] [--samples 8] [--rounds 1] [--layers 0,1] -o PLAN2.json
    ctxflow moa protect PLAN.json --profile PROFILE.pt [--ks 4,8,12,16] [--samples 16] [--length 1024] -o PLAN2.json
    ctxflow moa tune PLAN.json [--lengths 1024,2048,4096] [--samples 48] [--steps 300] [--validate 1536] -o PLAN2.json
    ctxflow moa eval [--plans A.json,B.json] [--densities 0.5,0.25] [--length 2048] [--retrieval-length 1024] [--json OUT]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError


def _ints(s: str, what: str, low: int = 16) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {s!r}") from None
    if not v or any(x < low for x in v):
        raise UserError(f"{what} must be " + ("token counts >= 16" if low == 16 else f"integers >= {low}") + f", got {s!r}")
    return v


def _bar(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def cmd_profile(args) -> int:
    from ..llm.local import LocalLM
    from .profile import profile, save_profile

    lengths = _ints(args.lengths, "--lengths")
    if args.samples < 1 or args.block < 8:
        raise UserError("--samples must be >= 1 and --block >= 8")
    llm = LocalLM(args.model, threads=args.threads)
    bar = _bar(len(lengths) * args.samples, "profiling")
    prof = profile(llm, lengths, args.samples, block=args.block, seed=args.seed, progress=lambda n, i, k: bar.update(1),
                   objective=args.objective, normalize_samples=not args.raw_samples)
    bar.close()
    save_profile(prof, args.out, llm.model_id)
    print(json.dumps({"profile": str(args.out), "lengths": lengths, "losses": prof["losses"]}))
    return 0


def validation_loss_fn(llm, length: int, n: int, seed: int = 123, objective: str = "mixed"):
    """A function plan -> mean NLL, under that plan, of ``n`` unseen calibration samples of
    ``length`` tokens (the dense model's own answers to questions and/or the second halves of text
    windows, as ``objective`` says; the same kinds the profile used)."""
    from .data import answer_with, calibration_samples, sample_ids
    from .evaluate import plan_loss_fn

    samples = answer_with(llm, calibration_samples(llm.count_tokens, length - 72, n, seed, objective=objective, text_tokens=length))
    return plan_loss_fn(llm, [sample_ids(llm, s) for s in samples])


def cmd_search(args) -> int:
    from ..llm.local import LocalLM
    from .profile import load_profile
    from .rules import FULL, Plan
    from .search import check_sinks, pareto_plans, pick_by_validation, weightings_for

    if not 0 < args.density <= 1:
        raise UserError(f"--density must be in (0, 1], got {args.density}")
    try:
        prof = load_profile(args.profile)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if args.lengths:
        keep = _ints(args.lengths, "--lengths")
        missing = [n for n in keep if n not in prof["maps"]]
        if missing:
            raise UserError(f"--lengths {missing} were not profiled; the profile has {sorted(prof['maps'])}")
        prof["maps"] = {n: prof["maps"][n] for n in keep}
    sinks = prof["block"] if args.sinks is None else args.sinks
    warn = check_sinks(sinks, prof["block"])
    if warn:
        print(f"warning: {warn}", file=sys.stderr)
    extra = (_ints(args.budget_lengths, "--budget-lengths") if args.budget_lengths else []) + [args.validate]
    bar = _bar(len(weightings_for(prof["maps"])), "solving")
    plans = pareto_plans(prof, args.density, sinks, prof.get("model_id", "unknown"), args.alpha_step,
                         progress=lambda i, k: bar.update(1), budget_lengths=extra)
    bar.close()
    if not plans:
        raise UserError(f"no plan meets density {args.density} with {sinks} sinks at lengths {sorted(prof['maps'])}: raise --density or lower --sinks")
    llm = LocalLM(args.model, cache=False, threads=args.threads)
    loss_fn = validation_loss_fn(llm, args.validate, args.val_samples, objective=prof.get("objective", "answers"))
    best = pick_by_validation(plans, loss_fn, args.validate)
    dense = loss_fn(Plan.uniform(best.model_id, best.n_layers, best.n_heads, FULL, sinks=0, kind="dense"))
    best.meta["dense_validation_loss"] = dense
    best.save(args.out)
    print(json.dumps({"plan": str(args.out), "density": args.density, "pareto": len(plans), "validation_length": args.validate,
                      "validation_loss": best.validation_loss, "dense_validation_loss": dense,
                      "mean_density": {n: best.mean_density(n) for n in sorted(set(prof["maps"]) | set(extra))}}))
    return 0


def _searched_plan(path: str, verb: str):
    """The plan at ``path`` (file or bundled name); a clear error unless it is a searched MoA plan."""
    from .rules import Plan

    try:
        plan = Plan.load(path)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if plan.density is None or plan.kind != "moa":
        raise UserError(f"{path}: {verb} takes a searched MoA plan (kind moa, with a density budget); "
                        f"this one is kind {plan.kind!r} with density {plan.density}")
    return plan


def _budget_lengths(plan, args, *lengths: int) -> list[int]:
    """Where a re-solved plan must keep the density budget: the plan's own budget and profiled lengths,
    ``lengths`` and ``--budget-lengths``."""
    extra = _ints(args.budget_lengths, "--budget-lengths") if args.budget_lengths else []
    return sorted(set(plan.meta.get("budget_lengths", [])) | set(plan.profiled_lengths) | set(lengths) | set(extra))


def _model_for(plan, args):
    """``--model`` loaded (no call cache), checked against ``plan``'s shape."""
    from ..llm.local import LocalLM

    llm = LocalLM(args.model, cache=False, threads=args.threads)
    plan.check_model(llm.model.config.num_hidden_layers, llm.model.config.num_attention_heads, llm.model_id)
    return llm


def _check_margin(args) -> None:
    if not args.margin >= 0:
        raise UserError(f"--margin must be >= 0 standard errors, got {args.margin}")


def _keep_if_validated(llm, plan, new, key: str, val_len: int, args):
    """``new`` when its loss on ``--val-samples`` unseen samples of ``val_len`` tokens is lower than
    ``plan``'s by more than ``--margin`` standard errors of the paired per-sample gain (a smaller gain
    is the noise of the sample draw), else ``plan``; either way with the comparison in ``meta[key]``,
    written to ``--out``. Returns (plan written, loss before, loss after or None when nothing
    changed, kept)."""
    from .evaluate import clears_margin, paired_gain

    val = validation_loss_fn(llm, val_len, args.val_samples, objective=args.objective)
    b = val.samples([plan])[0]
    changed = (new.rules, new.sinks) != (plan.rules, plan.sinks)
    a = val.samples([new])[0] if changed else None
    before, after = float(b.mean()), (float(a.mean()) if changed else None)
    gain, se = paired_gain(b, a) if changed else (0.0, 0.0)
    keep = changed and clears_margin(gain, se, args.margin)
    out = new if keep else plan
    out.meta = {**out.meta, key: {**new.meta.get(key, {}), "validation_length": val_len, "validation_samples": args.val_samples,
                                  "validation_before": before, "validation_after": after, "validation_gain": gain,
                                  "validation_gain_se": se, "margin_se": args.margin, "kept": keep}}
    if keep:
        out.validation_length, out.validation_loss = val_len, after
    out.save(args.out)
    return out, before, after, keep


def cmd_refine(args) -> int:
    from .data import answer_with, calibration_samples, sample_ids
    from .evaluate import plan_loss_fn
    from .refine import refine

    plan = _searched_plan(args.plan, "refine")
    if args.samples < 1 or args.rounds < 1 or args.val_samples < 1:
        raise UserError("--samples, --val-samples and --rounds must be >= 1")
    _check_margin(args)
    layers = _ints(args.layers, "--layers", low=0) if args.layers else None
    if layers and max(layers) >= plan.n_layers:
        raise UserError(f"--layers {layers}: the plan has layers 0..{plan.n_layers - 1}")
    budget = _budget_lengths(plan, args, args.length)
    llm = _model_for(plan, args)
    cal = answer_with(llm, calibration_samples(llm.count_tokens, args.length - 72, args.samples, args.seed,
                                               objective=args.objective, text_tokens=args.length))
    loss_fn = plan_loss_fn(llm, [sample_ids(llm, s) for s in cal])
    bar = _bar(None, "measuring moves")

    def progress(stage, i, k):
        bar.total = k
        bar.update(i - bar.n)

    def log(step):
        print(json.dumps(step), file=sys.stderr)

    new = refine(plan, loss_fn, budget, rounds=args.rounds, alpha_step=args.alpha_step, max_changes=args.max_changes,
                 layers=layers, progress=progress, log=log)
    bar.close()
    val_len = args.validate or plan.validation_length or args.length
    out, before, after, keep = _keep_if_validated(llm, plan, new, "refine", val_len, args)
    print(json.dumps({"plan": str(args.out), "kept_refined": keep, "calibration_loss": [new.meta["refine"]["start_loss"],
                      new.meta["refine"]["loss"]], "validation_loss": [before, after], "validation_length": val_len,
                      "mean_density": {n: out.mean_density(n) for n in budget}}))
    return 0


def cmd_protect(args) -> int:
    from .data import sample_ids
    from .evaluate import plan_loss_fn
    from .profile import load_profile
    from .protect import passkey_accuracy, passkey_calibration, protect

    plan = _searched_plan(args.plan, "protect")
    try:
        prof = load_profile(args.profile)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if sorted(prof.get("maps", {})) != sorted(plan.profiled_lengths):
        raise UserError(f"{args.profile} profiles lengths {sorted(prof.get('maps', {}))} but the plan was searched at "
                        f"{sorted(plan.profiled_lengths)}: give the profile the plan came from")
    ks = _ints(args.ks, "--ks", low=1)
    if args.samples < 1:
        raise UserError("--samples must be >= 1")
    if args.length < 128:
        raise UserError(f"--length must be >= 128 tokens (a pass key needs some text around it), got {args.length}")
    layers = _ints(args.layers, "--layers", low=0) if args.layers else None
    if layers and max(layers) >= plan.n_layers:
        raise UserError(f"--layers {layers}: the plan has layers 0..{plan.n_layers - 1}")
    llm = _model_for(plan, args)
    cal = passkey_calibration(llm, args.samples, args.length, seed=args.seed)
    loss_fn = plan_loss_fn(llm, [sample_ids(llm, s) for s in cal])
    bar = _bar(None, "measuring heads")

    def progress(i, k):
        bar.total = k
        bar.update(i - bar.n)

    def log(rec):
        print(json.dumps(rec), file=sys.stderr)

    dense_acc = passkey_accuracy(llm, None, cal)
    out = protect(plan, prof, loss_fn, lambda p: passkey_accuracy(llm, p, cal), ks, alpha_step=args.alpha_step,
                  time_limit=args.time_limit, progress=progress, log=log, layers=layers)
    bar.close()
    out.meta["protect"].update({"samples": args.samples, "length": args.length, "seed": args.seed, "dense_accuracy": dense_acc})
    out.save(args.out)
    chosen = next(r for r in out.meta["protect"]["tried"] if r["k"] == out.meta["protect"]["chosen_k"])
    print(json.dumps({"plan": str(args.out), "full_heads": chosen["k"], "passkey_accuracy": chosen["accuracy"],
                      "dense_passkey_accuracy": dense_acc, "answer_loss": chosen["loss"],
                      "mean_density": {n: out.mean_density(n) for n in sorted(set(plan.meta.get("budget_lengths", [])) | set(plan.profiled_lengths))}}))
    return 0


def cmd_tune(args) -> int:
    from .tune import calibration_seqs, tune

    plan = _searched_plan(args.plan, "tune")
    lengths = _ints(args.lengths, "--lengths", low=128)
    if args.sinks is not None and not 0 <= args.sinks <= 4096:
        raise UserError(f"--sinks must be between 0 and 4096 tokens, got {args.sinks}")
    if args.passkeys < 0 or args.passkey_length < 128:
        raise UserError(f"--passkeys must be >= 0 and --passkey-length >= 128, got {args.passkeys} and {args.passkey_length}")
    if args.samples < 1 or args.steps < 1 or args.val_samples < 1 or args.batch_tokens < max(lengths):
        raise UserError(f"--samples, --steps and --val-samples must be >= 1 and --batch-tokens >= the longest length "
                        f"({max(lengths)}); got {args.samples}, {args.steps}, {args.val_samples}, {args.batch_tokens}")
    if not (args.lr > 0 and 0 < args.tau_end <= 1):
        raise UserError(f"--lr must be > 0 and --tau-end in (0, 1], got {args.lr} and {args.tau_end}")
    _check_margin(args)
    budget = _budget_lengths(plan, args, *lengths)
    llm = _model_for(plan, args)
    seqs = calibration_seqs(llm, lengths, args.samples, args.seed, args.objective, args.passkeys, args.passkey_length)
    bar = _bar(args.steps, "tuning gates")

    def progress(i, k, rec):
        bar.update(1)
        bar.set_postfix(nll=f"{rec['nll']:.3f}", tau=rec["tau"])

    new = tune(llm, plan, seqs, budget, steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr, tau_end=args.tau_end,
               seed=args.seed, hard=args.hard, sinks=args.sinks, progress=progress)
    bar.close()
    out, before, after, keep = _keep_if_validated(llm, plan, new, "tune", args.validate or plan.validation_length or 1536, args)
    print(json.dumps({"plan": str(args.out), "kept_tuned": keep, "changed_heads": new.meta["tune"]["changed_heads"],
                      "calibration_nll": [new.meta["tune"]["nll_first"], new.meta["tune"]["nll_last"]],
                      "validation_loss": [before, after], "validation_length": out.meta["tune"]["validation_length"],
                      "mean_density": {n: out.mean_density(n) for n in budget}}))
    return 0


def cmd_eval(args) -> int:
    from .backend import normalize_attention
    from .evaluate import quality_table
    from .rules import Plan

    if args.windows < 1 or args.keys < 1:
        raise UserError(f"--windows and --keys must be >= 1, got {args.windows} and {args.keys}")
    backends: dict = {"dense": None}
    plans = [p for p in (args.plans or "").split(",") if p]
    dens = [float(x) for x in args.densities.split(",") if x]
    for d, p in zip(dens, plans or [None] * len(dens)):
        try:
            spec = normalize_attention({"type": "moa", "plan": p} if p else {"type": "moa", "density": d})
            sinks = Plan.load(spec["plan"]).sinks
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(str(exc)) from None
        backends[f"streaming_{int(d * 100)}"] = {"type": "streaming", "density": d, "sinks": sinks, "length": args.length}
        backends[f"moa_{int(d * 100)}"] = spec
    bar = _bar(len(backends), "backends")
    try:
        depth = tuple(float(x) for x in args.depth.split(","))
    except ValueError:
        depth = ()
    if not (len(depth) == 2 and 0 <= depth[0] <= depth[1] <= 1):
        raise UserError(f"--depth must be LO,HI with 0 <= LO <= HI <= 1, got {args.depth!r}")
    table = quality_table(backends, args.length, args.windows, args.keys, args.threads, progress=lambda i, k, n, r: bar.update(1),
                          depth=depth, retrieval_length=args.retrieval_length)
    bar.close()
    print("| backend | perplexity | vs dense (± paired SE over windows) | pass-key accuracy |\n|---|---|---|---|")
    for name, r in table["rows"].items():
        se = f" ± {r['log_ratio_se'] * 100:.2f}%" if r.get("log_ratio_se") else ""
        print(f"| {name} | {r['perplexity']:.3f} | {r.get('ppl_vs_dense', 0) * 100:+.2f}%{se} | {r['retrieval_accuracy']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


def _validated_job_args(p, val_samples: int) -> None:
    """The options refine and tune share: budget lengths, validation, model, output."""
    p.add_argument("--budget-lengths", default="", help="further lengths where the density budget must hold")
    p.add_argument("--validate", type=int, default=None, help="validation length (default: the plan's)")
    p.add_argument("--val-samples", type=int, default=val_samples)
    p.add_argument("--margin", type=float, default=2.0, help="keep the new plan only when its validation gain exceeds this "
                   "many standard errors of the paired per-sample gains (0 = any gain)")
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("-o", "--out", required=True, help="plan JSON to write")


def register(sub) -> None:
    p = sub.add_parser("moa", help="MoA sparse attention: profile a model, search plans, evaluate quality")
    s = p.add_subparsers(dest="moa_cmd", required=True)
    a = s.add_parser("profile", help="gradient-based attention influence per head, in blocks, at several lengths")
    a.add_argument("--model", default="default")
    a.add_argument("--lengths", default="1024,2048")
    a.add_argument("--samples", type=int, default=6, help="calibration samples per length")
    a.add_argument("--objective", choices=("mixed", "answers", "text"), default="mixed",
                   help="calibration losses: the dense model's own answers to long-range questions (answers), the "
                        "next-token NLL of plain text windows (text), or half of each (mixed, default)")
    a.add_argument("--raw-samples", action="store_true", help="average the samples' influence maps as they are "
                   "(default: each scaled to unit total first, so every sample weighs the same)")
    a.add_argument("--block", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("-o", "--out", required=True, help="profile file to write (.pt)")
    a.set_defaults(fn=cmd_profile)
    b = s.add_parser("search", help="one rule per head under a density budget (MILP, HiGHS), validated at an unprofiled length")
    b.add_argument("profile")
    b.add_argument("--density", type=float, required=True)
    b.add_argument("--sinks", type=int, default=None, help="sink tokens per head (default: the profile's block size, "
                   "so the first key tile is kept exactly)")
    b.add_argument("--alpha-step", type=int, default=64)
    b.add_argument("--lengths", default="", help="use only these profiled lengths (default: all)")
    b.add_argument("--validate", type=int, default=1536, help="unprofiled validation length (tokens)")
    b.add_argument("--budget-lengths", default="", help="further lengths (e.g. the target length) where the density "
                   "budget must also hold (the validation length always is)")
    b.add_argument("--val-samples", type=int, default=4, help="validation samples (of the profile's objective)")
    b.add_argument("--model", default="default")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("-o", "--out", required=True, help="plan JSON to write")
    b.set_defaults(fn=cmd_search)
    c = s.add_parser("eval", help="quality table: dense vs uniform streaming vs MoA (perplexity, pass-key retrieval)")
    c.add_argument("--plans", default="", help="comma-separated plan files or bundled names (default: the bundled ones)")
    c.add_argument("--densities", default="0.5,0.25")
    c.add_argument("--length", type=int, default=1024)
    c.add_argument("--windows", type=int, default=4)
    c.add_argument("--keys", type=int, default=8)
    c.add_argument("--retrieval-length", type=int, default=None, help="pass-key prompt length (default: --length); "
                   "SmolLM2-135M dense finds no key in 2048-token prompts, it does in 1024")
    c.add_argument("--depth", default="0.05,0.3", help="LO,HI: share of the text before the pass key (uniform)")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--json", default=None)
    c.set_defaults(fn=cmd_eval)

    r = s.add_parser("refine", help="re-price the moves near a searched plan by measuring them on the model, "
                                    "combine the good ones (MILP, same budget), keep the result when validation improves beyond its noise (--margin)")
    r.add_argument("plan", help="plan JSON or bundled plan name")
    r.add_argument("--length", type=int, default=2048, help="calibration length (tokens); the budget also holds here")
    r.add_argument("--samples", type=int, default=8, help="calibration samples the moves are measured on")
    r.add_argument("--objective", choices=("mixed", "answers", "text"), default="mixed")
    r.add_argument("--seed", type=int, default=7, help="calibration seed (the validation samples use another)")
    r.add_argument("--rounds", type=int, default=1)
    r.add_argument("--layers", default="", help="refine only these layers (default all; each head costs ~6 forward passes)")
    r.add_argument("--alpha-step", type=int, default=64)
    r.add_argument("--max-changes", type=int, default=None, help="first trust region (heads changed at once; default all)")
    _validated_job_args(r, val_samples=8)
    r.set_defaults(fn=cmd_refine)

    u = s.add_parser("tune", help="train per-head gates over candidate rules on the real loss (all heads together, "
                                  "model frozen), round them to a plan (MILP, same budget), keep it when validation improves beyond its noise (--margin)")
    u.add_argument("plan", help="plan JSON or bundled plan name (a searched MoA plan)")
    u.add_argument("--lengths", default="1024,2048,4096", help="calibration lengths (tokens); the budget also holds there")
    u.add_argument("--samples", type=int, default=48, help="calibration samples per length")
    u.add_argument("--objective", choices=("mixed", "answers", "text"), default="mixed")
    u.add_argument("--passkeys", type=int, default=0, help="also train on this many pass-key prompts with their known "
                   "answers (calibration part of the document; keeps the heads that fetch far facts)")
    u.add_argument("--passkey-length", type=int, default=1024)
    u.add_argument("--steps", type=int, default=300, help="gradient steps (one batch of similar-length samples each)")
    u.add_argument("--batch-tokens", type=int, default=16384, help="tokens per step (rows x length)")
    u.add_argument("--lr", type=float, default=0.05)
    u.add_argument("--tau-end", type=float, default=0.3, help="final softmax temperature of the gates (starts at 1)")
    u.add_argument("--hard", action="store_true", help="one rule per head in every forward (Gumbel draw, gradient "
                   "passed straight through) instead of the soft mixture")
    u.add_argument("--seed", type=int, default=11, help="calibration seed (the validation samples use another)")
    u.add_argument("--sinks", type=int, default=None, help="tune with this many sink tokens instead of the plan's (fewer sinks "
                   "free budget for windows; the result must still beat the input plan on validation)")
    _validated_job_args(u, val_samples=16)
    u.set_defaults(fn=cmd_tune)

    t = s.add_parser("protect", help="keep the heads pass-key retrieval needs at full window, re-solve the rest under "
                                     "the same budget (the k with the best calibration pass-key accuracy wins)")
    t.add_argument("plan", help="plan JSON or bundled plan name (a searched MoA plan)")
    t.add_argument("--profile", required=True, help="the profile the plan was searched from (.pt)")
    t.add_argument("--ks", default="4,8,12,16", help="numbers of heads to try keeping full")
    t.add_argument("--samples", type=int, default=16, help="pass-key calibration prompts (calibration part of the document)")
    t.add_argument("--length", type=int, default=1024, help="pass-key prompt length (tokens)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--layers", default="", help="measure only the heads of these layers (default all: one forward "
                                                "per head and sample, minutes on a GPU, hours on 2 CPU cores)")
    t.add_argument("--alpha-step", type=int, default=64)
    t.add_argument("--time-limit", type=float, default=60.0, help="seconds per MILP solve (HiGHS)")
    t.add_argument("--model", default="default")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("-o", "--out", required=True, help="plan JSON to write")
    t.set_defaults(fn=cmd_protect)
