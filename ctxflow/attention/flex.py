"""GPU prefill for elastic per-head windows: FlexAttention with per-head block masks.

The block mask is built directly at block level (no dense ``(H, N, N)`` mask is ever made, so 64k
tokens cost a ``(H, N/128, N/128)`` table): a block is *full* when every pair in it is visible and
*partial* when some are; FlexAttention skips the rest and applies ``mask_mod`` only on partial
blocks. Block masks are cached by (length, spans, sinks, block size).

Imports only torch: usable on a GPU machine without the rest of ctxflow (no pydantic).
"""
from __future__ import annotations

from functools import lru_cache

import torch

_COMPILED = None


def block_tables(spans: torch.Tensor, sinks: int, n: int, block: int = 128):
    """(any, full): (H, nb, nb) bool block tables of the causal window-plus-sinks mask.
    spans (H,) long: each head's window at this length."""
    nb = (n + block - 1) // block
    b = torch.arange(nb, device=spans.device)
    lo = b * block  # (nb,)
    hi = torch.clamp(lo + block - 1, max=n - 1)
    qlo, qhi = lo[:, None], hi[:, None]  # query block rows
    klo, khi = lo[None, :], hi[None, :]  # key block columns
    s = spans[:, None, None]  # (H, 1, 1)
    causal_any = klo <= qhi  # (nb, nb)
    causal_full = khi <= qlo
    near = torch.clamp(qlo - khi, min=0)  # smallest distance in the block
    far = qhi - torch.clamp(klo, min=sinks)  # largest distance to a non-sink key of the block
    any_ = causal_any & ((klo < sinks) | (near < s))  # (H, nb, nb)
    full = causal_full & ((khi < sinks) | (far < s))
    return any_, full & any_


def pack_blocks(sel: torch.Tensor, batch: int = 1):
    """(count, indices) of the selected key blocks per query block, selected first, as block-sparse
    kernels take them: sel (H, nq, nk) bool -> (batch, H, nq) int32, (batch, H, nq, nk) int32."""
    num = sel.sum(-1, dtype=torch.int32)
    idx = torch.argsort(sel.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    if batch == 1:
        return num[None], idx[None]
    return num[None].expand(batch, *num.shape).contiguous(), idx[None].expand(batch, *idx.shape).contiguous()


def make_mask_mod(spans: torch.Tensor, sinks: int):
    def mask_mod(b, h, q, kv):
        return (kv <= q) & ((kv < sinks) | (q - kv < spans[h]))

    return mask_mod


def build_block_mask(spans: torch.Tensor, sinks: int, n: int, block: int = 128):
    """A FlexAttention ``BlockMask`` for per-head windows (spans (H,) long, on the target device)."""
    from torch.nn.attention.flex_attention import BlockMask

    any_, full = block_tables(spans, sinks, n, block)
    kv_num, kv_idx = pack_blocks(any_ & ~full)  # partial blocks
    full_num, full_idx = pack_blocks(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=make_mask_mod(spans, sinks), seq_lengths=(n, n))


@lru_cache(maxsize=512)
def cached_block_mask(spans: tuple[int, ...], sinks: int, n: int, block: int = 128, device: str = "cuda"):
    """:func:`build_block_mask`, cached by shape and spans (block-mask creation is not free)."""
    return build_block_mask(torch.tensor(spans, dtype=torch.long, device=device), sinks, n, block)


def compiled_flex():
    """``torch.compile``d ``flex_attention`` (compiled once per process)."""
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def sparse_prefill(q, k, v, spans, sinks: int, block: int = 128, scale=None, kernel_options=None, compiled: bool = True):
    """Causal per-head-window attention. q (B, H, N, D), k/v (B, H_kv, N, D) -> (B, H, N, D)."""
    n = q.shape[2]
    key = tuple(int(s) for s in (spans.tolist() if torch.is_tensor(spans) else spans))
    bm = cached_block_mask(key, int(sinks), n, block, str(q.device))
    if compiled:
        fn = compiled_flex()
    else:
        from torch.nn.attention.flex_attention import flex_attention as fn
    kw = {"kernel_options": kernel_options} if kernel_options else {}
    return fn(q, k, v, block_mask=bm, scale=scale, enable_gqa=k.shape[1] != q.shape[1], **kw)
