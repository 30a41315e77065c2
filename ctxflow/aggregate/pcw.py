"""``aggregate.pcw``: Parallel Context Windows (Ratner et al., ACL 2023) on a local model.

The chunks are packed into windows that each fit the model's (possibly emulated) context, so
the whole can be many times longer than the window:

* every window is the prompt up to the context slot (the chat prefix with its BOS, the
  instruction) followed by the window's text, encoded on its own with positions ``0..len-1``;
  windows never attend to each other;
* the windows' KV caches are concatenated along the sequence; the leading tokens all windows
  share (the BOS, and with ``dedupe="prefix"`` the whole common chat/instruction prefix, whose
  keys and values are identical in every window) are kept once;
* the task tokens (the rest of the prompt: question, end of turn, assistant header) and the
  generated answer attend to every window and to earlier task tokens, with positions starting
  at the longest window's length: task token ``t`` sits at ``max_len + t``;
* greedy decoding with the KV cache, stopping at EOS, a stop string or ``max_new_tokens``.

With one window this is exactly ordinary greedy generation on the same prompt. Needs the grey
box of :class:`ctxflow.llm.local.LocalLM` (``render``, ``tokenizer``, ``forward`` with 4-D
masks, position ids and KV caches); works with any Llama-family model (GQA included).

The helpers here (template split, window packing, cache plumbing, stop strings) are shared
with :mod:`ctxflow.aggregate.nbce`.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ContextOverflowError, UserError
from ..events import emit, progress
from ..graph.component import Component, LLMRef, component
from ..types import Answer, Chunk
from .base import ChunkList, best_span, check_question, in_order, support
from .stuff import PROMPT

SLOT = "\u2063ctxflow-context\u2063"  # stands for the context while the template is rendered
SEP = "\n\n"


# -- prompt pieces -----------------------------------------------------------------------
def template_parts(llm: Any, prompt: str, question: str, chat: bool = True) -> tuple[str, str]:
    """The rendered prompt's text before and after the ``{context}`` slot."""
    if "{context}" not in prompt or "{question}" not in prompt:
        raise UserError("prompt must contain {context} and {question}.")
    text = llm.render(prompt.format(context=SLOT, question=question), chat)
    head, tail = text.split(SLOT)
    return head, tail


def specials(llm: Any, chat: bool) -> bool:
    """Whether the tokenizer should add its special tokens (as ``LocalLM.generate`` does):
    not when a chat template already wrote them."""
    return not (chat and getattr(llm.tokenizer, "chat_template", None))


def token_ids(llm: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(llm.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


# -- packing chunks into windows ---------------------------------------------------------
def _n(llm: Any, c: Chunk) -> int:
    return c.n_tokens or llm.count_tokens(c.text)


def split_to_fit(llm: Any, chunk: Chunk, budget: int) -> list[Chunk]:
    """``chunk`` cut into consecutive pieces of at most ``budget`` tokens (exact offsets)."""
    if _n(llm, chunk) <= budget:
        return [chunk]
    out, text, start = [], chunk.text, chunk.start
    while text.strip():
        piece = llm.truncate(text, budget) or text[:1]
        out.append(chunk.model_copy(update={"start": start, "end": start + len(piece), "text": piece,
                                            "n_tokens": llm.count_tokens(piece)}))
        start, text = start + len(piece), text[len(piece):]
    return out


def make_windows(llm: Any, chunks: list[Chunk], budget: int, n_windows: int | None = None) -> tuple[list[list[Chunk]], int]:
    """Consecutive groups of chunks, each at most ``budget`` tokens (joined by blank lines).

    ``n_windows=None``: fill each window to the budget (as many windows as needed).
    ``n_windows=k``: split into ``k`` groups of about equal tokens; a group over the budget
    keeps its first chunks that fit. Returns ``(windows, chunks_dropped)``."""
    if budget < 1:
        raise ContextOverflowError(f"no room for context in a window (budget {budget} tokens); lower max_new_tokens or shorten the prompt.")
    sep = max(1, llm.count_tokens(SEP))
    pieces = [p for c in chunks for p in split_to_fit(llm, c, budget)]
    sizes = [_n(llm, p) for p in pieces]
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
    total, cum = sum(sizes) or 1, 0
    groups = [[] for _ in range(min(n_windows, max(1, len(pieces))))]
    for p, n in zip(pieces, sizes):
        groups[min(len(groups) - 1, cum * len(groups) // total)].append(p)
        cum += n
    kept, dropped = [], 0
    for g in groups:
        used, keep = -sep, []
        for p in g:
            if used + sep + _n(llm, p) > budget:
                break
            keep.append(p)
            used += sep + _n(llm, p)
        dropped += len(g) - len(keep)
        if keep:
            kept.append(keep)
    return kept, dropped


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


# -- the algorithm -----------------------------------------------------------------------
def encode_windows(llm: Any, windows: list[list[int]], dedupe: str = "prefix") -> tuple[Any, list[int], int]:
    """Encode each window on its own (right-padded micro-batches, positions 0..len-1) and
    concatenate the KV caches. Returns ``(layers, starts, max_len)``: per layer ``(k, v)`` of
    shape (1, kv_heads, K, head_dim); ``starts[i]``: first token of window ``i`` kept (the ones
    before it are shared with window 0); ``max_len``: the longest window."""
    import torch

    if dedupe not in ("prefix", "bos", "none"):
        raise UserError(f"dedupe must be 'prefix', 'bos' or 'none', got {dedupe!r}.")
    lens = [len(w) for w in windows]
    shared = 0
    while shared < min(lens) - 1 and all(w[shared] == windows[0][shared] for w in windows):
        shared += 1
    drop = {"prefix": shared, "bos": min(shared, 1), "none": 0}[dedupe]
    starts = [0] + [drop] * (len(windows) - 1)
    cap = max(1, getattr(llm, "batch_tokens", 8192) // max(lens))
    parts: list[list[tuple[Any, Any]]] = []  # per window: per layer (k, v) (kv_heads, n_i, D)
    for b0 in range(0, len(windows), cap):
        batch = windows[b0:b0 + cap]
        L = max(len(w) for w in batch)
        ids = torch.zeros((len(batch), L), dtype=torch.long)  # (b, L) right-padded
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for r, w in enumerate(batch):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        pos = torch.arange(L).expand(len(batch), L)
        _, cache = llm.forward(ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        layers = cache_layers(cache)
        for r, w in enumerate(batch):
            s = starts[b0 + r]
            parts.append([(k[r, :, s:len(w)], v[r, :, s:len(w)]) for k, v in layers])
    n_layers = len(parts[0])
    cat = [(torch.cat([p[i][0] for p in parts], dim=1)[None], torch.cat([p[i][1] for p in parts], dim=1)[None])
           for i in range(n_layers)]  # (1, kv_heads, K, D)
    return cat, starts, max(lens)


def pcw_prefill(llm: Any, windows: list[list[int]], task: list[int], dedupe: str = "prefix") -> tuple[Any, Any, dict]:
    """Encode the windows, then the task tokens attending to all of them.
    Returns ``(logits (m, V) of the task tokens, cache, info)``."""
    import torch

    if not task:
        raise UserError("PCW needs at least one task token after the context.")
    layers, starts, max_len = encode_windows(llm, windows, dedupe)
    K, m = layers[0][0].shape[2], len(task)
    allowed = torch.ones((m, K + m), dtype=torch.bool)
    allowed[:, K:] = torch.ones((m, m), dtype=torch.bool).tril()  # causal among task tokens
    mask = additive(allowed, model_dtype(llm))[None, None]  # (1, 1, m, K+m)
    pos = (max_len + torch.arange(m))[None]  # (1, m)
    logits, cache = llm.forward(torch.tensor([task]), attention_mask=mask, position_ids=pos, past_key_values=layers)
    info = {"starts": starts, "max_len": max_len, "cache_tokens": K, "window_tokens": [len(w) for w in windows]}
    return logits[0], cache, info


def pcw_generate(llm: Any, windows: list[list[int]], task: list[int], max_new_tokens: int = 64,
                 stop: Sequence[str] | None = None, dedupe: str = "prefix") -> dict:
    """Greedy PCW generation. Returns ``{"text", "ids", "finish_reason", "logprob", "info"}``."""
    import torch

    logits, cache, info = pcw_prefill(llm, windows, task, dedupe)
    pos = info["max_len"] + len(task)  # position of the next token
    K = info["cache_tokens"] + len(task)
    eos, stops, dtype = set(llm.eos_token_ids), [s for s in (stop or []) if s], model_dtype(llm)
    out, lp_sum, reason, text = [], 0.0, "length", None
    last = logits[-1]  # (V,)
    while len(out) < max_new_tokens:
        lp = torch.log_softmax(last.float(), -1)
        t = int(lp.argmax())
        if t in eos:
            reason = "eos"
            break
        out.append(t)
        lp_sum += float(lp[t])
        text = stop_text(llm, out, stops)
        if text is not None:
            reason = "stop"
            break
        if len(out) >= max_new_tokens or pos >= llm.context_length:
            break
        mask = torch.zeros((1, 1, 1, K + 1), dtype=dtype)  # the new token sees everything
        step, cache = llm.forward(torch.tensor([[t]]), attention_mask=mask, position_ids=torch.tensor([[pos]]),
                                  past_key_values=cache)
        last, pos, K = step[0, -1], pos + 1, K + 1
    return {"text": text if text is not None else llm.decode(out), "ids": out, "finish_reason": reason,
            "logprob": lp_sum, "info": info}


def cite(chunks: list[Chunk], text: str, question: str, scores: dict, limit: int = 5) -> list:
    """The chunks that share words with the answer, best first, narrowed to their best sentence."""
    ranked = sorted((c for c in chunks if support(c, text) > 0), key=lambda c: -support(c, text))[:limit]
    return [best_span(c, text, question).model_copy(update={"score": scores.get(c.id)}) for c in ranked]


@component("aggregate.pcw", outputs={"answer": Answer}, requires={"logits", "positions", "kv"})
class PCW(Component):
    """Parallel Context Windows over the chunks.

    ``n_windows``: pack the chunks into that many windows (None: as many as needed, each filled
    to ``window_tokens``); ``window_tokens``: context tokens per window (default and maximum:
    what fits the model's context next to the prompt and the answer); ``dedupe``: "prefix"
    (keep one copy of the prefix all windows share), "bos" (only the first token, as the paper)
    or "none"; ``order``: "score" (incoming order) or "document"."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: int = 64, n_windows: int | None = None,
                 window_tokens: int | None = None, prompt: str = PROMPT, dedupe: str = "prefix", order: str = "score",
                 stop: list[str] | None = None, chat: bool = True, max_chunks: int | None = None):
        if "{context}" not in prompt or "{question}" not in prompt:
            raise UserError("prompt must contain {context} and {question}.")
        if dedupe not in ("prefix", "bos", "none"):
            raise UserError(f"dedupe must be 'prefix', 'bos' or 'none', got {dedupe!r}.")
        if order not in ("score", "document"):
            raise UserError(f"order must be 'score' or 'document', got {order!r}.")
        if n_windows is not None and n_windows < 1 or window_tokens is not None and window_tokens < 1:
            raise UserError("n_windows and window_tokens must be >= 1 (or null).")
        self.llm, self.max_new_tokens, self.n_windows, self.window_tokens = llm, max_new_tokens, n_windows, window_tokens
        self.prompt, self.dedupe, self.order, self.stop, self.chat, self.max_chunks = prompt, dedupe, order, stop, chat, max_chunks

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        used, scores = in_order(chunks, self.max_chunks, self.order)
        head, tail = template_parts(llm, self.prompt, question, self.chat)
        sp = specials(llm, self.chat)
        task = token_ids(llm, tail)
        room = llm.context_length - len(token_ids(llm, head, sp)) - len(task) - self.max_new_tokens - 2  # type: ignore[union-attr]
        budget = min(room, self.window_tokens or room)
        windows, dropped = make_windows(llm, used, budget, self.n_windows) if used else ([[]], 0)
        ids = []
        for w in windows:
            text = window_text(w)
            x = token_ids(llm, head + text, sp)
            while len(x) + len(task) + self.max_new_tokens > llm.context_length and text:  # type: ignore[union-attr]
                text = llm.truncate(text, llm.count_tokens(text) - 8)  # type: ignore[union-attr]  # tokenizer boundary effects
                x = token_ids(llm, head + text, sp)
            ids.append(x)
        progress(0, 1, f"pcw: {len(ids)} windows")
        out = pcw_generate(llm, ids, task, self.max_new_tokens, self.stop, self.dedupe)
        progress(1, 1, "pcw")
        info = out["info"]
        n_prompt = info["cache_tokens"] + len(task)
        emit("llm_call", model=getattr(llm, "model_id", "llm"), op="pcw", n_prompts=1,
             prompt_tokens=sum(info["window_tokens"]) + len(task), completion_tokens=len(out["ids"]), cached=0)
        text = out["text"].strip()
        context_chunks = [c for w in windows for c in w]
        trace = {"strategy": "pcw", "windows": len(ids), "window_tokens": info["window_tokens"], "max_window": info["max_len"],
                 "budget": budget, "cache_tokens": n_prompt, "chunks_given": len(used), "chunks_used": len(context_chunks),
                 "chunks_dropped": dropped, "finish_reason": out["finish_reason"], "calls": 1,
                 "prompt_tokens": sum(info["window_tokens"]) + len(task), "completion_tokens": len(out["ids"])}
        trace["tokens"] = trace["prompt_tokens"] + trace["completion_tokens"]
        score = out["logprob"] / max(1, len(out["ids"]))
        return {"answer": Answer(text=text, citations=cite(context_chunks, text, question, scores), score=score, trace=trace)}
