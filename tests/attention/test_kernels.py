"""Sparse kernels vs a float64 masked-attention reference on fresh random inputs."""
import math

import pytest
import torch

from ctxflow.attention import cache as cache_m
from ctxflow.attention import flex as flex_m
from ctxflow.attention.kernels import LayerRules, sparse_sdpa


def reference(q, k, v, valid, spans, sinks):
    """float64. q (B,H,Q,D) = the last Q of K positions; valid (B,K) bool (left padding); spans (H,)."""
    B, H, Q, D = q.shape
    K = k.shape[2]
    G = H // k.shape[1]
    kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    out = torch.zeros(B, H, Q, D, dtype=torch.float64)
    for b in range(B):
        pad = int((~valid[b]).sum())
        n = K - pad
        for h in range(H):
            span = max(1, min(n, int(spans[h](n))))
            for t in range(Q):
                i = K - Q + t
                if not valid[b, i]:
                    continue
                js = [j for j in range(pad, i + 1) if (j - pad) < sinks or i - j < span]
                s = (q[b, h, t].double() @ kk[b, h, js].T) / math.sqrt(D)
                out[b, h, t] = torch.softmax(s, -1) @ vv[b, h, js]
    return out


class _Mod:
    pass


@pytest.mark.parametrize("prefill", ["masked", "torch", "sdpa"])  # the (B, H, Q, K) mask or window_flash per real length
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 1e-2)])
def test_sparse_sdpa_matches_float64_reference(dtype, tol, prefill, monkeypatch):
    from ctxflow.attention import window_flash

    calls = []
    real = window_flash.window_prefill
    monkeypatch.setattr(window_flash, "window_prefill", lambda *a, **k: calls.append(a[0].shape[2]) or real(*a, **k))
    torch.manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    B, H, Hkv, K, D, sinks = 4, 6, 2, 40, 16, 3
    lens = [40, 23, 7, 23]  # ragged rows, left padded (two of equal length)
    valid = torch.zeros(B, K, dtype=torch.bool)
    for b, n in enumerate(lens):
        valid[b, K - n:] = True
    alphas = [0, 4, -5, 2, 0, 10]
    betas = [1, 0.1, 0.5, 0.0, 0.25, 0.2]
    m = _Mod()
    m._ctxflow_rules = LayerRules(alphas, betas, sinks, prefill)
    spans = [lambda n, a=a, b=b_: math.floor(a + b * n) for a, b_ in zip(alphas, betas)]
    for Q in (K, 1):  # prefill and a decode step
        q = torch.randn(B, H, Q, D).to(dtype)
        k = torch.randn(B, Hkv, K, D).to(dtype)
        v = torch.randn(B, Hkv, K, D).to(dtype)
        i = torch.arange(K - Q, K)[:, None]
        j = torch.arange(K)[None]
        mask = ((j <= i)[None] & valid[:, None, :] & valid[:, K - Q:, None])[:, None]  # (B,1,Q,K) as transformers builds it
        out, _ = sparse_sdpa(m, q, k, v, mask)  # (B, Q, H, D)
        ref = reference(q, k, v, valid, spans, sinks)
        rows = valid[:, K - Q:]  # only real query rows are defined
        got = out.transpose(1, 2).double()
        err = ((got - ref).permute(0, 2, 1, 3)[rows].norm() / ref.permute(0, 2, 1, 3)[rows].norm()).item()
        assert err < tol, (Q, err)
    # the kernel path ran once per real length of the prefill (never for the decode step)
    assert sorted(calls) == ([] if prefill == "masked" else [7, 23, 40])


def test_flex_block_mask_and_static_cache_match_reference():
    torch.manual_seed(torch.seed() % 2**31)
    H, Hkv, N, D, sinks = 4, 2, 224, 16, 8
    spans = torch.tensor([224, 37, 5, 90])
    i, j = torch.arange(N)[:, None], torch.arange(N)[None]
    dense = (j <= i)[None] & ((j < sinks)[None] | ((i - j)[None] < spans[:, None, None]))  # (H, N, N)
    any_, full = flex_m.block_tables(spans, sinks, N, 32)
    tiles = dense.reshape(H, 7, 32, 7, 32)
    assert torch.equal(any_, tiles.any(4).any(2)) and torch.equal(full, tiles.all(4).all(2) & any_)
    q, k, v = torch.randn(2, H, N, D), torch.randn(2, Hkv, N, D), torch.randn(2, Hkv, N, D)
    valid = torch.ones(2, N, dtype=torch.bool)
    ref = reference(q, k, v, valid, [lambda n, s=int(s): s for s in spans], sinks)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_m.sparse_prefill(q, k, v, spans, sinks, block=128, compiled=False)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3
    # static cache: sinks + ring buffer, decode token by token after a prefill
    caps = cache_m.kv_caps(spans.tolist(), Hkv, sinks, N)
    c = cache_m.SparseLayerCache(caps, sinks, 2, D, H, torch.float32, "cpu")
    c.prefill(k[:, :, :150], v[:, :, :150])
    win = [lambda n, w=caps[h // 2] - sinks: w for h in range(H)]
    ref2 = reference(q, k, v, valid, win, sinks)
    for t in range(150, N):
        c.append(k[:, :, t:t + 1], v[:, :, t:t + 1])
        o = c.attend(q[:, :, t:t + 1])
        assert ((o[:, :, 0].double() - ref2[:, :, t]).norm() / ref2[:, :, t].norm()).item() < 1e-3
    assert c.nbytes() == sum(caps) * 2 * D * 4 * 2  # fixed size: never grows


def test_static_cache_with_left_padded_rows_and_dropped_rows():
    """Rows of different real lengths (left padding): each row's sinks are its first real tokens, pad
    positions are never stored, rows whose buffer is not full yet mask their empty slots, rings wrap per
    row; dropping finished rows keeps the others."""
    torch.manual_seed(torch.seed() % 2**31)
    H, Hkv, N, D, sinks = 4, 2, 120, 16, 4
    spans = torch.tensor([120, 20, 9, 40])
    lens0 = [60, 25, 3]  # real prompt tokens per row; the padded prompt is 60 long
    B, T0 = len(lens0), 60
    q, k, v = torch.randn(B, H, N, D), torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, D)
    valid = torch.ones(B, N, dtype=torch.bool)
    for b, n in enumerate(lens0):
        valid[b, : T0 - n] = False
    caps = cache_m.kv_caps(spans.tolist(), Hkv, sinks, N)
    c = cache_m.SparseLayerCache(caps, sinks, B, D, H, torch.float32, "cpu")
    c.prefill(k[:, :, :T0], v[:, :, :T0], n_real=lens0)
    win = [lambda n, w=caps[h // 2] - sinks: w for h in range(H)]
    ref = reference(q, k, v, valid, win, sinks)  # each query sees its row's real keys only
    rows = list(range(B))
    for t in range(T0, N):
        c.append(k[rows, :, t:t + 1], v[rows, :, t:t + 1])
        o = c.attend(q[rows, :, t:t + 1])
        r = ref[rows, :, t]
        assert ((o[:, :, 0].double() - r).norm() / r.norm()).item() < 1e-3, t
        if t == 80:  # row 0 finishes: keep rows 1 and 2
            rows = [1, 2]
            c.select(torch.tensor([1, 2]))
    assert c.lengths == [25 + N - T0, 3 + N - T0]
