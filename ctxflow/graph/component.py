"""The component contract.

A component is a class with ``run(self, **inputs) -> dict``:

* **input sockets** are ``run``'s annotated parameters (a default makes the socket optional);
* **output sockets** are declared once, in ``@component(..., outputs={"name": type})``;
* **init parameters** are plain data (they are what a YAML file holds); they are validated
  with pydantic when the component is built, and an unknown or misspelt one is an error;
* a parameter annotated :data:`LLMRef` or :data:`EmbedderRef` names a shared model from the
  pipeline's ``models:`` section (or receives the model object itself in Python); the pipeline
  injects the one instance before ``warm_up``;
* heavy state (models, indexes) loads in ``warm_up()``, never in ``__init__``;
* ``requires`` lists the LLM capabilities the component needs (e.g. ``{"logprobs"}``), checked
  by ``Pipeline.validate()`` before anything loads.

Example::

    @component("text.upper", outputs={"text": str})
    class Upper(Component):
        def __init__(self, suffix: str = ""):
            self.suffix = suffix

        def run(self, text: str) -> dict:
            return {"text": text.upper() + self.suffix}
"""
from __future__ import annotations

import functools
import inspect
import reprlib
import typing
from dataclasses import dataclass
from typing import Any, Annotated, ClassVar, Union, get_args, get_origin

from pydantic import ConfigDict, ValidationError, create_model

from ..errors import SpecError
from ..llm.base import LLM, Embedder
from .registry import register_component, suggest


class _Ref:
    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind} ref>"


#: an init parameter naming a shared LLM (``models:`` entry) or holding an LLM object
LLMRef = Annotated[Union[str, LLM], _Ref("llm")]
#: an init parameter naming a shared embedder or holding an Embedder object
EmbedderRef = Annotated[Union[str, Embedder], _Ref("embedder")]
#: the same, for components where the model is optional (None: not used)
OptionalLLMRef = Annotated[Union[str, LLM, None], _Ref("llm")]
OptionalEmbedderRef = Annotated[Union[str, Embedder, None], _Ref("embedder")]

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Socket:
    name: str
    type: Any
    required: bool
    default: Any = None


class Component:
    """Base class (optional, but it gives the helpers below)."""

    type_name: ClassVar[str] = ""
    outputs: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[frozenset[str]] = frozenset()
    _init_params: dict[str, Any]

    def warm_up(self) -> None:
        """Load heavy state. Called once by the pipeline before the first run."""

    def run(self, **inputs: Any) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- introspection -------------------------------------------------------------------
    @classmethod
    def input_sockets(cls) -> dict[str, Socket]:
        return input_sockets(cls)

    @classmethod
    def output_sockets(cls) -> dict[str, Socket]:
        return {n: Socket(n, t, False) for n, t in cls.outputs.items()}

    @property
    def init_params(self) -> dict[str, Any]:
        """The init parameters as given (model objects replaced by their names when bound)."""
        return dict(getattr(self, "_init_params", {}))

    def resources(self) -> dict[str, str]:
        """``{param: kind}`` for parameters that refer to shared models."""
        return resource_params(type(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_params.items())
        return f"{type(self).__name__}({args})"


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    # string annotations naming things the defining module does not hold at top level (a component
    # class written inside a function): resolve what can be resolved against ctxflow's own names
    import ctxflow

    ns = {**vars(ctxflow), **globals(), **getattr(fn, "__globals__", {})}
    out: dict[str, Any] = {}
    for name, ann in getattr(fn, "__annotations__", {}).items():
        if isinstance(ann, str):
            try:
                ann = eval(ann, ns)  # noqa: S307 - a type annotation written in Python source, never YAML
            except Exception:
                ann = Any
        out[name] = ann
    return out


@functools.lru_cache(maxsize=None)
def input_sockets(cls: type) -> dict[str, Socket]:
    sig = inspect.signature(cls.run)
    hints = _hints(cls.run)
    out: dict[str, Socket] = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = Socket(name, hints.get(name, Any), p.default is _MISSING, None if p.default is _MISSING else p.default)
    return out


@functools.lru_cache(maxsize=None)
def resource_params(cls: type) -> dict[str, str]:
    hints = _hints(cls.__init__)
    res = {}
    for name, t in hints.items():
        # LLMRef, or LLMRef | None (the Annotated marker sits inside the Union)
        for cand in (t, *get_args(t)):
            for meta in getattr(cand, "__metadata__", ()):
                if isinstance(meta, _Ref):
                    res[name] = meta.kind
    return res


@functools.lru_cache(maxsize=None)
def params_model(cls: type):
    """A pydantic model of ``cls.__init__``'s parameters (extra parameters forbidden)."""
    sig = inspect.signature(cls.__init__)
    hints = _hints(cls.__init__)
    fields: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        t = hints.get(name, Any)
        fields[name] = (t, ... if p.default is _MISSING else p.default)
    # allow_inf_nan=False: YAML's .nan / .inf are no value for any parameter (a timeout, a threshold)
    return create_model(
        f"{cls.__name__}Params",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=False, allow_inf_nan=False), **fields
    )


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 120, 120, 2, 4, 4


def short_repr(v: Any) -> str:
    """``repr(v)`` cut to a few lines: a value quoted in an error message may be huge (a YAML alias
    bomb expands to billions of items when printed in full)."""
    return _SHORT.repr(v)


def _branches(t: Any) -> list[Any]:
    """The plain types a parameter annotated ``t`` takes (``Annotated`` and unions unwrapped)."""
    if getattr(t, "__metadata__", None):
        return _branches(get_args(t)[0])
    origin = get_origin(t)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return [b for a in get_args(t) for b in _branches(a)]
    return [t]


def _number_not_bool(t: Any) -> bool:
    """Is ``t`` a number type that does not also take true/false? (pydantic would read
    ``max_context: true`` as 1 for a plain ``int``.)"""
    b = _branches(t)
    return any(x in (int, float) for x in b) and not any(x is bool or x is Any or x is object for x in b)


def _bounds(meta: tuple) -> str:
    """`` >= 1``-style text for the pydantic ``Field`` bounds among an ``Annotated`` type's metadata."""
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    out = []
    for m in meta:
        for c in getattr(m, "metadata", ()):  # a FieldInfo's constraints: annotated_types.Ge(ge=1), ...
            for attr, op in ops.items():
                if hasattr(c, attr):
                    out.append(f"{op} {getattr(c, attr)}")
    return (" " + ", ".join(out)) if out else ""


def describe_type(t: Any) -> str:
    if t is Any:
        return "Any"
    if t is type(None):
        return "null"
    if getattr(t, "__metadata__", None):
        return describe_type(get_args(t)[0]) + _bounds(t.__metadata__)
    origin = get_origin(t)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return " | ".join(describe_type(a) for a in get_args(t))
    if origin is not None:
        args = ", ".join(describe_type(a) for a in get_args(t))
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{args}]"
    return getattr(t, "__name__", str(t))


def validate_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Validate init params; raise SpecError naming the parameter, what was given and what is valid.

    The error carries ``.param`` (the offending parameter name) so YAML errors can point at its line."""
    model = params_model(cls)
    for k, v in params.items():
        f = model.model_fields.get(k)
        if isinstance(v, bool) and f is not None and _number_not_bool(f.annotation):
            e = SpecError(f"parameter {k!r} of {cls.type_name or cls.__name__}: expected {describe_type(f.annotation) + _bounds((f,))}, "
                          f"got {v!r} (expected a number, not true/false).")
            e.param = k  # type: ignore[attr-defined]
            raise e
    try:
        obj = model(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"][0] if err["loc"] else None
        valid = [n for n in model.model_fields]
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter {loc!r} for {cls.type_name or cls.__name__}.{suggest(str(loc), valid)} Valid parameters: {', '.join(valid) or '(none)'}."
        elif err["type"] == "missing":
            msg = f"missing required parameter {loc!r} for {cls.type_name or cls.__name__}."
        else:
            f = model.model_fields.get(str(loc))
            expected = describe_type(f.annotation) + _bounds((f,)) if f is not None else "?"
            why = "" if err["type"] in ("greater_than_equal", "greater_than", "less_than_equal", "less_than") else f" ({err['msg']})"
            msg = f"parameter {loc!r} of {cls.type_name or cls.__name__}: expected {expected}, got {short_repr(params.get(loc))}{why}."
        e = SpecError(msg)
        e.param = loc  # type: ignore[attr-defined]
        raise e from None
    return {k: getattr(obj, k) for k in params}


def component(type_name: str, outputs: dict[str, Any] | None = None, requires: set[str] | frozenset[str] = frozenset()):
    """Class decorator: register ``cls`` under ``type_name`` with its declared outputs.

    The wrapped ``__init__`` validates parameters (pydantic) and records them for ``dump``."""

    def deco(cls: type) -> type:
        if not hasattr(cls, "run"):
            raise TypeError(f"{cls.__name__} has no run() method")
        cls.type_name = type_name
        if outputs is not None:
            cls.outputs = dict(outputs)
        elif not getattr(cls, "outputs", None):
            raise TypeError(f"component {type_name!r} declares no outputs")
        cls.requires = frozenset(requires) | frozenset(getattr(cls, "requires", frozenset()))
        if not issubclass(cls, Component):
            for attr in ("input_sockets", "output_sockets", "init_params", "resources", "warm_up", "__repr__"):
                if not hasattr(cls, attr) or attr in ("input_sockets", "output_sockets", "init_params", "resources"):
                    setattr(cls, attr, Component.__dict__[attr])
        orig_init = cls.__init__

        @functools.wraps(orig_init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            sig = inspect.signature(orig_init)
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError as exc:
                if args:  # positional arguments cannot be matched by name: never drop them silently
                    raise TypeError(f"{cls.__name__}(): {exc}") from None
                bound = None  # unknown keywords: validate_params names them and lists the valid ones
            given = dict(bound.arguments) if bound else dict(kwargs)
            given.pop("self", None)
            clean = validate_params(cls, given)
            self._init_params = dict(clean)
            orig_init(self, **clean)

        cls.__init__ = __init__
        register_component(type_name, cls)
        return cls

    return deco


def compatible(out_t: Any, in_t: Any) -> bool:
    """Can a value of type ``out_t`` flow into a socket of type ``in_t``?"""
    if out_t is Any or in_t is Any or out_t == in_t:
        return True
    in_origin, out_origin = get_origin(in_t), get_origin(out_t)
    if in_origin is Union or str(in_origin) == "<class 'types.UnionType'>":
        return any(compatible(out_t, a) for a in get_args(in_t))
    if out_origin is Union or str(out_origin) == "<class 'types.UnionType'>":
        return all(compatible(a, in_t) for a in get_args(out_t))
    if in_origin is not None or out_origin is not None:
        if in_origin != out_origin:
            return False
        ia, oa = get_args(in_t), get_args(out_t)
        if not ia or not oa:
            return True
        if len(ia) != len(oa):
            return False
        return all(compatible(o, i) for o, i in zip(oa, ia))
    if isinstance(out_t, type) and isinstance(in_t, type):
        if issubclass(out_t, in_t):
            return True
        # int flows into float, as in Python's numeric tower
        return in_t is float and out_t is int
    return False
