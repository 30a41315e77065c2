"""MoA on the GPU, side by side with dense attention, in one run (see bench/results/moa_gpu_notes.md).

    python bench/moa_gpu.py [--parts check,prefill,decode,e2e,model,padded,ringgen] [--small]  (writes $OUT/moa_gpu.json)

Shapes are Llama-3-8B's (32 layers, 32 query heads, 8 KV heads, head dim 128, bf16); the weights
are random (timing only). The MoA plans are synthetic but shaped like searched ones: per layer two
rules (a near window for most KV groups, a 4x wider one for a quarter of them, rotating by layer),
scaled so the mean density (share of the causal mask computed) is 50% or 25%. All query heads of a
KV group share its rule, so the static cache keeps GQA.

Imports only torch/transformers and ctxflow/attention/{rules,flex,cache,window_flash}.py by path
(the GPU machine has no pydantic, which ``import ctxflow`` would need). The prefill part times
dense SDPA, FlexAttention and window_flash's backends: FA2 (built into torch) always, cuDNN when the
optional ``cudnn`` frontend (pip ``nvidia-cudnn-frontend``) imports, FlashAttention-4 (``fa4``: band +
sink merge; ``fa4sparse``: one block-sparse launch) when ``flash-attn-4`` imports, and ``auto`` (what
``window_prefill`` picks by itself) when ``--backends`` names it. The device has neither package and
no network: ``bench/fa4_wheels.sh`` downloads the wheels here and unpacks them there (two calls).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"moa_{name}", ROOT / "ctxflow" / "attention" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rules_m, flex_m, cache_m, wf_m = _load("rules"), _load("flex"), _load("cache"), _load("window_flash")
L, H, HKV, D, HIDDEN = 32, 32, 8, 128, 4096
SINKS = 64
RES: dict = {}
WINDOW_BACKENDS: set = set()  # --backends: restrict the window_flash backends timed (empty: all that load)


def synthetic_spans(density: float, n: int, layer: int, n_kv: int = HKV, wide: float = 4.0) -> list[int]:
    """Per query head spans at length n: near span s for 3/4 of KV groups, min(n, wide*s) for 1/4."""
    n_far = max(1, n_kv // 4)

    def spans_for(s):
        far = {(layer * n_far + i) % n_kv for i in range(n_far)}
        per_kv = [min(n, int(wide * s)) if g in far else s for g in range(n_kv)]
        return [per_kv[h // (H // n_kv)] for h in range(H)]

    lo, hi = 1, n
    while lo < hi:  # largest near span within the budget
        mid = (lo + hi + 1) // 2
        dens = sum(rules_m.band_density(s, n, SINKS) for s in spans_for(mid)) / H
        lo, hi = (mid, hi) if dens <= density else (lo, mid - 1)
    return spans_for(lo)


def mean_density(spans, n):
    return sum(rules_m.band_density(s, n, SINKS) for s in spans) / len(spans)


def bench(fn, warm=5, rep=20):
    if not torch.cuda.is_available():  # CPU smoke test: a few plain runs
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warm, rep=rep, return_mode="median"))  # ms (warm, rep: ms of runs)


def poison():
    """Fill the caching allocator's free memory with NaN so that unwritten outputs show up."""
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0]
        x = torch.full((int(free * 0.5) // 4,), float("nan"), device="cuda")
        del x


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_reset():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def ref_attention(q, k, v, spans, sinks):
    """float64 masked attention. q (B,H,N,D), k/v (B,Hkv,N,D)."""
    N = q.shape[2]
    G = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    i = torch.arange(N, device=q.device)[:, None]
    j = torch.arange(N, device=q.device)[None]
    m = (j <= i)[None] & ((j < sinks)[None] | ((i - j)[None] < spans[:, None, None]))
    s = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return s.masked_fill(~m, float("-inf")).softmax(-1) @ vv


# ---------------------------------------------------------------- correctness
def part_check(dev, small):
    out = {}
    N = 512 if small else 2048
    h, hkv, d = (4, 2, 32) if small else (H, HKV, D)
    for dt, tol in ((torch.float32, 1e-3), (torch.bfloat16, 1e-2)):
        torch.manual_seed(int(time.time()) % 10000)  # fresh inputs every run
        spans = torch.randint(1, N + 1, (h,), device=dev)
        spans[0] = N
        q = torch.randn(2, h, N, d, device=dev, dtype=dt)
        k = torch.randn(2, hkv, N, d, device=dev, dtype=dt)
        v = torch.randn(2, hkv, N, d, device=dev, dtype=dt)
        o = flex_m.sparse_prefill(q, k, v, spans, SINKS, compiled=dev == "cuda")
        e = rel(o, ref_attention(q, k, v, spans, SINKS))
        out[f"flex_prefill_{str(dt)[6:]}_rel_err"] = e
        out[f"flex_prefill_{str(dt)[6:]}_ok"] = e < tol
        # static cache decode vs reference with the cache's fixed window
        caps = cache_m.kv_caps(spans.tolist(), hkv, SINKS, N)
        c = cache_m.SparseLayerCache(caps, SINKS, 2, d, h, dt, dev)
        T0 = N // 2
        c.prefill(k[:, :, :T0], v[:, :, :T0])
        worst = 0.0
        win = torch.tensor([caps[x // (h // hkv)] - SINKS for x in range(h)], device=dev).clamp(min=1)
        for t in range(T0, N, max(1, (N - T0) // 16)):
            while c.length <= t:
                c.append(k[:, :, c.length:c.length + 1], v[:, :, c.length:c.length + 1])
            od = c.attend(q[:, :, t:t + 1])
            r = ref_attention(q[:, :, :t + 1], k[:, :, :t + 1], v[:, :, :t + 1], win, SINKS)[:, :, -1:]
            worst = max(worst, rel(od, r))
        out[f"cache_decode_{str(dt)[6:]}_rel_err"] = worst
        out[f"cache_decode_{str(dt)[6:]}_ok"] = worst < tol
    out.update(check_window(dev, small))
    print("check:", json.dumps(out))
    return out


def window_backends(dev):
    """Band backends of window_flash that can run here (cuDNN needs nvidia-cudnn-frontend)."""
    if dev != "cuda":
        return ["torch", "sdpa"]
    probe = torch.empty(1, 1, 1, 128, device=dev, dtype=torch.bfloat16)
    fa4 = wf_m.fa4_available(probe)
    found = [b for b, ok in (("cudnn", wf_m.cudnn_available(probe)), ("flash", wf_m.flash_available(probe)),
                             ("fa4", fa4), ("fa4sparse", fa4)) if ok] + ["flex"]
    found += ["auto"]  # what window_prefill picks by itself (pick_backend), timed as its own row
    return [b for b in found if (not WINDOW_BACKENDS and b != "auto") or b in WINDOW_BACKENDS]


def check_window(dev, small):
    """window_flash.window_prefill vs the float64 reference: fresh inputs, B=2, GQA, per-KV-group
    spans with two heads perturbed (runs that split a KV group), one full-window group, sinks; then a
    right-padded ragged batch (row 1 shorter: its real rows must equal the reference of the
    truncated sequence)."""
    out = {}
    N = 512 if small else 2048
    h, hkv, d = (8, 2, 32) if small else (H, HKV, D)
    G = h // hkv
    for be in window_backends(dev):
        try:
            out.update(check_window_backend(dev, be, N, h, hkv, d, G))
        except Exception as exc:  # report, keep the other backends' results
            print(f"window check {be} failed: {type(exc).__name__}: {str(exc)[:500]}")
            out[f"window_{be}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def check_window_backend(dev, be, N, h, hkv, d, G):
    """One band backend: fp32 and bf16 (the cuDNN and FA2 bands take half precision only)."""
    out = {}
    for dt, tol in ((torch.float32, 1e-3), (torch.bfloat16, 1e-2)):
        tag = f"window_{be}_prefill_{str(dt)[6:]}"
        if be in ("cudnn", "flash", "fa4", "fa4sparse") and dt == torch.float32:
            out[tag] = "unsupported: the band kernel takes fp16/bf16 only (window_prefill falls back to flex there)"
            continue
        torch.manual_seed(int(time.time() * 1000) % 100000)  # fresh inputs every run
        per_kv = torch.randint(1, N + 1, (hkv,))
        per_kv[0] = N
        spans = per_kv.repeat_interleave(G)
        spans[G + 1] = max(1, int(spans[G + 1]) // 3)  # a head with its own span inside a KV group
        spans[-1] = int(torch.randint(1, N + 1, ()))
        q = torch.randn(2, h, N, d, device=dev, dtype=dt)
        k = torch.randn(2, hkv, N, d, device=dev, dtype=dt)
        v = torch.randn(2, hkv, N, d, device=dev, dtype=dt)
        poison()
        o = wf_m.window_prefill(q, k, v, spans.tolist(), SINKS, backend=be)
        sync()
        r = ref_attention(q, k, v, spans.to(dev), SINKS)
        e = rel(o, r) if bool(torch.isfinite(o).all()) else float("nan")
        out[f"{tag}_rel_err"] = e
        out[f"{tag}_ok"] = e < tol
        # ragged: right-padded batch, row 1 has L real tokens (the rest is padding)
        Lr = N - N // 3 - 5
        for t in (q, k, v):  # loud padding: any leak into real rows would show
            t[1, :, Lr:] = 30 * torch.randn_like(t[1, :, Lr:])
        poison()
        o = wf_m.window_prefill(q, k, v, spans.tolist(), SINKS, backend=be)
        r1 = ref_attention(q[1:, :, :Lr], k[1:, :, :Lr], v[1:, :, :Lr], spans.clamp(max=Lr).to(dev), SINKS)
        e1 = rel(o[1:, :, :Lr], r1) if bool(torch.isfinite(o[1:, :, :Lr]).all()) else float("nan")
        out[f"{tag}_ragged_rel_err"] = e1
        out[f"{tag}_ragged_ok"] = e1 < tol
        del q, k, v, o, r, r1
        peak_reset()
    return out


# ---------------------------------------------------------------- prefill
def dense_sdpa(q, k, v, only=None):
    """Dense causal SDPA, flash or cuDNN (PyTorch picks; on an H100 with torch 2.11 it picks cuDNN),
    or the one backend ``only`` names (then errors propagate)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if only:
        with sdpa_kernel([getattr(SDPBackend, only)]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    except RuntimeError:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def part_prefill(dev, small, lengths, variants):
    rows = []
    for N in lengths:
        torch.manual_seed(N)
        q = torch.randn(1, H, N, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, N, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HKV, N, D, device=dev, dtype=torch.bfloat16)
        kx, vx = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)  # dense gets expanded K/V (flash path)
        wb = dict(warm=25, rep=max(200, N // 64))  # >= ~4 timed runs even at 64k
        row = {"N": N, "auto_backend": wf_m.pick_backend(q), "dense_sdpa_ms": bench(lambda: dense_sdpa(q, kx, vx), **wb)}
        dense_runs = [row["dense_sdpa_ms"]]
        if dev == "cuda":  # which dense kernel that is: each SDPA backend alone
            for name, be in (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
                try:
                    row[f"dense_sdpa_{name}_only_ms"] = bench(lambda: dense_sdpa(q, kx, vx, only=be), **wb)
                except RuntimeError as exc:
                    print(f"dense {name} failed: {str(exc)[:200]}")
        row["flex_causal_ms"] = bench(lambda: flex_m.sparse_prefill(q, k, v, [N] * H, 0), **wb)
        wbs = window_backends(dev)
        for be in wbs:
            if be != "flex":
                row[f"window_{be}_causal_ms"] = bench(lambda: wf_m.window_prefill(q, k, v, [N] * H, 0, backend=be), **wb)
        for dens in (0.5, 0.25):
            spans = [max(s, 1) for s in synthetic_spans(dens, N, layer=0)]
            t0 = time.perf_counter()
            flex_m.cached_block_mask(tuple(spans), SINKS, N, 128, str(q.device))
            sync()
            row[f"blockmask_build_ms_{int(dens*100)}"] = (time.perf_counter() - t0) * 1e3
            row[f"density_{int(dens*100)}"] = mean_density(spans, N)
            best = None
            cands = {}
            for name, opts in variants.items():
                try:
                    ms = bench(lambda: flex_m.sparse_prefill(q, k, v, spans, SINKS, kernel_options=opts), **wb)
                except Exception as exc:  # a variant the compiler rejects
                    print(f"variant {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                row[f"moa{int(dens*100)}_{name}_ms"] = ms
                cands[f"flex_{name}"] = ms
                best = ms if best is None else min(best, ms)
            dp = int(dens * 100)
            row[f"moa{dp}_ms"] = best  # best FlexAttention variant
            for be in wbs:
                if be == "flex":
                    continue
                try:
                    ms = bench(lambda: wf_m.window_prefill(q, k, v, spans, SINKS, backend=be), **wb)
                    row[f"window_{be}{dp}_ms"] = ms
                    cands[f"window_{be}"] = ms
                    row[f"window_{be}{dp}_band_only_ms"] = bench(lambda: wf_m.window_prefill(q, k, v, spans, 0, backend=be), **wb)
                except Exception as exc:  # report, keep the other kernels' numbers
                    print(f"window {be} failed: {type(exc).__name__}: {str(exc)[:300]}")
            row[f"runs_{dp}"] = len(wf_m.head_runs(tuple(spans), N, H // HKV))
            kbest = min(cands, key=cands.get)
            row[f"best{dp}_kernel"], row[f"best{dp}_ms"] = kbest, cands[kbest]
            row[f"_cands{dp}"] = cands
            dense_runs.append(bench(lambda: dense_sdpa(q, kx, vx), **wb))  # the same dense kernel again (drift)
        # speedups against the mean of the dense runs spread over the row (clocks drift by a few %)
        row["dense_sdpa_runs_ms"] = dense_runs
        row["dense_sdpa_mean_ms"] = dm = sum(dense_runs) / len(dense_runs)
        for dp in (50, 25):
            cands = row.pop(f"_cands{dp}")
            row[f"speedup_{dp}_vs_sdpa"] = dm / row[f"best{dp}_ms"]
            for name, ms in cands.items():
                row[f"speedup_{dp}_{name}_vs_sdpa"] = dm / ms
        print("prefill:", json.dumps(row))
        rows.append(row)
        del q, k, v, kx, vx
        peak_reset()
    return rows


# ---------------------------------------------------------------- whole-model prefill through transformers
def _kernels_module():
    """ctxflow.attention.kernels as a package module (it imports .rules/.window_flash relatively) without
    running ctxflow/__init__ (which needs pydantic, absent on the GPU machine)."""
    import types

    if "ctxflow" not in sys.modules:
        pkg = types.ModuleType("ctxflow")
        pkg.__path__ = [str(ROOT / "ctxflow")]
        sys.modules["ctxflow"] = pkg
    import ctxflow.attention.kernels as kernels

    return kernels


def _attach(model, kernels, spans_per_layer, prefill):
    """Fixed-span rules (alpha = span, beta = 0) on every layer, then the sparse backend."""
    for m in kernels.attention_modules(model):
        sp = spans_per_layer[m.layer_idx]
        m._ctxflow_rules = kernels.LayerRules([float(x) for x in sp], [0.0] * len(sp), SINKS, prefill)
    model.set_attn_implementation(kernels.register())


def part_model(dev, small, N):
    """LlamaForCausalLM (random weights, Llama-3-8B shapes) through transformers with ctxflow's attention
    backend: (1) the kernel prefill path ("auto": window_flash) vs the masked-SDPA path, logits, 4 layers,
    4k tokens, bf16 and fp32; (2) whole-model prefill time at N tokens (32 layers, bf16, batch 1):
    dense SDPA vs MoA 50% / 25% on the kernel path (the masked path would need a 32 x N x N mask)."""
    from transformers import LlamaForCausalLM

    kernels = _kernels_module()
    import ctxflow.attention.window_flash as wfk

    probe = torch.empty(1, 1, 1, D, device=dev, dtype=torch.bfloat16)
    res = {"auto_backend_bf16": wfk.pick_backend(probe) if dev == "cuda" else "masked (CPU)"}
    cfg = llama_config(small)
    n_chk = 512 if small else 4096
    cfg_c = llama_config(small)
    cfg_c.num_hidden_layers = 2 if small else 4
    for dt in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        torch.set_default_dtype(dt)
        with torch.device(dev):
            m = LlamaForCausalLM(cfg_c).eval()
        torch.set_default_dtype(torch.float32)
        x = torch.randint(0, cfg_c.vocab_size, (2, n_chk), device=dev)
        spans = [synthetic_spans(0.25, n_chk, layer=i) for i in range(cfg_c.num_hidden_layers)]
        am = torch.ones_like(x)
        am[1, : n_chk // 3] = 0  # a left-padded batch (row 1: 2/3 real tokens)
        with torch.inference_mode():
            _attach(m, kernels, spans, "masked")
            ref = m(input_ids=x).logits.float()
            ref_pad = m(input_ids=x, attention_mask=am).logits.float()
            _attach(m, kernels, spans, "auto")
            got = m(input_ids=x).logits.float()
            got_pad = m(input_ids=x, attention_mask=am).logits.float()
        tag = str(dt)[6:]
        res[f"kernel_vs_masked_logits_rel_err_{tag}"] = rel(got, ref)
        res[f"kernel_vs_masked_logits_rel_err_padded_{tag}"] = rel(got_pad[am.bool()], ref_pad[am.bool()])
        print(f"model check {tag}: kernel path vs masked logits rel err {res[f'kernel_vs_masked_logits_rel_err_{tag}']:.2e}, "
              f"left-padded batch (real positions) {res[f'kernel_vs_masked_logits_rel_err_padded_{tag}']:.2e}")
        del m, ref, got, ref_pad, got_pad
        peak_reset()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    x = torch.randint(0, cfg.vocab_size, (1, N), device=dev)

    def timed():
        with torch.inference_mode():
            model.model(input_ids=x)  # warm-up (FA4 / block tables compile and cache on first use)
            sync()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                model.model(input_ids=x)
                sync()
                ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[1]

    model.set_attn_implementation("sdpa")
    res["N"] = N
    res["dense_sdpa_ms"] = [timed()]
    for dens in (0.5, 0.25):
        spans = [synthetic_spans(dens, N, layer=i) for i in range(cfg.num_hidden_layers)]
        _attach(model, kernels, spans, "auto")
        res[f"moa{int(dens * 100)}_ms"] = timed()
        model.set_attn_implementation("sdpa")
        res["dense_sdpa_ms"].append(timed())
    dm = sum(res["dense_sdpa_ms"]) / len(res["dense_sdpa_ms"])
    for dp in (50, 25):
        res[f"speedup_{dp}"] = dm / res[f"moa{dp}_ms"]
    print("model prefill:", json.dumps(res))
    del model
    peak_reset()
    return res


def part_padded(dev, small, lengths):
    """A left-padded batch (what batched generation builds: 4 rows of N, ~3N/4, ~N/2, ~N/4 real tokens)
    through ``kernels.sparse_sdpa``, one attention layer of the 8B shape, bf16: the kernel prefill path
    (window_flash once per group of rows of equal real length) vs the masked path ((B, H, N, N) mask)
    and dense SDPA as transformers runs a padded batch ((B, 1, N, N) mask), plus dense causal SDPA per row
    over its real tokens (a dense implementation that unpads). Time and peak memory; real positions
    of the kernel path vs the masked path where that fits."""
    kernels = _kernels_module()
    total = torch.cuda.get_device_properties(0).total_memory if dev == "cuda" else 8 * 2**30
    rows = []

    class _Mod:
        pass

    for N in lengths:
        torch.manual_seed(N)
        B = 4
        real = [N, 3 * N // 4 - 37, N // 2 - 5, N // 4 + 11]
        q = torch.randn(B, H, N, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
        valid = torch.arange(N, device=dev)[None, :] >= torch.tensor([N - n for n in real], device=dev)[:, None]  # (B, N)
        i = torch.arange(N, device=dev)
        mask = ((i[None, :] <= i[:, None])[None] & valid[:, None, :] & valid[:, :, None])[:, None]  # (B, 1, N, N)
        row = {"N": N, "B": B, "real_lengths": real, "real_tokens": sum(real)}
        wb = dict(warm=10, rep=max(100, N // 64))

        def dense_hf():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        def dense_rows():
            for b, n in enumerate(real):
                kb, vb = k[b:b + 1, :, N - n:].repeat_interleave(H // HKV, 1), v[b:b + 1, :, N - n:].repeat_interleave(H // HKV, 1)
                dense_sdpa(q[b:b + 1, :, N - n:], kb, vb)

        for name, fn in (("dense_padded_mask", dense_hf), ("dense_per_row", dense_rows)):
            peak_reset()
            base = torch.cuda.memory_allocated() / 2**30 if dev == "cuda" else 0.0
            row[f"{name}_ms"] = bench(fn, **wb)
            row[f"{name}_peak_extra_gb"] = peak_gb() - base
        outs = {}
        for dens in (0.5, 0.25):
            dp = int(dens * 100)
            spans = [max(s, 1) for s in synthetic_spans(dens, N, layer=0)]
            for path in ("auto", "masked"):
                m = _Mod()
                m._ctxflow_rules = kernels.LayerRules([float(x) for x in spans], [0.0] * H, SINKS, path)
                need = B * H * N * N  # bytes of the (B, H, N, N) bool mask
                if path == "masked" and need > 0.4 * total:
                    row[f"moa{dp}_{path}_ms"] = None
                    row[f"moa{dp}_{path}_note"] = f"does not fit: the (B, H, N, N) mask alone is {need / 2**30:.0f} GiB"
                    continue
                peak_reset()
                base = torch.cuda.memory_allocated() / 2**30 if dev == "cuda" else 0.0
                try:
                    row[f"moa{dp}_{path}_ms"] = bench(lambda: kernels.sparse_sdpa(m, q, k, v, mask), **wb)
                    row[f"moa{dp}_{path}_peak_extra_gb"] = peak_gb() - base
                    if N <= 16384:
                        outs[path] = kernels.sparse_sdpa(m, q, k, v, mask)[0]  # (B, N, H, D)
                except torch.cuda.OutOfMemoryError:
                    row[f"moa{dp}_{path}_ms"] = None
                    row[f"moa{dp}_{path}_note"] = "out of memory"
            if dev == "cuda":  # the kernels alone, one call per row over its real tokens (no mask, no output buffer)
                def rows_only():
                    for b, n in enumerate(real):
                        wf_m.window_prefill(q[b:b + 1, :, N - n:], k[b:b + 1, :, N - n:], v[b:b + 1, :, N - n:],
                                            [max(1, min(n, s)) for s in spans], SINKS)
                row[f"moa{dp}_rows_kernel_only_ms"] = bench(rows_only, **wb)
            if len(outs) == 2:
                sel = valid  # (B, N) real query positions
                row[f"moa{dp}_kernel_vs_masked_rel_err"] = rel(outs["auto"][sel].float(), outs["masked"][sel].float())
            outs.clear()
            for ref in ("dense_padded_mask", "dense_per_row"):
                if row.get(f"moa{dp}_auto_ms"):
                    row[f"speedup_{dp}_vs_{ref}"] = row[f"{ref}_ms"] / row[f"moa{dp}_auto_ms"]
            if row.get(f"moa{dp}_masked_ms"):
                row[f"speedup_{dp}_vs_masked_path"] = row[f"moa{dp}_masked_ms"] / row[f"moa{dp}_auto_ms"]
        print("padded:", json.dumps(row))
        rows.append(row)
        del q, k, v, mask
        peak_reset()
    return rows


def part_ringgen(dev, small, P, steps, B=8):
    """LocalLM's generation paths through transformers' forward with ctxflow's backend (8B shape, bf16,
    random weights, a left-padded batch of B rows of P, ¾P, ½P, ¼P real tokens, greedy): the default
    cache (transformers' DynamicCache, every token kept, each decode step masked to the windows) vs
    ``cache: ring`` (ctxflow.attention.ring). Prefill time, decode ms/step, peak memory, cache bytes, and
    how far the two agree (the synthetic spans give every query head of a KV group the same constant
    window, so both caches compute the same function)."""
    from contextlib import nullcontext

    from transformers import DynamicCache, LlamaForCausalLM

    kernels = _kernels_module()
    import ctxflow.attention.ring as ring_m

    def decode_logits(model, inp, mask, pos, pkv, tokens):
        """Prefill, then feed ``tokens`` (B, S) one step at a time; the logits of every step."""
        out = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=pkv, use_cache=True, logits_to_keep=1)
        logits, m, last = [out.logits[:, -1].float()], mask, pos[:, -1]
        for s in range(tokens.shape[1]):
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
            last = last + 1
            out = model(input_ids=tokens[:, s:s + 1], attention_mask=m, position_ids=last[:, None], past_key_values=pkv,
                        use_cache=True, logits_to_keep=1)
            logits.append(out.logits[:, -1].float())
        return torch.stack(logits, 1)

    res = {}
    # same function: fp32, 4 layers, a left-padded batch, the same 24 tokens fed to both caches (windows wrap)
    cfg_c = llama_config(small)
    cfg_c.num_hidden_layers = 2 if small else 4
    torch.manual_seed(1)
    with torch.device(dev):
        mc = LlamaForCausalLM(cfg_c).eval()
    Pc, Sc = (256, 8) if small else (1024, 24)
    lc = [Pc, 700 * Pc // 1024, 300 * Pc // 1024]
    xc = torch.randint(0, cfg_c.vocab_size, (3, Pc), device=dev)
    mkc = (torch.arange(Pc, device=dev)[None, :] >= torch.tensor([Pc - n for n in lc], device=dev)[:, None]).long()
    pc = (mkc.cumsum(-1) - 1).clamp(min=0)
    feed = torch.randint(0, cfg_c.vocab_size, (3, Sc), device=dev)
    _attach(mc, kernels, [[min(s, 96) for s in synthetic_spans(0.25, Pc + Sc, layer=i)] for i in range(cfg_c.num_hidden_layers)], "auto")
    with torch.inference_mode():
        ld = decode_logits(mc, xc, mkc, pc, DynamicCache(config=cfg_c), feed)
        rc = ring_m.ring_cache(mc, lc, max(lc) + Sc)
        with ring_m.attached(mc, rc):
            lr = decode_logits(mc, xc, mkc, pc, rc, feed)
    res["fp32_ring_vs_dynamic_logits_rel_err_max_step"] = max(rel(lr[:, i], ld[:, i]) for i in range(Sc + 1))
    res["fp32_check"] = {"layers": cfg_c.num_hidden_layers, "real_lengths": lc, "steps": Sc, "window_cap": 96}
    print("ring vs dynamic, fp32, every step:", res["fp32_ring_vs_dynamic_logits_rel_err_max_step"])
    del mc, ld, lr, rc

    cfg, model = random_llama(dev, small)
    nl = cfg.num_hidden_layers
    lens = [[P, 3 * P // 4, P // 2, P // 4][b % 4] for b in range(B)]
    inp = torch.randint(0, cfg.vocab_size, (B, P), device=dev)
    mask = torch.zeros(B, P, dtype=torch.long, device=dev)
    for b, n in enumerate(lens):
        mask[b, P - n:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    res.update({"B": B, "prompt_padded": P, "real_lengths": lens, "steps": steps})
    for dens in (0.5, 0.25):
        dp = int(dens * 100)
        spans = [synthetic_spans(dens, P + steps, layer=i) for i in range(nl)]
        _attach(model, kernels, spans, "auto")
        toks, first = {}, {}
        # warm-ups: kernels compile and cache first; then each cache is timed twice, alternating (the first
        # dynamic run grows the allocator's pool), and both timings are kept
        for name in ("warm-up dynamic", "warm-up ring", "dynamic", "ring", "dynamic", "ring"):
            nsteps = 4 if name.startswith("warm-up") else steps
            peak_reset()
            base = torch.cuda.memory_allocated() / 2**30 if dev == "cuda" else 0.0
            with torch.inference_mode():
                ring = name.endswith("ring")
                pkv = ring_m.ring_cache(model, lens, max(lens) + steps) if ring else DynamicCache(config=cfg)
                with ring_m.attached(model, pkv) if ring else nullcontext():
                    sync()
                    t0 = time.perf_counter()
                    out = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=pkv, use_cache=True, logits_to_keep=1)
                    sync()
                    t1 = time.perf_counter()
                    m, last, got = mask, pos[:, -1], []
                    for s in range(nsteps):
                        nxt = out.logits[:, -1].argmax(-1)
                        got.append(nxt)
                        m = torch.cat([m, torch.ones(B, 1, dtype=m.dtype, device=dev)], 1)
                        last = last + 1
                        out = model(input_ids=nxt[:, None], attention_mask=m, position_ids=last[:, None], past_key_values=pkv,
                                    use_cache=True, logits_to_keep=1)
                        if s == 0:
                            first[name] = out.logits[:, -1].float()
                    sync()
                    t2 = time.perf_counter()
                if name.startswith("warm-up"):
                    del pkv, out
                    continue
                if name == "ring":
                    cache_bytes = sum(layer.nbytes() for layer in pkv.layers)
                else:
                    cache_bytes = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in pkv.layers)
                toks[name] = torch.stack(got, 1)
                run = {"prefill_ms": (t1 - t0) * 1e3, "decode_ms_per_step": (t2 - t1) / steps * 1e3,
                       "peak_extra_gb": peak_gb() - base, "cache_gb": cache_bytes / 2**30}
                if f"moa{dp}_{name}" in res:  # the second timing is the one reported; the first is kept beside it
                    run["first_run"] = res[f"moa{dp}_{name}"]
                res[f"moa{dp}_{name}"] = run
                del pkv, out
        res[f"moa{dp}_first_step_logits_rel_err"] = rel(first["ring"], first["dynamic"])
        res[f"moa{dp}_greedy_token_agreement"] = float((toks["ring"] == toks["dynamic"]).float().mean())
        r, d = res[f"moa{dp}_ring"], res[f"moa{dp}_dynamic"]
        res[f"moa{dp}_decode_speedup"] = d["decode_ms_per_step"] / r["decode_ms_per_step"]
        print(f"ringgen {dp}%:", json.dumps({k: v for k, v in res.items() if k.startswith(f"moa{dp}")}))
    del model
    peak_reset()
    return res


# ---------------------------------------------------------------- decode attention step
def part_decode(dev, small, N, B):
    torch.manual_seed(1)
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.bfloat16)
    K = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
    V = torch.randn(B, HKV, N, D, device=dev, dtype=torch.bfloat16)
    G = H // HKV
    wb = dict(warm=25, rep=300)  # a step of ~0.1-0.4 ms near the launch floor: many runs (the median of ~1-3k)
    row = {"N": N, "B": B, "dense_ms": bench(lambda: F.scaled_dot_product_attention(q.reshape(B, HKV, G, D), K, V), **wb)}
    for dens in (0.5, 0.25):
        spans = synthetic_spans(dens, N, layer=0)
        caps = cache_m.kv_caps(spans, HKV, SINKS, N)
        c = cache_m.SparseLayerCache(caps, SINKS, B, D, H, torch.bfloat16, dev)
        c.prefill(K, V)
        row[f"kv_fraction_{int(dens*100)}"] = sum(caps) / (HKV * N)
        row[f"moa{int(dens*100)}_ms"] = bench(lambda: c.attend(q), **wb)
        row[f"speedup_{int(dens*100)}"] = row["dense_ms"] / row[f"moa{int(dens*100)}_ms"]
        fast = c.attend(q)
        c.split_kv = False  # the same cache on SDPA's default kernel choice (before v6)
        row[f"moa{int(dens*100)}_sdpa_default_ms"] = bench(lambda: c.attend(q), **wb)
        row[f"moa{int(dens*100)}_split_kv_vs_default_rel_err"] = rel(fast, c.attend(q))  # the default path is checked vs float64 in --parts check
        c.split_kv = True
        if dev == "cuda":  # which SDPA kernel each call gets, and what each costs alone
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for be in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
                try:
                    with sdpa_kernel([getattr(SDPBackend, be)]):
                        if dens == 0.5:
                            row[f"dense_{be}_ms"] = bench(lambda: F.scaled_dot_product_attention(q.reshape(B, HKV, G, D), K, V), **wb)
                        for gi, (kv, qh, cap, Kb, Vb) in enumerate(c.groups):
                            qg = q[:, qh].reshape(B, len(kv), G, D)
                            row[f"moa{int(dens*100)}_{be}_group{gi}_sdpa_only_ms"] = bench(lambda: F.scaled_dot_product_attention(qg, Kb, Vb))
                            row[f"moa{int(dens*100)}_group{gi}_shape"] = [B, len(kv), cap]
                except RuntimeError as exc:
                    print(f"decode {be}: {str(exc)[:120]}")
        del c
    dense_all = [v for k, v in row.items() if k.startswith("dense_") and k.endswith("_ms")]
    row["dense_best_ms"] = min(dense_all)  # the fastest dense kernel, whichever SDPA backend
    for dp in (50, 25):
        row[f"speedup_{dp}_vs_dense_best"] = row["dense_best_ms"] / row[f"moa{dp}_ms"]
    print("decode:", json.dumps(row))
    return row


# ---------------------------------------------------------------- end-to-end decode
def llama_config(small):
    from transformers import LlamaConfig

    if small:
        return LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=HKV,
                           head_dim=D, vocab_size=1000, max_position_embeddings=1 << 17)
    return LlamaConfig(hidden_size=HIDDEN, intermediate_size=14336, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=HKV,
                       head_dim=D, vocab_size=128256, max_position_embeddings=1 << 17, rope_theta=500000.0)


@torch.inference_mode()
def own_decode_step(model, caches, tok, pos, logits_out=None):
    """One decode step with the model's own modules and our caches. tok (B,), pos int -> next tok (B,)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    m = model.model
    B = tok.shape[0]
    h = m.embed_tokens(tok[:, None])  # (B, 1, hidden)
    pid = torch.full((B, 1), pos, device=tok.device, dtype=torch.long)
    cos, sin = m.rotary_emb(h, pid)
    for layer, c in zip(m.layers, caches):
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(B, 1, H, D).transpose(1, 2)  # (B, H, 1, D)
        k = a.k_proj(x).view(B, 1, HKV, D).transpose(1, 2)  # (B, Hkv, 1, D)
        v = a.v_proj(x).view(B, 1, HKV, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        c.append(k, v)
        o = c.attend(q)  # (B, H, 1, D)
        h = h + a.o_proj(o.transpose(1, 2).reshape(B, 1, H * D))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    logits = model.lm_head(m.norm(h))[:, -1]
    if logits_out is not None:
        logits_out.append(logits.float())
    return logits.argmax(-1)


def part_loopcheck(dev):
    """Own decode loop vs transformers' forward in float32 (4 layers of the 8B shape, dense cache)."""
    from transformers import DynamicCache, LlamaForCausalLM

    cfg = llama_config(False)
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).eval()
    Bc, Pc = 2, 300
    with torch.inference_mode():
        ks = [torch.randn(Bc, HKV, Pc, D, device=dev) for _ in range(8)]
        pkv = DynamicCache(config=cfg)
        for li in range(4):
            pkv.update(ks[2 * li].clone(), ks[2 * li + 1].clone(), li)
        tok = torch.randint(0, cfg.vocab_size, (Bc,), device=dev)
        ref = model(input_ids=tok[:, None], past_key_values=pkv, position_ids=torch.full((Bc, 1), Pc, device=dev, dtype=torch.long)).logits[:, -1].float()
        caches = []
        for li in range(4):
            c = cache_m.SparseLayerCache([Pc + 1] * HKV, SINKS, Bc, D, H, torch.float32, dev)
            c.prefill(ks[2 * li], ks[2 * li + 1])
            caches.append(c)
        got = []
        own_decode_step(model, caches, tok, Pc, got)
    e = rel(got[0], ref)
    print("own loop vs HF logits, float32, 4 layers: rel err", e)
    return {"own_loop_vs_hf_logits_rel_err_fp32_4layers": e}


def random_llama(dev, small, seed: int = 0):
    """(config, LlamaForCausalLM) of the Llama-3-8B shape with random bf16 weights."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(small)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    return cfg, model


def per_seq_bytes(caps_per_layer):
    return sum(sum(c) for c in caps_per_layer) * D * 2 * 2  # K and V, bf16


def part_e2e(dev, small, P, steps):
    from transformers import DynamicCache

    cfg, model = random_llama(dev, small)
    nl = cfg.num_hidden_layers
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    total = torch.cuda.get_device_properties(0).total_memory if dev == "cuda" else 8 << 30
    margin = 6 << 30 if not small else 0
    avail = total - torch.cuda.memory_allocated() - margin if dev == "cuda" else 1 << 30
    max_len = P + steps + 8
    res = {"prompt": P, "steps": steps, "weights_gb": weights / 2**30, "avail_gb_for_cache": avail / 2**30}
    plans = {"dense": [[max_len] * H for _ in range(nl)]}
    for dens in (0.5, 0.25):
        plans[f"moa{int(dens*100)}"] = [synthetic_spans(dens, max_len, layer=i) for i in range(nl)]

    # the own loop with a dense cache must compute what transformers computes
    with torch.inference_mode():
        Bc, Pc = 2, 256
        ks = [torch.randn(Bc, HKV, Pc, D, device=dev, dtype=torch.bfloat16) for _ in range(2 * nl)]
        pkv = DynamicCache(config=cfg)
        for li in range(nl):
            pkv.update(ks[2 * li].clone(), ks[2 * li + 1].clone(), li)
        tok = torch.randint(0, cfg.vocab_size, (Bc,), device=dev)
        ref = model(input_ids=tok[:, None], past_key_values=pkv, position_ids=torch.full((Bc, 1), Pc, device=dev, dtype=torch.long)).logits[:, -1].float()
        caches = []
        for li in range(nl):
            c = cache_m.SparseLayerCache([Pc + 1] * HKV, SINKS, Bc, D, H, torch.bfloat16, dev)
            c.prefill(ks[2 * li], ks[2 * li + 1])
            caches.append(c)
        got = []
        own_decode_step(model, caches, tok, Pc, got)
        res["own_loop_vs_hf_logits_rel_err"] = rel(got[0], ref)
        print("own loop vs HF logits rel err:", res["own_loop_vs_hf_logits_rel_err"])
        del ks, pkv, caches

    def run(name, B, hf):
        peak_reset()
        spans = plans[name]
        caps = [cache_m.kv_caps(s, HKV, SINKS, max_len) for s in spans]
        tok = torch.randint(0, cfg.vocab_size, (B,), device=dev)
        if hf:  # transformers' own decode step (what generate() runs) over a DynamicCache
            pkv = DynamicCache(config=cfg)
            for li in range(nl):
                pkv.update(torch.randn(B, HKV, P, D, device=dev, dtype=torch.bfloat16),
                           torch.randn(B, HKV, P, D, device=dev, dtype=torch.bfloat16), li)

            def step(tok, pos):
                with torch.inference_mode():
                    out = model(input_ids=tok[:, None], past_key_values=pkv, use_cache=True,
                                position_ids=torch.full((B, 1), pos, device=dev, dtype=torch.long), logits_to_keep=1)
                return out.logits[:, -1].argmax(-1)
        else:
            caches = []
            for li in range(nl):
                c = cache_m.SparseLayerCache(caps[li], SINKS, B, D, H, torch.bfloat16, dev)
                c.prefill(torch.randn(B, HKV, P, D, device=dev, dtype=torch.bfloat16),
                          torch.randn(B, HKV, P, D, device=dev, dtype=torch.bfloat16))
                caches.append(c)

            def step(tok, pos):
                return own_decode_step(model, caches, tok, pos)
        pos = P
        for _ in range(3):  # warm-up
            tok = step(tok, pos)
            pos += 1
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = step(tok, pos)
            pos += 1
        sync()
        dt = time.perf_counter() - t0
        r = {"batch": B, "tok_per_s": B * steps / dt, "step_ms": dt / steps * 1e3,
             "peak_gb": peak_gb(),
             "kv_fraction": sum(map(sum, caps)) / (HKV * nl * max_len)}
        print(f"e2e {name} hf={hf}:", json.dumps(r))
        return r

    def largest(name, hf):
        per = per_seq_bytes([cache_m.kv_caps(s, HKV, SINKS, max_len) for s in plans[name]]) * (1.1 if hf else 1.0)
        B = max(1, int(avail // per)) if not small else 4
        while B >= 1:
            try:
                return run(name, B, hf)
            except torch.OutOfMemoryError:
                peak_reset()
                B = int(B * 0.8)
                print(f"OOM, retrying {name} at batch {B}")
        return None

    res["dense_hf"] = largest("dense", True)
    res["dense_static_own_loop"] = run("dense", res["dense_hf"]["batch"], False) if res["dense_hf"] else None
    for name in ("moa50", "moa25"):
        res[name] = largest(name, False)
        if res[name] and res["dense_hf"]:
            res[name]["speedup_vs_dense_hf"] = res[name]["tok_per_s"] / res["dense_hf"]["tok_per_s"]
            res[name]["speedup_vs_dense_own_loop"] = res[name]["tok_per_s"] / res["dense_static_own_loop"]["tok_per_s"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="check,prefill,decode,e2e")
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    ap.add_argument("--lengths", default="8192,32768,65536")
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--model-length", type=int, default=32768, help="tokens of the whole-model prefill (--parts model)")
    ap.add_argument("--variants", default="default,tma,m128n128w8s2")
    ap.add_argument("--backends", default="", help="window_flash backends to time, comma list (default: all that load)")
    args = ap.parse_args()
    WINDOW_BACKENDS.update(b for b in args.backends.split(",") if b)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = 256  # one compile per (length, kernel options)
    if hasattr(dynamo.config, "recompile_limit"):
        dynamo.config.recompile_limit = 256
    out = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    allv = {"default": None, "m128n64w8s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
            "m64n64w4s3": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
            "tma": {"USE_TMA": True},
            "m128n128w8s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}}
    variants = {k: allv[k] for k in args.variants.split(",")}
    RES["device"] = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    RES["torch"] = torch.__version__
    RES["shape"] = {"layers": L, "heads": H, "kv_heads": HKV, "head_dim": D, "dtype": "bfloat16", "sinks": SINKS}
    parts = args.parts.split(",")

    def save():
        (out / "moa_gpu.json").write_text(json.dumps(RES, indent=1))

    t0 = time.time()
    if "check" in parts:
        RES["check"] = part_check(dev, args.small)
        save()
    if "prefill" in parts:
        RES["prefill"] = part_prefill(dev, args.small, [int(x) for x in args.lengths.split(",")], variants)
        save()
    if "decode" in parts:
        RES["decode_attention"] = [part_decode(dev, args.small, n, b) for n, b in (((1024, 2),) if args.small else ((32768, 8), (8192, 32)))]
        save()
    if "model" in parts:
        RES["model_prefill"] = part_model(dev, args.small, 4096 if args.small else args.model_length)
        save()
    if "padded" in parts:
        RES["padded_prefill"] = part_padded(dev, args.small, [int(x) for x in args.lengths.split(",")])
        save()
    if "ringgen" in parts:
        RES["ring_generation"] = part_ringgen(dev, args.small, 512 if args.small else args.prompt, 8 if args.small else args.steps)
        save()
    if "loopcheck" in parts:
        RES["loopcheck"] = part_loopcheck(dev)
        save()
    if "e2e" in parts:
        RES["e2e"] = part_e2e(dev, args.small, args.prompt, args.steps)
        save()
    RES["seconds"] = time.time() - t0
    save()
    print("\n=== summary ===")
    for r in RES.get("prefill", []):
        print(f"prefill N={r['N']:>6}: sdpa {'/'.join(f'{x:.2f}' for x in r['dense_sdpa_runs_ms'])} ms | flex causal {r['flex_causal_ms']:.2f} | "
              f"flex50 {r['moa50_ms']:.2f} flex25 {r['moa25_ms']:.2f} | "
              f"best50 {r['best50_kernel']} {r['best50_ms']:.2f} ({r['speedup_50_vs_sdpa']:.2f}x) | "
              f"best25 {r['best25_kernel']} {r['best25_ms']:.2f} ({r['speedup_25_vs_sdpa']:.2f}x)")
        for be in ("cudnn", "flash", "fa4", "fa4sparse", "auto", "torch", "sdpa"):
            if f"window_{be}50_ms" in r:
                print(f"   window {be}: causal {r.get(f'window_{be}_causal_ms', 0):.2f} | 50% {r[f'window_{be}50_ms']:.2f} "
                      f"(band {r[f'window_{be}50_band_only_ms']:.2f}) | 25% {r.get(f'window_{be}25_ms', 0):.2f} "
                      f"(band {r.get(f'window_{be}25_band_only_ms', 0):.2f})")
    for r in RES.get("decode_attention", []):
        print(f"decode attn N={r['N']} B={r['B']}: dense {r['dense_ms']:.3f} ms (best kernel {r['dense_best_ms']:.3f}) | "
              f"moa50 {r['moa50_ms']:.3f} ({r['speedup_50']:.2f}x; {r['speedup_50_vs_dense_best']:.2f}x vs best) | "
              f"moa25 {r['moa25_ms']:.3f} ({r['speedup_25']:.2f}x; {r['speedup_25_vs_dense_best']:.2f}x vs best)")
    mp = RES.get("model_prefill")
    if mp:
        print(f"model prefill N={mp['N']}: dense {'/'.join(f'{x:.0f}' for x in mp['dense_sdpa_ms'])} ms | moa50 {mp['moa50_ms']:.0f} "
              f"({mp['speedup_50']:.2f}x) | moa25 {mp['moa25_ms']:.0f} ({mp['speedup_25']:.2f}x) | logits rel err "
              f"fp32 {mp['kernel_vs_masked_logits_rel_err_float32']:.1e} bf16 {mp['kernel_vs_masked_logits_rel_err_bfloat16']:.1e}")
    for r in RES.get("padded_prefill", []):
        print(f"padded prefill N={r['N']} B={r['B']}: dense mask {r['dense_padded_mask_ms']:.2f} ms | dense per row "
              f"{r['dense_per_row_ms']:.2f} | " + " | ".join(
                  f"moa{dp} kernel {r[f'moa{dp}_auto_ms'] or float('nan'):.2f} masked {r[f'moa{dp}_masked_ms'] or float('nan'):.2f} "
                  f"(x{r.get(f'speedup_{dp}_vs_dense_per_row', 0):.2f} vs dense per row, err {r.get(f'moa{dp}_kernel_vs_masked_rel_err', float('nan')):.1e})"
                  for dp in (50, 25)))
    rg = RES.get("ring_generation")
    if rg:
        for dp in (50, 25):
            d, r = rg[f"moa{dp}_dynamic"], rg[f"moa{dp}_ring"]
            print(f"generation {dp}% B={rg['B']}: decode dynamic {d['decode_ms_per_step']:.1f} ms/step, cache {d['cache_gb']:.2f} GB, "
                  f"peak +{d['peak_extra_gb']:.1f} GB | ring {r['decode_ms_per_step']:.1f} ms/step ({rg[f'moa{dp}_decode_speedup']:.2f}x), "
                  f"cache {r['cache_gb']:.2f} GB, peak +{r['peak_extra_gb']:.1f} GB | tokens agree {rg[f'moa{dp}_greedy_token_agreement']:.3f}")
    e = RES.get("e2e")
    if e:
        for k in ("dense_hf", "dense_static_own_loop", "moa50", "moa25"):
            if e.get(k):
                print(f"e2e {k}: batch {e[k]['batch']} {e[k]['tok_per_s']:.0f} tok/s peak {e[k]['peak_gb']:.1f} GB "
                      f"x{e[k].get('speedup_vs_dense_hf', 1):.2f} vs HF")


if __name__ == "__main__":
    main()
