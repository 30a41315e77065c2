"""``llm.http``: a black-box LLM behind any OpenAI-compatible server (``ctxflow serve``, vLLM,
llama.cpp's server, Ollama, a hosted API).

    models:
      llm: {type: http, base_url: "http://127.0.0.1:8000", model: default}

* ``base_url``: the server; ``/v1`` is appended unless the URL already ends with it.
* ``model``: the name the server knows the model by. ``api_key_env``: the *name* of an
  environment variable holding a bearer token (a pipeline file never holds the secret itself).
* ``timeout``: seconds to wait for the connection and for each next piece of the answer (a
  non-streamed answer comes in one piece, so it covers the whole generation). ``retries`` with
  exponential ``backoff`` (0.5 s, 1 s, 2 s, ...) on refused connections, timeouts, 429 and 5xx;
  a stream is retried only while nothing of it has arrived. ``max_concurrency``: most requests in
  flight from this model object, whichever threads send them.
* ``context_length``: the model's window; when not given it is read from ``GET /v1/models``
  (``context_length`` or ``max_model_len``) at ``warm_up``, else 4096.
* Token counts are estimates (no tokenizer on this side): the larger of the word/punctuation count
  and UTF-8 bytes / 4, which over-counts a little so that prompt budgets stay safe.

``chat=True`` (the default of ``generate``) sends ``/chat/completions``; ``chat=False`` sends raw
text to ``/completions``. ``generate_stream`` also takes a plain JSON answer from a server that
ignores ``stream: true`` (one piece), and an error event in the stream is raised at once, not
retried. Failures raise :class:`LLMServerError` saying what happened, where, and
what to check.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from ..errors import UserError
from ..events import emit
from ..graph.registry import register_model
from .base import BLACK_BOX, LLM, _WORDS, Generation, Prompt


class LLMServerError(UserError):
    """The server could not be reached, failed, or answered something that is not an OpenAI response."""


class _Retryable(Exception):
    pass


@register_model("http")
class HTTPLLM(LLM):
    capabilities = BLACK_BOX

    def __init__(self, base_url: str, model: str = "default", api_key_env: str | None = None, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.5, max_concurrency: int = 4, context_length: int | None = None):
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must look like http://HOST:PORT (or https://...), got {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_concurrency < 1:
            raise ValueError("timeout must be > 0, retries >= 0, backoff >= 0 and max_concurrency >= 1")
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.timeout, self.retries, self.backoff, self.max_concurrency = float(timeout), int(retries), float(backoff), int(max_concurrency)
        self._context = context_length
        self.context_length_param = context_length
        path = parts.path.rstrip("/")
        self._prefix = path if path.endswith("/v1") else path + "/v1"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._sem = threading.BoundedSemaphore(self.max_concurrency)

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_id(self) -> str:  # type: ignore[override]
        return f"http:{self.model}@{self._host}:{self._port}{self._prefix}"

    def url(self, path: str) -> str:
        return f"{self._scheme}://{self._host}:{self._port}{self._prefix}{path}"

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "http", "base_url": self.base_url, "model": self.model}
        defaults = {"api_key_env": None, "timeout": 60.0, "retries": 2, "backoff": 0.5, "max_concurrency": 4, "context_length_param": None}
        for k, dv in defaults.items():
            if getattr(self, k) != dv:
                d[k.replace("_param", "")] = getattr(self, k)
        return d

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_sem")
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._sem = threading.BoundedSemaphore(self.max_concurrency)

    def __repr__(self) -> str:
        return f"HTTPLLM(base_url={self.base_url!r}, model={self.model!r})"

    # -- tokens and context -----------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return max(len(_WORDS.findall(text)), math.ceil(len(text.encode("utf-8")) / 4))

    def prompt_tokens(self, prompt: Prompt, chat: bool = True) -> int:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return self.count_tokens(text) + (16 if chat else 0)

    def warm_up(self) -> None:
        if self._context is None:
            self._context = self._server_context() or 4096

    @property
    def context_length(self) -> int:
        self.warm_up()
        return int(self._context)  # type: ignore[arg-type]

    def _server_context(self) -> int | None:
        data = self._request("GET", "/models", None)
        for m in data.get("data") or []:
            if isinstance(m, dict) and m.get("id") == self.model:
                for k in ("context_length", "max_model_len", "context_window"):
                    if isinstance(m.get(k), int):
                        return m[k]
        ids = [m.get("id") for m in data.get("data") or [] if isinstance(m, dict)]
        if ids and self.model not in ids:
            raise LLMServerError(f"{self.url('/models')} does not serve model {self.model!r}; it serves: {', '.join(map(str, ids))}.")
        return None

    # -- HTTP -------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise LLMServerError(f"api_key_env names ${self.api_key_env}, which is not set; export it or drop api_key_env.")
            h["Authorization"] = f"Bearer {key}"
        return h

    def _open(self, method: str, path: str, body: dict | None):
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        url = self.url(path)
        try:
            conn.request(method, self._prefix + path, body=None if body is None else json.dumps(body), headers=self._headers())
            resp = conn.getresponse()
        except ConnectionRefusedError:
            conn.close()
            raise _Retryable(f"cannot connect to {url}: connection refused. Is the server running (e.g. `ctxflow serve --port {self._port}`)?")
        except (socket.timeout, TimeoutError):
            conn.close()
            raise _Retryable(f"no answer from {url} within the timeout of {self.timeout:g} s (raise timeout: in the model's spec).")
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Retryable(f"request to {url} failed: {type(exc).__name__}: {exc}.")
        if resp.status != 200:
            raw = resp.read(4096)
            conn.close()
            msg = raw.decode("utf-8", "replace").strip()
            try:
                msg = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            text = f"{url} answered HTTP {resp.status}: {msg[:500]}"
            if resp.status == 429 or resp.status >= 500:
                raise _Retryable(text)
            raise LLMServerError(text)
        return conn, resp

    def _with_retries(self, fn: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except _Retryable as exc:
                if attempt == self.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise LLMServerError(f"{exc}{tries}") from None
                time.sleep(self.backoff * (2 ** attempt))

    @staticmethod
    def _io(read, timed_out: str, broke: str) -> bytes:
        """``read()``, with a timeout or a broken connection turned into a retryable error."""
        try:
            return read()
        except (socket.timeout, TimeoutError):
            raise _Retryable(timed_out) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"{broke}: {type(exc).__name__}: {exc}.") from None

    def _read_json(self, resp, url: str) -> dict:
        raw = self._io(resp.read, f"no answer from {url} within the timeout of {self.timeout:g} s.",
                       f"the connection to {url} broke")
        try:
            data = json.loads(raw)
        except ValueError:
            raise LLMServerError(f"bad response from {url}: not JSON: {raw[:200]!r}") from None
        if not isinstance(data, dict):
            raise LLMServerError(f"bad response from {url}: expected a JSON object, got {type(data).__name__}.")
        return data

    def _request(self, method: str, path: str, body: dict | None) -> dict:
        def once() -> dict:
            with self._sem:
                conn, resp = self._open(method, path, body)
                try:
                    return self._read_json(resp, self.url(path))
                finally:
                    conn.close()

        return self._with_retries(once)

    def _body(self, prompt: Prompt, max_new_tokens: int, stop: Sequence[str] | None, temperature: float, chat: bool,
              seed: int | None) -> tuple[str, dict]:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        body: dict[str, Any] = {"model": self.model, "max_tokens": int(max_new_tokens), "temperature": float(temperature)}
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        if stops:
            body["stop"] = stops
        if seed is not None:
            body["seed"] = int(seed)
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            return "/chat/completions", body
        body["prompt"] = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
        return "/completions", body

    @staticmethod
    def _reason(r: Any) -> str:
        return "length" if r == "length" else "stop"

    @staticmethod
    def _usage(usage: Any, url: str) -> tuple[int, int]:
        """(prompt_tokens, completion_tokens) of a ``usage`` object; missing counts are 0."""
        if not usage:
            return 0, 0
        try:
            return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise LLMServerError(f"bad response from {url}: 'usage' does not hold token counts: {json.dumps(usage)[:200]}") from None

    def _generation(self, data: dict, url: str, chat: bool) -> Generation:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
            reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise LLMServerError(f"bad response from {url}: no choices[0] with text: {json.dumps(data)[:300]}") from None
        n_prompt, n_tokens = self._usage(data.get("usage"), url)
        return Generation(text, n_prompt_tokens=n_prompt, n_tokens=n_tokens, finish_reason=self._reason(reason), meta={"id": data.get("id")})

    # -- black box --------------------------------------------------------------------------
    def _one(self, prompt: Prompt, kw: dict) -> Generation:
        path, body = self._body(prompt, **kw)
        return self._generation(self._request("POST", path, body), self.url(path), kw["chat"])

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, stop: Sequence[str] | None = None,
                 temperature: float = 0.0, chat: bool = True, seed: int | None = None) -> list[Generation]:
        if isinstance(prompts, (str, dict)):
            raise TypeError("prompts must be a list of prompts (wrap a single prompt in a list)")
        prompts = list(prompts)
        kw = {"max_new_tokens": max_new_tokens, "stop": stop, "temperature": temperature, "chat": chat, "seed": seed}
        if len(prompts) <= 1:
            gens = [self._one(p, kw) for p in prompts]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
                gens = list(pool.map(lambda p: self._one(p, kw), prompts))
        emit("llm_call", model=self.model_id, op="generate", n_prompts=len(gens), prompt_tokens=sum(g.n_prompt_tokens for g in gens),
             completion_tokens=sum(g.n_tokens for g in gens), cached=0)
        return gens

    def generate_stream(self, prompt: Prompt, on_text: Callable[[str], None], max_new_tokens: int = 256,
                        stop: Sequence[str] | None = None, temperature: float = 0.0, chat: bool = True,
                        seed: int | None = None) -> Generation:
        """Stream one answer (server-sent events), calling ``on_text(delta)`` per piece; returns the
        whole :class:`Generation`. A stream that breaks before ``[DONE]`` raises
        :class:`LLMServerError` (never hangs longer than ``timeout`` per piece)."""
        path, body = self._body(prompt, max_new_tokens, stop, temperature, chat, seed)
        body["stream"] = True
        url = self.url(path)
        pieces: list[str] = []
        state: dict[str, Any] = {"reason": "length", "usage": {}}

        def once() -> None:
            with self._sem:
                conn, resp = self._open("POST", path, body)
                try:
                    if (resp.getheader("Content-Type") or "").split(";")[0].strip().lower() == "application/json":
                        g = self._generation(self._read_json(resp, url), url, chat)  # the server does not stream: one piece
                        state.update(reason=g.finish_reason, usage={"prompt_tokens": g.n_prompt_tokens, "completion_tokens": g.n_tokens})
                        if g.text:
                            pieces.append(g.text)
                            on_text(g.text)
                    else:
                        self._read_events(resp, url, chat, pieces, state, on_text)
                finally:
                    conn.close()

        def attempt() -> None:
            try:
                once()
            except _Retryable as exc:
                if pieces:  # part of the answer is out already: a retry would repeat it
                    raise LLMServerError(f"the stream from {url} broke after {len(''.join(pieces))} characters: {exc}") from None
                raise

        self._with_retries(attempt)
        n_prompt, n_tokens = self._usage(state["usage"], url)
        g = Generation("".join(pieces), n_prompt_tokens=n_prompt, n_tokens=n_tokens or len(pieces), finish_reason=state["reason"])
        emit("llm_call", model=self.model_id, op="generate", n_prompts=1, prompt_tokens=g.n_prompt_tokens, completion_tokens=g.n_tokens, cached=0)
        return g

    def _read_events(self, resp, url: str, chat: bool, pieces: list[str], state: dict, on_text) -> None:
        while True:
            line = self._io(resp.readline, f"the stream from {url} sent nothing for {self.timeout:g} s (timeout).",
                            f"the stream from {url} broke")
            if not line:
                raise _Retryable(f"the stream from {url} ended before [DONE] (the server stopped or closed the connection).")
            line = line.strip()
            if not line.startswith(b"data:"):
                if line.startswith(b"{"):  # an error object written into the stream without "data:": say it, do not retry
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        obj = None
                    if isinstance(obj, dict) and "error" in obj:
                        self._stream_error(obj["error"], url)
                continue  # blank separators, comments, event: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise LLMServerError(f"bad event in the stream from {url}: not JSON: {data[:200]!r}") from None
            if isinstance(chunk, dict) and "error" in chunk:
                self._stream_error(chunk["error"], url)
            try:
                choice = chunk["choices"][0] if chunk.get("choices") else {}
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                reason = choice.get("finish_reason")
                if text is not None and not isinstance(text, str):
                    raise TypeError(text)
            except (TypeError, KeyError, IndexError, AttributeError):
                raise LLMServerError(f"bad event in the stream from {url}: {data[:200]!r}") from None
            if chunk.get("usage"):
                state["usage"] = chunk["usage"]
            if text:
                pieces.append(text)
                on_text(text)
            if reason:
                state["reason"] = self._reason(reason)

    @staticmethod
    def _stream_error(err: Any, url: str) -> None:
        raise LLMServerError(f"{url} reported an error mid-stream: {err.get('message', err) if isinstance(err, dict) else err}")
