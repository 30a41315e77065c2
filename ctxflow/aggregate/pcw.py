"""``aggregate.pcw``: Parallel Context Windows (Ratner et al., ACL 2023) on a local model.

The chunks are packed into windows that each fit the model's (possibly emulated) context, so
the whole can be many times longer than the window:

* every window is the prompt up to the context slot (the chat prefix with its BOS, the
  instruction) followed by the window's text, encoded on its own with positions ``0..len-1``;
  windows never attend to each other;
* the windows' KV caches are concatenated along the sequence; the leading tokens all windows
  share (the BOS, and with ``dedupe="prefix"`` the whole common chat/instruction prefix, whose
  keys and values are identical in every window) are kept once;
* the task tokens (the rest of the prompt: question, end of turn, assistant header, and an
  optional ``answer_prefix``) and the generated answer attend to every window and to earlier
  task tokens, with positions starting at the longest window's length: task token ``t`` sits
  at ``max_len + t``;
* with ``rescale`` (the component's default), their attention logits on each window's own
  tokens get the bias −log(B) for B windows (the shared prefix, kept once, gets none), so that
  the windows together weigh as much as one window — the rescaled attention of Structured
  Prompting (Hao et al., 2022). Without it the B windows' keys outweigh the attention sink and
  the task tokens B-fold, and the small default model mostly stops at once or babbles with
  8–13 windows; ``rescale=0`` is the paper's PCW exactly;
* optionally (``keep_windows``) only the best windows are kept, ranked by embedding
  similarity to the question, incoming retrieval scores or the model's relevance log-odds —
  PCW over the retrieved windows, as the paper used it for retrieval-augmented QA;
* greedy decoding with the KV cache, stopping at EOS, a stop string or ``max_new_tokens``.

With one window this is exactly ordinary greedy generation on the same prompt (the bias is
zero with one window). Needs the grey box of :class:`ctxflow.llm.local.LocalLM` (``render``,
``tokenizer``, ``forward`` with 4-D masks, position ids and KV caches); works with any
Llama-family model (GQA included).

The grey-box helpers (template split, window packing, cache plumbing, stop strings) live in
:mod:`ctxflow.aggregate.grey`, shared with :mod:`ctxflow.aggregate.nbce`.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import UserError
from ..events import emit, progress
from ..graph.component import Component, LLMRef, OptionalEmbedderRef, component
from ..graph.params import NonNegativeFloat, PositiveInt, check_template
from ..types import Answer, Chunk
from .base import ChunkList, SpanScores, best_span, check_question, in_order, support
from .grey import additive, cache_layers, check_one_slot, make_windows, model_dtype, specials, stop_text, template_parts, token_ids, window_text
from .stuff import PROMPT

#: the default prompt with ``question_in_windows``: the question sits in every window before its
#: text (each window is encoded knowing what is asked) and is asked again in the task tokens
PROMPT_Q = (
    "Answer the question using only the context below. Answer briefly.\n\n"
    "Question: {question}\n\n"
    "Context:\n{context}\n\n"
    "Question: {question}"
)
RANKS = ("embedding", "score", "relevance", "order")


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


def window_bias(starts: list[int], window_tokens: list[int], rescale: float = 1.0) -> Any:
    """Additive attention bias (K,) of the task tokens on the concatenated windows:
    −rescale·log(B) on every window's own tokens, 0 on the shared prefix kept once (and
    everywhere with one window or ``rescale=0``). With 1.0 the B windows together weigh what
    one window weighs: the rescaled attention of Structured Prompting (Hao et al. 2022)."""
    import math

    import torch

    K = sum(n - s for n, s in zip(window_tokens, starts))
    bias = torch.zeros(K)
    if rescale and len(window_tokens) > 1:
        shared = starts[1]  # window 0's first tokens, which the other windows dropped
        bias[shared:] = -float(rescale) * math.log(len(window_tokens))
    return bias


def pcw_prefill(llm: Any, windows: list[list[int]], task: list[int], dedupe: str = "prefix",
                rescale: float = 0.0) -> tuple[Any, Any, dict]:
    """Encode the windows, then the task tokens attending to all of them (``rescale=0``, the
    default here: the paper's PCW; the component defaults to 1.0).
    Returns ``(logits (m, V) of the task tokens, cache, info)``; ``info["bias"]``: the additive
    bias (K,) on the window tokens (see :func:`window_bias`), for the decoding steps."""
    import torch

    if not task:
        raise UserError("PCW needs at least one task token after the context.")
    layers, starts, max_len = encode_windows(llm, windows, dedupe)
    K, m = layers[0][0].shape[2], len(task)
    dtype = model_dtype(llm)
    bias = window_bias(starts, [len(w) for w in windows], rescale).to(dtype)  # (K,)
    causal = additive(torch.ones((m, m), dtype=torch.bool).tril(), dtype)  # (m, m) among task tokens
    mask = torch.cat([bias.expand(m, K), causal], dim=1)[None, None]  # (1, 1, m, K+m)
    pos = (max_len + torch.arange(m))[None]  # (1, m)
    logits, cache = llm.forward(torch.tensor([task]), attention_mask=mask, position_ids=pos, past_key_values=layers)
    info = {"starts": starts, "max_len": max_len, "cache_tokens": K, "window_tokens": [len(w) for w in windows],
            "bias": bias}
    return logits[0], cache, info


def pcw_generate(llm: Any, windows: list[list[int]], task: list[int], max_new_tokens: int = 64,
                 stop: Sequence[str] | None = None, dedupe: str = "prefix", rescale: float = 0.0) -> dict:
    """Greedy PCW generation. Returns ``{"text", "ids", "finish_reason", "logprob", "info"}``."""
    import torch

    logits, cache, info = pcw_prefill(llm, windows, task, dedupe, rescale)
    pos = info["max_len"] + len(task)  # position of the next token
    dtype = model_dtype(llm)
    mask = torch.cat([info["bias"], torch.zeros(len(task), dtype=dtype)])  # what the next token sees
    eos, stops = set(llm.eos_token_ids), [s for s in (stop or []) if s]
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
        mask = torch.cat([mask, torch.zeros(1, dtype=dtype)])  # the new token sees everything
        step, cache = llm.forward(torch.tensor([[t]]), attention_mask=mask[None, None, None],
                                  position_ids=torch.tensor([[pos]]), past_key_values=cache)
        last, pos = step[0, -1], pos + 1
    return {"text": text if text is not None else llm.decode(out), "ids": out, "finish_reason": reason,
            "logprob": lp_sum, "info": info}


def cite(chunks: list[Chunk], text: str, question: str, scores: SpanScores, limit: int = 5) -> list:
    """The chunks that share words with the answer, best first, narrowed to their best sentence."""
    ranked = sorted((c for c in chunks if support(c, text) > 0), key=lambda c: -support(c, text))[:limit]
    return [best_span(c, text, question).model_copy(update={"score": scores.get(c)}) for c in ranked]


def rank_windows(llm: Any, windows: list[list[Chunk]], question: str, keep: int, rank: str = "relevance",
                 embedder: Any = None, scores: SpanScores | None = None) -> tuple[list[list[Chunk]], list[float]]:
    """The ``keep`` best windows, in their original order, and every window's score.

    ``rank="embedding"``: the best cosine between the question and the window's chunks
    (``embedder``); ``"score"``: the best incoming score of the window's chunks (``scores`` by
    chunk id, e.g. from a retriever upstream; unscored chunks count as −inf); ``"relevance"``:
    the model's own log-odds of "yes" to "does the passage contain the answer?" (one batched
    forward over the windows, no generation; see :func:`ctxflow.select.scoring.relevance_logodds`);
    ``"order"``: the first ``keep`` windows (scores: minus the index)."""
    if rank not in RANKS:
        raise UserError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}.")
    if rank == "order":
        return windows[:keep], [-float(i) for i in range(len(windows))]
    if rank == "embedding":
        import numpy as np

        if embedder is None:
            raise UserError("rank 'embedding' needs an embedder (embedder: <name of an embedding model>).")
        texts = [c.text for w in windows for c in w]
        cv = np.asarray(embedder.embed(texts, kind="passage"), dtype=float) if texts else np.zeros((0, 1))
        qv = np.asarray(embedder.embed([question], kind="query"), dtype=float)[0]
        sims, k, out = cv @ qv, 0, []
        for w in windows:
            out.append(float(max(sims[k:k + len(w)], default=float("-inf"))))
            k += len(w)
    elif rank == "score":
        got = [[scores.get(c) if scores is not None else None for c in w] for w in windows]
        out = [max((float(x) for x in g if x is not None), default=float("-inf")) for g in got]
    else:
        from ..select.scoring import JUDGE_PROMPT, relevance_logodds

        room = llm.context_length - llm.prompt_tokens(JUDGE_PROMPT.format(context="", question=question)) - 1
        texts = [llm.truncate(window_text(w), room) for w in windows]
        out = [float(x) for x in relevance_logodds(llm, texts, question)]
    best = sorted(sorted(range(len(windows)), key=lambda i: -out[i])[:keep])
    return [windows[i] for i in best], out


@component("aggregate.pcw", outputs={"answer": Answer}, requires={"logits", "positions", "kv"})
class PCW(Component):
    """Parallel Context Windows over the chunks.

    ``n_windows``: pack the chunks into that many windows (None: as many as needed, each filled
    to ``window_tokens``); ``window_tokens``: context tokens per window (default and maximum:
    what fits the model's context next to the prompt and the answer); ``dedupe``: "prefix"
    (keep one copy of the prefix all windows share), "bos" (only the first token, as the paper)
    or "none"; ``order``: "score" (incoming order) or "document".

    ``rescale`` (default 1.0): the task tokens' attention to each window's own tokens gets the
    additive bias −rescale·log(B) for B windows, so that with 1.0 all windows together weigh
    what one window weighs (see :func:`window_bias`); 0 is the paper's PCW exactly.
    ``question_in_windows`` (default False) picks the default prompt :data:`PROMPT_Q`: the
    question stands in every window before its text, so each window is encoded knowing what is
    asked, and is asked again in the task tokens (False: :data:`ctxflow.aggregate.stuff.PROMPT`,
    the question only in the task tokens). A ``prompt`` given explicitly is used as it is.
    ``answer_prefix`` (default "", e.g. "Answer:") starts the reply: the task tokens end with it.
    ``keep_windows``: when the chunks fill more windows, keep only that many, the best by
    ``rank`` — "embedding" (default; cosine of the question and the window's best chunk, needs
    ``embedder``), "score" (the best incoming chunk score, e.g. from a retriever), "relevance"
    (the model's own yes/no log-odds, one extra batched forward) or "order" (the first ones)."""

    def __init__(self, llm: LLMRef = "llm", max_new_tokens: PositiveInt = 64, n_windows: PositiveInt | None = None,
                 window_tokens: PositiveInt | None = None, prompt: str | None = None, dedupe: str = "prefix", order: str = "score",
                 stop: list[str] | None = None, chat: bool = True, max_chunks: PositiveInt | None = None,
                 question_in_windows: bool = False, answer_prefix: str = "", rescale: NonNegativeFloat = 1.0,
                 keep_windows: PositiveInt | None = None, rank: str = "embedding", embedder: OptionalEmbedderRef = None):
        prompt = prompt if prompt is not None else PROMPT_Q if question_in_windows else PROMPT
        check_template("prompt", prompt, ("context", "question"))
        check_one_slot(prompt)
        if dedupe not in ("prefix", "bos", "none"):
            raise UserError(f"dedupe must be 'prefix', 'bos' or 'none', got {dedupe!r}.")
        if order not in ("score", "document"):
            raise UserError(f"order must be 'score' or 'document', got {order!r}.")
        if rank not in RANKS:
            raise UserError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}.")
        if keep_windows and rank == "embedding" and embedder is None:
            raise UserError("keep_windows with rank 'embedding' needs an embedder (or rank: score / relevance / order).")
        self.llm, self.max_new_tokens, self.n_windows, self.window_tokens = llm, max_new_tokens, n_windows, window_tokens
        self.prompt, self.dedupe, self.order, self.stop, self.chat, self.max_chunks = prompt, dedupe, order, stop, chat, max_chunks
        self.answer_prefix, self.rescale, self.keep_windows, self.rank = answer_prefix or "", rescale, keep_windows, rank
        self.embedder = embedder

    def run(self, chunks: ChunkList, question: str) -> dict:
        question = check_question(question)
        llm = self.llm
        used, scores = in_order(chunks, self.max_chunks, self.order)
        head, tail = template_parts(llm, self.prompt, question, self.chat, self.answer_prefix)
        sp = specials(llm, self.chat)
        task = token_ids(llm, tail)
        room = llm.context_length - len(token_ids(llm, head, sp)) - len(task) - self.max_new_tokens - 2  # type: ignore[union-attr]
        budget = min(room, self.window_tokens or room)
        windows, dropped = make_windows(llm, used, budget, self.n_windows) if used else ([[]], 0)
        n_packed, window_scores = len(windows), None
        if self.keep_windows and len(windows) > self.keep_windows:
            before = sum(map(len, windows))
            windows, window_scores = rank_windows(llm, windows, question, self.keep_windows, self.rank, self.embedder, scores)
            dropped += before - sum(map(len, windows))
        ids = []
        for w in windows:
            text = window_text(w)
            x = token_ids(llm, head + text, sp)
            while len(x) + len(task) + self.max_new_tokens > llm.context_length and text:  # type: ignore[union-attr]
                text = llm.truncate(text, llm.count_tokens(text) - 8)  # type: ignore[union-attr]  # tokenizer boundary effects
                x = token_ids(llm, head + text, sp)
            ids.append(x)
        progress(0, 1, f"pcw: {len(ids)} windows")
        out = pcw_generate(llm, ids, task, self.max_new_tokens, self.stop, self.dedupe, self.rescale)
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
                 "prompt_tokens": sum(info["window_tokens"]) + len(task), "completion_tokens": len(out["ids"]),
                 "answer_prefix": self.answer_prefix, "rescale": self.rescale}
        if window_scores is not None:
            trace.update(windows_packed=n_packed, window_scores=[round(x, 3) for x in window_scores], rank=self.rank)
        trace["tokens"] = trace["prompt_tokens"] + trace["completion_tokens"]
        score = out["logprob"] / max(1, len(out["ids"]))
        return {"answer": Answer(text=text, citations=cite(context_chunks, text, question, scores), score=score, trace=trace)}
