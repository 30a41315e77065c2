"""Profiling: how much each attention head's blocks matter to the model's own answers (MoA).

For an attention row ``A_i`` and ``G = dL/dA`` (``L`` = NLL of the dense model's own answer to a
calibration question, or of the second half of a plain calibration text window),
removing ``A_ij`` and renormalising the row changes the loss by about
``-A_ij / (1 - A_ij) * (G_ij - sum_n A_in G_in)``. The absolute values are summed over
``block x block`` tiles (per layer, per query head) and averaged over samples, giving a
``(layers, heads, nb, nb)`` influence map per profiled length.

The profile runs the model with an eager attention function registered as ``ctxflow_profile``
whose softmax output carries a backward hook: the hook turns ``G`` into block influence at once,
so only the tiny block map is kept. Inputs embeddings require grad (weights do not), so one
backward pass per sample gives every layer's ``G``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .kernels import attention_modules, register_attention

NAME = "ctxflow_profile"


def _block_sum(x: torch.Tensor, b: int) -> torch.Tensor:
    """(B, H, Q, K) -> (H, ceil(Q/b), ceil(K/b)) sums over tiles (and batch)."""
    B, H, Q, K = x.shape
    pq, pk = (-Q) % b, (-K) % b
    x = torch.nn.functional.pad(x, (0, pk, 0, pq))
    return x.reshape(B, H, (Q + pq) // b, b, (K + pk) // b, b).sum(dim=(0, 3, 5))


def profile_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kw):
    """Eager attention whose probabilities report their block influence on backward.
    query (B, H, Q, D), key/value (B, H_kv, K, D), attention_mask (B, 1, Q, K) bool."""
    G = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(G, 1)  # (B, H, K, D)
    v = value.repeat_interleave(G, 1)
    s = (query @ k.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)  # (B, H, Q, K)
    if attention_mask is not None:
        m = attention_mask[:, :, :, : k.shape[2]]
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    a = s.softmax(-1)
    if a.requires_grad and getattr(module, "_ctxflow_block", None):
        held = a.detach()
        b = module._ctxflow_block

        def hook(g):
            with torch.no_grad():
                infl = held / (1 - held).clamp(min=1e-6) * (g - (held * g).sum(-1, keepdim=True))
                tile = _block_sum(infl.abs_(), b)  # (H, nq, nk)
                acc = getattr(module, "_ctxflow_influence", None)
                module._ctxflow_influence = tile if acc is None else acc + tile
            return None

        a.register_hook(hook)
    out = a @ v  # (B, H, Q, D)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the profiling backend (and the mask function) with transformers. Returns its name."""
    return register_attention(NAME, profile_attention)


def influence_one(model, prompt_ids: list[int], answer_ids: list[int], block: int) -> tuple[torch.Tensor, float]:
    """Block influence (layers, heads, nb, nb) of one sample (prompt + answer, loss on the answer),
    with nb = ceil(len / block), and the answer NLL."""
    return influence_ids(model, prompt_ids + answer_ids, len(prompt_ids), block)


def influence_ids(model, token_ids: list[int], start: int, block: int) -> tuple[torch.Tensor, float]:
    """Block influence (layers, heads, nb, nb) of one sequence whose loss is the mean NLL of tokens
    ``start..T-1``, and that NLL."""
    if not 0 < start < len(token_ids):
        raise ValueError(f"loss start {start} must be inside the sequence (1..{len(token_ids) - 1})")
    mods = attention_modules(model)
    for m in mods:
        m._ctxflow_block = block
        m._ctxflow_influence = None
    ids = torch.tensor([token_ids], device=model.device)  # (1, T)
    T = ids.shape[1]
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (1, T, hidden)
    base = model.get_decoder()
    h = base(inputs_embeds=emb, attention_mask=torch.ones_like(ids), position_ids=torch.arange(T, device=ids.device)[None],
             use_cache=False).last_hidden_state
    n_p = start
    logits = model.get_output_embeddings()(h[0, n_p - 1: T - 1]).float()  # (A, V)
    loss = torch.nn.functional.cross_entropy(logits, ids[0, n_p:])
    loss.backward()
    out = torch.stack([m._ctxflow_influence for m in mods]).cpu()  # (L, H, nb, nb)
    for m in mods:
        m._ctxflow_block = None
        m._ctxflow_influence = None
    return out, float(loss.detach())


def profile(llm, lengths: Sequence[int], samples_per_length: int, block: int = 64, seed: int = 0, progress=None,
            objective: str = "mixed", normalize_samples: bool = True) -> dict:
    """Influence maps at each length: ``{N: (L, H, nb, nb) mean over samples}`` plus the samples'
    losses. ``llm`` is a dense :class:`~ctxflow.llm.local.LocalLM` (it answers the calibration
    prompts; its weights are then run with the profiling attention). ``objective``: which
    calibration samples (:func:`~ctxflow.attention.data.calibration_samples`): ``mixed`` (default;
    half plain text windows, half questions), ``answers`` or ``text``. ``normalize_samples``: each
    sample's map is scaled to unit total before averaging, so every sample weighs the same (a text
    window's loss over a thousand tokens otherwise outweighs a 20-token answer)."""
    from .data import answer_with, calibration_samples, sample_ids

    model = llm.model
    old = model.config._attn_implementation
    out = {"block": block, "lengths": list(lengths), "maps": {}, "losses": {}, "objective": objective, "kinds": {},
           "per_sample": "norm" if normalize_samples else "raw"}
    for n in lengths:
        reserve = 32  # answer tokens
        samples = answer_with(llm, calibration_samples(llm.count_tokens, n - reserve - 40, samples_per_length, seed,
                                                       objective=objective, text_tokens=n))
        out["kinds"][n] = [s.kind for s in samples]
        acc, losses = None, []
        register()
        model.set_attn_implementation(NAME)
        try:
            for s in samples:
                ids, start = sample_ids(llm, s, reserve)
                m, loss = influence_ids(model, ids[:n], min(start, n - 1), block)
                nb = (n + block - 1) // block
                m = m[:, :, :nb, :nb]
                if m.shape[-1] < nb:  # shorter sample: pad the map to the length's grid
                    m = torch.nn.functional.pad(m, (0, nb - m.shape[-1], 0, nb - m.shape[-2]))
                if normalize_samples:
                    m = m / m.sum().clamp(min=1e-30)
                acc = m if acc is None else acc + m
                losses.append(loss)
                if progress:
                    progress(n, len(losses), len(samples))
        finally:
            model.set_attn_implementation(old)
        out["maps"][n] = acc / len(samples)
        out["losses"][n] = losses
    return out


def save_profile(prof: dict, path: str | Path, model_id: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**prof, "model_id": model_id}, path)
    return path


def load_profile(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"profile {str(p)!r} not found: run `ctxflow moa profile -o {p}` first")
    try:
        prof = torch.load(p, weights_only=True)  # tensors and plain data only: never runs code from the file
    except Exception as exc:  # not a torch file, or one holding objects: say so (torch's text suggests weights_only=False)
        raise ValueError(f"{str(p)!r} is not a profile written by `ctxflow moa profile` ({type(exc).__name__})") from None
    if not isinstance(prof, dict) or "maps" not in prof:
        raise ValueError(f"{str(p)!r} is not a profile written by `ctxflow moa profile` (no 'maps')")
    return prof
