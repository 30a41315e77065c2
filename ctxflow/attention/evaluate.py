"""Quality of attention backends on the real model: perplexity on held-back text and pass-key
retrieval accuracy, one row per backend (``ctxflow moa eval``).

* perplexity: ``n_windows`` windows of ``length`` tokens from the last third of the Jargon File
  (never used for profiling); the NLL of the second half of each window (where a window that
  drops far tokens can hurt) is averaged, then exponentiated;
* retrieval: ``n_keys`` prompts of ``length`` tokens of held-back glossary text with a 5-digit
  pass key stated ``depth`` (default 5-30%) of the way in; correct when the key appears in the
  greedy reply. SmolLM2-135M finds keys ~0.7-1k tokens back but not ~1.4k+ (dense 0/10 at 2048
  tokens, at depth 5-30% and at 50-65% alike: it loses the thread in a 2k prompt), so the
  table's pass keys can use a shorter ``retrieval_length`` than its perplexity windows.
"""
from __future__ import annotations

import math
import random
import time
from typing import Any

import torch

from .data import jargon_text, passkey_sample


def window_nll(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    """NLL of tokens ``start..T-1`` of ``ids`` (T,) given everything before them."""
    ids = ids.to(model.device)
    with torch.inference_mode():
        h = model.get_decoder()(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], use_cache=False).last_hidden_state[0]
        lg = model.get_output_embeddings()(h[start - 1:-1]).float()
        return -torch.log_softmax(lg, -1).gather(1, ids[start:, None])[:, 0].cpu()


def mean_nll(model, seqs: list[tuple[list[int], int]]) -> float:
    """Mean over sequences of each one's mean NLL of tokens ``start..T-1`` (``seqs`` = (ids, start)
    pairs). Sequences of one length run as one batch (no padding, so each row's window spans are those
    of its own length, as when it runs alone)."""
    groups: dict[int, list[tuple[list[int], int]]] = {}
    for ids, start in seqs:
        if not 0 < start < len(ids):
            raise ValueError(f"loss start {start} must be inside the sequence (1..{len(ids) - 1})")
        groups.setdefault(len(ids), []).append((ids, start))
    per: list[float] = []
    with torch.inference_mode():
        for n, group in groups.items():
            for i in range(0, len(group), 16):  # at most 16 rows per forward
                part = group[i:i + 16]
                ids = torch.tensor([g[0] for g in part], device=model.device)  # (B, n)
                h = model.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state
                for row, (_, start) in enumerate(part):
                    lg = model.get_output_embeddings()(h[row, start - 1:-1]).float()
                    per.append(float(torch.nn.functional.cross_entropy(lg, ids[row, start:])))
    return sum(per) / len(per)


def plans_sample_nll(model, seqs: list[tuple[list[int], int]], plans: list, batch: int = 16, progress=None) -> torch.Tensor:
    """(plans, sequences) float64 tensor: each sequence's mean NLL of tokens ``start..`` under each
    of ``plans``, several plans per forward (each sequence repeated, one plan per batch row: the
    per-row rules of :func:`~.kernels.apply_plans`)."""
    from .kernels import apply_plans, remove_plan

    for ids, start in seqs:
        if not 0 < start < len(ids):
            raise ValueError(f"loss start {start} must be inside the sequence (1..{len(ids) - 1})")
    old = model.config._attn_implementation
    out = torch.zeros(len(plans), len(seqs), dtype=torch.float64)
    done = 0
    try:
        with torch.inference_mode():
            for i in range(0, len(plans), batch):
                part = plans[i:i + batch]
                apply_plans(model, part)
                for j, (ids, start) in enumerate(seqs):
                    x = torch.tensor([ids] * len(part), device=model.device)  # (P, T)
                    h = model.get_decoder()(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state
                    lg = model.get_output_embeddings()(h[:, start - 1:-1]).float()  # (P, A, V)
                    nll = torch.nn.functional.cross_entropy(lg.transpose(1, 2), x[:, start:], reduction="none").mean(1)
                    out[i:i + len(part), j] = nll.double().cpu()
                done += len(part)
                if progress:
                    progress(done, len(plans))
    finally:
        remove_plan(model, old)
    return out


def plans_mean_nll(model, seqs: list[tuple[list[int], int]], plans: list, batch: int = 16, progress=None) -> list[float]:
    """:func:`mean_nll` of ``seqs`` under each of ``plans`` (:func:`plans_sample_nll` averaged)."""
    return plans_sample_nll(model, seqs, plans, batch, progress).mean(1).tolist()


def paired_gain(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """(mean gain, its standard error) of per-sample losses ``before - after`` (same samples, paired).
    A gain of a few standard errors is a real one; a gain inside one is noise of the sample draw."""
    d = (before - after).double()
    se = float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    return float(d.mean()), se


def clears_margin(gain: float, se: float, margin: float) -> bool:
    """The keep rule of refine and tune: a positive gain larger than ``margin`` standard errors."""
    return gain > 0 and gain > margin * se


def plan_loss_fn(llm, seqs: list[tuple[list[int], int]], batch: int = 16):
    """A function plan -> :func:`mean_nll` of ``seqs`` with ``plan`` applied to ``llm``'s model (None = dense).
    Its ``many(plans, progress=None)`` measures a list of plans, ``batch`` plans per forward, and
    ``samples(plans)`` gives the (plans, sequences) per-sample losses (:func:`plans_sample_nll`)."""
    from .kernels import plan_applied

    model = llm.model

    def loss(plan) -> float:
        with plan_applied(model, plan):
            return mean_nll(model, seqs)

    loss.many = lambda plans, progress=None, batch=batch: plans_mean_nll(model, seqs, plans, batch, progress)
    loss.samples = lambda plans, batch=batch: plans_sample_nll(model, seqs, plans, batch)
    return loss


def window_nlls(llm, length: int, n_windows: int, seed: int = 0) -> list[float]:
    """Mean NLL of the second half of each of ``n_windows`` held-back windows of ``length`` tokens
    (the same windows for every backend, so rows can be compared window by window)."""
    text = jargon_text("eval")
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(0, len(ids) - length), n_windows))
    return [float(window_nll(llm.model, torch.tensor(ids[s:s + length]), length // 2).mean()) for s in starts]


def retrieval(llm, length: int, n_keys: int, seed: int = 0, depth: tuple[float, float] = (0.05, 0.3)) -> tuple[float, list[dict]]:
    """Pass-key accuracy; ``depth`` = (lo, hi) share of the text before the key (uniform)."""
    rng = random.Random(seed + 1)
    text = jargon_text("eval")
    samples = [passkey_sample(llm.count_tokens, length - 40, rng, text, depth=rng.uniform(*depth)) for _ in range(n_keys)]
    return passkey_rows(llm, samples)


def passkey_rows(llm, samples, max_new_tokens: int = 10) -> tuple[float, list[dict]]:
    """(accuracy, rows) of greedy replies to pass-key ``samples``: correct when the key is in the reply."""
    gens = llm.generate([s.prompt for s in samples], max_new_tokens=max_new_tokens)
    rows = [{"expected": s.expected, "reply": g.text, "ok": s.expected in g.text} for s, g in zip(samples, gens)]
    return sum(r["ok"] for r in rows) / max(len(rows), 1), rows


def quality_table(backends: dict[str, Any], length: int = 1024, n_windows: int = 4, n_keys: int = 8, threads: int | None = None,
                  progress=None, depth: tuple[float, float] = (0.05, 0.3), retrieval_length: int | None = None) -> dict:
    """``backends``: name -> ``attention=`` spec (None = dense). Returns the table as a dict.
    ``retrieval_length``: pass-key prompt length (default ``length``)."""
    rlen = retrieval_length or length
    from ..llm.local import LocalLM

    rows = {}
    for i, (name, spec) in enumerate(backends.items()):
        t0 = time.time()
        llm = LocalLM(cache=False, attention=spec, threads=threads)
        llm.warm_up()
        nlls = window_nlls(llm, length, n_windows)
        ppl = math.exp(sum(nlls) / len(nlls))  # every window scores length // 2 tokens
        acc, detail = retrieval(llm, rlen, n_keys, depth=depth)
        rows[name] = {"attention": spec, "perplexity": ppl, "window_nll": nlls, "retrieval_accuracy": acc, "retrieval": detail,
                      "seconds": round(time.time() - t0, 1)}
        if progress:
            progress(i + 1, len(backends), name, rows[name])
    dense = rows.get("dense")
    if dense:
        for r in rows.values():
            r["ppl_vs_dense"] = r["perplexity"] / dense["perplexity"] - 1
            # paired over windows: the standard error of the mean log-ratio (how much of a gap the window draw explains)
            _, se = paired_gain(torch.tensor(r["window_nll"], dtype=torch.float64), torch.tensor(dense["window_nll"], dtype=torch.float64))
            r["log_ratio_se"] = se if len(r["window_nll"]) > 1 else None
    return {"length": length, "n_windows": n_windows, "n_keys": n_keys, "passkey_depth": list(depth), "retrieval_length": rlen, "rows": rows}
