"""Constrained init-parameter types and prompt-template checks for components.

Components annotate their init parameters with these types; :func:`~.component.validate_params`
(pydantic) then refuses a bad value when the component is built — in Python or from YAML, before
any model loads — with a message naming the parameter, what was given and what is valid::

    def __init__(self, k: PositiveInt = 3, mmr: UnitFloat = 1.0, max_chunks: PositiveInt | None = None): ...

YAML's ``true``/``false`` are not numbers here (``size: true`` is refused rather than read as 1),
and NaN/inf are refused for floats.

:func:`check_template` checks a prompt template against the fields the component fills in:
``{name}`` placeholders must be ones it provides, ``required`` ones must appear, and literal
braces must be doubled (``{{`` / ``}}``), as in :meth:`str.format`.
"""
from __future__ import annotations

import math
import string
from typing import Annotated, Iterable

from pydantic import BeforeValidator, Field


def _number(v):
    if isinstance(v, bool):  # bool is an int in Python; a YAML `true` given for a count is a mistake
        raise ValueError("expected a number, not true/false")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v}")
    return v


PositiveInt = Annotated[int, BeforeValidator(_number), Field(ge=1)]
NonNegativeInt = Annotated[int, BeforeValidator(_number), Field(ge=0)]
UnitFloat = Annotated[float, BeforeValidator(_number), Field(ge=0, le=1, allow_inf_nan=False)]
PositiveFloat = Annotated[float, BeforeValidator(_number), Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]


def check_template(name: str, text: str, fields: Iterable[str], required: Iterable[str] | None = None) -> str:
    """Return ``text`` if it is a valid ``str.format`` template over ``fields`` containing every
    ``required`` placeholder (default: every field); raise :class:`~ctxflow.errors.UserError` saying what is wrong."""
    from ..errors import UserError

    def fail(msg: str) -> UserError:
        err = UserError(msg)
        err.param = name  # type: ignore[attr-defined]  # lets a YAML error point at the parameter's line
        return err

    fields = list(fields)
    required = fields if required is None else list(required)
    valid = ", ".join("{" + f + "}" for f in fields)
    hint = f"{name} may use the placeholders {valid}; write {{{{ and }}}} for literal braces."
    if not isinstance(text, str):
        raise fail(f"{name} must be text, got {type(text).__name__}. {hint}")
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise fail(f"{name} is not a valid template ({exc}). {hint}") from None
    seen: set[str] = set()
    for _, field, spec, _conv in parts:
        if field is None:
            continue
        if field not in fields:
            what = "a positional placeholder {" + field + "}" if field == "" or field.isdigit() else "{" + field + "}"
            raise fail(f"{name} has {what}, which this component does not fill in. {hint}")
        if spec and ("{" in spec):
            raise fail(f"{name} has a nested placeholder in {{{field}:{spec}}}. {hint}")
        seen.add(field)
    missing = [f for f in required if f not in seen]
    if missing:
        raise fail(f"{name} must contain {' and '.join('{' + f + '}' for f in required)} "
                        f"(missing {', '.join('{' + f + '}' for f in missing)}). {hint}")
    return text
