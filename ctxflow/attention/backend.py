"""The ``attention=`` option of a local model: ``dense`` | ``streaming`` | ``moa`` (a plan).

Accepted forms (Python or YAML)::

    attention: dense                       # or None
    attention: streaming                   # uniform window, 50% density, 64 sinks
    attention: {type: streaming, density: 0.25, sinks: 64}
    attention: {type: moa, plan: smollm2-135m-50}      # a bundled plan name or a plan JSON path
    attention: {type: moa, density: 0.25}              # the bundled plan of the default model
    attention: path/to/plan.json                       # a plan file
    attention: {type: moa, density: 0.5, cache: ring}  # decode in constant memory (ctxflow.attention.ring)
"""
from __future__ import annotations

from typing import Any

from .rules import Plan, resolve_plan_path, shipped_plans, uniform_rule

KINDS = ("dense", "streaming", "moa")
CACHES = ("dynamic", "ring")  # decode cache: transformers' (every token kept) or ctxflow.attention.ring
DEFAULT_PLAN = {0.5: "smollm2-135m-50", 0.25: "smollm2-135m-25"}


def normalize_attention(spec: Any) -> dict[str, Any] | None:
    """A validated dict form of ``spec`` (None = dense). Raises ValueError saying what is valid."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec in ("dense", "sdpa"):
            return None
        if spec == "streaming":
            return {"type": "streaming", "density": 0.5, "sinks": 64}
        if spec == "moa":
            return {"type": "moa", "plan": DEFAULT_PLAN[0.5]}
        try:  # a plan file or a bundled plan's name, checked now (not when the model loads)
            resolve_plan_path(spec)
        except FileNotFoundError as exc:
            raise ValueError(f"attention {spec!r} is not dense, streaming, moa or a plan: {exc}") from None
        return {"type": "moa", "plan": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"attention must be dense, streaming, moa, a plan file or a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ValueError(f"attention type {kind!r} is not one of {', '.join(KINDS)}")
    allowed = {"dense": {"type"}, "streaming": {"type", "density", "sinks", "length", "cache"},
               "moa": {"type", "plan", "density", "cache"}}[kind]
    unknown = set(spec) - allowed
    if unknown:
        hint = (" (RoPE scaling is the model's own option beside attention: rope_scaling: {type: yarn, factor: 2})"
                if "rope_scaling" in unknown else "")
        raise ValueError(f"attention type {kind}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(allowed))}{hint}")
    if kind == "dense":
        return None
    out = dict(spec)
    if out.get("cache", "dynamic") not in CACHES:
        raise ValueError(f"attention cache must be one of {', '.join(CACHES)} (dynamic: transformers' cache, every "
                         f"token kept; ring: sinks + a ring buffer per KV head, constant memory), got {out['cache']!r}")
    if out.get("cache") == "dynamic":
        del out["cache"]  # the default: not part of the spec or the model id
    if "density" in out:
        d = out["density"]
        if not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise ValueError(f"attention density must be a number in (0, 1], got {d!r}")
        out["density"] = float(d)
    if kind == "streaming":
        out.setdefault("density", 0.5)
        out.setdefault("sinks", 64)
        if not isinstance(out["sinks"], int) or out["sinks"] < 0:
            raise ValueError(f"attention sinks must be a non-negative integer, got {out['sinks']!r}")
        return out
    if "plan" not in out:
        d = out.pop("density", 0.5)
        if d not in DEFAULT_PLAN:
            raise ValueError(f"no bundled MoA plan at density {d}: give plan: FILE, or density 0.5 or 0.25")
        out["plan"] = DEFAULT_PLAN[d]
    else:
        out.pop("density", None)
    try:
        resolve_plan_path(out["plan"])
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    return out


def build_plan(spec: dict[str, Any] | None, n_layers: int, n_heads: int, model_id: str) -> Plan | None:
    """The plan a normalized spec means for a model of this shape (None = dense)."""
    if spec is None:
        return None
    if spec["type"] == "streaming":
        rule = uniform_rule(spec["density"], int(spec.get("length", 2048)), spec["sinks"])
        return Plan.uniform(model_id, n_layers, n_heads, rule, sinks=spec["sinks"], density=spec["density"])
    plan = Plan.load(spec["plan"])
    plan.check_model(n_layers, n_heads, model_id)
    return plan


__all__ = ["normalize_attention", "build_plan", "shipped_plans", "KINDS"]


def variant_id(attention: dict[str, Any] | None, rope: dict[str, Any] | None) -> str:
    """Suffix of a model id for a non-default backend / RoPE scaling (keeps LLM-call cache keys apart)."""
    import hashlib

    parts = []
    if attention is not None:
        if attention["type"] == "streaming":
            parts.append(f"streaming-{attention['density']:g}-s{attention['sinks']}")
        else:
            p = resolve_plan_path(attention["plan"])
            parts.append(f"moa-{p.stem}-{hashlib.sha256(p.read_bytes()).hexdigest()[:8]}")
        if attention.get("cache") == "ring":  # decode steps see group-wide windows: other outputs
            parts[-1] += "-ring"
    if rope is not None:
        parts.append(f"rope-{rope['type']}-{rope['factor']:g}")
    return "+" + "+".join(parts)


def configure_model(model, attention: dict[str, Any] | None, rope: dict[str, Any] | None, model_id: str) -> None:
    """Apply RoPE scaling and the attention backend to a freshly loaded (unshared) model."""
    from .kernels import apply_plan
    from .rope import apply_rope_scaling

    if rope is not None:
        model._ctxflow_context = apply_rope_scaling(model, rope)
    plan = build_plan(attention, model.config.num_hidden_layers, model.config.num_attention_heads, model_id)
    if plan is not None:
        apply_plan(model, plan)
