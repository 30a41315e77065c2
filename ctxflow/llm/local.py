"""A local causal LM through transformers (CPU by default): black box and grey box.

``LocalLM(model="default")`` is SmolLM2-135M-Instruct (see :mod:`ctxflow.llm.models`); any local
Hugging Face folder or ``.gguf`` file works too. Construction is cheap (plain data); weights load
in :meth:`LocalLM.warm_up` or on first use, and are shared by every ``LocalLM`` in the process that
names the same weights, dtype and device.

Generation is a hand-written batched decode loop: prompts are sorted by length and split into
micro-batches of at most ``batch_tokens`` padded tokens, left-padded, with position ids that count
only real tokens (cumsum of the attention mask) and a KV cache; finished rows leave the batch.
Greedy batched output equals one-by-one output (the two differ only by float rounding, ~1e-4 in the
logits, which would flip an argmax only on a near-exact tie).

Every ``generate`` and ``logprobs`` call goes through the SQLite LLM-call cache
(:func:`ctxflow.llm.cache.default_cache`) when it is deterministic (greedy, or sampled with a seed);
only the prompts not found there reach the model. Each call emits one ``llm_call`` event;
its ``prompt_tokens``/``completion_tokens`` count the work actually done (cached prompts cost none)
and ``cached`` counts the prompts served from the cache.

Grey box (used by Parallel Context Windows, NBCE, ...): :meth:`LocalLM.logprobs`,
:meth:`LocalLM.next_token_logits` (log-softmax) and :meth:`LocalLM.forward` (raw logits, explicit
4-D masks, position ids and KV caches); these two are not cached. They live in :mod:`ctxflow.llm.greybox`.
"""
from __future__ import annotations

import numbers
import os
import threading
from contextlib import nullcontext
from typing import Any, Sequence

from ..errors import ContextOverflowError, UserError
from ..events import emit
from ..graph.registry import register_model
from .base import GREY_BOX, LLM, Generation, Prompt
from .cache import default_cache, make_key
from .greybox import GreyBox
from .models import ModelSource, load_causal_lm, resolve_llm, torch_dtype, trained_context

# (folder or gguf, dtype, device) -> (model, tokenizer): weights shared by all LocalLM instances
_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()

# special tokens that end a turn or a document in common model families
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<end_of_turn>", "<|end|>")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _default_threads() -> int:
    """Torch threads when ``threads`` is not given: ``OMP_NUM_THREADS`` when set (as torch itself does), else
    every core this process may run on."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        n = 0
    return n if n > 0 else _cpu_count()


def micro_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first), split so that rows x longest <= ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * max(longest, 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _check_generation_args(temperature: float, max_new_tokens: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0 \
            or temperature == float("inf"):  # also NaN
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise ValueError(f"max_new_tokens must be a whole number of tokens (0 or more), got {max_new_tokens!r}")


def _check_not_empty(ids: list[list[int]]) -> None:
    for i, x in enumerate(ids):
        if not x:
            raise UserError(f"prompt {i} is empty (no tokens): there is nothing to generate from; give some text")


def _sub_seed(seed: int, k: int) -> int:
    """Seed of the k-th copy of the same prompt within one call (k=0: ``seed`` itself)."""
    return seed if k == 0 else (seed * 1_000_003 + k * 7_919 + 12_345) % (2**63 - 1)


@register_model("local")
class LocalLM(GreyBox, LLM):
    """A local transformers causal LM.

    Parameters: ``model`` ("default" = SmolLM2-135M-Instruct, a HF folder or a .gguf file);
    ``max_context`` emulates a shorter window (``context_length`` = min(real, max_context));
    ``dtype`` (float32, bfloat16, float16); ``device`` ("cpu", "cuda", ...); ``batch_tokens``:
    the most padded prompt tokens in one forward micro-batch; ``cache``: use the LLM-call cache;
    ``threads``: torch CPU threads (default: ``OMP_NUM_THREADS`` if set, else all available cores).
    """

    capabilities = GREY_BOX

    def __init__(
        self,
        model: str | os.PathLike = "default",
        max_context: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_tokens: int = 8192,
        cache: bool = True,
        threads: int | None = None,
        attention: dict | str | None = None,
        rope_scaling: dict | str | None = None,
    ):
        if max_context is not None and max_context < 1:
            raise ValueError(f"max_context must be a positive number of tokens, got {max_context}")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be positive, got {threads}")
        torch_dtype(dtype)  # validates the name
        from ..attention.backend import normalize_attention
        from ..attention.rope import normalize_rope

        self.attention = normalize_attention(attention)  # None = dense; see ctxflow.attention.backend
        self.rope_scaling = normalize_rope(rope_scaling)  # None = as trained; see ctxflow.attention.rope
        self.model_name = os.fspath(model) if isinstance(model, os.PathLike) else model  # a Path dumps to YAML as text
        self.max_context = max_context
        self.dtype = dtype
        # CTXFLOW_DEVICE moves models declared on the default "cpu" (e.g. a YAML recipe) to another
        # device without editing the recipe (benchmarks on a GPU machine)
        self.device = os.environ.get("CTXFLOW_DEVICE", device) if device == "cpu" else device
        self.batch_tokens = batch_tokens
        self.cache = cache
        self.threads = threads
        self._source: ModelSource | None = None
        self._model = None
        self._tok = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading / identity
    def _resolve(self) -> ModelSource:
        if self._source is None:
            self._source = resolve_llm(self.model_name)
        return self._source

    @property
    def model_id(self) -> str:  # type: ignore[override]
        """Stable id of the weights (``smollm2-135m-instruct-q4_1`` for the default; folder/file
        name + a hash of the files' sizes and times otherwise), plus the attention backend and RoPE
        scaling when they are not the defaults. Resolves, never loads."""
        base = self._resolve().model_id
        if self.attention is None and self.rope_scaling is None:
            return base
        from ..attention.backend import variant_id

        return base + variant_id(self.attention, self.rope_scaling)

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import torch

        with self._lock:
            if self._model is not None:
                return
            torch.set_num_threads(self.threads or _default_threads())
            src = self._resolve()
            key = (str(src.folder or src.gguf), self.dtype, self.device)
            if self.attention is not None or self.rope_scaling is not None:  # its own copy of the weights
                key = key + (repr(self.attention), repr(self.rope_scaling))
            with _LOAD_LOCK:
                if key not in _LOADED:
                    loaded = load_causal_lm(src, self.dtype, self.device)
                    if len(key) > 3:
                        from ..attention.backend import configure_model

                        try:
                            configure_model(loaded[0], self.attention, self.rope_scaling, src.model_id)
                        except ValueError as exc:  # an attention/RoPE option this model cannot take
                            raise UserError(f"model {src.model_id}: {exc}.") from None
                    _LOADED[key] = loaded  # only once configured: a refused model is never shared half-done
                model, tok = _LOADED[key]
            self._tok = tok
            eos: set[int] = set()
            for cand in (getattr(model.config, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None), tok.eos_token_id):
                if isinstance(cand, int):
                    eos.add(cand)
                elif isinstance(cand, (list, tuple)):
                    eos.update(int(c) for c in cand)
            vocab = tok.get_vocab()
            eos.update(vocab[t] for t in _END_TOKENS if t in vocab and t in tok.all_special_tokens)
            self._eos = frozenset(eos)
            self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos) if eos else 0
            self._real_context = trained_context(model.config, tok)
            if getattr(model, "_ctxflow_context", None):  # RoPE scaling extends the usable window
                self._real_context = int(model._ctxflow_context)
            self._model = model

    def __getstate__(self):  # pickling sends the recipe, not the weights
        d = {k: v for k, v in self.__dict__.items() if k not in ("_model", "_tok", "_lock")}
        d["_model"] = d["_tok"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.RLock()

    @property
    def model(self):
        """The ``transformers`` model (loads it)."""
        self.warm_up()
        return self._model

    @property
    def tokenizer(self):
        """The (fast) tokenizer (loads the model)."""
        self.warm_up()
        return self._tok

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Token ids that end a generation."""
        self.warm_up()
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def context_length(self) -> int:
        self.warm_up()
        return self._real_context if self.max_context is None else min(self._real_context, self.max_context)

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "local", "model": self.model_name}
        defaults = {"max_context": None, "dtype": "float32", "device": "cpu", "batch_tokens": 8192, "cache": True, "threads": None}
        for k, dv in defaults.items():
            v = getattr(self, k)
            if v != dv:
                d[k] = v
        if self.attention is not None:
            d["attention"] = dict(self.attention)
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(self.rope_scaling)
        return d

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"LocalLM({args})"

    # ------------------------------------------------------------------ tokens
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            return super().token_spans(text)
        return [tuple(s) for s in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that fits in ``max_tokens`` tokens (one tokenization to
        find the cut, a few more to settle the boundary)."""
        if max_tokens <= 0:
            return ""
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            return super().truncate(text, max_tokens)
        spans = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(spans) <= max_tokens:
            return text
        lo = spans[max_tokens - 1][1]  # end of the last token that fits
        hi = max(lo, spans[max_tokens][1] - 1)  # any longer prefix ends inside the next token
        if self.count_tokens(text[:lo]) > max_tokens:  # boundary effects: fall back to bisection
            return super().truncate(text[:lo], max_tokens)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count_tokens(text[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo]

    def render(self, prompt: Prompt, chat: bool = True) -> str:
        """The text fed to the tokenizer: with ``chat`` and a chat template, the template with the
        generation prompt (a list ending with an assistant message is continued instead); otherwise
        the string itself (message contents joined by blank lines)."""
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "content" in m and "role" in m for m in prompt):
            messages = [dict(m) for m in prompt]
        else:
            raise TypeError(f"a prompt is a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}"
                            + (" without 'role' or 'content'" if isinstance(prompt, (list, tuple)) else ""))
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            from jinja2 import TemplateError

            cont = bool(messages) and messages[-1].get("role") == "assistant"
            try:
                return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont)
            except TemplateError as exc:  # e.g. "System role not supported", "roles must alternate"
                raise UserError(f"the chat template of {self.model_id} refuses these messages: {exc}. Change the roles "
                                "the template does not take (e.g. put a system message into the first user message), "
                                "or pass chat=False for raw text") from None
        if isinstance(prompt, str):
            return prompt
        return "\n\n".join(m["content"] for m in messages)

    def encode(self, prompt: Prompt, chat: bool = False, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text or prompt. ``chat=False`` (default): plain text, with the special
        tokens the tokenizer adds to plain text (none for SmolLM2; BOS for Llama-style models) when
        ``add_special_tokens``. ``chat=True``: the chat template (which brings its own specials)."""
        text = self.render(prompt, chat)
        if chat and getattr(self.tokenizer, "chat_template", None):
            add_special_tokens = False
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def prompt_tokens(self, prompt: Prompt, chat: bool = True) -> int:
        return len(self.encode(prompt, chat=chat))

    def _check_fits(self, n: int, i: int, what: str = "prompt") -> None:
        ctx = self.context_length
        if n > ctx:
            how = f" (max_context={self.max_context}; the model itself has {self._real_context})" if self.max_context is not None and self.max_context < self._real_context else ""
            raise ContextOverflowError(
                f"{what} {i} has {n} tokens but the context of {self.model_id} is {ctx} tokens{how}. "
                "Shorten it, or split the document into chunks that fit."
            )

    def _encode_prompts(self, prompts: Sequence[Prompt], chat: bool) -> tuple[list[str], list[list[int]]]:
        if isinstance(prompts, (str, dict)):
            raise TypeError("prompts must be a list of prompts (wrap a single prompt in a list)")
        texts = [self.render(p, chat) for p in prompts]
        special = not (chat and getattr(self.tokenizer, "chat_template", None))
        ids = [list(x) for x in self.tokenizer(texts, add_special_tokens=special)["input_ids"]] if texts else []
        return texts, ids

    def _micro_batches(self, lengths: list[int]) -> list[list[int]]:
        return micro_batches(lengths, self.batch_tokens)

    def _cache(self):
        return default_cache() if self.cache else None

    def _params(self, **kw: Any) -> dict[str, Any]:
        if self.dtype != "float32":
            kw["dtype"] = self.dtype
        if self.max_context is not None and (self._model is None or self.max_context < self._real_context):
            kw["max_context"] = self.max_context  # a shorter window can cut a generation short: not the same call
        return kw

    # ------------------------------------------------------------------ black box
    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 256,
        stop: Sequence[str] | None = None,
        temperature: float = 0.0,
        chat: bool = True,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continue each prompt (batched). Greedy when ``temperature == 0``; sampled otherwise,
        reproducibly when ``seed`` is given (identical prompts in one call get different sub-seeds).
        A generation ends at an EOS token (``finish_reason="eos"``), at a stop string (the text is cut
        before it, ``"stop"``) or after ``max_new_tokens`` (``"length"``, also when the context is
        full). ``n_tokens`` counts generated tokens (stop-string tokens included, EOS not);
        ``logprob`` sums their model log-probs (temperature 1)."""
        self.warm_up()
        _check_generation_args(temperature, max_new_tokens)
        stops = sorted({s for s in (stop or []) if s})
        if isinstance(stop, str):
            stops = [stop] if stop else []
        texts, ids = self._encode_prompts(prompts, chat)
        _check_not_empty(ids)
        for i, x in enumerate(ids):
            self._check_fits(len(x), i)
        n = len(ids)
        greedy = temperature == 0
        deterministic = greedy or seed is not None
        # per-prompt keys (and sub-seeds for repeated prompts under sampling)
        seen: dict[str, int] = {}
        keys: list[str | None] = []
        seeds: list[int | None] = []
        for t in texts:
            k = seen.get(t, 0)
            seen[t] = k + 1
            sub = None if greedy or seed is None else _sub_seed(int(seed), k)
            seeds.append(sub)
            if deterministic:
                params = self._params(max_new_tokens=max_new_tokens, stop=stops, temperature=float(temperature))
                if not greedy:
                    params["seed"] = sub
                keys.append(make_key(self.model_id, "generate", t, params))
            else:
                keys.append(None)
        cache = self._cache() if deterministic else None
        found = cache.get_many([k for k in keys if k]) if cache is not None and n else {}
        results: list[Generation | None] = [None] * n
        todo: dict[str, list[int]] = {}  # deterministic: compute each distinct key once
        todo_rows: list[int] = []
        for i, k in enumerate(keys):
            if k is not None and k in found:
                v = found[k]
                results[i] = Generation(text=v["text"], n_prompt_tokens=v["n_prompt_tokens"], n_tokens=v["n_tokens"],
                                        finish_reason=v["finish_reason"], logprob=v.get("logprob"), cached=True)
            elif k is not None and k in todo:
                todo[k].append(i)
            else:
                if k is not None:
                    todo[k] = [i]
                todo_rows.append(i)
        n_cached = sum(r is not None for r in results)
        prompt_toks = completion_toks = 0
        if todo_rows and max_new_tokens > 0:
            for batch in self._micro_batches([len(ids[i]) for i in todo_rows]):
                rows = [todo_rows[j] for j in batch]
                outs = self._generate_batch([ids[i] for i in rows], max_new_tokens, stops, float(temperature), [seeds[i] for i in rows])
                puts = []
                for i, g in zip(rows, outs):
                    results[i] = g
                    prompt_toks += g.n_prompt_tokens
                    completion_toks += g.n_tokens
                    if keys[i] is not None:
                        for j in todo[keys[i]][1:]:
                            results[j] = Generation(g.text, g.n_prompt_tokens, g.n_tokens, g.finish_reason, g.logprob)
                        puts.append((keys[i], self.model_id, "generate",
                                     {"text": g.text, "n_prompt_tokens": g.n_prompt_tokens, "n_tokens": g.n_tokens,
                                      "finish_reason": g.finish_reason, "logprob": g.logprob}))
                if cache is not None:
                    cache.put_many(puts)  # committed per micro-batch: an interrupted run keeps them
        for i in range(n):
            if results[i] is None:  # max_new_tokens <= 0
                results[i] = Generation("", n_prompt_tokens=len(ids[i]), n_tokens=0, finish_reason="length", logprob=0.0)
        emit("llm_call", model=self.model_id, op="generate", n_prompts=n, prompt_tokens=prompt_toks,
             completion_tokens=completion_toks, cached=n_cached)
        return results  # type: ignore[return-value]

    def _decode_cache(self, n_real: list[int], max_len: int):
        """(past_key_values, context) for one generation: transformers' DynamicCache, or with
        ``attention: {..., cache: ring}`` the constant-memory ring cache attached to the model for the
        duration (:func:`ctxflow.attention.ring.attached`)."""
        from transformers import DynamicCache

        model = self._model
        if self.attention is None or self.attention.get("cache") != "ring":
            return DynamicCache(config=model.config), nullcontext()
        from ..attention.ring import attached, ring_cache

        pkv = ring_cache(model, n_real, max_len)
        return pkv, attached(model, pkv)

    def _generate_batch(self, batch: list[list[int]], max_new_tokens: int, stops: list[str], temperature: float,
                        seeds: list[int | None]) -> list[Generation]:
        import torch

        model, dev = self._model, self._model.device
        B = len(batch)
        L = max(len(x) for x in batch)
        ctx = self.context_length
        inp = torch.full((B, L), self._pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for r, x in enumerate(batch):
            if x:
                inp[r, L - len(x):] = torch.tensor(x, dtype=torch.long)
                mask[r, L - len(x):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        inp, mask, pos = inp.to(dev), mask.to(dev), pos.to(dev)
        budget = [min(max_new_tokens, ctx - len(x)) for x in batch]
        gens = [torch.Generator(device="cpu").manual_seed(s) if s is not None else None for s in seeds]
        out_ids: list[list[int]] = [[] for _ in range(B)]
        logprob = [0.0] * B
        reason = ["length"] * B
        text: list[str | None] = [None] * B
        max_stop = max((len(s) for s in stops), default=0)
        scanned = [0] * B  # stop-string search resumes here
        active = [r for r in range(B) if budget[r] > 0]
        if not active:
            return [Generation("", len(x), 0, "length", 0.0) for x in batch]
        rows = torch.tensor(active, dtype=torch.long)
        if len(active) < B:
            inp, mask, pos = inp[rows.to(dev)], mask[rows.to(dev)], pos[rows.to(dev)]
        pkv, decode_ctx = self._decode_cache([len(batch[r]) for r in active], max(len(batch[r]) + budget[r] for r in active))
        with decode_ctx, torch.inference_mode():
            out = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=pkv, use_cache=True, logits_to_keep=1)
            last_pos = pos[:, -1]
            while True:
                logits = out.logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                if temperature == 0:
                    nxt = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1).cpu()
                    picks = []
                    for j, r in enumerate(active):
                        picks.append(torch.multinomial(probs[j], 1, generator=gens[r]) if gens[r] is not None else torch.multinomial(probs[j], 1))
                    nxt = torch.cat(picks).to(dev)
                nxt_l = nxt.tolist()
                lp_l = logp.gather(1, nxt[:, None])[:, 0].tolist()
                keep: list[int] = []
                for j, r in enumerate(active):
                    t = nxt_l[j]
                    if t in self._eos:
                        reason[r] = "eos"
                        continue
                    out_ids[r].append(t)
                    logprob[r] += lp_l[j]
                    if stops:
                        s = self._tok.decode(out_ids[r], skip_special_tokens=True)
                        start = max(0, scanned[r] - max_stop - 8)  # the tail may re-decode differently
                        hit = min((k for k in (s.find(st, start) for st in stops) if k >= 0), default=-1)
                        if hit >= 0:
                            text[r] = s[:hit]
                            reason[r] = "stop"
                            continue
                        scanned[r] = len(s)
                    if len(out_ids[r]) >= budget[r]:
                        reason[r] = "length"
                        continue
                    keep.append(j)
                if not keep:
                    break
                if len(keep) < len(active):
                    sel = torch.tensor(keep, dtype=torch.long, device=dev)
                    pkv.batch_select_indices(sel)
                    mask, last_pos, nxt = mask[sel], last_pos[sel], nxt[sel]
                    active = [active[j] for j in keep]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=dev)], dim=1)
                last_pos = last_pos + 1
                out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                            past_key_values=pkv, use_cache=True, logits_to_keep=1)
        res = []
        for r in range(B):
            t = text[r] if text[r] is not None else self._tok.decode(out_ids[r], skip_special_tokens=True)
            res.append(Generation(t, n_prompt_tokens=len(batch[r]), n_tokens=len(out_ids[r]), finish_reason=reason[r], logprob=logprob[r]))
        return res

    def generate_stream(self, prompt: Prompt, on_text: Any, max_new_tokens: int = 256, stop: Sequence[str] | None = None,
                        temperature: float = 0.0, chat: bool = True, seed: int | None = None) -> Generation:
        """Generate for one prompt, calling ``on_text(delta)`` with each new piece of text as it is
        decoded; returns the same :class:`Generation` as ``generate([prompt], ...)[0]`` (and shares its
        cache: a cached answer arrives as one piece). Text that could be the start of a stop string
        is held back until it is known not to be one."""
        import torch

        self.warm_up()
        _check_generation_args(temperature, max_new_tokens)
        stops = [stop] if isinstance(stop, str) and stop else sorted({s for s in (stop or []) if s})
        texts, ids = self._encode_prompts([prompt], chat)
        _check_not_empty(ids)
        self._check_fits(len(ids[0]), 0)
        greedy = temperature == 0
        key = None
        if greedy or seed is not None:
            params = self._params(max_new_tokens=max_new_tokens, stop=stops, temperature=float(temperature))
            if not greedy:
                params["seed"] = int(seed)  # type: ignore[arg-type]
            key = make_key(self.model_id, "generate", texts[0], params)
        cache = self._cache() if key is not None else None
        hit = cache.get_many([key]).get(key) if cache is not None else None
        if hit is not None:
            if hit["text"]:
                on_text(hit["text"])
            emit("llm_call", model=self.model_id, op="generate", n_prompts=1, prompt_tokens=0, completion_tokens=0, cached=1)
            return Generation(hit["text"], hit["n_prompt_tokens"], hit["n_tokens"], hit["finish_reason"], hit.get("logprob"), cached=True)
        model, dev, x = self._model, self._model.device, ids[0]
        budget = min(max_new_tokens, self.context_length - len(x))
        gen = torch.Generator(device="cpu").manual_seed(int(seed)) if seed is not None and not greedy else None
        out_ids: list[int] = []
        logprob, reason, sent, final = 0.0, "length", "", None
        hold = max((len(s) for s in stops), default=1) - 1
        pkv, decode_ctx = self._decode_cache([len(x)], len(x) + max(budget, 0))
        with decode_ctx, torch.inference_mode():
            inp = torch.tensor([x], dtype=torch.long, device=dev)
            pos = torch.arange(len(x), device=dev)[None]  # (1, T)
            out = model(input_ids=inp, attention_mask=torch.ones_like(inp), position_ids=pos, past_key_values=pkv,
                        use_cache=True, logits_to_keep=1)
            while budget > 0:
                logits = out.logits[:, -1, :].float()  # (1, V)
                if greedy:
                    nxt = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1).cpu()
                    nxt = torch.multinomial(probs[0], 1, generator=gen).to(dev) if gen is not None else torch.multinomial(probs[0], 1).to(dev)
                t = int(nxt[0])
                if t in self._eos:
                    reason = "eos"
                    break
                out_ids.append(t)
                logprob += float(torch.log_softmax(logits, dim=-1)[0, t])
                s = self._tok.decode(out_ids, skip_special_tokens=True)
                cut = min((k for k in (s.find(st) for st in stops) if k >= 0), default=-1)
                if cut >= 0:
                    final, reason = s[:cut], "stop"
                    break
                if len(out_ids) >= budget:
                    break
                safe = s[: len(s) - hold] if hold else s
                if safe.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    safe = safe.rstrip("\ufffd")
                if len(safe) > len(sent) and safe.startswith(sent):
                    on_text(safe[len(sent):])
                    sent = safe
                pos = pos[:, -1:] + 1
                out = model(input_ids=nxt.view(1, 1), attention_mask=torch.ones((1, pos.item() + 1), dtype=torch.long, device=dev),
                            position_ids=pos, past_key_values=pkv, use_cache=True, logits_to_keep=1)
        text = final if final is not None else self._tok.decode(out_ids, skip_special_tokens=True)
        if text.startswith(sent) and len(text) > len(sent):
            on_text(text[len(sent):])
        g = Generation(text, n_prompt_tokens=len(x), n_tokens=len(out_ids), finish_reason=reason, logprob=logprob)
        if cache is not None:
            cache.put_many([(key, self.model_id, "generate", {"text": g.text, "n_prompt_tokens": g.n_prompt_tokens,
                                                             "n_tokens": g.n_tokens, "finish_reason": g.finish_reason, "logprob": g.logprob})])
        emit("llm_call", model=self.model_id, op="generate", n_prompts=1, prompt_tokens=len(x), completion_tokens=len(out_ids), cached=0)
        return g
