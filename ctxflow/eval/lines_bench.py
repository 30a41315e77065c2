"""Runner of the LongEval "lines" benchmark (:mod:`ctxflow.eval.lines`): every system answers the same
examples at each record length, with a progress bar, per-example records and accuracy/latency per
system and length (``ctxflow eval lines``)."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, Sequence

from .lines import LinesExample, approx_tokens, make_lines_task, parse_last_int, score


System = Callable[[LinesExample], str]


def _length_seed(seed: int, length: int, two_hop: bool) -> int:
    return seed * 1_000_003 + length * 2 + int(two_hop)


def run_lines_bench(
    lengths: Sequence[int],
    per: int,
    systems: Mapping[str, System],
    seed: int = 0,
    progress: bool = True,
    two_hop: bool = False,
    catch_errors: bool = True,
    per_system: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Run every system on the same ``per`` examples for each record length (number of lines).

    Returns a JSON-able dict::

        {"task": "lines" | "lines-2hop", "lengths": [...], "per": per, "seed": seed,
         "two_hop": bool, "systems": [...], "seeds": {"<length>": seed_used},
         "prompt_tokens": {"<length>": mean approx_tokens(full_prompt)},
         "results": {system: {"<length>": {"accuracy", "n", "correct", "errors",
                                          "seconds_per_q"}}},
         "examples": [{..example fields.., "length", "replies": {system: {"reply",
                       "parsed", "correct", "seconds"[, "error"]}}}]}

    Length keys are strings (so the dict is the same before and after a JSON round trip).
    A system that raises gets the exception recorded and the answer counted wrong, unless
    ``catch_errors`` is false. Progress goes to stderr (tqdm) when ``progress``.
    ``per_system`` runs a slow system (e.g. the full-context baseline) on fewer examples: the
    ``n`` of the ``per`` examples evenly spread over the record depths (its cells say their ``n``).
    """
    lengths = [int(n) for n in lengths]
    names = list(systems)
    limit = {name: min(per, max(0, int((per_system or {}).get(name, per)))) for name in names}
    total = len(lengths) * sum(limit.values())
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="lines", file=sys.stderr, unit="q")
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None

    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    examples_out: list[dict[str, Any]] = []
    seeds: dict[str, int] = {}
    prompt_tokens: dict[str, float] = {}
    try:
        for length in lengths:
            s = _length_seed(seed, length, two_hop)
            seeds[str(length)] = s
            exs = make_lines_task(length, per, s, two_hop=two_hop)
            prompt_tokens[str(length)] = (
                sum(approx_tokens(e.full_prompt) for e in exs) / len(exs) if exs else 0.0
            )
            recs = [dict(e.to_dict(), length=length, replies={}) for e in exs]
            for name in names:
                fn = systems[name]
                n_ok = n_err = 0
                secs = 0.0
                if bar is not None:
                    bar.set_description(f"lines {name} @{length}")
                k = limit[name]
                pick = sorted({(i * per) // k for i in range(k)}) if k else []
                for e, rec in ((exs[i], recs[i]) for i in pick):
                    t0 = time.perf_counter()
                    err = None
                    try:
                        reply = fn(e)
                    except Exception as ex:  # noqa: BLE001 - recorded, see docstring
                        if not catch_errors:
                            raise
                        reply, err = "", f"{type(ex).__name__}: {ex}"
                    dt = time.perf_counter() - t0
                    reply = "" if reply is None else str(reply)
                    ok = score(reply, e.answer)
                    r: dict[str, Any] = {
                        "reply": reply,
                        "parsed": parse_last_int(reply),
                        "correct": ok,
                        "seconds": dt,
                    }
                    if err is not None:
                        r["error"] = err
                        n_err += 1
                    rec["replies"][name] = r
                    n_ok += ok
                    secs += dt
                    if bar is not None:
                        bar.update(1)
                n = len(pick)
                results[name][str(length)] = {
                    "accuracy": n_ok / n if n else 0.0,
                    "n": n,
                    "correct": n_ok,
                    "errors": n_err,
                    "seconds_per_q": secs / n if n else 0.0,
                }
            examples_out.extend(recs)
    finally:
        if bar is not None:
            bar.close()

    return {
        "task": "lines-2hop" if two_hop else "lines",
        "lengths": lengths,
        "per": per,
        "seed": seed,
        "two_hop": two_hop,
        "systems": names,
        "seeds": seeds,
        "prompt_tokens": prompt_tokens,
        "results": results,
        "examples": examples_out,
    }
