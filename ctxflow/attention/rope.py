"""RoPE scaling (position extrapolation) on a loaded transformers model: linear interpolation,
dynamic NTK and YaRN, through transformers' own ``rope_parameters`` (``rope_scaling`` in older
versions) and its ``ROPE_INIT_FUNCTIONS``. Combinable with any attention backend.

Spec: ``{"type": "linear" | "dynamic" | "yarn", "factor": F}`` (``F >= 1``); the model may then
be run up to ``F x`` its trained window.
"""
from __future__ import annotations

import copy
from typing import Any

ROPE_TYPES = ("linear", "dynamic", "yarn")


def normalize_rope(spec: Any) -> dict[str, Any] | None:
    """Validated ``{"type", "factor"}`` (or None for no scaling). Raises ValueError saying what is valid."""
    if spec is None or spec in ("none", "default", {}):
        return None
    if isinstance(spec, str):
        spec = {"type": spec, "factor": 2.0}
    if not isinstance(spec, dict):
        raise ValueError(f"rope_scaling must be a mapping like {{type: yarn, factor: 2}}, got {spec!r}")
    unknown = set(spec) - {"type", "factor", "rope_type"}
    if unknown:
        raise ValueError(f"rope_scaling: unknown key(s) {sorted(unknown)}; valid keys are type and factor")
    kind = spec.get("type", spec.get("rope_type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not one of {', '.join(ROPE_TYPES)}")
    try:
        factor = float(spec.get("factor", 2.0))
    except (TypeError, ValueError):
        raise ValueError(f"rope_scaling factor must be a number >= 1, got {spec.get('factor')!r}") from None
    if not factor >= 1.0:
        raise ValueError(f"rope_scaling factor must be a number >= 1, got {factor}")
    return {"type": kind, "factor": factor}


def apply_rope_scaling(model, spec: dict[str, Any]) -> int:
    """Rebuild the model's rotary embedding for ``spec`` (see :func:`normalize_rope`); returns the
    new usable context length (trained window x factor)."""
    spec = normalize_rope(spec)
    cfg = model.config
    if spec is None:
        return int(cfg.max_position_embeddings)
    name = type(model).__name__
    if not isinstance(getattr(cfg, "max_position_embeddings", None), int):
        raise ValueError(f"rope_scaling: this model ({name}) states no max_position_embeddings, so it has no RoPE window to extend")
    orig = int(cfg.max_position_embeddings)
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    rot = getattr(base, "rotary_emb", None)
    if rot is None:
        raise ValueError(f"rope_scaling: this model ({name}) has no shared rotary embedding to rescale")
    old = dict(getattr(cfg, "rope_parameters", None) or {})
    if old and not any(k in old for k in ("rope_type", "rope_theta")):  # one set per layer type (Gemma 3)
        raise ValueError(f"rope_scaling: this model ({name}) has separate RoPE settings per layer type "
                         f"({', '.join(map(str, old))}), which ctxflow does not rescale; leave rope_scaling out")
    own = old.get("rope_type", "default")
    if own not in ("default", None):  # Llama 3.x 'llama3', Phi-3 'longrope', ...: replacing it would change every position
        raise ValueError(f"rope_scaling: this model already scales its RoPE ({own!r}"
                         + (f", factor {old['factor']}" if "factor" in old else "")
                         + "); ctxflow would replace that and change the model even inside its trained window. Leave "
                         "rope_scaling out (the model's own scaling already sets its context length)")
    theta = old.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params = {**{k: v for k, v in old.items() if k in ("rope_theta", "partial_rotary_factor")},
              "rope_theta": theta, "rope_type": spec["type"], "factor": spec["factor"]}
    new = copy.deepcopy(cfg)
    if spec["type"] == "yarn":
        params["original_max_position_embeddings"] = orig
        new.max_position_embeddings = int(orig * spec["factor"])
    new.rope_parameters = params
    dev = next(model.parameters()).device
    base.rotary_emb = type(rot)(config=new).to(dev)
    cfg.rope_parameters = params  # the (unshared) model's config says what it runs
    return int(orig * spec["factor"])
