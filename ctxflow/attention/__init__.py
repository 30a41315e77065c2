"""In-model sparse attention (MoA): elastic per-head windows from profiling to CPU/GPU kernels.

Modules: :mod:`.rules` (rules, plans), :mod:`.kernels` (CPU backend registered with transformers),
:mod:`.flex` (GPU prefill, FlexAttention), :mod:`.cache` (static sinks + ring-buffer KV cache),
:mod:`.profile` (gradient-based influence), :mod:`.search` (MILP), :mod:`.rope` (RoPE scaling),
:mod:`.backend` (the ``attention=`` option of ``LocalLM``), :mod:`.evaluate`, :mod:`.cli`.
Nothing here imports pydantic; the GPU modules (rules, flex, cache) import only torch.
"""
