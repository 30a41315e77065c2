"""Attention backend for elastic per-head windows, registered with transformers.

``register()`` adds the implementation ``"ctxflow_sparse"`` to transformers' ``AttentionInterface``
and a mask function of the same name to ``AttentionMaskInterface`` (without the latter transformers
would find no mask function for the name and causal masking would be silently lost). The mask
function is transformers' own SDPA mask with the "is causal, skip the mask" shortcut turned off, so
the attention function always receives the full ``(B, 1, Q, K)`` boolean mask (causal + padding).

:func:`sparse_sdpa` ANDs that mask with each head's window: key ``j`` is visible to query ``i`` when
``i - j < S_h(N)`` or ``j`` is one of the first ``sinks`` real tokens of its row. ``N`` is the
row's real length (cached + new keys, left padding excluded), distances are counted in cache
slots (equal to token distances under left padding). Grouped-query attention is kept: the
``(B, H_kv, K, D)`` keys are never expanded (``enable_gqa``). A module without rules (or with all
heads at full window) runs plain masked SDPA.

A prefill on CUDA (queries = keys, one rule set, unpadded or left-padded) skips the mask and runs
:func:`window_flash.window_prefill` instead, once per group of rows of equal real length —
FlashAttention-4's block-sparse kernel, cuDNN's band or FlexAttention, whichever loads
(``apply_plan(..., prefill=)`` chooses; "masked" turns it off).

:func:`apply_plan` attaches a plan's rules to every attention module of a model and switches
``config._attn_implementation``; :func:`remove_plan` undoes it.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .rules import Plan

NAME = "ctxflow_sparse"


class LayerRules:
    """The rules of one layer as tensors: ``alpha``, ``beta`` (H,) float64 and ``sinks``."""

    def __init__(self, alphas, betas, sinks: int, prefill: str = "auto"):
        self.alpha = torch.as_tensor(alphas, dtype=torch.float64)  # (H,)
        self.beta = torch.as_tensor(betas, dtype=torch.float64)  # (H,)
        self.sinks = int(sinks)
        self.full = bool(((self.alpha == 0) & (self.beta >= 1)).all())
        self.prefill = check_prefill(prefill)

    def spans(self, n: torch.Tensor) -> torch.Tensor:
        """(B, H) long spans for real lengths ``n`` (B,). Rules of shape (B, H) give each batch row its
        own rules (several plans measured in one batch)."""
        n = n.to(torch.float64)[:, None]  # (B, 1)
        a = self.alpha if self.alpha.dim() == 2 else self.alpha[None, :]
        b = self.beta if self.beta.dim() == 2 else self.beta[None, :]
        s = torch.floor(a + b * n)  # (B, H)
        return torch.minimum(s.clamp(min=1), n).long()


PREFILL_CHOICES = ("auto", "masked")  # or one of window_flash.BACKENDS (+ "torch")


def check_prefill(prefill: str) -> str:
    from .window_flash import BACKENDS

    valid = PREFILL_CHOICES + BACKENDS + ("torch",)
    if prefill not in valid:
        raise ValueError(f"unknown prefill path {prefill!r}; valid: " + ", ".join(repr(v) for v in valid))
    return prefill


def _window_prefill(rules: LayerRules, query, key, value, attention_mask, scaling):
    """Prefill through :func:`window_flash.window_prefill` (no (B, H, N, N) mask) when it applies, else
    None. It applies to a prefill from an empty cache (queries = keys) under one rule set, unpadded or
    left-padded (each row's real tokens a suffix: what batched generation builds): rows of equal real
    length run as one kernel call over their real tokens, with the spans of that length; pad queries
    get zeros (never read). Other masks (right padding, holes) keep the masked path. ``rules.prefill``:
    "auto" uses it on CUDA only (FA4 / cuDNN / FlexAttention, whichever loads), "masked" never, a
    window_flash backend name on any device."""
    if rules.prefill == "masked" or (rules.prefill == "auto" and not query.is_cuda):
        return None
    Q, K = query.shape[2], key.shape[2]
    if Q != K or rules.alpha.dim() != 1:
        return None
    from .window_flash import window_prefill

    n_real = [K] * query.shape[0] if attention_mask is None else _left_padded_lengths(attention_mask, K)
    if n_real is None or len(n_real) != query.shape[0]:
        return None  # not causal + left padding, or a mask broadcast over the batch
    if all(x == K for x in n_real):
        spans = rules.spans(torch.tensor([K]))[0].tolist()
        return window_prefill(query, key, value, spans, rules.sinks, scale=scaling, backend=rules.prefill)
    B, H, _, D = query.shape
    out = query.new_empty(B, K, H, D)  # the layout sparse_sdpa returns: no copy after the kernels
    for b, x in enumerate(n_real):
        out[b, : K - x] = 0  # pad queries (never read)
    for length in sorted(set(n_real) - {0}):
        rows = [b for b, x in enumerate(n_real) if x == length]
        p = K - length
        spans = rules.spans(torch.tensor([length]))[0].tolist()
        if len(rows) == 1:  # a view: the kernel writes into out directly
            b = rows[0]
            window_prefill(query[b:b + 1, :, p:], key[b:b + 1, :, p:], value[b:b + 1, :, p:], spans, rules.sinks,
                           scale=scaling, backend=rules.prefill, out=out[b:b + 1, p:])
        else:
            idx = torch.tensor(rows, device=query.device)
            res = window_prefill(query[idx, :, p:], key[idx, :, p:], value[idx, :, p:], spans, rules.sinks,
                                 scale=scaling, backend=rules.prefill)
            out[idx, p:] = res.transpose(1, 2)
    return out.transpose(1, 2)  # (B, H, K, D) view


_LENGTHS: list = []  # the last few masks' real lengths: every layer of a forward gets the same mask
_LENGTHS_KEEP = 4  # (models alternating sliding and full layers pass two masks per forward)


def _left_padded_lengths(attention_mask, K: int) -> list[int] | None:
    """Real length of each row when the mask is causal + left padding (every row's real keys a suffix,
    every real query seeing all earlier real keys and nothing else), else None. Remembered for the
    same mask object (one check per forward, not per layer): a hit rests on object identity plus
    the version counter where the tensor has one (inference tensors have none; transformers builds a
    new mask for every forward)."""
    if attention_mask.dim() != 4 or attention_mask.shape[2] != K or attention_mask.shape[3] < K:
        return None
    try:
        version = attention_mask._version
    except RuntimeError:  # inference tensors keep no version counter
        version = None
    for ref, ver, k, lengths in _LENGTHS:
        if ref() is attention_mask and (ver, k) == (version, K):
            return lengths
    full = attention_mask[:, 0, :, :K]  # (B, Q, K)
    last = full[:, -1]
    real = last if last.dtype == torch.bool else last == 0
    n = real.sum(-1)  # (B,)
    ok = torch.equal(real, torch.arange(K, device=real.device)[None, :] >= (K - n)[:, None])
    if ok:  # n(n+1)/2 visible pairs per row, all of them causal: packed sequences, sliding or chunked
        # windows and prefix-LM masks show up here and keep the masked path (query blocks bound the
        # temporaries)
        total = torch.zeros_like(n)
        causal = torch.zeros_like(n)
        for i0 in range(0, K, 4096):
            blk = full[:, i0:i0 + 4096]
            vis = blk if blk.dtype == torch.bool else blk == 0
            total += vis.sum((-1, -2))
            causal += vis.tril(i0).sum((-1, -2))
        ok = torch.equal(total, n * (n + 1) // 2) and torch.equal(causal, total)
    lengths = n.tolist() if ok else None
    _LENGTHS.insert(0, (weakref.ref(attention_mask), version, K, lengths))
    del _LENGTHS[_LENGTHS_KEEP:]
    return lengths


def head_window_mask(rules: LayerRules, base: torch.Tensor, q_len: int) -> torch.Tensor:
    """(B, H, Q, K) bool: ``base`` (B, 1, Q, K) AND each head's window (queries = the last Q keys)."""
    B, _, Q, K = base.shape
    dev = base.device
    real = base[:, 0, -1, :]  # (B, K): the last query is a real token under left padding
    pad = torch.where(real.any(-1), real.int().argmax(-1), torch.zeros(B, dtype=torch.long, device=dev))  # (B,)
    n = (K - pad).clamp(min=1)  # (B,) real keys per row
    span = rules.spans(n.cpu()).to(dev)  # (B, H)
    qi = torch.arange(K - q_len, K, device=dev)  # (Q,)
    kj = torch.arange(K, device=dev)  # (K,)
    dist = qi[:, None] - kj[None, :]  # (Q, K)
    band = dist[None, None] < span[:, :, None, None]  # (B, H, Q, K)
    sink = (kj[None, :] - pad[:, None]) < rules.sinks  # (B, K)
    return base & (band | sink[:, None, None, :])


def sparse_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function. query (B, H, Q, D), key/value (B, H_kv, K, D),
    attention_mask (B, 1, Q, K) bool (True = attend) or None (plain causal).
    Returns (B, Q, H, D) and no attention weights."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError("ctxflow's sparse attention backend supports neither attention logit soft-capping nor "
                         "learned sink logits (s_aux); use attention type 'dense' for this model")
    ring = getattr(module, "_ctxflow_ring", None)  # a decode step on the ring cache (ctxflow.attention.ring)
    if ring is not None and ring.decode_step(query, key):
        return ring.ring.attend(query, scale=scaling).transpose(1, 2).contiguous(), None
    B, H, Q, D = query.shape
    K = key.shape[2]
    rules: LayerRules | None = getattr(module, "_ctxflow_rules", None)
    probing = getattr(_PROBE, "seen", None) is not None and id(module) in _PROBE.want
    if probing and rules is not None:
        _PROBE.seen.add(id(module))
    # (verify_sparse's 4-token check takes the masked path below: no kernel compile for a throwaway shape)
    if rules is not None and not rules.full and not probing:  # before any (Q, K) mask is built here
        out = _window_prefill(rules, query, key, value, attention_mask, scaling)
        if out is not None:
            return out.transpose(1, 2).contiguous(), None
    if attention_mask is None:
        base = torch.ones(Q, K, dtype=torch.bool, device=query.device).tril(K - Q)[None, None]  # (1, 1, Q, K)
        base = base.expand(B, 1, Q, K)
    elif attention_mask.dtype == torch.bool:
        base = attention_mask[:, :, :, :K]
    else:  # additive float mask (0 = attend)
        base = attention_mask[:, :, :, :K] == 0
    mask = base if rules is None or rules.full else head_window_mask(rules, base, Q)
    mask = mask | ~mask.any(-1, keepdim=True)  # rows with nothing visible (pad queries): finite garbage, never read
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                         enable_gqa=key.shape[1] != H)  # (B, H, Q, D)
    return out.transpose(1, 2).contiguous(), None


def _sparse_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


_REGISTERED_NAMES: set[str] = set()


def register_attention(name: str, fn) -> str:
    """Register ``fn`` as transformers attention backend ``name`` together with our mask function
    (without it transformers would silently drop causal masking); idempotent. Returns ``name``."""
    if name not in _REGISTERED_NAMES:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, _sparse_mask)
        _REGISTERED_NAMES.add(name)
    return name


def register() -> str:
    """Register the sparse backend and its mask function with transformers. Returns its name."""
    return register_attention(NAME, sparse_sdpa)


def attention_modules(model) -> list:
    """The self-attention modules of a transformers decoder, in layer order: those with a ``layer_idx``
    and separate ``q_proj``/``o_proj`` (Llama family), or else any ``...Attention`` module with a
    ``layer_idx`` (fused projections: GPT-2's ``c_attn``, Phi-3's ``qkv_proj``, ...). Whether they really
    call the attention interface is checked by :func:`verify_sparse` on a tiny forward."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj") and hasattr(m, "q_proj")]
    if not mods:
        mods = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
                and type(m).__name__.endswith("Attention") and not getattr(m, "is_cross_attention", False)]
    return sorted(mods, key=lambda m: m.layer_idx)


_PROBE = threading.local()  # .seen: while verify_sparse runs in this thread, ids of the probed modules sparse_sdpa saw


def verify_sparse(model, batch: int = 1) -> None:
    """Refuse a model on which the sparse backend would silently do nothing: run 4 tokens through it and
    check that every attention layer called :func:`sparse_sdpa` with its rules (models whose attention
    does not go through transformers' attention interface, e.g. BLOOM or Falcon, fail here)."""
    if getattr(model, "_ctxflow_sparse_verified", False):
        return
    mods = {id(m) for m in attention_modules(model)}
    seen: set[int] = set()
    _PROBE.seen, _PROBE.want = seen, mods
    try:
        with torch.inference_mode():
            ids = torch.zeros(batch, 4, dtype=torch.long, device=model.device)  # one row per plan (apply_plans)
            model.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        _PROBE.seen = _PROBE.want = None
    # every attention layer found must have run through the backend (hybrid models' Mamba or linear-attention
    # layers have no attention module and are not counted)
    if model.config._attn_implementation != NAME or not mods or not mods <= seen:
        raise ValueError(f"{type(model).__name__}'s attention does not run through transformers' attention interface in all "
                         f"of its {len(mods)} attention layers ({len(seen)} did), so ctxflow's sparse attention would "
                         "silently compute dense attention there: use attention type 'dense' for this model")
    model._ctxflow_sparse_verified = True


def check_supported(model) -> None:
    """Refuse models whose attention computes something this backend would silently drop: logit
    soft-capping (Gemma 2) and learned per-head sink logits (gpt-oss)."""
    for m in attention_modules(model):
        if getattr(m, "attn_logit_softcapping", None) is not None:
            raise ValueError(f"{type(model).__name__} caps its attention logits (attn_logit_softcapping="
                             f"{m.attn_logit_softcapping}), which ctxflow's sparse attention backend does not do: "
                             "use attention type 'dense' for this model")
        if torch.is_tensor(getattr(m, "sinks", None)):
            raise ValueError(f"{type(model).__name__} has learned attention-sink logits per head (gpt-oss style), "
                             "which ctxflow's sparse attention backend does not add: use attention type 'dense' for this model")


def apply_plan(model, plan: Plan, prefill: str = "auto") -> None:
    """Attach ``plan``'s rules to every attention layer and switch the model to the sparse backend.
    ``prefill``: how a prefill (unpadded or left-padded) runs — "auto" (window_flash's fastest kernel on CUDA, the
    masked SDPA below elsewhere), "masked" (always masked SDPA), or a window_flash backend name."""
    cfg = model.config
    plan.check_model(cfg.num_hidden_layers, cfg.num_attention_heads)
    check_prefill(prefill)
    check_supported(model)
    register()
    old = cfg._attn_implementation
    for m in attention_modules(model):
        rules = plan.rules[m.layer_idx]
        m._ctxflow_rules = LayerRules([r.alpha for r in rules], [r.beta for r in rules], plan.sinks, prefill)
    _switch_and_verify(model, old, 1)


def apply_plans(model, plans: list[Plan]) -> None:
    """Like :func:`apply_plan` with one plan per batch row: row ``b`` of the next forward runs ``plans[b]``
    (all with the same sink count)."""
    cfg = model.config
    if len({p.sinks for p in plans}) != 1:
        raise ValueError("plans measured in one batch must share the sink count")
    for p in plans:
        p.check_model(cfg.num_hidden_layers, cfg.num_attention_heads)
    check_supported(model)
    register()
    old = cfg._attn_implementation
    for m in attention_modules(model):
        rows = [p.rules[m.layer_idx] for p in plans]
        m._ctxflow_rules = LayerRules([[r.alpha for r in rs] for rs in rows], [[r.beta for r in rs] for rs in rows], plans[0].sinks)
    _switch_and_verify(model, old, len(plans))


def _switch_and_verify(model, old: str, batch: int) -> None:
    """Switch to the sparse backend and verify it; on a refusal the model is left as it was."""
    try:
        model.set_attn_implementation(NAME)
        verify_sparse(model, batch)
    except Exception:
        remove_plan(model, old if old != NAME else "sdpa")
        raise


def remove_plan(model, implementation: str = "sdpa") -> None:
    for m in attention_modules(model):
        if hasattr(m, "_ctxflow_rules"):
            del m._ctxflow_rules
    model.set_attn_implementation(implementation)


@contextmanager
def plan_applied(model, plan: Plan | None):
    """``with plan_applied(model, plan):`` runs the block under ``plan`` (None = as the model is) and
    restores the model's attention implementation afterwards."""
    if plan is None:
        yield model
        return
    old = model.config._attn_implementation
    apply_plan(model, plan)
    try:
        yield model
    finally:
        remove_plan(model, old)
