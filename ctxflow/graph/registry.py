"""Names -> classes. Components register under short type names (``chunk.tokens``); models
under backend names (``local``, ``http``, ``sentence-transformers``). Third-party packages
register components through the ``ctxflow.components`` entry-point group (each entry point
names a module or a class; loading it runs its ``@component`` decorators) and models through
``ctxflow.models``. YAML can only name what is registered here: it never imports a path."""
from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from ..errors import SpecError

COMPONENTS: dict[str, type] = {}
MODELS: dict[str, type] = {}
_builtins_loaded = False
_entry_points_loaded = False

# modules whose import registers the built-in components and models
_BUILTIN_MODULES = (
    "ctxflow.components",
)


def register_component(name: str, cls: type) -> None:
    old = COMPONENTS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"component type {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    COMPONENTS[name] = cls


def register_model(name: str):
    def deco(cls: type) -> type:
        MODELS[name] = cls
        cls.type_name = name
        return cls

    return deco


def load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group in ("ctxflow.components", "ctxflow.models"):
        for ep in entry_points(group=group):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not break ctxflow
                import warnings

                warnings.warn(f"could not load ctxflow plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)


def _ensure_loaded() -> None:
    load_builtins()
    load_entry_points()


def suggest(name: str, choices: list[str] | Any, n: int = 3) -> str:
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def get_component(name: str) -> type:
    _ensure_loaded()
    if name not in COMPONENTS:
        raise SpecError(
            f"unknown component type {name!r}.{suggest(name, COMPONENTS)} "
            f"Registered types: {', '.join(sorted(COMPONENTS))}."
        )
    return COMPONENTS[name]


def get_model(name: str) -> type:
    _ensure_loaded()
    if name not in MODELS:
        raise SpecError(
            f"unknown model type {name!r}.{suggest(name, MODELS)} Registered model types: {', '.join(sorted(MODELS))}."
        )
    return MODELS[name]


def component_types() -> list[str]:
    _ensure_loaded()
    return sorted(COMPONENTS)


def model_types() -> list[str]:
    _ensure_loaded()
    return sorted(MODELS)
