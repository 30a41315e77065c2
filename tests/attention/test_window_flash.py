"""window_flash on the CPU: head runs, and the band + sink-merge decomposition vs a float64 reference.

The GPU band kernels (cuDNN, FlashAttention-2) and the Triton merge are checked on the device by
``bench/moa_gpu.py --parts check``; here the same decomposition runs with the plain-torch band and
merge, and the CPU fallback (masked SDPA per span group) is checked too.
"""
import math

import pytest
import torch

from ctxflow.attention import window_flash as wf


def reference(q, k, v, spans, sinks):
    """float64: query i sees key j iff j <= i and (j < sinks or i - j < span[h])."""
    N = q.shape[2]
    G = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    i, j = torch.arange(N)[:, None], torch.arange(N)[None]
    sp = torch.tensor([max(1, min(N, int(s))) for s in spans])
    m = (j <= i)[None] & ((j < sinks)[None] | ((i - j)[None] < sp[:, None, None]))
    s = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return s.masked_fill(~m, float("-inf")).softmax(-1) @ vv


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("spans,group", [((5, 5, 5, 5, 7, 7, 5, 5, 5, 5, 5, 5), 4), ((3,) * 3 + (9,) * 6 + (3,) * 3, 4),
                                         ((1, 2, 3, 4, 5, 6), 2), ((8,) * 8, 8), ((4, 4, 100, 100), 1)])
def test_head_runs_cover_heads_and_slice_kv(spans, group):
    runs = wf.head_runs(spans, 50, group)
    covered = [h for h0, h1, _ in runs for h in range(h0, h1)]
    assert covered == list(range(len(spans)))
    for h0, h1, s in runs:
        assert {min(50, x) for x in spans[h0:h1]} == {s}
        whole = h0 % group == 0 and (h1 - h0) % group == 0
        assert whole or h0 // group == (h1 - 1) // group  # whole KV groups, or inside one group
        k0, k1 = wf._kv_slice(h0, h1, group)
        assert [h // group - k0 for h in range(h0, h1)] == [(h - h0) // ((h1 - h0) // (k1 - k0)) for h in range(h0, h1)]


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_window_prefill_matches_float64_reference(backend, dtype, tol):
    torch.manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    for B, H, Hkv, N, D, sinks in ((2, 8, 2, 150, 16, 8), (1, 6, 3, 97, 32, 0), (1, 4, 1, 40, 16, 64)):
        spans = torch.randint(1, N + 1, (H,))
        spans[0] = N + 5  # a full (over-long) window
        if H >= 8:
            spans[4:8] = spans[4]  # a whole KV group with one span
        q = torch.randn(B, H, N, D).to(dtype)
        k = torch.randn(B, Hkv, N, D).to(dtype)
        v = torch.randn(B, Hkv, N, D).to(dtype)
        out = wf.window_prefill(q, k, v, spans, sinks, backend=backend)
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert rel(out, reference(q, k, v, spans, sinks)) < tol


def test_window_prefill_right_padded_batch_and_auto_backend():
    torch.manual_seed(torch.seed() % 2**31)
    H, Hkv, N, D, sinks, L = 4, 2, 120, 16, 6, 70
    spans = [120, 9, 33, 50]
    q, k, v = torch.randn(2, H, N, D), torch.randn(2, Hkv, N, D), torch.randn(2, Hkv, N, D)
    for t in (q, k, v):  # row 1 is padded after L tokens: loud padding must not leak into real rows
        t[1, :, L:] = 30 * torch.randn_like(t[1, :, L:])
    assert wf.pick_backend(q) == "sdpa"
    out = wf.window_prefill(q, k, v, spans, sinks)
    ref = reference(q[1:, :, :L], k[1:, :, :L], v[1:, :, :L], spans, sinks)
    assert rel(out[1:, :, :L], ref) < 1e-4
    out2 = wf.window_prefill(q, k, v, spans, sinks, backend="torch", merge="torch")
    assert rel(out2[1:, :, :L], ref) < 1e-4


@pytest.mark.parametrize("backend", ["fa4sparse", "fa4", "cudnn", "flash"])
def test_gpu_backends_refuse_clearly_where_they_cannot_run(backend):
    q, k, v = torch.randn(1, 4, 16, 16), torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    with pytest.raises(RuntimeError, match=rf"backend '{backend}' cannot run here: it needs .*'sdpa'"):
        wf.window_prefill(q, k, v, [4, 4, 8, 8], 2, backend=backend)
    with pytest.raises(ValueError, match="unknown window_prefill backend 'fa5'; valid: 'auto', 'cudnn'"):
        wf.window_prefill(q, k, v, [4, 4, 8, 8], 2, backend="fa5")


def test_block_sparse_tables_list_exactly_the_blocks_the_mask_touches():
    """The (count, index) tables FA4's block-sparse kernel iterates (the one-launch path): per query
    block the listed partial blocks and the listed full blocks are disjoint and together are every
    key block the window-plus-sinks mask touches; full ones lie wholly inside it."""
    from ctxflow.attention import flex

    N, blk, sinks = 200, 32, 8
    spans = torch.tensor([200, 5, 40, 77, 33, 1])
    i, j = torch.arange(N)[:, None], torch.arange(N)[None]
    dense = (j <= i)[None] & ((j < sinks)[None] | ((i - j)[None] < spans[:, None, None]))
    pad = -N % blk
    tiles = torch.nn.functional.pad(dense, (0, pad, 0, pad)).reshape(len(spans), 7, blk, 7, blk)
    any_, full = flex.block_tables(spans, sinks, N, blk)
    for B in (1, 3):
        listed = []
        for sel in (any_ & ~full, full):
            cnt, idx = flex.pack_blocks(sel, B)
            assert cnt.shape == (B, len(spans), 7) and idx.shape == (B, len(spans), 7, 7)
            got = torch.zeros(B, len(spans), 7, 7, dtype=torch.bool)
            for b, h, m in torch.cartesian_prod(torch.arange(B), torch.arange(len(spans)), torch.arange(7)).tolist():
                got[b, h, m, idx[b, h, m, : cnt[b, h, m]].long()] = True
            listed.append(got)
        partial, whole = listed
        assert not (partial & whole).any()
        assert torch.equal(partial | whole, tiles.any(4).any(2).expand(B, -1, -1, -1))
        real = torch.nn.functional.pad(torch.ones(N, N, dtype=torch.bool), (0, pad, 0, pad)).reshape(7, blk, 7, blk)
        inside = (tiles | ~real).all(4).all(2)  # every real pair of the tile visible
        assert not (whole & ~inside).any()
