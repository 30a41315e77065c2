"""GPU prefill for elastic per-head windows: FlashAttention-4's block-sparse kernel, or a dense
kernel's native sliding window plus a sink merge.

Query ``i`` of head ``h`` sees key ``j`` when ``j <= i`` and (``j < sinks`` or ``i - j < span[h]``).
The mask is a *band* (``0 <= i - j < span``) plus a few *sink* columns.

One launch (``"fa4sparse"``, the default when ``flash-attn-4`` loads): FA4's Hopper/Blackwell kernel
(warp-specialised, pipelined, the FA3 design) iterates per query tile only the key tiles the mask
touches, from block tables built here and cached by (spans, sinks, length, batch): tiles wholly
inside the band or the sinks run unmasked, the band's edge tiles and the sink tile through a CuTe
DSL ``mask_mod`` that reads each head's span from a small tensor. Sinks cost one key tile per
query tile and no second pass. Query heads are not packed per KV head (``pack_gqa=False``: block
tables are per query head); K/V are read in place (GQA kept).

Band plus merge (``"fa4"``, ``"cudnn"``, ``"flash"``): fast dense kernels compute a band natively (a
sliding window skips the tiles outside it), so the band runs near the dense kernel's rate per
computed tile; less near at short spans, where each query tile loops over few key tiles:

1. Heads are grouped by span (MoA plans have at most two rules per layer). Each group is cut into
   runs of consecutive query heads whose key/value heads are a slice too (grouped-query attention is
   kept: no copy of ``q``, ``k`` or ``v``), and each run is one windowed call that writes its heads'
   slice of the output and of the row log-sum-exp. A span ``>= N`` is plain causal attention.
2. The sink keys outside the band (``j < sinks`` and ``i - j >= span``) are added afterwards by one
   small kernel per layer: it scores each query row against the ``sinks`` first keys and merges
   this partial softmax with the band's one exactly through their log-sum-exps, in place. Rows
   ``i < span`` have no such key and are skipped.

Backends (``backend="auto"``: :func:`pick_backend`):

- ``"fa4sparse"``: the one-launch path above (optional package ``flash-attn-4``, CuTe DSL, sm90/sm100).
- ``"fa4"``: FA4's local-window attention per run (``window_size_left = span - 1``) + the sink merge.
- ``"cudnn"``: cuDNN's fused attention with a diagonal band (``diagonal_band_left_bound = span``,
  top-left aligned causal), through the cuDNN frontend's Python graph API (the optional package
  ``nvidia-cudnn-frontend``, imported lazily; it drives the libcudnn that PyTorch already loads).
  On an H100 this is the kernel that PyTorch's own SDPA picks for dense causal attention.
- ``"flash"``: FlashAttention-2 as built into PyTorch (``aten._flash_attention_forward`` with
  ``window_size_left = span - 1``). No extra package, but on an H100 FA2 runs at ~0.55x of cuDNN
  per computed pair, below FlexAttention, so it is only used when asked for.
- ``"flex"``: :func:`ctxflow.attention.flex.sparse_prefill` (exact; any dtype on CUDA; sinks in-kernel).
- ``"sdpa"``: masked SDPA per span group (exact; the CPU path, O(N^2) mask per group).

Measured (H100, Llama-3-8B attention shape, bf16, 32k tokens, ``bench/results/moa_gpu_notes.md``),
speedup over dense causal SDPA (cuDNN) in one run: fa4sparse 2.11x (50% density) / 3.85x (25%),
fa4 2.16x / 3.92x, cuDNN band 1.89x / 3.46x, FlexAttention 1.50x / 2.76x.

The sink merge is a Triton kernel on CUDA and plain torch elsewhere (``merge="torch"`` forces it).
Batches are unpadded or right-padded: causality already hides a row's padding keys from its real
queries, so real rows are exact; padded query rows hold finite values that are never read.

Imports only torch (Triton, FA4 and the cuDNN frontend lazily): usable on a GPU machine without the
rest of ctxflow (no pydantic), loaded by path like ``bench/moa_gpu.py`` does.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

BACKENDS = ("cudnn", "flash", "fa4", "fa4sparse", "flex", "sdpa")


# ---------------------------------------------------------------- head runs
def head_runs(spans: tuple[int, ...], n: int, group: int) -> list[tuple[int, int, int]]:
    """``(h0, h1, span)`` runs of consecutive query heads with one span (clamped to ``[1, n]``) whose
    key/value heads form a slice: a run never straddles a KV group unless it covers whole groups.
    ``group`` = query heads per KV head."""
    runs: list[tuple[int, int, int]] = []
    H = len(spans)
    h = 0
    while h < H:
        s = max(1, min(n, int(spans[h])))
        e = h + 1
        while e < H and max(1, min(n, int(spans[e]))) == s:
            e += 1
        # [h, e) has one span; cut it at KV-group boundaries where it is not group-aligned
        a = h
        while a < e:
            if a % group == 0 and e - a >= group:  # whole groups: as many as fit
                b = a + (e - a) // group * group
            else:  # a partial group: up to the group's end
                b = min(e, (a // group + 1) * group)
            runs.append((a, b, s))
            a = b
        h = e
    return runs


def _kv_slice(h0: int, h1: int, group: int) -> tuple[int, int]:
    return h0 // group, (h1 - 1) // group + 1


# ---------------------------------------------------------------- band: cuDNN frontend
_CUDNN_HANDLES: dict = {}
_CUDNN_GRAPHS: dict = {}  # insertion-ordered; the oldest graph goes past _CUDNN_GRAPHS_MAX
_CUDNN_GRAPHS_MAX = 256  # (shape, strides, span) combinations: padded batches add one per real length


@lru_cache(maxsize=None)
def _optional(module: str):
    """An optional module, or None when it is not installed or fails to load (tried once)."""
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any load failure means "not available"
        return None


def cudnn_frontend():
    """The ``cudnn`` frontend module (pip ``nvidia-cudnn-frontend``, optional), or None."""
    return _optional("cudnn")


def _cudnn_handle(device: torch.device):
    cudnn = cudnn_frontend()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _CUDNN_HANDLES:
        with torch.cuda.device(idx):
            _CUDNN_HANDLES[idx] = cudnn.create_handle()
    return _CUDNN_HANDLES[idx]


def _cudnn_graph(q, k, v, o, lse, span: int, scale: float):
    """A built cuDNN SDPA graph for these shapes/strides and span, cached: (graph, tensors,
    workspace, handle). The heuristic's first plan is kept: on an H100 (cuDNN 9.19) timing every
    plan found it fastest at each span tried (the other engine configs ran 1.7x to 15x slower)."""
    key = (q.dtype, q.device, tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), v.stride(),
           o.stride(), lse.stride(), span, float(scale))
    hit = _CUDNN_GRAPHS.get(key)
    if hit is not None:
        return hit
    cudnn = cudnn_frontend()
    handle = _cudnn_handle(q.device)
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[q.dtype]
    g = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    tq, tk, tv = g.tensor_like(q), g.tensor_like(k), g.tensor_like(v)
    n = q.shape[2]
    # top-left aligned band: key j visible iff 0 <= i - j < left_bound (right bound 0 = causal)
    kw = dict(name="band", q=tq, k=tk, v=tv, attn_scale=float(scale), generate_stats=True,
              diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT, diagonal_band_right_bound=0)
    if span < n:
        kw["diagonal_band_left_bound"] = int(span)
    to, ts = g.sdpa(**kw)
    to.set_output(True).set_dim(list(o.shape)).set_stride(list(o.stride()))
    ts.set_output(True).set_data_type(cudnn.data_type.FLOAT).set_dim(list(lse.shape)).set_stride(list(lse.stride()))
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    ws = torch.empty(max(1, g.get_workspace_size()), device=q.device, dtype=torch.uint8)
    hit = (g, (tq, tk, tv, to, ts), ws, handle)
    if len(_CUDNN_GRAPHS) >= _CUDNN_GRAPHS_MAX:
        del _CUDNN_GRAPHS[next(iter(_CUDNN_GRAPHS))]
    _CUDNN_GRAPHS[key] = hit
    return hit


def _band_cudnn(q, k, v, o, lse, span, scale):
    """cuDNN band attention of one run: q/o (B, Hr, N, D), k/v (B, Hkv_r, N, D) views, lse (B, Hr, N, 1)."""
    g, (tq, tk, tv, to, ts), ws, handle = _cudnn_graph(q, k, v, o, lse, span, scale)
    cudnn_frontend().set_stream(handle=handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
    g.execute({tq: q, tk: k, tv: v, to: o, ts: lse}, ws, handle=handle)


def cudnn_available(q) -> bool:
    return (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] % 8 == 0
            and cudnn_frontend() is not None and torch.cuda.get_device_capability(q.device)[0] >= 8)


# ---------------------------------------------------------------- band: FlashAttention-2 (aten)
def flash_available(q) -> bool:
    return (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256
            and hasattr(torch.ops.aten, "_flash_attention_forward")
            and torch.cuda.get_device_capability(q.device)[0] >= 8)


def _band_flash(q, k, v, o, lse, span, scale):
    """FA2 band attention of one run (same views as :func:`_band_cudnn`); copies into o / lse."""
    n = q.shape[2]
    win = {} if span >= n else {"window_size_left": int(span) - 1, "window_size_right": 0}
    res = torch.ops.aten._flash_attention_forward(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None, n, n, 0.0, True, False,
        scale=float(scale), **win)
    o.copy_(res[0].transpose(1, 2))  # (B, N, Hr, D) -> (B, Hr, N, D)
    lse.copy_(res[1].unsqueeze(-1))  # (B, Hr, N) natural-log LSE


# ---------------------------------------------------------------- FlashAttention-4 (CuTe DSL)
def fa4_interface():
    """``flash_attn.cute.interface`` (pip ``flash-attn-4``, optional), or None."""
    return _optional("flash_attn.cute.interface")


def fa4_available(q) -> bool:
    return (q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in (64, 96, 128)
            and torch.cuda.get_device_capability(q.device)[0] in (9, 10) and fa4_interface() is not None)


def _band_fa4(q, k, v, o, lse, span, scale):
    """FA4 band attention of one run (same views as :func:`_band_cudnn`), written into o / lse."""
    n = q.shape[2]
    win = {} if span >= n else {"window_size_left": int(span) - 1, "window_size_right": 0}
    fa4_interface()._flash_attn_fwd(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=float(scale), causal=True,
        return_lse=True, out=o.transpose(1, 2), lse=lse.squeeze(-1), **win)


@lru_cache(maxsize=8)
def _fa4_mask_mod(sinks: int):
    """The window-plus-sinks rule as a CuTe DSL ``mask_mod``; each head's span is read from aux tensor 0."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils as fa4_utils

    @cute.jit
    def window_sinks(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        spans = aux_tensors[0]
        span = fa4_utils.scalar_to_ssa(spans[head[0]], cutlass.Int32)
        n_sinks = fa4_utils.scalar_to_ssa(sinks, cutlass.Int32)
        return (kv_idx <= q_idx) & ((kv_idx < n_sinks) | (q_idx - kv_idx < span))

    return window_sinks


@lru_cache(maxsize=64)
def _fa4_block_tables(spans: tuple[int, ...], sinks: int, n: int, batch: int, device: str, block: int = 128):
    """FA4's block-sparse tensors (partial blocks, full blocks) of the window-plus-sinks mask, cached."""
    fa4 = fa4_interface()
    flex = _flex_module()
    st = torch.tensor(spans, dtype=torch.long, device=device)
    any_, full = flex.block_tables(st, sinks, n, block)
    mask_cnt, mask_idx = flex.pack_blocks(any_ & ~full, batch)
    full_cnt, full_idx = flex.pack_blocks(full, batch)
    tensors = fa4.BlockSparseTensorsTorch(mask_block_cnt=mask_cnt, mask_block_idx=mask_idx, full_block_cnt=full_cnt,
                                          full_block_idx=full_idx, block_size=(block, block))
    return tensors, _spans_tensor(spans, device)


def fa4_sparse_prefill(q, k, v, spans, sinks: int, scale: float, out=None):
    """Window plus sinks in ONE FA4 launch: block-sparse iteration over the blocks the mask touches
    (full blocks unmasked, partial ones through the ``mask_mod``), the sink keys inside the loop.
    ``out``: a (B, N, H, D) tensor to write into (else a new one)."""
    B, H, n, D = q.shape
    tensors, spans_t = _fa4_block_tables(tuple(spans), sinks, n, B, str(q.device))
    out = torch.empty(B, n, H, D, device=q.device, dtype=q.dtype) if out is None else out
    fa4_interface()._flash_attn_fwd(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=float(scale), causal=False,
        mask_mod=_fa4_mask_mod(int(sinks)), aux_tensors=[spans_t], block_sparse_tensors=tensors,
        pack_gqa=False, out=out)
    return out.transpose(1, 2)


# ---------------------------------------------------------------- band: masked SDPA (CPU, reference path)
def band_mask(n: int, span: int, device) -> torch.Tensor:
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None]
    return (j <= i) & (i - j < span)


def _band_sdpa(q, k, v, o, lse, span, scale):
    """Exact band attention with its LSE in plain torch (CPU / any dtype): float32 math."""
    n = q.shape[2]
    g = q.shape[1] // k.shape[1]
    kk = k.float().repeat_interleave(g, 1) if g > 1 else k.float()
    vv = v.float().repeat_interleave(g, 1) if g > 1 else v.float()
    s = (q.float() @ kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~band_mask(n, span, q.device), float("-inf"))
    l = torch.logsumexp(s, -1, keepdim=True)  # (B, Hr, N, 1)
    o.copy_((torch.exp(s - l) @ vv).to(o.dtype))
    lse.copy_(l)


# ---------------------------------------------------------------- sink merge
def sink_merge_torch(q, k, v, o, lse, spans_t, sinks: int, scale: float):
    """Add the sink keys outside each head's band to ``o`` (B, H, N, D) in place, given the band's
    ``lse`` (B, H, N, 1) (updated too). spans_t (H,) long. Plain torch, float32 math."""
    B, H, n, _ = q.shape
    g = H // k.shape[1]
    ns = min(sinks, n)
    ks = k[:, :, :ns].float().repeat_interleave(g, 1)  # (B, H, S, D)
    vs = v[:, :, :ns].float().repeat_interleave(g, 1)
    s = (q.float() @ ks.transpose(-1, -2)) * scale  # (B, H, N, S)
    i = torch.arange(n, device=q.device)[None, :, None]
    j = torch.arange(ns, device=q.device)[None, None, :]
    valid = (i - j) >= spans_t.to(q.device)[:, None, None]  # (H, N, S); j <= i follows
    s = s.masked_fill(~valid[None], float("-inf"))
    lb = lse.float()  # (B, H, N, 1), finite: every row sees itself
    m = torch.maximum(s.amax(-1, keepdim=True), lb)
    p = torch.exp(s - m)
    wb = torch.exp(lb - m)
    den = wb + p.sum(-1, keepdim=True)
    out = (o.float() * wb + p @ vs) / den
    o.copy_(out.to(o.dtype))
    lse.copy_(m + torch.log(den))


@lru_cache(maxsize=1)
def _triton_merge_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(Q, K, V, O, LSE, SPAN, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh, sln,
               H, G, N, SINKS, scale_log2,
               BLOCK_M: tl.constexpr, S_P: tl.constexpr, D: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        span = tl.load(SPAN + h)
        m0 = pid_m * BLOCK_M
        if m0 + BLOCK_M - 1 >= span:  # some row i >= span: sink keys outside the band exist
            rows = m0 + tl.arange(0, BLOCK_M)
            cols = tl.arange(0, S_P)
            d = tl.arange(0, D)
            rmask = rows < N
            q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + d[None, :], mask=rmask[:, None], other=0.0)
            kvh = h // G
            cmask = cols < SINKS
            ks = tl.load(K + b * skb + kvh * skh + cols[:, None] * skn + d[None, :], mask=cmask[:, None], other=0.0)
            vs = tl.load(V + b * svb + kvh * svh + cols[:, None] * svn + d[None, :], mask=cmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(ks)) * scale_log2  # base-2 logits
            valid = cmask[None, :] & ((rows[:, None] - cols[None, :]) >= span)
            s = tl.where(valid, s, float("-inf"))
            lptr = LSE + b * slb + h * slh + rows * sln
            lb = tl.load(lptr, mask=rmask, other=0.0) * 1.4426950408889634  # natural -> base 2
            m = tl.maximum(tl.max(s, 1), lb)
            p = tl.exp2(s - m[:, None])
            wb = tl.exp2(lb - m)
            den = wb + tl.sum(p, 1)
            optr = O + b * sob + h * soh + rows[:, None] * son + d[None, :]
            ob = tl.load(optr, mask=rmask[:, None], other=0.0).to(tl.float32)
            acc = ob * wb[:, None] + tl.dot(p.to(vs.dtype), vs)
            out = acc / den[:, None]
            tl.store(optr, out.to(O.dtype.element_ty), mask=rmask[:, None])
            tl.store(lptr, (m + tl.log2(den)) * 0.6931471805599453, mask=rmask)

    return kernel


MERGE_CONFIG = (64, 4)  # (rows per program, warps): fastest of (32|64|128, 4|8) on an H100


def sink_merge_triton(q, k, v, o, lse, spans_t, sinks: int, scale: float):
    """:func:`sink_merge_torch` as one Triton launch (CUDA, fp16/bf16, head dim a power of two)."""
    import triton

    B, H, n, D = q.shape
    G = H // k.shape[1]
    S_P = max(16, triton.next_power_of_2(min(sinks, n)))
    BLOCK_M, warps = MERGE_CONFIG
    grid = (triton.cdiv(n, BLOCK_M), B * H)
    _triton_merge_kernel()[grid](
        q, k, v, o, lse, spans_t, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        *lse.stride()[:3], H, G, n, min(sinks, n), float(scale) * 1.4426950408889634,
        BLOCK_M=BLOCK_M, S_P=S_P, D=D, num_warps=warps, num_stages=1)


def _triton_ok(q, v) -> bool:
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    D = q.shape[-1]
    if D & (D - 1) or D < 16 or q.stride(-1) != 1 or v.stride(-1) != 1:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=64)
def _spans_tensor(spans: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(spans, dtype=torch.int32, device=device)


# ---------------------------------------------------------------- flex fallback
def _flex_module():
    try:
        from . import flex  # type: ignore[no-redef]

        return flex
    except ImportError:  # loaded by path, outside the package
        name = "ctxflow_window_flash_flex"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("flex.py"))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        return sys.modules[name]


def sdpa_prefill(q, k, v, spans, sinks: int, scale=None):
    """Exact masked SDPA per span group (CPU path). q (B,H,N,D), k/v (B,Hkv,N,D) -> (B,H,N,D)."""
    B, H, n, D = q.shape
    g = H // k.shape[1]
    out = torch.empty_like(q)
    i = torch.arange(n, device=q.device)[:, None]
    j = torch.arange(n, device=q.device)[None]
    for s in sorted({max(1, min(n, int(x))) for x in spans}):
        idx = [h for h in range(H) if max(1, min(n, int(spans[h]))) == s]
        it = torch.tensor(idx, device=q.device)
        kv = it // g
        m = (j <= i) & ((j < sinks) | (i - j < s))
        out[:, it] = F.scaled_dot_product_attention(q[:, it], k[:, kv], v[:, kv], attn_mask=m, scale=scale)
    return out


# ---------------------------------------------------------------- entry point
def pick_backend(q) -> str:
    """The fastest exact path that loads here, by the H100 measurements (bench/results/moa_gpu_notes.md):
    FA4's block-sparse kernel (sinks in-kernel, one launch; best or within 3% of best at 8k-64k, where
    FA4's band + merge fell to 1.5x at 8k / 25%), else cuDNN's band, else FlexAttention on CUDA (FA2's
    window ran slower than flex: 8.3 vs 5.4 ms at 32k, 25% density), else masked SDPA on the CPU.
    ``backend="fa4"`` / ``"cudnn"`` / ``"flash"`` still select a band kernel explicitly."""
    if fa4_available(q):
        return "fa4sparse"
    if cudnn_available(q):
        return "cudnn"
    return "flex" if q.is_cuda else "sdpa"


_FA4_NEEDS = (fa4_available, "the optional package flash-attn-4, a CUDA GPU of compute capability 9.x/10.x "
                             "and fp16/bf16 inputs of head dim 64, 96 or 128")
_NEEDS = {
    "fa4sparse": _FA4_NEEDS,
    "fa4": _FA4_NEEDS,
    "cudnn": (cudnn_available, "the optional package nvidia-cudnn-frontend, a CUDA GPU and fp16/bf16 inputs"),
    "flash": (flash_available, "a CUDA GPU and fp16/bf16 inputs of head dim <= 256"),
}


def _check_backend(backend: str, q) -> None:
    """A clear error for an unknown backend or one that cannot run on these inputs here."""
    if backend in ("sdpa", "torch", "flex"):
        return
    if backend not in _NEEDS:
        raise ValueError(f"unknown window_prefill backend {backend!r}; valid: 'auto', "
                         + ", ".join(repr(b) for b in BACKENDS + ("torch",)))
    ok, needs = _NEEDS[backend]
    if not ok(q):
        raise RuntimeError(f"window_prefill backend {backend!r} cannot run here: it needs {needs} "
                           f"(got {q.dtype} on {q.device}); backend='auto' picks {pick_backend(q)!r}")


def window_prefill(q, k, v, spans, sinks: int, scale=None, backend: str = "auto", merge: str = "auto", out=None):
    """Causal attention with per-head windows plus sinks.

    q (B, H, N, D), k/v (B, H_kv, N, D) (any strides with a unit last one); spans: H ints (a list,
    tuple or tensor), each query head's window at this length; ``sinks`` first keys always visible.
    Returns (B, H, N, D) (a view of (B, N, H, D) memory on the band-kernel paths). ``out``: a
    (B, N, H, D) tensor (unit last stride) the result is written into (the FA4 and band kernels write
    there directly); the return value is then ``out.transpose(1, 2)``.
    ``backend``: "auto" | "fa4sparse" | "fa4" | "cudnn" | "flash" | "flex" | "sdpa" (| "torch": the band
    decomposition in plain torch, a CPU test path); ``merge``: "auto" | "triton" | "torch".
    """
    B, H, n, D = q.shape
    assert k.shape[1] > 0 and H % k.shape[1] == 0, "query heads must be a multiple of key/value heads"
    group = H // k.shape[1]
    spans = tuple(int(s) for s in (spans.tolist() if torch.is_tensor(spans) else spans))
    assert len(spans) == H, f"{len(spans)} spans for {H} heads"
    spans = tuple(max(1, min(n, s)) for s in spans)
    sinks = max(0, int(sinks))
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if backend == "auto":
        backend = pick_backend(q)  # runs here by construction
    else:
        _check_backend(backend, q)
    if out is not None:
        assert out.shape == (B, n, H, D) and out.stride(-1) == 1, "out must be (B, N, H, D) with a unit last stride"
    if backend == "fa4sparse":
        return fa4_sparse_prefill(q, k, v, spans, sinks, scale, out=out)
    if backend in ("sdpa", "flex"):
        res = sdpa_prefill(q, k, v, spans, sinks, scale) if backend == "sdpa" else \
            _flex_module().sparse_prefill(q, k, v, list(spans), sinks, scale=scale, compiled=q.is_cuda)
        if out is None:
            return res
        out.copy_(res.transpose(1, 2))
        return out.transpose(1, 2)
    band = {"cudnn": _band_cudnn, "flash": _band_flash, "fa4": _band_fa4, "torch": _band_sdpa}[backend]
    if out is None:
        out = torch.empty(B, n, H, D, device=q.device, dtype=q.dtype)
    out = out.transpose(1, 2)  # (B, H, N, D) view
    lse = torch.empty(B, H, n, 1, device=q.device, dtype=torch.float32)
    for h0, h1, s in head_runs(spans, n, group):
        k0, k1 = _kv_slice(h0, h1, group)
        band(q[:, h0:h1], k[:, k0:k1], v[:, k0:k1], out[:, h0:h1], lse[:, h0:h1], s, scale)
    if sinks and any(s < n for s in spans):  # one launch over all heads
        spans_t = _spans_tensor(spans, str(q.device))
        if merge == "triton" or (merge == "auto" and _triton_ok(q, v)):
            sink_merge_triton(q, k, v, out, lse, spans_t, sinks, scale)
        else:
            sink_merge_torch(q, k, v, out, lse, spans_t, sinks, scale)
    return out
