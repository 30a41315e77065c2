"""Search: one elastic rule per head under density budgets (MoA), solved as a MILP with HiGHS.

For every candidate rule ``r`` (``alpha`` on a grid, ``beta`` in {0, 1/8, ..., 1}, valid at every
profiled length) and length ``N``, the cost of giving head ``(l, h)`` rule ``r`` is the profiled
influence mass the rule masks out: ``sum_blocks M[l, h] * (1 - keep_r)``, where ``keep_r`` is the
share of each block's causal entries the rule keeps; costs are normalised by each length's total
influence. The program (``scipy.optimize.milp``):

    minimise   sum_N w_N sum_{l,h,r} cost[l,h,r,N] x[l,h,r]
    subject to sum_r x[l,h,r] = 1                        (one rule per head)
               x[l,h,r] <= y[l,r],  sum_r y[l,r] <= 2     (at most two distinct rules per layer)
               mean_{l,h} sum_r density_r(N) x[l,h,r] <= budget    (at every profiled length, and at
                                                       any extra ``budget_lengths``, e.g. the target)
               x, y binary

The cost assumes influence is spread evenly inside a tile. That fails for the first key tile,
which holds the attention sinks (about 40% of all influence for SmolLM2): with fewer sinks than
the block size, every rule that does not reach the first tile was charged for sink influence the
sinks keep anyway, which pushed the solver to give many heads a full window. Use ``sinks`` equal
to (a multiple of) the profile's block size so the first tile is kept exactly
(:func:`check_sinks`).

Solving it for several weightings ``w`` (all lengths together, each alone, neighbouring pairs) gives a Pareto set;
:func:`pick_by_validation` keeps the plan with the lowest loss at an unprofiled length.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .rules import Plan, Rule, band_density


def check_sinks(sinks: int, block: int) -> str | None:
    """A warning when ``sinks`` is not a multiple of ``block`` (tile costs are then inexact), else None."""
    if sinks % block:
        return (f"sinks={sinks} is not a multiple of the profile block size {block}: the first key tile (the attention sinks, "
                f"a large share of all influence) is only partly kept and its cost is smeared over the tile; use --sinks {block}")
    return None


def candidate_rules(lengths: Sequence[int], alpha_step: int = 64, betas: int = 8) -> list[Rule]:
    lo, hi = -min(lengths), max(lengths)
    out = []
    for a in range(lo - lo % alpha_step, hi + 1, alpha_step):
        for k in range(betas + 1):
            r = Rule(float(a), k / betas)
            if r.valid(lengths):
                out.append(r)
    return out


def keep_fraction(rule: Rule, n: int, sinks: int, block: int) -> torch.Tensor:
    """(nb, nb): share of each block's causal entries that ``rule`` keeps at length ``n``."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None]
    causal = j <= i
    keep = causal & ((j < sinks) | (i - j < rule.span(n)))

    def tiles(x):
        pad = (-n) % block
        x = torch.nn.functional.pad(x.float(), (0, pad, 0, pad))
        nb = x.shape[0] // block
        return x.reshape(nb, block, nb, block).sum((1, 3))

    c = tiles(causal)
    return torch.where(c > 0, tiles(keep) / c.clamp(min=1), torch.ones_like(c))


def cost_table(maps: dict[int, torch.Tensor], rules: list[Rule], sinks: int, block: int) -> dict[int, np.ndarray]:
    """{N: (L, H, R)} normalised masked-out influence."""
    out = {}
    for n, m in maps.items():
        m = m.double()  # (L, H, nb, nb)
        total = float(m.sum())
        cols = []
        for r in rules:
            lost = 1 - keep_fraction(r, n, sinks, block).double()  # (nb, nb)
            cols.append((m * lost).sum((-1, -2)))  # (L, H)
        out[n] = (torch.stack(cols, -1) / max(total, 1e-12)).numpy()
    return out


def solve(costs: dict[int, np.ndarray], rules: list[Rule], sinks: int, budget: float, weights: dict[int, float],
          max_rules_per_layer: int = 2, time_limit: float = 60.0, budget_lengths: Sequence[int] = (),
          fixed: dict[tuple[int, int], Rule] | None = None) -> list[list[Rule]] | None:
    """One MILP solve; returns rules[layer][head] or None when infeasible. The density budget holds
    at every profiled length and at every length of ``budget_lengths``. ``fixed``: (layer, head) ->
    a rule of ``rules`` that head must take (e.g. retrieval heads kept full)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    lengths = sorted(costs)
    L, H, R = costs[lengths[0]].shape
    nx, ny = L * H * R, L * R
    c = np.zeros(nx + ny)
    for n in lengths:
        c[:nx] += weights.get(n, 0.0) * costs[n].reshape(-1)
    xi = lambda l, h, r: (l * H + h) * R + r  # noqa: E731
    yi = lambda l, r: nx + l * R + r  # noqa: E731
    rows, cols, vals, lo, hi = [], [], [], [], []
    k = 0
    for l in range(L):
        for h in range(H):  # one rule per head
            for r in range(R):
                rows.append(k); cols.append(xi(l, h, r)); vals.append(1.0)
            lo.append(1); hi.append(1); k += 1
    for l in range(L):
        for h in range(H):  # x <= y
            for r in range(R):
                rows += [k, k]; cols += [xi(l, h, r), yi(l, r)]; vals += [1.0, -1.0]
                lo.append(-np.inf); hi.append(0); k += 1
    for l in range(L):  # at most two distinct rules per layer
        for r in range(R):
            rows.append(k); cols.append(yi(l, r)); vals.append(1.0)
        lo.append(0); hi.append(max_rules_per_layer); k += 1
    for n in sorted(set(lengths) | set(budget_lengths)):  # density budget at each length
        d = np.array([band_density(r.span(n), n, sinks) for r in rules])
        for l in range(L):
            for h in range(H):
                for r in range(R):
                    rows.append(k); cols.append(xi(l, h, r)); vals.append(d[r] / (L * H))
        lo.append(-np.inf); hi.append(budget); k += 1
    A = coo_matrix((vals, (rows, cols)), shape=(k, nx + ny)).tocsr()
    lower = np.zeros(nx + ny)
    for (l, h), rule in (fixed or {}).items():
        if rule not in rules:
            raise ValueError(f"fixed rule {rule} of layer {l} head {h} is not a candidate rule")
        lower[xi(l, h, rules.index(rule))] = 1
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(nx + ny), bounds=Bounds(lower, 1),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-3, "disp": False})
    if res.x is None:
        return None
    x = res.x[:nx].reshape(L, H, R)
    return [[rules[int(np.argmax(x[l, h]))] for h in range(H)] for l in range(L)]


def weightings_for(lengths: Sequence[int]) -> list[dict[int, float]]:
    """The length weightings the Pareto set is solved for: all lengths equally, each length alone
    (the others at 1e-3, so ties break sensibly), and each pair of neighbouring lengths."""
    lengths = sorted(lengths)
    out = [{n: 1.0 for n in lengths}] + [{n: 1.0 if n == m else 1e-3 for n in lengths} for m in lengths]
    if len(lengths) > 2:
        out += [{n: 1.0 if n in (a, b) else 1e-3 for n in lengths} for a, b in zip(lengths, lengths[1:])]
    return out


def pareto_plans(prof: dict, budget: float, sinks: int, model_id: str, alpha_step: int = 64, progress=None,
                 budget_lengths: Sequence[int] = (), weightings: Sequence[dict[int, float]] | None = None) -> list[Plan]:
    """Plans for each weighting of the profiled lengths (default :func:`weightings_for`), deduplicated.
    The budget also holds at ``budget_lengths`` (e.g. the validation or target length)."""
    maps, block = prof["maps"], prof["block"]
    lengths = sorted(maps)
    rules = candidate_rules(lengths, alpha_step)
    costs = cost_table(maps, rules, sinks, block)
    weightings = list(weightings) if weightings is not None else weightings_for(lengths)
    plans, seen = [], set()
    for i, w in enumerate(weightings):
        sol = solve(costs, rules, sinks, budget, w, budget_lengths=budget_lengths)
        if progress:
            progress(i + 1, len(weightings))
        if sol is None:
            continue
        key = tuple((r.alpha, r.beta) for layer in sol for r in layer)
        if key in seen:
            continue
        seen.add(key)
        plans.append(Plan(model_id, sol, sinks=sinks, block_size=block, density=budget, profiled_lengths=lengths,
                          meta={"weights": {str(k): v for k, v in w.items()}, "n_candidates": len(rules),
                                "budget_lengths": sorted(set(lengths) | set(budget_lengths)),
                                "profiled_cost": {str(n): float(sum(costs[n][l, h, rules.index(sol[l][h])]
                                                                    for l in range(len(sol)) for h in range(len(sol[0]))))
                                                  for n in lengths}}))
    return plans


def pick_by_validation(plans: list[Plan], loss_fn: Callable[[Plan], float], length: int) -> Plan:
    """The plan with the lowest validation loss (``loss_fn``) at the unprofiled ``length``."""
    best = None
    for p in plans:
        p.validation_length = length
        p.validation_loss = float(loss_fn(p))
        p.meta.setdefault("candidates", [])
        if best is None or p.validation_loss < best.validation_loss:
            best = p
    assert best is not None, "no feasible plan"
    best.meta["pareto_validation_losses"] = [q.validation_loss for q in plans]
    return best
