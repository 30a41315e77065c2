"""Learned rule gates: a plan tuned by gradient descent on a relaxation of the per-head rule choice.

The search (:mod:`.search`) prices each rule by a first-order estimate taken at the *dense* model,
one attention entry at a time, and adds the prices up over all heads. Both steps are where its
plans lose perplexity: cutting a whole band is not a small change, and once most heads are sparse
together their losses do not add up (the measured one-head moves of :mod:`.refine` showed it).
This step (``ctxflow moa tune``, an addition to the MoA recipe in the spirit of DuoAttention's
learned gates, extended from two choices per head to MoA's elastic rules) optimises all heads
together on the real loss:

1. Every layer gets a short list of candidate rules: its plan's own rules and a ladder (full,
   ``beta`` in {1/8, 1/4, 1/2, 3/4}, fixed windows of 64-512 tokens), those valid at every budget
   length.
2. Every head's attention output becomes a mixture ``sum_r p[l, h, r] * attn_r`` over its layer's
   candidates, ``p = softmax(theta / tau)``, ``theta`` initialised to favour the plan's rule. All
   candidates are computed in one attention call per layer (the query heads repeated once per
   candidate, each copy with its own window: :func:`mixture_attention`; FlexAttention in bfloat16
   on a GPU, masked SDPA in the model's dtype on the CPU). The model's weights stay frozen.
3. ``theta`` is trained (Adam) on the calibration loss (the same samples the profile uses: text
   windows, the dense model's answers to long-range questions) plus an augmented-Lagrangian term
   holding the *expected* mean density at or below the budget at every budget length; ``tau``
   falls over the run so that ``p`` ends close to one rule per head. With ``hard=True`` every
   forward runs one rule per head drawn from ``p`` (Gumbel-max), the gradient passed straight
   through the Gumbel-softmax of the same logits.
4. The final ``p`` is rounded by the refinement MILP (:func:`.refine.solve_moves`: one rule per
   head, at most two distinct rules per layer, the budget at every budget length, cost
   ``-log p``). ``ctxflow moa tune`` keeps the result only when it also lowers the loss on separate
   validation samples.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .kernels import LayerRules, attention_modules, head_window_mask, register_attention
from .refine import solve_moves
from .rules import FULL, Plan, Rule, band_density

NAME = "ctxflow_mixture"
LADDER_BETAS = (0.125, 0.25, 0.5, 0.75)
LADDER_ALPHAS = (64, 128, 256, 512)


def ladder(lengths: Sequence[int]) -> list[Rule]:
    """The rules every layer may move to: full, ``beta`` in {1/8, 1/4, 1/2, 3/4}, fixed windows of
    64..512 tokens; those valid at every length of ``lengths``."""
    rules = [FULL] + [Rule(0.0, b) for b in LADDER_BETAS] + [Rule(float(a), 0.0) for a in LADDER_ALPHAS]
    return [r for r in rules if r.valid(lengths)]


def layer_candidates(plan: Plan, lengths: Sequence[int]) -> list[list[Rule]]:
    """[layer] -> candidate rules: the layer's own rules first, then the :func:`ladder`."""
    base = ladder(lengths)
    return [list(dict.fromkeys(list(dict.fromkeys(layer)) + base)) for layer in plan.rules]


class Gates(torch.nn.Module):
    """Logits ``theta`` (L, H, R) over each layer's candidates (padded to R; padding never chosen)."""

    def __init__(self, plan: Plan, cands: list[list[Rule]], init: float = 3.0):
        super().__init__()
        L, H = plan.n_layers, plan.n_heads
        R = max(len(c) for c in cands)
        self.cands, self.sinks, self.R = cands, plan.sinks, R
        valid = torch.zeros(L, R, dtype=torch.bool)
        theta = torch.zeros(L, H, R)
        for l in range(L):
            valid[l, :len(cands[l])] = True
            for h in range(H):
                theta[l, h, cands[l].index(plan.rules[l][h])] = init
        self.register_buffer("valid", valid)
        self.theta = torch.nn.Parameter(theta)

    def probs(self, tau: float = 1.0) -> torch.Tensor:
        """(L, H, R) rule probabilities."""
        t = (self.theta / tau).masked_fill(~self.valid[:, None, :], float("-inf"))
        return torch.softmax(t, -1)

    def densities(self, n: int) -> torch.Tensor:
        """(L, R) density of each candidate at length ``n`` (0 for padding)."""
        d = torch.zeros(len(self.cands), self.R)
        for l, cs in enumerate(self.cands):
            d[l, :len(cs)] = torch.tensor([band_density(r.span(n), n, self.sinks) for r in cs])
        return d.to(self.theta.device)

    def spans(self, layer: int, n: int) -> list[int]:
        cs = self.cands[layer]
        return [r.span(n) for r in cs] + [1] * (self.R - len(cs))


def expected_density(p: torch.Tensor, dens: torch.Tensor) -> torch.Tensor:
    """Mean over heads of the expected density: p (L, H, R), dens (L, R)."""
    return (p * dens[:, None, :]).sum(-1).mean()


def mixture_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function: each head's output is the ``p``-weighted mixture of its
    layer's candidate windows (``module._ctxflow_mix = (spans (R,), p (H, R), sinks)``). Causal
    attention over right-padded rows only (padding never reaches a real token's output); every
    candidate runs in one call with the query heads repeated R times (GQA kept)."""
    spans, p, sinks = module._ctxflow_mix
    B, H, N, D = query.shape
    if key.shape[2] != N:
        raise ValueError("mixture attention runs whole sequences (no KV cache)")
    R = len(spans)
    q = query[:, :, None].expand(B, H, R, N, D).reshape(B, H * R, N, D)
    vspans = torch.tensor(list(spans) * H, device=query.device)  # virtual head h*R + r -> spans[r]
    if query.device.type == "cuda":
        from .flex import sparse_prefill

        dt = torch.bfloat16
        out = sparse_prefill(q.to(dt), key.to(dt), value.to(dt), vspans, sinks, scale=scaling).to(query.dtype)
    else:
        causal = torch.ones(N, N, dtype=torch.bool, device=query.device).tril()[None, None]  # (1, 1, N, N)
        cand = LayerRules(list(spans), [0.0] * R, sinks)  # one "head" per candidate: fixed span, same sinks
        mask = head_window_mask(cand, causal, N)  # (1, R, N, N), the sparse backend's own masking
        mask = mask[:, None].expand(1, H, R, N, N).reshape(1, H * R, N, N)
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling, enable_gqa=key.shape[1] != H * R)
    out = torch.einsum("bhrnd,hr->bhnd", out.view(B, H, R, N, D), p.to(out.dtype))
    return out.transpose(1, 2).contiguous(), None


def calibration_seqs(llm, lengths: Sequence[int], samples: int, seed: int, objective: str = "mixed", passkeys: int = 0,
                     passkey_length: int = 1024) -> list[tuple[list[int], int]]:
    """(ids, loss start) of ``samples`` calibration samples per length of ``lengths`` (the dense model's
    answers to questions and/or text windows, as ``objective`` says; seed ``seed + length``), plus
    ``passkeys`` pass-key prompts of ``passkey_length`` tokens with their known answers."""
    from .data import answer_with, calibration_samples, sample_ids

    seqs = []
    for n in lengths:
        cal = answer_with(llm, calibration_samples(llm.count_tokens, n - 72, samples, seed + n, objective=objective, text_tokens=n))
        seqs += [sample_ids(llm, s) for s in cal]
    if passkeys:
        from .protect import passkey_calibration

        seqs += [sample_ids(llm, s) for s in passkey_calibration(llm, passkeys, passkey_length, seed=seed)]
    return seqs


def padded_length(seqs: list[tuple[list[int], int]], multiple: int = 256) -> int:
    """The batch's longest row rounded up to ``multiple`` (few distinct shapes: compiled kernels and
    block masks are reused)."""
    return -(-max(len(ids) for ids, _ in seqs) // multiple) * multiple


def batch_loss(model, seqs: list[tuple[list[int], int]], pad_id: int = 0, T: int | None = None) -> torch.Tensor:
    """Mean over rows of each row's mean NLL of its tokens ``start..len(ids)-1`` (rows right-padded to ``T``)."""
    T = T or max(len(ids) for ids, _ in seqs)
    dev = model.device
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for r, (ids, _) in enumerate(seqs):
        x[r, :len(ids)] = torch.tensor(ids)
    x = x.to(dev)
    h = model.get_decoder()(input_ids=x, use_cache=False).last_hidden_state  # (B, T, d)
    head = model.get_output_embeddings()
    losses = []
    for r, (ids, start) in enumerate(seqs):
        lg = head(h[r, start - 1:len(ids) - 1]).float()
        losses.append(F.cross_entropy(lg, x[r, start:len(ids)]))
    return torch.stack(losses).mean()


def tune(llm, plan: Plan, seqs: list[tuple[list[int], int]], budget_lengths: Sequence[int], steps: int = 300,
         batch_tokens: int = 16384, lr: float = 0.05, init: float = 3.0, tau_end: float = 0.3, rho: float = 20.0,
         seed: int = 0, hard: bool = False, sinks: int | None = None, progress: Callable[[int, int, dict], None] | None = None) -> Plan:
    """Train the gates on ``seqs`` ((ids, loss start) pairs) and round them to a plan (module
    docstring). The density budget (``plan.density``) holds at every length of ``budget_lengths``
    and the plan's profiled lengths. ``hard``: every forward runs one rule per head drawn from ``p`` (Gumbel-max on ``theta / tau``),
    the gradient passed straight through the Gumbel-softmax of the same logits (a mixture of windows
    can do things no single window does, which rounding then loses). ``sinks``: tune (and return) the
    plan with this many sink tokens instead of its own. Returns the rounded plan (a copy with
    ``plan``'s rules when nothing is predicted to help), with the run in ``meta["tune"]``."""
    if plan.density is None:
        raise ValueError("tune needs a plan searched under a density budget (plan.density is None)")
    if steps < 1 or batch_tokens < 1 or not seqs or not 0 < tau_end <= 1:
        raise ValueError(f"tune needs steps >= 1, batch_tokens >= 1, 0 < tau_end <= 1 and at least one calibration sequence "
                         f"(got {steps}, {batch_tokens}, {tau_end}, {len(seqs)} sequences)")
    for ids, start in seqs:
        if not 0 < start < len(ids):
            raise ValueError(f"loss start {start} must be inside the sequence (1..{len(ids) - 1})")
    input_sinks = plan.sinks
    if sinks is not None:
        if sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {sinks}")
        plan = dataclasses.replace(plan, sinks=sinks, rules=[list(x) for x in plan.rules])
    model = llm.model
    lengths = sorted(set(budget_lengths) | set(plan.profiled_lengths))
    cands = layer_candidates(plan, lengths)
    gates = Gates(plan, cands, init).to(model.device)
    dens = {n: gates.densities(n) for n in lengths}
    caps = {n: max(plan.density, plan.mean_density(n)) for n in lengths}  # as the rounding MILP (refine.solve_moves)
    mods = attention_modules(model)
    if len(mods) != plan.n_layers:
        raise ValueError(f"the plan has {plan.n_layers} layers, the model {len(mods)}")
    plan.check_model(model.config.num_hidden_layers, model.config.num_attention_heads)
    from ..llm.local import micro_batches

    groups: dict[int, list[int]] = {}  # rows of one padded length together: their windows are those of their own length
    for i, sq in enumerate(seqs):
        groups.setdefault(padded_length([sq]), []).append(i)
    batches = [[idx[j] for j in b] for idx in groups.values() for b in micro_batches([len(seqs[i][0]) for i in idx], batch_tokens)]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(gates.parameters(), lr=lr)
    lam = {n: 0.0 for n in lengths}
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
    old = model.config._attn_implementation
    req = [q.requires_grad for q in model.parameters()]
    limits = {}
    history = []
    try:
        for q in model.parameters():
            q.requires_grad_(False)
        register_attention(NAME, mixture_attention)
        if model.device.type == "cuda":  # one compiled flex kernel per (length, direction)
            import torch._dynamo as dynamo

            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(dynamo.config, name):
                    limits[name] = getattr(dynamo.config, name)
                    setattr(dynamo.config, name, max(limits[name], 256))
        model.set_attn_implementation(NAME)
        with torch.enable_grad():
            for step in range(steps):
                tau = 1.0 + (tau_end - 1.0) * step / max(steps - 1, 1)
                p = gates.probs(tau)
                w = p
                if hard:  # straight-through Gumbel: one rule per head drawn from p forward, Gumbel-softmax gradient backward
                    u = torch.rand(p.shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12).to(p.device, p.dtype)
                    logits = (gates.theta / tau - torch.log(-torch.log(u))).masked_fill(~gates.valid[:, None, :], float("-inf"))
                    y = torch.softmax(logits, -1)
                    w = F.one_hot(y.argmax(-1), gates.R).to(y.dtype) - y.detach() + y
                part = [seqs[i] for i in rng.choice(batches)]
                n = padded_length(part)  # windows follow the padded length (each batch holds one padded length)
                for m in mods:
                    m._ctxflow_mix = (gates.spans(m.layer_idx, n), w[m.layer_idx], plan.sinks)
                nll = batch_loss(model, part, pad, n)
                gaps = {k: expected_density(p, d) - caps[k] for k, d in dens.items()}
                # augmented Lagrangian for g <= 0: (rho/2) (max(0, lam/rho + g)^2 - (lam/rho)^2)
                pen = sum((rho / 2) * (torch.clamp(lam[k] / rho + g, min=0) ** 2 - (lam[k] / rho) ** 2) for k, g in gaps.items())
                loss = nll + pen
                opt.zero_grad()
                loss.backward()
                opt.step()
                for k, g in gaps.items():
                    lam[k] = max(0.0, lam[k] + rho * float(g.detach()))
                rec = {"step": step, "tau": round(tau, 4), "nll": float(nll.detach()), "length": n,
                       "density": {k: round(float(g.detach()) + caps[k], 4) for k, g in gaps.items()}}
                history.append(rec)
                if progress:
                    progress(step + 1, steps, rec)
    finally:
        for m in mods:
            if hasattr(m, "_ctxflow_mix"):
                del m._ctxflow_mix
        model.set_attn_implementation(old)
        for q, r in zip(model.parameters(), req):
            q.requires_grad_(r)
        if limits:
            import torch._dynamo as dynamo

            for name, v in limits.items():
                setattr(dynamo.config, name, v)
    with torch.no_grad():
        p = gates.probs(tau_end).cpu()
    new = round_gates(plan, cands, p, lengths)
    out = new or dataclasses.replace(plan, rules=[list(x) for x in plan.rules])
    changed = sum(a != b for x, y in zip(plan.rules, out.rules) for a, b in zip(x, y))
    k = max(1, len(history) // 10)
    out.meta = {**plan.meta, "tune": {
        "steps": steps, "batch_tokens": batch_tokens, "lr": lr, "init": init, "tau_end": tau_end, "rho": rho, "seed": seed, "hard": hard, "sinks": plan.sinks, "input_sinks": input_sinks,
        "samples": len(seqs), "budget_lengths": lengths, "changed_heads": changed,
        "nll_first": sum(r["nll"] for r in history[:k]) / k, "nll_last": sum(r["nll"] for r in history[-k:]) / k,
        "relaxed_density": history[-1]["density"], "lambda": {str(n): v for n, v in lam.items()},
        "confidence": float(p.max(-1).values.mean()),
    }}
    return out


def round_gates(plan: Plan, cands: list[list[Rule]], p: torch.Tensor, lengths: Sequence[int]) -> Plan | None:
    """The plan closest to the gates ``p`` (L, H, R): the MILP of :func:`.refine.solve_moves` with
    cost ``-log p`` (relative to each head's current rule), the plan's budget at every length of
    ``lengths``, at most two rules per layer. None when the plan itself is the best rounding."""
    logp = torch.log(p.clamp(min=1e-9)).double()
    moves = {}
    for l in range(plan.n_layers):
        for h in range(plan.n_heads):
            cur = cands[l].index(plan.rules[l][h])
            moves[(l, h)] = [(r, float(logp[l, h, cur] - logp[l, h, j])) for j, r in enumerate(cands[l]) if j != cur]
    return solve_moves(plan, moves, plan.density, lengths, max_changes=plan.n_layers * plan.n_heads)
