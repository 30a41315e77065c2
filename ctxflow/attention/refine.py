"""Measured refinement of a searched plan: one-head moves priced by the real loss, combined by a MILP.

The search (:mod:`.search`) prices each rule with a first-order estimate taken at the *dense* model
(the influence mass a window drops). Once most heads are sparse together that estimate drifts: a
head's far keys matter more or less than the dense model says. This step re-prices the moves near
the plan found by measuring them on the real model (an improvement on the MoA recipe, which stops
at the first-order search):

1. ``base`` = the calibration loss of the plan (:func:`~ctxflow.attention.evaluate.plan_loss_fn`).
2. For every head and every candidate rule near its own (one grid step of ``alpha`` or ``beta``
   either way, the other rules of its layer, a full window): ``delta = loss(plan with only that
   head changed) - base``.
3. A MILP (HiGHS) gives every head one rule minimising the sum of deltas under the search's own
   constraints (the density budget at every budget length, at most two distinct rules per layer)
   and a trust region: at most ``max_changes`` heads change (deltas measured one head at a time
   add up only for a limited number of moves at once).
4. The combined plan is measured; it is kept when its loss is lower, else the trust region is
   halved (down to one head). Each round starts from the plan the last one kept.

Cost: about ``6 * layers * heads`` loss evaluations per round (1.6k for SmolLM2-135M): minutes on a
GPU, hours on two CPU cores. ``ctxflow moa refine`` runs it and checks the result on separate
validation samples.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .rules import FULL, Plan, Rule, band_density


def neighbours(rule: Rule, lengths: Sequence[int], alpha_step: float = 64, beta_step: float = 0.125) -> list[Rule]:
    """Rules one grid step from ``rule`` (alpha +- ``alpha_step``, beta +- ``beta_step``) valid at every length."""
    out = []
    for da, db in ((alpha_step, 0), (-alpha_step, 0), (0, beta_step), (0, -beta_step)):
        r = Rule(float(rule.alpha + da), round(float(rule.beta + db), 6))
        if 0 <= r.beta <= 1 and r.valid(lengths) and r != rule:
            out.append(r)
    return out


def candidates(plan: Plan, lengths: Sequence[int], alpha_step: float = 64, beta_step: float = 0.125,
               full: bool = True, layers: Sequence[int] | None = None) -> list[list[list[Rule]]]:
    """[layer][head] -> the rules a head may move to (its own rule excluded); only heads of ``layers``
    (default all) get any."""
    out = []
    for l, layer in enumerate(plan.rules):
        used = list(dict.fromkeys(layer))
        row = []
        for r in layer:
            if layers is not None and l not in layers:
                row.append([])
                continue
            c = neighbours(r, lengths, alpha_step, beta_step) + [u for u in used if u != r] + ([FULL] if full and r != FULL else [])
            row.append(list(dict.fromkeys(c)))
        out.append(row)
    return out


def with_rule(plan: Plan, layer: int, head: int, rule: Rule) -> Plan:
    return with_rules(plan, {(layer, head): rule})


def with_rules(plan: Plan, changes: dict[tuple[int, int], Rule]) -> Plan:
    """A copy of ``plan`` with (layer, head) -> rule ``changes`` (validation results dropped: it is another plan)."""
    rules = [list(x) for x in plan.rules]
    for (layer, head), rule in changes.items():
        rules[layer][head] = rule
    return Plan(plan.model_id, rules, sinks=plan.sinks, block_size=plan.block_size, density=plan.density,
                profiled_lengths=list(plan.profiled_lengths), kind=plan.kind, meta=dict(plan.meta))


def measure_moves(plan: Plan, loss_fn: Callable[[Plan], float], cands: list[list[list[Rule]]],
                  progress: Callable[[int, int], None] | None = None) -> tuple[float, dict[tuple[int, int], list[tuple[Rule, float]]]]:
    """(base loss, {(layer, head): [(rule, loss change when only that head takes it)]})."""
    base = float(loss_fn(plan))
    total = sum(len(c) for row in cands for c in row)
    done = 0
    moves: dict[tuple[int, int], list[tuple[Rule, float]]] = {}
    many = getattr(loss_fn, "many", None)
    if many is not None:  # several plans per forward (evaluate.plan_loss_fn)
        keys = [(l, h, r) for l, row in enumerate(cands) for h, cs in enumerate(row) for r in cs]
        losses = many([with_rule(plan, l, h, r) for l, h, r in keys], progress) if keys else []
        for (l, h, r), v in zip(keys, losses):
            moves.setdefault((l, h), []).append((r, float(v) - base))
        return base, moves
    for l, row in enumerate(cands):
        for h, cs in enumerate(row):
            for r in cs:
                moves.setdefault((l, h), []).append((r, float(loss_fn(with_rule(plan, l, h, r))) - base))
                done += 1
                if progress:
                    progress(done, total)
    return base, moves


def solve_moves(plan: Plan, moves: dict[tuple[int, int], list[tuple[Rule, float]]], budget: float, lengths: Sequence[int],
                max_changes: int, max_rules_per_layer: int = 2, time_limit: float = 60.0) -> Plan | None:
    """The plan minimising the summed measured deltas: one rule per head, at most ``max_rules_per_layer``
    distinct rules per layer, mean density <= ``budget`` at every length of ``lengths`` (or the plan's
    own density there when that is already higher), at most ``max_changes`` heads changed. None when
    no change is predicted to help."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    L, H = plan.n_layers, plan.n_heads
    opts: list[list[tuple[Rule, float]]] = []  # per head (l*H+h): (rule, delta), the current rule first
    for l in range(L):
        for h in range(H):
            opts.append([(plan.rules[l][h], 0.0)] + moves.get((l, h), []))
    xs = [(k, j) for k, o in enumerate(opts) for j in range(len(o))]
    xid = {kj: i for i, kj in enumerate(xs)}
    layer_rules = [sorted({r for h in range(H) for r, _ in opts[l * H + h]}, key=lambda r: (r.alpha, r.beta)) for l in range(L)]
    yid, ny = {}, 0
    for l in range(L):
        for r in layer_rules[l]:
            yid[(l, r)] = len(xs) + ny
            ny += 1
    nv = len(xs) + ny
    c = np.zeros(nv)
    for (k, j), i in xid.items():
        c[i] = opts[k][j][1]
    rows, cols, vals, lo, hi = [], [], [], [], []
    row = 0

    def add(entries, a, b):
        nonlocal row
        for col, v in entries:
            rows.append(row); cols.append(col); vals.append(v)
        lo.append(a); hi.append(b); row += 1

    for k, o in enumerate(opts):  # one rule per head
        add([(xid[(k, j)], 1.0) for j in range(len(o))], 1, 1)
    for (k, j), i in xid.items():  # x <= y
        add([(i, 1.0), (yid[(k // H, opts[k][j][0])], -1.0)], -np.inf, 0)
    for l in range(L):  # distinct rules per layer
        add([(yid[(l, r)], 1.0) for r in layer_rules[l]], 0, max_rules_per_layer)
    for n in sorted(set(lengths)):  # density budget
        cap = max(budget, plan.mean_density(n)) + 1e-9
        add([(i, band_density(opts[k][j][0].span(n), n, plan.sinks) / (L * H)) for (k, j), i in xid.items()], -np.inf, cap)
    add([(i, 1.0) for (k, j), i in xid.items() if j > 0], 0, max_changes)  # trust region
    A = coo_matrix((vals, (rows, cols)), shape=(row, nv)).tocsr()
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(nv), bounds=Bounds(0, 1),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-4, "disp": False})
    if res.x is None or res.fun is None or res.fun >= -1e-9:
        return None
    rules = [[opts[l * H + h][int(np.argmax([res.x[xid[(l * H + h, j)]] for j in range(len(opts[l * H + h]))]))][0]
              for h in range(H)] for l in range(L)]
    return Plan(plan.model_id, rules, sinks=plan.sinks, block_size=plan.block_size, density=plan.density,
                profiled_lengths=list(plan.profiled_lengths), kind=plan.kind, meta=dict(plan.meta))


def refine(plan: Plan, loss_fn: Callable[[Plan], float], budget_lengths: Sequence[int], rounds: int = 1,
           alpha_step: float = 64, beta_step: float = 0.125, max_changes: int | None = None, full: bool = True,
           layers: Sequence[int] | None = None, progress: Callable[[str, int, int], None] | None = None, log: Callable[[dict], None] | None = None,
           measure: Callable | None = None) -> Plan:
    """Rounds of :func:`measure_moves` + :func:`solve_moves` with a halving trust region (module
    docstring). ``budget_lengths``: lengths where the plan's density budget must keep holding (the
    profiled ones and the target). ``layers``: refine only these layers (default all). ``measure``:
    ``(plan, candidates) -> (base loss, moves)`` in place of :func:`measure_moves` (e.g. spread over
    processes or GPUs; it must measure the same loss as ``loss_fn``). Returns the best plan measured (``plan`` itself when nothing helped),
    its history in ``meta["refine"]``."""
    if plan.density is None:
        raise ValueError("refine needs a plan searched under a density budget (plan.density is None)")
    lengths = sorted(set(budget_lengths) | set(plan.profiled_lengths))
    history = []
    best, best_loss = plan, None
    for rnd in range(rounds):
        cands = candidates(best, lengths, alpha_step, beta_step, full, layers)
        if measure is not None:
            base, moves = measure(best, cands)
        else:
            base, moves = measure_moves(best, loss_fn, cands, (lambda i, k: progress("measure", i, k)) if progress else None)
        best_loss = base if best_loss is None else best_loss
        limit = max_changes or best.n_layers * best.n_heads
        kept = False
        while limit >= 1:
            new = solve_moves(best, moves, best.density, lengths, limit)
            if new is None:
                break
            changed = sum(a != b for x, y in zip(best.rules, new.rules) for a, b in zip(x, y))
            predicted = sum(d for (l, h), ms in moves.items() for r, d in ms if new.rules[l][h] == r and r != best.rules[l][h])
            got = float(loss_fn(new))
            step = {"round": rnd, "trust_region": limit, "changed_heads": changed, "base_loss": base, "predicted": base + predicted,
                    "measured": got, "kept": got < base - 1e-6}
            history.append(step)
            if log:
                log(step)
            if got < base - 1e-6:
                best, best_loss, kept = new, got, True
                break
            limit = min(limit, changed) // 2
        if not kept:
            break
    out = Plan(best.model_id, best.rules, sinks=best.sinks, block_size=best.block_size, density=best.density,
               profiled_lengths=list(best.profiled_lengths), kind=best.kind, meta=dict(best.meta))
    out.meta["refine"] = {"history": history, "alpha_step": alpha_step, "beta_step": beta_step, "budget_lengths": lengths,
                          "start_loss": history[0]["base_loss"] if history else best_loss, "loss": best_loss}
    return out
