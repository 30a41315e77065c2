"""``aggregate.nbce``: Naive Bayes-based Context Extension (Su Jianlin 2023; NAACL 2024).

For contexts ``S_1..S_n`` and the answer so far ``T``::

    log p(T | S_1..S_n) = (β+1) · pool_k log p(T | S_k) − β · log p(T) + const

One batch holds a *no-context* row and one row per context, each row the same prompt template
("context + question"; the no-context row has an empty context), left-padded, with a KV cache.
Each step is one batched forward; per row the next-token log-probs are cut to their top-p
(0.95) set, then pooled:

* ``min_entropy`` (default): the context whose cut distribution has the lowest entropy; the
  previously chosen context's entropy is lowered by ``eta`` (0.1) so the choice is sticky;
* ``mean``: the mean of the rows' cut log-probs (a token cut in a row counts as −100 there).

``fused = (β+1)·pool − β·logp(no context)`` (default β = 0.25); where the no-context log-prob
is below −100 (e.g. cut by its top-p) the pooled log-probs are used alone. The next token is
the argmax of ``fused`` and is appended to **every** row. Stops at EOS, a stop string or
``max_new_tokens``. With one context and β = 0 this is exactly greedy generation on that
context's prompt. Needs the grey box of :class:`ctxflow.llm.local.LocalLM`.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ..errors import UserError
from ..events import emit, progress
from ..graph.component import Component, LLMRef, component
from ..graph.params import FiniteFloat, NonNegativeFloat, PositiveInt, UnitFloat, check_template
from ..types import Answer, Chunk
from .base import ChunkList, best_span, check_question, in_order, support
from .grey import additive, cache_layers, check_one_slot, make_windows, model_dtype, stop_text, window_text
from .pcw import cite
from .stuff import PROMPT

POOLINGS = ("min_entropy", "mean")


def top_p_cut(logp: Any, p: float) -> Any:
    """``logp`` (R, V) with every token outside each row's top-p set set to −inf (the most
    likely token always stays)."""
    import torch

    if p >= 1.0:
        return logp
    sorted_lp, idx = logp.sort(-1, descending=True)  # (R, V)
    before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass strictly before each token
    cut_sorted = before >= p
    cut = torch.zeros_like(cut_sorted).scatter(-1, idx, cut_sorted)
    return logp.masked_fill(cut, float("-inf"))


def entropy(logp: Any) -> Any:
    """Entropy (R,) of each row of (R, V) log-probs (−inf entries contribute 0)."""
    p = logp.exp()
    return -(p * logp.clamp(min=-100)).sum(-1)


def fuse(logp: Any, beta: float = 0.25, pooling: str = "min_entropy", top_p: float = 0.95, eta: float = 0.1,
         prev: int | None = None) -> tuple[Any, int]:
    """One NBCE step. ``logp``: (1 + n, V) log-probs, row 0 without context. Returns
    ``(fused (V,), k)`` where ``k`` is the chosen context (0-based; for ``mean``, the row with
    the lowest entropy, for the record)."""
    cut = top_p_cut(logp, top_p)  # (1+n, V)
    ent = entropy(cut[1:])  # (n,)
    if prev is not None and eta:
        ent[prev] -= eta
    k = int(ent.argmin())
    if pooling == "min_entropy":
        pooled = cut[1 + k]  # (V,)
    elif pooling == "mean":
        pooled = cut[1:].clamp(min=-100).mean(0)
    else:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    uncond = cut[0]
    import torch

    fused = torch.where(uncond > -100, (beta + 1) * pooled - beta * uncond, pooled)
    return fused, k


def nbce_prefill(llm: Any, rows: list[list[int]]) -> tuple[Any, Any, Any, Any]:
    """Encode the token rows left-padded in one batch (micro-batched by ``batch_tokens``), each
    row with positions ``0..len-1`` and attending only to its own real tokens. Returns
    ``(last (B, V) raw next-token logits, cache (per layer (k, v), each (B, kv_heads, L, D)),
    real (B, L) bool: which cached keys are real tokens, next_pos (B,))``."""
    import torch

    B, L = len(rows), max(len(r) for r in rows)
    dtype, pad_id = model_dtype(llm), int(getattr(llm, "_pad_id", 0) or 0)
    ids = torch.full((B, L), pad_id, dtype=torch.long)  # (B, L) left-padded
    real = torch.zeros((B, L), dtype=torch.bool)  # (B, L) which keys are real tokens
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        real[b, L - len(r):] = True
    pads = torch.tensor([L - len(r) for r in rows])  # (B,)
    pos = (torch.arange(L)[None] - pads[:, None]).clamp(min=0)  # (B, L): each row counts from 0
    causal = torch.ones((L, L), dtype=torch.bool).tril()  # (L, L)
    allowed = causal[None] & real[:, None, :]  # (B, L, L)
    allowed |= torch.eye(L, dtype=torch.bool)[None]  # a pad query sees itself (no empty row)
    # micro-batches of rows (all padded to L, so their caches stack along the batch)
    cap = max(1, getattr(llm, "batch_tokens", 8192) // L)
    logits, parts = [], []
    for b0 in range(0, B, cap):
        sl = slice(b0, b0 + cap)
        lg, cache = llm.forward(ids[sl], attention_mask=additive(allowed[sl], dtype)[:, None], position_ids=pos[sl],
                                use_cache=True, logits_to_keep=1)
        logits.append(lg[:, -1])
        parts.append(cache_layers(cache))
    last = torch.cat(logits)  # (B, V)
    layers = [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts])) for i in range(len(parts[0]))]
    return last, layers, real, torch.tensor([len(r) for r in rows])


def nbce_generate(llm: Any, rows: list[list[int]], max_new_tokens: int = 64, stop: Sequence[str] | None = None,
                  beta: float = 0.25, pooling: str = "min_entropy", top_p: float = 0.95, eta: float = 0.1) -> dict:
    """Greedy NBCE over token rows (row 0 = no context). Returns
    ``{"text", "ids", "finish_reason", "chosen", "prompt_tokens"}``."""
    import torch

    B = len(rows)
    if B < 2:
        raise UserError("NBCE needs the no-context row and at least one context row.")
    dtype = model_dtype(llm)
    last, cache, real, nxt_pos = nbce_prefill(llm, rows)
    eos, stops = set(llm.eos_token_ids), [s for s in (stop or []) if s]
    out, chosen, reason, text, prev = [], [], "length", None, None
    while len(out) < max_new_tokens:
        logp = torch.log_softmax(last.float(), -1)  # (B, V)
        fused, k = fuse(logp, beta, pooling, top_p, eta, prev)
        prev = k
        t = int(fused.argmax())
        chosen.append(k)
        if t in eos:
            reason = "eos"
            break
        out.append(t)
        text = stop_text(llm, out, stops)
        if text is not None:
            reason = "stop"
            break
        if len(out) >= max_new_tokens or int(nxt_pos.max()) >= llm.context_length:
            break
        real = torch.cat([real, torch.ones((B, 1), dtype=torch.bool)], dim=1)  # (B, K+1)
        step, cache = llm.forward(torch.full((B, 1), t, dtype=torch.long), attention_mask=additive(real, dtype)[:, None, None],
                                  position_ids=nxt_pos[:, None], past_key_values=cache)
        last, nxt_pos = step[:, -1], nxt_pos + 1
    return {"text": text if text is not None else llm.decode(out), "ids": out, "finish_reason": reason,
            "chosen": chosen, "prompt_tokens": sum(len(r) for r in rows)}


@component("aggregate.nbce", outputs={"answer": Answer}, requires={"logits", "positions", "kv"})
class NBCE(Component):
    """NBCE logit fusion over the chunks packed into contexts.

    ``n_contexts``: pack the chunks into that many contexts (None: as many as needed, each
    filled to ``context_tokens``); ``context_tokens``: tokens per context (default and maximum:
    what fits the model's context next to the prompt and the answer). ``beta``, ``pooling``,
    ``eta``, ``top_p``: see the module docstring."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 64, n_contexts: PositiveInt | None = None,
                 context_tokens: PositiveInt | None = None, beta: FiniteFloat = 0.25, pooling: str = "min_entropy", eta: NonNegativeFloat = 0.1,
                 top_p: UnitFloat = 0.95, prompt: str = PROMPT, order: str = "score", stop: list[str] | None = None,
                 chat: bool = True, max_chunks: PositiveInt | None = None):
        check_template("prompt", prompt, ("context", "question"))
        check_one_slot(prompt)
        if pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
        if order not in ("score", "document"):
            raise UserError(f"order must be 'score' or 'document', got {order!r}.")
        if not 0 < top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}.")
        self.llm, self.max_new_tokens, self.n_contexts, self.context_tokens = llm, max_new_tokens, n_contexts, context_tokens
        self.beta, self.pooling, self.eta, self.top_p = beta, pooling, eta, top_p
        self.prompt, self.order, self.stop, self.chat, self.max_chunks = prompt, order, stop, chat, max_chunks

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        used, scores = in_order(chunks, self.max_chunks, self.order)

        def encode(context: str) -> list[int]:
            return llm.encode(self.prompt.format(context=context, question=question), chat=self.chat)  # type: ignore[union-attr]

        empty = encode("")
        room = llm.context_length - len(empty) - self.max_new_tokens - 2  # type: ignore[union-attr]
        budget = min(room, self.context_tokens or room)
        contexts, dropped = make_windows(llm, used, budget, self.n_contexts) if used else ([], 0)
        rows = [empty]
        for w in contexts:
            text = window_text(w)
            x = encode(text)
            while len(x) + self.max_new_tokens > llm.context_length and text:  # type: ignore[union-attr]
                text = llm.truncate(text, llm.count_tokens(text) - 8)  # type: ignore[union-attr]  # tokenizer boundary effects
                x = encode(text)
            rows.append(x)
        if len(rows) == 1:
            rows.append(empty)  # no chunks: the question alone
        progress(0, 1, f"nbce: {len(rows) - 1} contexts")
        out = nbce_generate(llm, rows, self.max_new_tokens, self.stop, self.beta, self.pooling, self.top_p, self.eta)
        progress(1, 1, "nbce")
        emit("llm_call", model=getattr(llm, "model_id", "llm"), op="nbce", n_prompts=len(rows),
             prompt_tokens=out["prompt_tokens"], completion_tokens=len(out["ids"]) * len(rows), cached=0)
        text = out["text"].strip()
        votes = Counter(out["chosen"])
        picked: list[Chunk] = [c for k, _ in votes.most_common() if k < len(contexts) for c in contexts[k]]
        citations = cite(picked, text, question, scores)
        if not citations and picked:  # nothing shares words with the answer: the most chosen context's best chunk
            best = max(contexts[votes.most_common(1)[0][0]], key=lambda c: support(c, text))
            citations = [best_span(best, text, question).model_copy(update={"score": scores.get(best)})]
        trace = {"strategy": "nbce", "contexts": len(rows) - 1, "context_tokens": [len(r) for r in rows[1:]], "budget": budget,
                 "beta": self.beta, "pooling": self.pooling, "chosen": out["chosen"], "votes": dict(votes),
                 "chunks_given": len(used), "chunks_dropped": dropped, "finish_reason": out["finish_reason"], "calls": 1,
                 "rows": len(rows), "prompt_tokens": out["prompt_tokens"], "completion_tokens": len(out["ids"]) * len(rows)}
        trace["tokens"] = trace["prompt_tokens"] + trace["completion_tokens"]
        return {"answer": Answer(text=text, citations=citations, trace=trace)}
