"""Per-head static KV cache for elastic windows: fixed sinks + a ring buffer, allocated once.

Each KV head ``g`` keeps ``cap_g = min(sinks + window_g, max_len)`` slots, where ``window_g`` is
the largest span among the query heads that share it (grouped-query attention is kept) at the
final length ``max_len = prompt + new tokens``. Token ``t`` goes to slot ``t`` while ``t < sinks``
and to ``sinks + (t - sinks) % (cap - sinks)`` afterwards, so memory never grows. Keys are stored
after RoPE, so the order of slots does not matter to attention.

KV heads with the same capacity share one buffer ``(B, n_g, cap, D)`` (a MoA plan has at most two
distinct rules per layer, so a layer has one or two buffers). Decode attention packs the ``G``
query heads of each KV head as ``G`` query rows (``(B, n_g, G, D)``) and runs one SDPA per buffer.

Rows of a left-padded batch keep their own counts (``prefill(..., n_real=)``): each row's sinks are
its first real tokens, pad positions are never stored, and empty slots of a row whose buffer is not
full yet are masked. ``select`` drops finished rows. Imports only torch (the transformers ``Cache``
over it is :mod:`ctxflow.attention.ring`).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


class SparseLayerCache:
    """The static cache of one layer. ``caps`` (H_kv,) slots per KV head."""

    def __init__(self, caps, sinks: int, batch: int, head_dim: int, n_q_heads: int, dtype, device):
        caps = [int(c) for c in caps]
        self.n_kv = len(caps)
        self.group = n_q_heads // self.n_kv
        self.sinks = int(sinks)
        self.length = 0  # tokens seen (the longest row's)
        self.lengths = None  # per-row real tokens when rows differ (left-padded prompts), else None
        self.groups = []  # (kv head index tensor, q head index tensor, cap, K buf, V buf)
        for cap in sorted(set(caps)):
            kv = torch.tensor([g for g, c in enumerate(caps) if c == cap], dtype=torch.long, device=device)
            qh = (kv[:, None] * self.group + torch.arange(self.group, device=device)[None]).reshape(-1)
            shape = (batch, len(kv), cap, head_dim)
            self.groups.append((kv, qh, cap, torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)))  # zeros: a masked empty slot must not hold NaN (0 x NaN)
        self.single = len(self.groups) == 1

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for _, _, _, k, _ in self.groups)

    def _slot_of(self, t: torch.Tensor, cap: int) -> torch.Tensor:
        """The slot of token index ``t`` (any shape) in a buffer of ``cap`` slots."""
        ring = cap - self.sinks
        return torch.where(t < self.sinks, t, self.sinks + (t - self.sinks) % ring) if ring > 0 else t.clamp(max=cap - 1)

    def _slots(self, t0: int, t1: int, cap: int) -> torch.Tensor:
        return self._slot_of(torch.arange(t0, t1), cap)

    def prefill(self, k: torch.Tensor, v: torch.Tensor, n_real=None) -> None:
        """Store a prompt's keys/values (B, H_kv, T, D), keeping per head the sinks and the last
        ``cap - sinks`` tokens. ``n_real`` (B ints): real tokens per row under left padding (the
        sinks are then each row's first real tokens; pad positions are never stored)."""
        T = k.shape[2]
        if n_real is not None and any(int(x) != T for x in n_real):
            self.lengths = [int(x) for x in n_real]  # rows differ: per-row slots from here on
            self._lengths_t = torch.tensor(self.lengths, device=k.device)  # the same on the device (no syncs per step)
            for b, n in enumerate(self.lengths):
                self._store(k[b:b + 1, :, T - n:], v[b:b + 1, :, T - n:], rows=slice(b, b + 1))
            self.length = max(self.lengths)
            return
        self.lengths = None
        self._store(k, v, rows=slice(None))
        self.length = T

    def _store(self, k, v, rows) -> None:
        T = k.shape[2]
        for kv, _, cap, K, V in self.groups:
            kg, vg = (k, v) if self.single else (k[:, kv], v[:, kv])
            if T <= cap:
                K[rows, :, :T], V[rows, :, :T] = kg, vg
            else:
                keep = torch.cat([torch.arange(self.sinks), torch.arange(T - (cap - self.sinks), T)]).to(k.device)
                slots = self._slots(0, T, cap)[keep.cpu()].to(k.device)
                K[rows, :, slots], V[rows, :, slots] = kg[:, :, keep], vg[:, :, keep]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add one token's keys/values (B, H_kv, 1, D)."""
        if self.lengths is not None:  # rows of different lengths: each row's own slot, computed on the device
            rows = torch.arange(k.shape[0], device=k.device)
            t = self._lengths_t
            for kv, _, cap, K, V in self.groups:
                s = self._slot_of(t, cap)
                K[rows, :, s], V[rows, :, s] = (k[:, :, 0], v[:, :, 0]) if self.single else (k[:, kv, 0], v[:, kv, 0])
            self._lengths_t = t + 1
            self.lengths = [x + 1 for x in self.lengths]
            self.length = max(self.lengths)
            return
        t = self.length
        for kv, _, cap, K, V in self.groups:
            s = t if t < cap else int(self._slots(t, t + 1, cap)[0])
            if self.single:
                K[:, :, s], V[:, :, s] = k[:, :, 0], v[:, :, 0]
            else:
                K[:, :, s], V[:, :, s] = k[:, kv, 0], v[:, kv, 0]
        self.length = t + 1

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished sequences leave the batch)."""
        self.groups = [(kv, qh, cap, K[rows], V[rows]) for kv, qh, cap, K, V in self.groups]
        if self.lengths is not None:
            self.lengths = [self.lengths[int(r)] for r in rows.tolist()]
            self._lengths_t = self._lengths_t[rows.to(self._lengths_t.device)]
            self.length = max(self.lengths)

    split_kv = True  # CUDA: buffers of few (row, KV head) pairs on the flash kernel (see attend)

    def attend(self, q: torch.Tensor, scale=None) -> torch.Tensor:
        """Decode attention of one new token: q (B, H, 1, D) -> (B, H, 1, D).

        On CUDA (half precision) a buffer of long rows (≥ 4096 slots) with few (row, KV head) pairs
        (at most a quarter of the GPU's SMs) runs on the flash kernel directly, which splits long key
        ranges over several thread blocks (flash-decoding). PyTorch's default on an H100 is cuDNN,
        which does not: the wide buffer of a 50% plan at batch 8 (16 pairs, 25k slots) took 0.33 ms
        there and 0.09 ms on flash. With more pairs or short rows the two are within a few µs and the
        direct call's overhead decides, so SDPA's own choice stays (bench/results/moa_gpu_notes.md, v6)."""
        B, H, _, D = q.shape
        out = q.new_empty(B, H, 1, D) if not self.single else None
        for kv, qh, cap, K, V in self.groups:
            n = min(self.length, cap)
            qg = (q if self.single else q[:, qh]).reshape(B, len(kv), self.group, D)  # G query rows per KV head
            if self.lengths is not None and min(self.lengths) < n:  # some row's buffer is not full yet: mask its empty slots
                m = torch.arange(n, device=q.device)[None, :] < self._lengths_t.clamp(max=cap)[:, None]
                o = F.scaled_dot_product_attention(qg, K[:, :, :n], V[:, :, :n], attn_mask=m[:, None, None, :], scale=scale)
            elif self.split_kv and n >= 4096 and _flash_ok(q) and 4 * B * len(kv) <= _sm_count(q.device):
                o = _FLASH(qg, K[:, :, :n], V[:, :, :n], scale=scale)[0]
            else:
                o = F.scaled_dot_product_attention(qg, K[:, :, :n], V[:, :, :n], scale=scale)  # (B, n_g, G, D)
            if self.single:
                return o.reshape(B, H, 1, D)
            out[:, qh] = o.reshape(B, len(qh), 1, D)
        return out


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention.default


@lru_cache(maxsize=None)
def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@lru_cache(maxsize=None)
def _capability(device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def _flash_ok(q) -> bool:
    """What SDPA would check before its flash kernel (the direct call skips SDPA's checks and fallback):
    CUDA (not ROCm), half precision, head dim <= 256 and a multiple of 8, sm80+, flash SDPA enabled."""
    return (q.is_cuda and torch.version.hip is None and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0 and _capability(q.device) >= 8
            and torch.backends.cuda.flash_sdp_enabled())


def kv_caps(spans_q: list[int], n_kv: int, sinks: int, max_len: int) -> list[int]:
    """Slots per KV head from the query heads' spans at ``max_len`` (the largest span in each group)."""
    g = len(spans_q) // n_kv
    return [min(max_len, sinks + max(spans_q[i * g:(i + 1) * g])) for i in range(n_kv)]
