"""Executors: how map steps run. ``local`` batches into the in-process model; ``ray`` spreads map
steps over Ray actors that each hold the model (``pip install 'ctxflow[ray]'``).

Chosen per pipeline, without changing its components::

    executor: {type: ray, address: local, actors: 2}      # YAML, top level
    ctxflow run book.yaml --executor ray:actors=4,address=auto

See :mod:`ctxflow.run.base` for the interface and ``current_executor()``.
"""
from __future__ import annotations

from typing import Any

import yaml

from ..errors import SpecError, UserError
from .base import Executor, current_executor, use_executor
from .local import LocalExecutor


def _ray_executor() -> type:
    from .ray import RayExecutor

    return RayExecutor


#: executor type -> class (or a zero-argument loader, so Ray is imported only when named)
EXECUTORS: dict[str, Any] = {"local": LocalExecutor, "ray": _ray_executor}


def make_executor(spec: dict[str, Any] | Executor | None) -> Executor | None:
    """An executor from its ``executor:`` mapping (``{"type": "ray", "actors": 2}``)."""
    if spec is None or isinstance(spec, Executor):
        return spec
    if not isinstance(spec, dict):
        raise SpecError(f"executor must be a mapping such as {{type: ray, actors: 2}}, got {spec!r}.")
    spec = dict(spec)
    kind = spec.pop("type", "local")
    if not isinstance(kind, str) or kind not in EXECUTORS:
        raise SpecError(f"unknown executor type {kind!r}; available: {', '.join(sorted(EXECUTORS))}.")
    from ..graph.component import validate_params

    cls = EXECUTORS[kind]
    if not isinstance(cls, type):
        cls = cls()
    try:
        return cls(**validate_params(cls, spec))
    except ValueError as exc:
        raise SpecError(f"executor {kind}: {exc}") from None


def parse_executor_arg(text: str) -> Executor:
    """``--executor`` on the command line: ``local``, ``ray`` or ``ray:actors=4,address=auto``."""
    kind, _, rest = (text or "").strip().partition(":")
    spec: dict[str, Any] = {"type": kind.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise UserError(f"--executor {text!r}: {part!r} must be KEY=VALUE, e.g. --executor ray:actors=2,address=local.")
        k, v = part.split("=", 1)
        spec[k.strip()] = yaml.safe_load(v) if v.strip() else None
    ex = make_executor(spec)
    assert ex is not None
    return ex


__all__ = ["Executor", "LocalExecutor", "EXECUTORS", "current_executor", "use_executor", "make_executor", "parse_executor_arg"]
