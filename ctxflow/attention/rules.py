"""Elastic attention rules and MoA plans (no torch, no pydantic: importable anywhere).

A *rule* gives one attention head a window of span ``S(N) = alpha + beta * N`` over the most
recent keys, where ``N`` is the current sequence length, plus the first ``sinks`` tokens of the
sequence (attention sinks). Query ``i`` sees key ``j`` when ``j <= i`` and (``j < sinks`` or
``i - j < S(N)``). ``S`` is clamped to ``[1, N]``; ``alpha=0, beta=1`` is a full (dense) window.

*Density* of a rule at length ``N`` is the fraction of the causal ``N x N`` mask it computes
(what prefill pays). :func:`kv_fraction` is the share of keys a head keeps for decoding (what the
static KV cache pays).

A *plan* (:class:`Plan`) gives every layer and every query head one rule, with the sink count,
the block size used by the profile, the density budget, the profiled lengths and the validation
loss; it is saved as JSON with the model id it was searched for.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

PLAN_FORMAT = 1
PLANS_DIR = Path(__file__).with_name("plans")


@dataclass(frozen=True)
class Rule:
    """One head's elastic window ``S(N) = alpha + beta * N`` (tokens)."""

    alpha: float
    beta: float

    def span(self, n: int) -> int:
        """Window span at length ``n``, clamped to ``[1, n]``."""
        return int(max(1, min(n, math.floor(self.alpha + self.beta * n))))

    def valid(self, lengths: Sequence[int]) -> bool:
        """Valid when the raw span is positive and at most ``N`` at every length (MoA's condition)."""
        return all(0 < self.alpha + self.beta * n <= n for n in lengths)


FULL = Rule(0.0, 1.0)


def band_density(span: int, n: int, sinks: int = 0) -> float:
    """Fraction of the causal ``n x n`` mask that a window of ``span`` plus ``sinks`` computes."""
    if n <= 0:
        return 1.0
    s = max(1, min(span, n))
    # band: row i sees min(i+1, s) keys
    band = s * (s + 1) // 2 + (n - s) * s
    # sinks outside the band: row i (i >= s) adds min(sinks, i - s + 1) keys
    k = max(0, min(sinks, n - s))  # rows where the sink part is partial: i - s + 1 < sinks
    extra = k * (k + 1) // 2 + max(0, n - s - k) * k
    return (band + extra) / (n * (n + 1) / 2)


def kv_fraction(span: int, n: int, sinks: int = 0) -> float:
    """Share of the ``n`` keys a head keeps for the next token: ``min(span + sinks, n) / n``."""
    return min(n, max(1, span) + sinks) / n if n > 0 else 1.0


def uniform_rule(density: float, n: int, sinks: int = 0) -> Rule:
    """StreamingLLM-like rule ``alpha = 0, beta = b`` whose density at length ``n`` is ``density``
    (the largest ``b`` on a 1/1024 grid that stays within the budget)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    lo, hi = 1, 1024
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if band_density(Rule(0, mid / 1024).span(n), n, sinks) <= density:
            lo = mid
        else:
            hi = mid - 1
    return Rule(0.0, lo / 1024)


@dataclass
class Plan:
    """Per layer, per query head rules plus the facts of how they were found."""

    model_id: str
    rules: list[list[Rule]]  # [layer][head]
    sinks: int = 64
    block_size: int = 64
    density: float | None = None  # the budget the plan was searched under
    profiled_lengths: list[int] = field(default_factory=list)
    validation_length: int | None = None
    validation_loss: float | None = None
    kind: str = "moa"  # moa | streaming | dense
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")
        if not self.rules or any(not layer for layer in self.rules):
            raise ValueError("a plan needs at least one layer with at least one head rule")
        n = len(self.rules[0])
        if any(len(layer) != n for layer in self.rules):
            raise ValueError("every layer of a plan must give a rule to the same number of heads")

    @property
    def n_layers(self) -> int:
        return len(self.rules)

    @property
    def n_heads(self) -> int:
        return len(self.rules[0])

    @classmethod
    def uniform(cls, model_id: str, n_layers: int, n_heads: int, rule: Rule, sinks: int = 64, kind: str = "streaming", **kw) -> "Plan":
        return cls(model_id, [[rule] * n_heads for _ in range(n_layers)], sinks=sinks, kind=kind, **kw)

    def spans(self, n: int) -> list[list[int]]:
        return [[r.span(n) for r in layer] for layer in self.rules]

    def mean_density(self, n: int) -> float:
        d = [band_density(r.span(n), n, self.sinks) for layer in self.rules for r in layer]
        return sum(d) / len(d)

    def mean_kv_fraction(self, n: int) -> float:
        d = [kv_fraction(r.span(n), n, self.sinks) for layer in self.rules for r in layer]
        return sum(d) / len(d)

    def check_model(self, n_layers: int, n_heads: int, model_id: str | None = None) -> None:
        if (n_layers, n_heads) != (self.n_layers, self.n_heads):
            raise ValueError(
                f"the attention plan for {self.model_id!r} has {self.n_layers} layers x {self.n_heads} heads, "
                f"but the model{' ' + repr(model_id) if model_id else ''} has {n_layers} x {n_heads}: profile and search a plan for this model"
            )

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rules"] = [[[r.alpha, r.beta] for r in layer] for layer in self.rules]
        return {"format": PLAN_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if not isinstance(d, dict) or "rules" not in d or "model_id" not in d:
            raise ValueError("an attention plan is a JSON object with 'model_id' and 'rules' ([layer][head] = [alpha, beta])")
        if d.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ValueError(f"attention plan format {d.get('format')} is not supported (this version reads format {PLAN_FORMAT})")
        try:
            rules = [[Rule(float(a), float(b)) for a, b in layer] for layer in d["rules"]]
        except (TypeError, ValueError):
            raise ValueError("plan 'rules' must be a list (layers) of lists (heads) of [alpha, beta] numbers") from None
        keys = {"sinks", "block_size", "density", "profiled_lengths", "validation_length", "validation_loss", "kind", "meta"}
        return cls(model_id=str(d["model_id"]), rules=rules, **{k: v for k, v in d.items() if k in keys})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # atomic: an interrupted save leaves the old file
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = resolve_plan_path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"attention plan {str(p)!r} is not valid JSON: {exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"attention plan {str(p)!r} is not a JSON text file (it is not UTF-8)") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"attention plan {str(p)!r}: {exc}") from None


def shipped_plans() -> list[str]:
    """Names of the plans bundled in the package (``ctxflow/attention/plans/*.json``)."""
    return sorted(p.stem for p in PLANS_DIR.glob("*.json"))


def resolve_plan_path(name: str | Path) -> Path:
    """A plan file: a path, or the name of a bundled plan (e.g. ``smollm2-135m-50``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    q = PLANS_DIR / f"{name}.json"
    if q.is_file():
        return q
    raise FileNotFoundError(
        f"attention plan {str(name)!r} not found: give a plan JSON file or one of the bundled plans: {', '.join(shipped_plans()) or '(none)'}"
    )
