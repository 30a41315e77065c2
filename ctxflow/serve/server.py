"""An OpenAI-compatible HTTP server for one local model, on the standard library's
``ThreadingHTTPServer`` (no web framework).

    POST /v1/chat/completions   messages, max_tokens | max_completion_tokens, temperature, stop, seed, stream
    POST /v1/completions        prompt (a string or a list of strings), max_tokens, temperature, stop, seed, stream
    GET  /v1/models             the served model (with its ``context_length``)
    GET  /health                {"status": "ok"}

Defaults follow OpenAI's API (``max_tokens`` 16 for completions, unlimited (= the context) for
chat; ``temperature`` 1.0): clients that want greedy answers send ``temperature: 0``. ``stream:
true`` answers with server-sent events (``data: {chunk}`` lines, then ``data: [DONE]``), one
chunk per decoded piece of text, from ``LocalLM.generate_stream``. Errors are OpenAI-shaped:
``{"error": {"message", "type", "code"}}`` with status 400 (bad request, prompt too long), 404
(unknown path or model), 408 (the body stopped arriving for ``read_timeout`` seconds), 411 (no
Content-Length), 413 (a body over ``max_body`` bytes) or 500; an
error after a stream has begun is one ``data: {"error": {...}}`` event, and the stream ends there
(no ``[DONE]``). The model answers one request at a time (a lock); requests that arrive meanwhile
wait. A prompt with more than ``CHARS_PER_TOKEN`` characters per token of the context is refused
before it waits for the model (no tokenizer needed to tell that it cannot fit). It listens on
loopback unless told otherwise: there is no authentication.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import UserError
from ..llm.base import LLM

MAX_BODY = 4 * 2**20  # bytes of request body taken by default (``ctxflow serve --max-request-mb``)
CHARS_PER_TOKEN = 32  # no real prompt averages more characters per token than this
DRAIN = 256 * 2**20  # a body over the limit is still read and dropped up to this size, so that the client gets the 413
READ_TIMEOUT = 60.0  # seconds a connection may stay silent while the server reads a request (``--read-timeout``)


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _ClientGone(Exception):
    """The client closed the connection mid-stream: stop generating."""


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _number(body: dict, name: str, default: Any, lo: float, kind: type = float, hi: float | None = None) -> Any:
    v = body.get(name, default)
    if v is None:
        return default
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v))
            or (kind is int and int(v) != v) or v < lo or (hi is not None and v > hi)):
        valid = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise RequestError(400, f"'{name}' must be a {'whole' if kind is int else 'finite'} number {valid}, got {v!r}.")
    return kind(v)


def _flag(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise RequestError(400, f"'{name}' must be true or false (a JSON boolean), got {v!r}.")
    return bool(v)


def _stop(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        return [s]
    if isinstance(s, list) and all(isinstance(x, str) for x in s):
        return s
    raise RequestError(400, f"'stop' must be a string or a list of strings, got {s!r}.")


def _messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects.")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(400, f"messages[{i}] must be an object with 'role' and 'content'.")
        c = m.get("content") or ""
        if isinstance(c, list):  # content parts: keep the text ones
            c = "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(c, str):
            raise RequestError(400, f"messages[{i}].content must be a string or a list of text parts.")
        out.append({"role": str(m["role"]), "content": c})
    return out


class ModelServer:
    """Serves ``llm`` under the name ``name`` (and its ``model_id``)."""

    def __init__(self, llm: LLM, name: str = "default", max_body: int = MAX_BODY):
        self.llm, self.name, self.max_body = llm, name, max_body
        self.lock = threading.Lock()
        self.created = int(time.time())

    def names(self) -> set[str]:
        return {self.name, str(getattr(self.llm, "model_id", self.name))}

    def models(self) -> dict[str, Any]:
        ctx = self.llm.context_length
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created, "owned_by": "ctxflow",
                                            "root": str(getattr(self.llm, "model_id", self.name)),
                                            "context_length": ctx, "max_model_len": ctx}]}

    def _params(self, body: dict, chat: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object.")
        model = body.get("model")
        if model is not None and model not in self.names():
            raise RequestError(404, f"model {model!r} is not served here; available: {self.name}.", "model_not_found")
        if _number(body, "n", 1, 1, int) != 1:
            raise RequestError(400, "only n=1 is supported.")
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        default = self.llm.context_length if chat else 16
        _flag(body, "stream")
        return {"max_new_tokens": _number(body, name, default, 0, int),
                "temperature": _number(body, "temperature", 1.0, 0.0), "stop": _stop(body),
                "seed": _number(body, "seed", None, -(2**63), int, 2**63 - 1), "chat": chat}

    def _prompts(self, body: dict, chat: bool) -> list[Any]:
        if chat:
            prompts: list[Any] = [_messages(body)]
        else:
            p = body.get("prompt")
            if isinstance(p, str):
                prompts = [p]
            elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
                prompts = p
            else:
                raise RequestError(400, "'prompt' must be a string or a non-empty list of strings (token-id prompts are not supported).")
        ctx = self.llm.context_length
        for i, p in enumerate(prompts):  # cheap: refuse what cannot fit before tokenizing it under the lock
            n = len(p) if isinstance(p, str) else sum(len(m["content"]) for m in p)
            if n > CHARS_PER_TOKEN * ctx:
                raise RequestError(400, f"prompt {i} has {n} characters: far more than the context of {ctx} tokens can hold. "
                                        "Shorten it, or split the document into chunks that fit.", "context_length_exceeded")
        return prompts

    def complete(self, body: dict, chat: bool) -> dict[str, Any]:
        kw, prompts = self._params(body, chat), self._prompts(body, chat)
        with self.lock:
            gens = self.llm.generate(prompts, **kw)
        usage = {"prompt_tokens": sum(g.n_prompt_tokens for g in gens), "completion_tokens": sum(g.n_tokens for g in gens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": g.text}, "finish_reason": _finish(g.finish_reason)}
                       for i, g in enumerate(gens)]
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.name, "choices": choices, "usage": usage}
        choices = [{"index": i, "text": g.text, "logprobs": None, "finish_reason": _finish(g.finish_reason)} for i, g in enumerate(gens)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices, "usage": usage}

    def stream(self, body: dict, chat: bool, send) -> None:
        """Generate with ``send(chunk_dict)`` for every piece; the caller writes SSE lines."""
        kw, prompts = self._params(body, chat), self._prompts(body, chat)
        if len(prompts) != 1:
            raise RequestError(400, "streaming takes one prompt.")
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        base = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()), "model": self.name}

        def piece(text: str | None, finish: str | None) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return {**base, "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        started = []

        def out(chunk: dict) -> None:  # nothing is sent before the model's first piece: a prompt it
            if chat and not started:  # refuses (too long, ...) still gets a JSON error status
                send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            started.append(True)
            send(chunk)

        with self.lock:
            gen_stream = getattr(self.llm, "generate_stream", None)
            if gen_stream is not None:
                g = gen_stream(prompts[0], lambda t: out(piece(t, None)), **kw)
            else:  # a model without token streaming: one piece
                g = self.llm.generate(prompts, **kw)[0]
                out(piece(g.text, None))
        out(piece(None, _finish(g.finish_reason)))


def _handler(server: ModelServer, verbose: bool, read_timeout: float):
    max_body = server.max_body

    class Handler(BaseHTTPRequestHandler):
        server_version = "ctxflow"
        timeout = read_timeout  # a silent client (e.g. one that sent a Content-Length larger than its body) frees its thread

        def log_message(self, fmt: str, *args: Any) -> None:
            if verbose:
                sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def _json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, code: str = "invalid_request_error") -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            try:
                self._json(status, {"error": {"message": message, "type": kind, "code": code}})
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the client is gone

        def _body(self) -> Any:
            cl = self.headers.get("Content-Length")
            if cl is None and self.headers.get("Transfer-Encoding"):
                raise RequestError(411, "send the request body with a Content-Length header (chunked transfer encoding is not supported).")
            cl = (cl or "0").strip()
            if not cl.isdigit():
                raise RequestError(400, f"the Content-Length header must be a whole number of bytes >= 0, got {cl!r}.")
            n = int(cl)
            if n > max_body:
                left = min(n, DRAIN)  # read (and drop) what the client sends, so that it gets the answer, not a reset connection
                while left > 0:
                    try:
                        got = len(self.rfile.read(min(left, 1 << 16)))
                    except TimeoutError:  # the client stopped sending: answer what was wrong with the request
                        break
                    if not got:
                        break
                    left -= got
                raise RequestError(413, f"the request body has {n} bytes; this server takes at most {max_body} "
                                        "(ctxflow serve --max-request-mb).", "request_too_large")
            try:
                raw = self.rfile.read(n)
            except TimeoutError:
                raise RequestError(408, f"the request body stopped arriving: Content-Length says {n} bytes and nothing more came "
                                        f"for {read_timeout:g} s (ctxflow serve --read-timeout).", "request_timeout") from None
            try:
                return json.loads(raw or b"null")
            except ValueError as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}.") from None

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._json(200, server.models())
            elif path in ("/health", ""):
                self._json(200, {"status": "ok", "model": server.name})
            else:
                self._error(404, f"unknown path {self.path!r}; try /v1/models, /v1/completions or /v1/chat/completions.", "not_found")

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            chat = path in ("/v1/chat/completions", "/chat/completions")
            if not chat and path not in ("/v1/completions", "/completions"):
                self._error(404, f"unknown path {self.path!r}; POST to /v1/completions or /v1/chat/completions.", "not_found")
                return
            try:
                body = self._body()
                if isinstance(body, dict) and _flag(body, "stream"):
                    self._stream(body, chat)
                else:
                    self._json(200, server.complete(body, chat))
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.code)
            except UserError as exc:  # e.g. a prompt longer than the context
                self._error(400, str(exc))
            except _ClientGone:
                pass
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                self._error(500, f"{type(exc).__name__}: {exc}", "server_error")

        def _stream(self, body: dict, chat: bool) -> None:
            server._params(body, chat), server._prompts(body, chat)  # bad requests get a JSON error, not a stream
            started = []

            def send(chunk: dict) -> None:
                try:
                    if not started:
                        self.send_response(200)
                        self.send_header("Content-Type", "text/event-stream")
                        self.send_header("Cache-Control", "no-cache")
                        self.end_headers()
                        started.append(True)
                    self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    raise _ClientGone() from None

            try:
                server.stream(body, chat, send)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, TimeoutError, _ClientGone):
                raise _ClientGone() from None
            except Exception as exc:  # noqa: BLE001 - once the stream has begun, an error is its last event
                if not started:
                    raise
                if isinstance(exc, (RequestError, UserError)):
                    err = {"message": str(getattr(exc, "message", exc)), "type": "invalid_request_error", "code": getattr(exc, "code", "invalid_request_error")}
                else:
                    err = {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": "server_error"}
                try:
                    self.wfile.write(b"data: " + json.dumps({"error": err}, ensure_ascii=False).encode() + b"\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    raise _ClientGone() from None

    return Handler


def make_server(llm: LLM, host: str = "127.0.0.1", port: int = 8000, name: str = "default", verbose: bool = False,
                max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT) -> ThreadingHTTPServer:
    """A ready ``ThreadingHTTPServer`` (call ``serve_forever()``); ``port=0`` picks a free port
    (``httpd.server_address[1]``). Request bodies over ``max_body`` bytes are answered 413; a
    connection that sends nothing for ``read_timeout`` seconds while its request is read is dropped
    (408 when the body stopped short of its Content-Length)."""
    httpd = ThreadingHTTPServer((host, port), _handler(ModelServer(llm, name, max_body), verbose, read_timeout))
    httpd.daemon_threads = True
    return httpd
