"""Grey-box helpers shared by :mod:`ctxflow.aggregate.pcw` and :mod:`ctxflow.aggregate.nbce`:
prompt pieces around the context slot, packing chunks into windows that fit the model, KV-cache and
mask plumbing, stop strings. They need :class:`ctxflow.llm.local.LocalLM`'s grey box (``render``,
``tokenizer``, ``forward``)."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ContextOverflowError, UserError
from ..graph.params import check_template
from ..types import Chunk
from .base import chunk_tokens, split_to_fit

SLOT = "\u2063ctxflow-context\u2063"  # stands for the context while the template is rendered
SEP = "\n\n"


# -- prompt pieces -----------------------------------------------------------------------
def with_prefix(prompt: str, answer_prefix: str = "") -> Any:
    """The prompt as :meth:`LocalLM.render` / ``generate`` take it, the assistant's reply started
    with ``answer_prefix`` (a chat template continues that message; without one the prefix
    follows a blank line; empty: the prompt itself)."""
    if not answer_prefix:
        return prompt
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer_prefix}]


def check_one_slot(prompt: str) -> None:
    """PCW and NBCE put the windows where ``{context}`` is: it must be there exactly once."""
    n = prompt.count("{context}")
    if n != 1:
        raise UserError(f"prompt: '{{context}}' must appear exactly once (the windows go there); it appears {n} times.")


def template_parts(llm: Any, prompt: str, question: str, chat: bool = True, answer_prefix: str = "") -> tuple[str, str]:
    """The rendered prompt's text before and after the ``{context}`` slot (the reply started
    with ``answer_prefix``, which then ends the part after the slot)."""
    check_template("prompt", prompt, ("context", "question"))
    check_one_slot(prompt)
    text = llm.render(with_prefix(prompt.format(context=SLOT, question=question), answer_prefix), chat)
    head, tail = text.split(SLOT)
    return head, tail


def specials(llm: Any, chat: bool) -> bool:
    """Whether the tokenizer should add its special tokens (as ``LocalLM.generate`` does):
    not when a chat template already wrote them."""
    return not (chat and getattr(llm.tokenizer, "chat_template", None))


def token_ids(llm: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(llm.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


# -- packing chunks into windows ---------------------------------------------------------
def make_windows(llm: Any, chunks: list[Chunk], budget: int, n_windows: int | None = None) -> tuple[list[list[Chunk]], int]:
    """Consecutive groups of chunks, each at most ``budget`` tokens (joined by blank lines).

    ``n_windows=None``: fill each window to the budget (as many windows as needed).
    ``n_windows=k``: split into ``k`` groups of about equal tokens, in order; a chunk that does not
    fit its group moves on to the next one with room, and is dropped only when none has. Returns
    ``(windows, chunks_dropped)``."""
    if budget < 1:
        raise ContextOverflowError(f"no room for context in a window (budget {budget} tokens); lower max_new_tokens or shorten the prompt.")
    sep = max(1, llm.count_tokens(SEP))
    pieces = [p for c in chunks for p in split_to_fit(llm, c, budget)]
    sizes = [chunk_tokens(llm, p) for p in pieces]
    if n_windows is None:
        groups: list[list[Chunk]] = []
        used = 0
        for p, n in zip(pieces, sizes):
            if groups and groups[-1] and used + sep + n <= budget:
                groups[-1].append(p)
                used += sep + n
            else:
                groups.append([p])
                used = n
        return groups, 0
    if n_windows < 1:
        raise UserError(f"n_windows must be >= 1, got {n_windows}.")
    # k windows of about equal tokens, in document order: a piece goes to the window its middle falls
    # in (never an earlier one than the piece before it); one that does not fit there moves on to the
    # next window with room, so no piece is dropped while a window could still hold it
    k = min(n_windows, max(1, len(pieces)))
    total, cum = sum(sizes) or 1, 0
    groups: list[list[Chunk]] = [[] for _ in range(k)]
    used = [-sep] * k
    w, dropped = 0, 0
    for p, n in zip(pieces, sizes):
        target = min(k - 1, int((cum + n / 2) * k / total))
        w = max(w, min(target, w + 1 if groups[w] else w))  # never past an empty window
        cum += n
        j = w
        while j < k and used[j] + sep + n > budget:
            j += 1
        if j == k:  # no later window has room: any earlier one that has (windows are read in parallel)
            j = next((i for i in range(w) if used[i] + sep + n <= budget), k)
        if j == k:  # no window has room: dropped (counted in the trace)
            dropped += 1
            continue
        groups[j].append(p)
        used[j] += sep + n
        w = max(w, j)
    return [g for g in groups if g], dropped


def window_text(window: list[Chunk]) -> str:
    return SEP.join(c.text.strip() for c in window).strip()


# -- cache and mask plumbing -------------------------------------------------------------
def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer ``(keys, values)``, each (B, kv_heads, T, head_dim), of a transformers cache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):  # older transformers
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v, *_ in cache]


def additive(allowed: Any, dtype: Any) -> Any:
    """A bool "may attend" mask -> an additive float mask (0 / the dtype's most negative
    number, which never makes a fully blocked row NaN)."""
    import torch

    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


def model_dtype(llm: Any) -> Any:
    return getattr(llm.model, "dtype", None) or next(llm.model.parameters()).dtype


def stop_hit(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text`` (-1 if none)."""
    return min((k for k in (text.find(s) for s in stops if s) if k >= 0), default=-1)

def stop_text(llm: Any, out: list[int], stops: Sequence[str]) -> str | None:
    """The generated tokens decoded and cut before the first stop string, or None while no stop
    string has appeared (one decode per step, only when there are stop strings)."""
    if not stops:
        return None
    s = llm.decode(out)
    k = stop_hit(s, stops)
    return s[:k] if k >= 0 else None
