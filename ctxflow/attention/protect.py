"""Retrieval heads kept full: a searched plan re-solved with the heads that long-range look-up needs.

The influence profile behind :mod:`.search` averages over calibration samples, most of them text
whose loss depends little on far tokens; a pass key far back in the prompt is found by a handful of
heads that read the whole context (retrieval heads, as in RazorAttention and DuoAttention), and the
first-order estimate spreads their value thin. Windowing them all is what makes every sparse row of
the quality table miss every pass key. This step (an addition to the MoA recipe):

1. Pass-key calibration prompts from the *calibration* part of the bundled document, whose answers
   are known (no model output needed): ``The pass key is <key>.``
2. :func:`head_gains`: for every head of the plan, the drop of the answer loss when that head alone
   reads everything (one forward per head and sample, several heads per batch).
3. :func:`protected_plan`: the MILP of :mod:`.search` solved again with the ``k`` heads of largest
   gain fixed to the full window, under the same density budget, lengths and weighting; the other
   heads pay for them.
4. :func:`protect` (``ctxflow moa protect``) tries several ``k`` and keeps the plan (the input
   one counts as k = 0) with the best calibration pass-key accuracy, ties broken by the lower answer
   loss; all tried are recorded in the plan's meta.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import numpy as np

from .data import Sample, jargon_text, passkey_sample
from .refine import measure_moves, with_rules
from .rules import FULL, Plan
from .search import candidate_rules, cost_table, solve


def passkey_calibration(llm, n: int, length: int, seed: int = 0) -> list[Sample]:
    """``n`` pass-key prompts of about ``length`` tokens from the calibration part of the document,
    each with its known answer."""
    rng = random.Random(seed * 104729 + length)
    text = jargon_text("calibration")
    out = [passkey_sample(llm.count_tokens, length - 40, rng, text) for _ in range(n)]
    for s in out:
        s.answer = f"The pass key is {s.expected}."
    return out


def passkey_accuracy(llm, plan: Plan | None, samples: Sequence[Sample], max_new_tokens: int = 10) -> float:
    """Share of ``samples`` whose greedy reply under ``plan`` (None = dense) contains the key."""
    from .evaluate import passkey_rows
    from .kernels import plan_applied

    with plan_applied(llm.model, plan):
        return passkey_rows(llm, samples, max_new_tokens)[0]


def with_full(plan: Plan, heads: Sequence[tuple[int, int]]) -> Plan:
    return with_rules(plan, {tuple(lh): FULL for lh in heads})


def head_gains(plan: Plan, loss_fn: Callable, progress=None, layers: Sequence[int] | None = None) -> tuple[float, np.ndarray]:
    """(``loss(plan)``, gains): gains[layer, head] = ``loss(plan) - loss(plan with only that head
    full)``; 0 for heads already full and for layers not in ``layers`` (default all). The one-head
    moves of :func:`~ctxflow.attention.refine.measure_moves` with the full window as the only move."""
    cands = [[[FULL] if rule != FULL and (layers is None or l in layers) else [] for rule in layer]
             for l, layer in enumerate(plan.rules)]
    base, moves = measure_moves(plan, loss_fn, cands, progress)
    gains = np.zeros((plan.n_layers, plan.n_heads))
    for (l, h), ((_, delta),) in moves.items():
        gains[l, h] = -delta
    return base, gains


def top_heads(gains: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of largest positive gain, best first."""
    order = np.argsort(-gains, axis=None)
    out = [tuple(int(x) for x in np.unravel_index(i, gains.shape)) for i in order[:k]]
    return [lh for lh in out if gains[lh] > 0]


def full_head_solver(plan: Plan, prof: dict, alpha_step: int = 64, time_limit: float = 60.0) -> Callable[[Sequence[tuple[int, int]]], Plan | None]:
    """heads -> ``plan``'s MILP (its profile ``prof``, density, sinks, weighting and budget lengths,
    read from its meta) solved again with ``heads`` fixed to the full window; None when infeasible.
    The cost table is built once for all calls."""
    if plan.density is None:
        raise ValueError("the plan records no density budget (plan.density); protect needs a searched plan")
    lengths = sorted(prof["maps"])
    rules = candidate_rules(lengths, alpha_step)
    costs = cost_table(prof["maps"], rules, plan.sinks, prof["block"])
    weights = {int(k): float(v) for k, v in (plan.meta.get("weights") or {}).items()} or {n: 1.0 for n in lengths}
    budget_lengths = [int(n) for n in plan.meta.get("budget_lengths", [])]

    def solve_with(heads: Sequence[tuple[int, int]]) -> Plan | None:
        sol = solve(costs, rules, plan.sinks, plan.density, weights, time_limit=time_limit, budget_lengths=budget_lengths,
                    fixed={tuple(lh): FULL for lh in heads})
        if sol is None:
            return None
        return Plan(plan.model_id, sol, sinks=plan.sinks, block_size=prof["block"], density=plan.density,
                    profiled_lengths=lengths, kind="moa", meta={**plan.meta, "full_heads": [list(lh) for lh in heads]})

    return solve_with


def protected_plan(plan: Plan, prof: dict, heads: Sequence[tuple[int, int]], alpha_step: int = 64,
                   time_limit: float = 60.0) -> Plan | None:
    """One solve of :func:`full_head_solver`."""
    return full_head_solver(plan, prof, alpha_step, time_limit)(heads)


def protect(plan: Plan, prof: dict, loss_fn: Callable, acc_fn: Callable[[Plan], float], ks: Sequence[int] = (4, 8, 12, 16),
            alpha_step: int = 64, time_limit: float = 60.0, progress=None, log=None, layers: Sequence[int] | None = None) -> Plan:
    """Try ``plan`` with its ``k`` best retrieval heads kept full, for each ``k`` of ``ks``; return the
    plan (``plan`` itself among them, as k = 0) with the highest ``acc_fn`` (pass-key accuracy on
    calibration prompts), ties broken by the lower ``loss_fn`` (their answer loss). Every try is in
    the result's ``meta["protect"]``. ``layers``: measure only the heads of these layers (default all)."""
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    solve_with = full_head_solver(plan, prof, alpha_step, time_limit)
    base, gains = head_gains(plan, loss_fn, progress, layers)
    tried = [{"k": 0, "heads": [], "feasible": True, "accuracy": float(acc_fn(plan)), "loss": base}]
    plans = {0: plan}
    if log:
        log(tried[0])
    for k in sorted(set(ks)):
        heads = top_heads(gains, k)
        rec: dict = {"k": k, "heads": [list(h) for h in heads]}
        if len(heads) < k:  # fewer heads gain anything
            rec["note"] = f"only {len(heads)} heads gain from a full window"
        new = solve_with(heads) if heads else None
        rec["feasible"] = new is not None
        if new is not None:
            rec.update(accuracy=float(acc_fn(new)), loss=float(loss_fn(new)))
            plans[k] = new
        tried.append(rec)
        if log:
            log(rec)
    best = max((r for r in tried if r["feasible"]), key=lambda r: (r["accuracy"], -r["loss"]))
    out = plans[best["k"]]
    protect_meta = {"chosen_k": best["k"], "tried": tried,
                    "top_gains": [[int(l), int(h), float(gains[l, h])] for l, h in top_heads(gains, 32)]}
    return dataclasses.replace(out, rules=[list(x) for x in out.rules], meta={**out.meta, "protect": protect_meta})
