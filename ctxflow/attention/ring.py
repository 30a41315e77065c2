"""A transformers ``Cache`` over :class:`~.cache.SparseLayerCache`: decoding with a MoA or streaming
plan in constant memory (``attention: {..., cache: ring}``).

Each layer keeps, per KV head, the first ``sinks`` real tokens and a ring buffer of the most recent
ones, sized once from the plan at the final length (prompt + new tokens): the layer's KV memory is
``Σ_heads min(sinks + window, final length)`` slots instead of the whole sequence. The prompt's
prefill attention runs as usual (the kernel path or the masked path of :mod:`.kernels`); the cache
then keeps only what the windows will read. At each decode step ``kernels.sparse_sdpa`` hands the
attention to the layer's ring (``SparseLayerCache.attend``), found on the attention module, instead
of reading transformers' keys.

What a decode step sees: a query head sees the sinks and the last ``cap - sinks`` tokens of its KV
group, where ``cap`` is the widest window in that group at the final length. The default cache
(``cache: dynamic``) computes each head's own window at the current length, so the two can differ
slightly on plans whose heads in one KV group differ or whose windows grow with the length; with
full windows both equal dense attention exactly.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .cache import SparseLayerCache, kv_caps


class RingLayer(DynamicLayer):
    """One layer's ring cache. ``caps`` slots per KV head; ``n_real`` real tokens per prompt row."""

    is_croppable = False

    def __init__(self, caps: list[int], sinks: int, n_q_heads: int, n_real: list[int]):
        super().__init__()
        self.caps, self.sinks, self.n_q_heads, self.n_real = caps, sinks, n_q_heads, n_real
        self.ring: SparseLayerCache | None = None
        self.seen = 0  # positions seen (padded prompt + new tokens): what transformers' masks count
        self._last = None  # the key tensor update() stored last: only its attention call is a ring decode step

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.ring = SparseLayerCache(self.caps, self.sinks, key_states.shape[0], key_states.shape[-1], self.n_q_heads,
                                     key_states.dtype, key_states.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.ring.prefill(key_states, value_states, self.n_real)
        elif key_states.shape[2] == 1:
            self.ring.append(key_states, value_states)
        else:
            raise ValueError("the ring cache takes one prompt, then one token per step")
        self.seen += key_states.shape[2]
        self._last = key_states
        return key_states, value_states  # the prefill attends to the prompt; decode steps attend to the ring

    def decode_step(self, query: torch.Tensor, key: torch.Tensor) -> bool:
        """Whether this attention call is a decode step whose token :meth:`update` just stored."""
        return self.ring is not None and key is self._last and query.shape[2] == 1 and key.shape[2] == 1 and self.seen > 1

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.ring is not None:
            self.ring.select(indices.to(self.device))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("the ring cache does not support beam search")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the ring cache cannot be cropped (tokens that left the ring are gone)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("the ring cache does not support repeating batch rows")

    def reset(self) -> None:
        self.ring, self.seen, self._last, self.is_initialized = None, 0, None, False

    def nbytes(self) -> int:
        return self.ring.nbytes() if self.ring is not None else 0


def own_window(cfg) -> tuple[int | None, str] | None:
    """``(window, layer kinds)`` when some layers of a model see only their last ``window`` tokens
    (sliding or chunked attention: Mistral, Gemma 2/3, Llama 4, ...), else None (Qwen2 configs name a
    ``sliding_window`` they do not use)."""
    types = getattr(cfg, "layer_types", None)
    w = getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None)
    if types:
        windowed = sorted({t for t in types if "sliding" in t or "chunk" in t})  # not linear_attention / mamba layers
        return (w, ", ".join(windowed)) if windowed else None
    if getattr(cfg, "use_sliding_window", True) is False or not w:
        return None
    return (w, "sliding_attention" if getattr(cfg, "sliding_window", None) else "chunked_attention")


def cuts(own: tuple[int | None, str] | None, n: int) -> bool:
    """Whether a model's own window (:func:`own_window`) cuts a sequence of ``n`` tokens."""
    return own is not None and (own[0] is None or n > own[0])


def check_supported(model, max_len: int) -> None:
    """Refuse models whose own windows (sliding or chunked layers) would cut a sequence of ``max_len``
    tokens: the ring would not apply them."""
    own = own_window(model.config)
    if cuts(own, max_len):
        raise ValueError(f"{type(model).__name__} limits its {own[1]} layers to a window of its own "
                         f"({own[0]} tokens) and this generation reaches {max_len} tokens; the ring cache would not keep that "
                         "window: use cache 'dynamic' for this model")


def ring_cache(model, n_real: list[int], max_len: int) -> Cache:
    """A ring cache for ``model`` (a plan applied through :func:`.kernels.apply_plan`) for prompts of
    ``n_real`` real tokens that will grow to at most ``max_len`` tokens."""
    from .kernels import attention_modules

    check_supported(model, max_len)
    cfg = model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    layers = []
    for m in attention_modules(model):
        rules = getattr(m, "_ctxflow_rules", None)
        if rules is None or rules.alpha.dim() != 1:
            raise ValueError("the ring cache needs one attention plan applied to the model (attention: streaming or moa)")
        spans = rules.spans(torch.tensor([max_len]))[0].tolist()
        layers.append(RingLayer(kv_caps(spans, n_kv, rules.sinks, max_len), rules.sinks, len(spans), list(n_real)))
    return Cache(layers=layers)


@contextmanager
def attached(model, cache: Cache):
    """Point every attention module at its ring layer for the duration (``kernels.sparse_sdpa`` reads it),
    under a lock kept on the model: callers sharing its weights take turns."""
    from .kernels import attention_modules

    mods = attention_modules(model)
    with model.__dict__.setdefault("_ctxflow_ring_lock", threading.RLock()):
        try:
            for m, layer in zip(mods, cache.layers):
                m._ctxflow_ring = layer
            yield cache
        finally:
            for m in mods:
                m.__dict__.pop("_ctxflow_ring", None)
