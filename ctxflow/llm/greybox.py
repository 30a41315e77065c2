"""The grey box of :class:`ctxflow.llm.local.LocalLM` (used by Parallel Context Windows, NBCE, CogLTX,
Map-Rerank, ...): per-token log-probs of continuations (batched, cached), next-token log-softmax,
and the raw ``forward`` with explicit 4-D masks, position ids and KV caches (not cached).

A mixin: it relies on LocalLM's loaded ``_model``/``_tok``, ``warm_up``, prompt encoding, micro-batching
and LLM-call cache.
"""
from __future__ import annotations

import copy
from typing import Sequence

from ..errors import ContextOverflowError, UserError
from ..events import emit
from .base import Prompt
from .cache import make_key


class GreyBox:
    """Grey-box methods of :class:`~ctxflow.llm.local.LocalLM`."""

    def _logits(self, hidden):
        """The model's output head on hidden states (B, L, H) -> float logits (B, L, V): the lm head plus
        the post-processing transformers' models do after it (Granite's ``logits_scaling``, Cohere's
        ``logit_scale``, Gemma's final soft-capping). Checked once against the model's own forward."""
        if not getattr(self._model, "_ctxflow_head_checked", False):
            self._check_head()
        return self._head(hidden)

    def _head(self, hidden):
        import torch

        cfg = self._model.config
        logits = self._model.get_output_embeddings()(hidden).float()
        if getattr(cfg, "logits_scaling", None):
            logits = logits / cfg.logits_scaling
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _check_head(self) -> None:
        """Refuse grey-box scoring on a model whose output head does more than :meth:`_head` knows
        (an unseen architecture): compare with the model's own logits on a few tokens."""
        import torch

        m = self._model
        ids = torch.tensor([[self._pad_id or 0, 1, 2, 3]], device=m.device)
        mask = torch.ones_like(ids)  # given, so models that warn without one (GPT-2) stay quiet
        with torch.inference_mode():
            want = m(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            got = self._head(self._decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state)
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        if not err < 1e-2:
            raise UserError(f"{type(m).__name__} post-processes its logits in a way ctxflow's grey-box calls (logprobs, "
                             f"next-token logits: Map-Rerank, MemRecall, PCW, NBCE) do not reproduce (relative difference "
                             f"{err:.2g}); use black-box strategies (aggregate.stuff, map_reduce, refine) with this model")
        m._ctxflow_head_checked = True

    def _decoder(self):
        """The model without its output head (hidden states out)."""
        m = self._model
        return m.get_decoder() if hasattr(m, "get_decoder") else m.base_model

    def _hidden_right_padded(self, seqs: list[list[int]]):
        """Last hidden states (B, L, H) of right-padded ``seqs`` (positions 0..n-1)."""
        import torch

        dev = self._model.device
        L = max(len(s) for s in seqs)
        inp = torch.full((len(seqs), L), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for r, s in enumerate(seqs):
            inp[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        pos = torch.arange(L).expand(len(seqs), L)
        out = self._decoder()(input_ids=inp.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=False)
        return out.last_hidden_state

    def logprobs(self, prompts: Sequence[Prompt], continuations: Sequence[str], chat: bool = True) -> list[list[float]]:
        """Per-token log-probs of each continuation given its prompt (batched, cached). The
        continuation is tokenized on its own (no special tokens) and appended to the prompt's tokens
        (chat template with generation prompt when ``chat``)."""
        import torch

        self.warm_up()
        if len(prompts) != len(continuations):
            raise ValueError(f"logprobs needs one continuation per prompt: {len(prompts)} prompts, {len(continuations)} continuations")
        texts, pids = self._encode_prompts(prompts, chat)
        cids = [list(self._tok(c, add_special_tokens=False)["input_ids"]) if c else [] for c in continuations]
        seqs = [p + c for p, c in zip(pids, cids)]
        for i, s in enumerate(seqs):
            self._check_fits(len(s), i, "prompt + continuation")
        keys = [make_key(self.model_id, "logprobs", {"prompt": t, "continuation": c}, self._params()) for t, c in zip(texts, continuations)]
        cache = self._cache()
        found = cache.get_many(keys) if cache is not None and keys else {}
        res: list[list[float] | None] = [found.get(k) if k in found else None for k in keys]
        n_cached = sum(r is not None for r in res)
        todo = [i for i, r in enumerate(res) if r is None and cids[i]]
        for i, r in enumerate(res):
            if r is None and not cids[i]:
                res[i] = []
        ptoks = 0
        with torch.inference_mode():
            for batch in self._micro_batches([len(seqs[i]) for i in todo]):
                rows = [todo[j] for j in batch]
                hidden = self._hidden_right_padded([seqs[i] for i in rows])
                puts = []
                for b, i in enumerate(rows):
                    np_, nc = len(pids[i]), len(cids[i])
                    start = max(np_ - 1, 0)
                    h = hidden[b, start : np_ + nc - 1]
                    lp = torch.log_softmax(self._logits(h), dim=-1)
                    targets = torch.tensor(cids[i][1:] if np_ == 0 else cids[i], device=lp.device)
                    vals = lp.gather(1, targets[:, None])[:, 0].tolist()
                    if np_ == 0:  # the first token has no context to be predicted from
                        vals = [float("nan")] + vals
                    res[i] = vals
                    ptoks += len(seqs[i])
                    puts.append((keys[i], self.model_id, "logprobs", vals))
                if cache is not None:
                    cache.put_many(puts)
        emit("llm_call", model=self.model_id, op="logprobs", n_prompts=len(keys), prompt_tokens=ptoks, completion_tokens=0, cached=n_cached)
        return res  # type: ignore[return-value]

    def next_token_logits(self, prompts: Sequence[Prompt], chat: bool = True):
        """``torch.Tensor`` (B, V), float32, on the CPU: the **log-softmax** (normalised log-probs) of
        the next token after each prompt. Batched (right padding), not cached."""
        import torch

        self.warm_up()
        _, ids = self._encode_prompts(prompts, chat)
        for i, x in enumerate(ids):
            self._check_fits(len(x), i)
            if not x:
                raise ValueError(f"prompt {i} is empty: there is no token to predict from")
        out = [None] * len(ids)
        with torch.inference_mode():
            for batch in self._micro_batches([len(x) for x in ids]):
                hidden = self._hidden_right_padded([ids[i] for i in batch])
                last = torch.tensor([len(ids[i]) - 1 for i in batch], device=hidden.device)
                h = hidden[torch.arange(len(batch), device=hidden.device), last]
                lp = torch.log_softmax(self._logits(h), dim=-1).cpu()
                for b, i in enumerate(batch):
                    out[i] = lp[b]
        emit("llm_call", model=self.model_id, op="next_token_logits", n_prompts=len(ids), prompt_tokens=sum(map(len, ids)), completion_tokens=0, cached=0)
        if not ids:
            return torch.zeros((0, self._model.config.vocab_size), dtype=torch.float32)
        return torch.stack(out)  # type: ignore[arg-type]

    def _forward_limits(self) -> tuple:
        """``(own window, takes position ids)`` of the loaded model, worked out once per model (``forward``
        runs once per generated token in PCW/NBCE): its sliding/chunked window (``ring.own_window``), and
        whether chosen position ids move its tokens (not with ALiBi, which has none)."""
        m = self._model
        lim = getattr(m, "_ctxflow_forward_limits", None)
        if lim is None:
            import inspect

            from ..attention.ring import own_window

            takes = "position_ids" in inspect.signature(m.forward).parameters and not getattr(m.config, "alibi", False)
            lim = m._ctxflow_forward_limits = (own_window(m.config), takes)
        return lim

    def _check_own_window(self, total: int) -> None:
        """Refuse a raw forward longer than the model's own sliding/chunked window: its cache then keeps only
        the window, so explicit masks and reused prefixes (PCW, NBCE) would not line up with it."""
        from ..attention.ring import cuts

        own = self._forward_limits()[0]
        if cuts(own, total):
            w = own[0]
            raise UserError(f"{type(self._model).__name__} limits its {own[1]} layers to the last {w} tokens, and this "
                            f"grey-box forward (PCW, NBCE: explicit masks, reused KV) spans {total} tokens. NBCE stays inside the "
                            f"window with max_context: {w} on the model, PCW only with windows that together fit it; "
                            "aggregate.stuff, map_reduce and refine run on any model.")

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache: bool = True,
                logits_to_keep: int = 0):
        """One raw forward pass: ``(logits, past_key_values)``; logits are **raw** (not normalised),
        float32, shape (B, Q, V) (only the last ``logits_to_keep`` positions when it is > 0).

        * ``input_ids``: (B, Q) LongTensor or (nested) lists of ints.
        * ``attention_mask``: None (attend to everything before, causal by index), a 2-D (B, K)
          padding mask of 0/1 where K = cached tokens + Q, or an explicit 4-D (B, 1, Q, K) mask —
          bool (True = attend) or float (additive: 0 = attend, -inf = blocked), used as is.
        * ``position_ids``: (B, Q) (default: continuing after the cache). They only move RoPE; which
          token sees which is decided by the mask alone.
        * ``past_key_values``: a transformers ``Cache`` (e.g. from a previous call) or a list of
          per-layer ``(key, value)`` tensors (B, kv_heads, T, head_dim). **It is extended in place**:
          use :meth:`clone_cache` to branch from a cached prefix more than once.
        Raises :class:`ContextOverflowError` when a position reaches the context length. Emits no
        event (callers that loop over forward report their own ``llm_call``).
        """
        import torch
        from transformers import Cache, DynamicCache

        self.warm_up()
        model = self._model
        dev = model.device
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        input_ids = input_ids.to(dev)
        B, Q = input_ids.shape
        if past_key_values is not None and not isinstance(past_key_values, Cache):
            past_key_values = DynamicCache(list(past_key_values), config=model.config)
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache(config=model.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        K = past + Q
        self._check_own_window(K)
        if position_ids is None:
            position_ids = torch.arange(past, K, device=dev).expand(B, Q)
        else:
            if not self._forward_limits()[1]:
                raise UserError(f"{type(model).__name__} takes no position ids (its positions are fixed, e.g. ALiBi), so "
                                "grey-box calls that place tokens at chosen positions (PCW, NBCE) cannot run on it; use "
                                "aggregate.stuff, map_reduce or refine with this model.")
            if not isinstance(position_ids, torch.Tensor):
                position_ids = torch.tensor(position_ids, dtype=torch.long)
            if position_ids.dim() == 1:
                position_ids = position_ids[None].expand(B, -1)
            position_ids = position_ids.to(dev)
            if tuple(position_ids.shape) != (B, Q):
                raise ValueError(f"position_ids must have shape ({B}, {Q}), got {tuple(position_ids.shape)}")
        if Q and int(position_ids.max()) >= self.context_length:
            raise ContextOverflowError(
                f"position {int(position_ids.max())} is past the context of {self.model_id} ({self.context_length} tokens)."
            )
        if attention_mask is None:
            # an explicit all-ones 2-D mask: without it transformers reads restarting position ids
            # as packed sequences and would change the attention pattern
            attention_mask = torch.ones((B, K), dtype=torch.long, device=dev)
        else:
            if not isinstance(attention_mask, torch.Tensor):
                attention_mask = torch.tensor(attention_mask)
            attention_mask = attention_mask.to(dev)
            if attention_mask.dim() == 2:
                if tuple(attention_mask.shape) != (B, K):
                    raise ValueError(f"a 2-D attention_mask must have shape ({B}, {K}) (cached + new tokens), got {tuple(attention_mask.shape)}")
                attention_mask = attention_mask.long()
            elif attention_mask.dim() == 4:
                if attention_mask.shape[0] not in (1, B) or attention_mask.shape[1] != 1 or tuple(attention_mask.shape[2:]) != (Q, K):
                    raise ValueError(f"a 4-D attention_mask must have shape ({B}, 1, {Q}, {K}), got {tuple(attention_mask.shape)}")
                if attention_mask.dtype != torch.bool:
                    attention_mask = attention_mask.to(model.dtype)
                if attention_mask.shape[0] != B:
                    attention_mask = attention_mask.expand(B, -1, -1, -1)
            else:
                raise ValueError(f"attention_mask must be 2-D (B, K) or 4-D (B, 1, Q, K), got {attention_mask.dim()}-D")
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)
        return out.logits.float(), (out.past_key_values if use_cache else None)

    @staticmethod
    def clone_cache(past_key_values):
        """A deep copy of a KV cache (to continue one cached prefix several times)."""
        return copy.deepcopy(past_key_values)

    @staticmethod
    def cache_length(past_key_values) -> int:
        """Tokens held in a KV cache."""
        return 0 if past_key_values is None else int(past_key_values.get_seq_length())
