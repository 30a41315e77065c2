"""Bad requests and misbehaving models or servers, over real HTTP: ``ctxflow serve`` (a process, and
``make_server`` in-process with scripted models) answers clear 4xx errors and well-formed streams;
``llm.http`` turns malformed or unusual replies into :class:`LLMServerError` or takes them as answers."""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ctxflow.llm.fake import FakeLLM
from ctxflow.llm.http import HTTPLLM, LLMServerError
from ctxflow.serve.server import make_server

from .conftest import Served

HI = [{"role": "user", "content": "hi"}]


def _start(httpd: ThreadingHTTPServer) -> ThreadingHTTPServer:
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def serve():
    """``serve(llm, **kw)``: ``make_server`` on a free loopback port, serving; shut down after the test."""
    started = []

    def go(llm, **kw) -> int:
        started.append(_start(make_server(llm, port=0, **kw)))
        return started[-1].server_address[1]

    yield go
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _post(port: int, path: str, body, timeout: float = 30) -> tuple[int, str, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # json.dumps writes NaN / Infinity as given
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        c.close()


def _message(data: bytes) -> str:
    return json.loads(data)["error"]["message"]


def _raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes and read the whole answer (the server closes the connection after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


class _Broken(FakeLLM):
    """Streams ``before`` pieces, then fails as a model on a full GPU would."""

    def __init__(self, before: int):
        super().__init__(responses=["unused"])
        self.before, self.calls = before, 0

    def generate_stream(self, prompt, on_text, **kw):
        self.calls += 1
        for i in range(self.before):
            on_text(f"piece{i} ")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


# -- 1. a model error inside a stream ---------------------------------------------------------------
def test_model_error_mid_stream_is_one_error_event_and_not_retried(serve):
    model = _Broken(before=2)
    port = serve(model)
    status, ctype, data = _post(port, "/v1/chat/completions", {"messages": HI, "stream": True})
    assert (status, ctype) == (200, "text/event-stream")
    assert b"HTTP/1" not in data  # no second response written into the stream
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] != "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["", "piece0 ", "piece1 "]
    assert chunks[-1] == {"error": {"message": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
                                    "type": "server_error", "code": "server_error"}}

    model.calls = 0
    client = HTTPLLM(f"http://127.0.0.1:{port}", context_length=512, retries=2, backoff=0.01)
    pieces: list[str] = []
    with pytest.raises(LLMServerError, match=r"reported an error mid-stream: RuntimeError: CUDA out of memory"):
        client.generate_stream("hi", pieces.append)
    assert pieces == ["piece0 ", "piece1 "] and model.calls == 1


def test_model_error_before_the_first_piece_is_a_json_500(serve):
    port = serve(_Broken(before=0))
    status, ctype, data = _post(port, "/v1/chat/completions", {"messages": HI, "stream": True})
    assert (status, ctype) == (500, "application/json")  # nothing of a stream was sent: a plain error answer
    assert "CUDA out of memory" in _message(data)


class _OldServer(BaseHTTPRequestHandler):
    """A stream that begins, then has a whole HTTP error response written into it and ends without [DONE]."""
    hits = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
                         b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n"
                         b'{"error": {"message": "RuntimeError: boom", "type": "server_error"}}')


def test_error_object_inside_a_stream_is_raised_not_retried():
    httpd = _start(ThreadingHTTPServer(("127.0.0.1", 0), _OldServer))
    try:
        client = HTTPLLM(f"http://127.0.0.1:{httpd.server_address[1]}", context_length=512, retries=2, backoff=0.01)
        with pytest.raises(LLMServerError, match="reported an error mid-stream: RuntimeError: boom"):
            client.generate_stream("hi", lambda t: None)
        assert _OldServer.hits == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- 2. and 7. parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field,value,valid", [
    ("temperature", float("nan"), r"finite number >= 0\.0"),
    ("temperature", float("inf"), r"finite number >= 0\.0"),
    ("max_tokens", float("inf"), "whole number >= 0"),
    ("max_completion_tokens", float("nan"), "whole number >= 0"),
    ("seed", 1e30, r"whole number in -9223372036854775808\.\.9223372036854775807"),
    ("seed", 2**63, r"whole number in -9223372036854775808\.\.9223372036854775807"),
    ("seed", -(2**63) - 1, r"whole number in -9223372036854775808\.\.9223372036854775807"),
])
def test_bad_numbers_are_400_naming_the_field(serve, stream, field, value, valid):
    port = serve(FakeLLM(responses=["hello world"]))
    status, ctype, data = _post(port, "/v1/chat/completions", {"messages": HI, "stream": stream, field: value})
    assert (status, ctype) == (400, "application/json"), data[:300]
    assert re.search(rf"^'{field}' must be a {valid}, got ", _message(data))


def test_null_max_completion_tokens_falls_back_to_max_tokens(serve):
    port = serve(FakeLLM(responses=["one two three four five six"]))
    for extra in ({"max_tokens": 3, "max_completion_tokens": None}, {"max_completion_tokens": 3, "max_tokens": None},
                  {"max_completion_tokens": 3, "max_tokens": 5}):
        status, _, data = _post(port, "/v1/chat/completions", {"messages": HI, **extra})
        assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "one two three", extra


@pytest.mark.parametrize("value", ["false", "true", 0, 1, [], {}])
def test_stream_must_be_a_boolean(serve, value):
    port = serve(FakeLLM(responses=["hello"]))
    for path, body in (("/v1/chat/completions", {"messages": HI}), ("/v1/completions", {"prompt": "hi"})):
        status, ctype, data = _post(port, path, {**body, "stream": value})
        assert (status, ctype) == (400, "application/json")
        assert _message(data) == f"'stream' must be true or false (a JSON boolean), got {value!r}."
    assert _post(port, "/v1/chat/completions", {"messages": HI, "stream": False})[:2] == (200, "application/json")


# -- 6. the request body -------------------------------------------------------------------------
@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"0x10"])
def test_bad_content_length_is_400(serve, length):
    port = serve(FakeLLM(responses=["hello"]))
    t0 = time.monotonic()
    out = _raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b'\r\n\r\n{"prompt": "hi"}')
    assert time.monotonic() - t0 < 5
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ")
    assert _message(body) == f"the Content-Length header must be a whole number of bytes >= 0, got {length.decode()!r}."


def test_chunked_body_asks_for_content_length(serve):
    port = serve(FakeLLM(responses=["hello"]))
    out = _raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b'10\r\n{"prompt": "hi"}\r\n0\r\n\r\n')
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 411 ") and "Content-Length header" in _message(body)


def test_body_over_the_cap_is_413_without_the_model(serve):
    model = FakeLLM(responses=["hello"])
    port = serve(model, max_body=10_000)
    assert _post(port, "/v1/completions", {"prompt": "x" * 9_000})[0] == 200
    big = {"prompt": "x" * 3_000_000}
    status, ctype, data = _post(port, "/v1/completions", big)  # sent whole: the client gets to read the answer
    assert (status, ctype) == (413, "application/json")
    assert _message(data) == f"the request body has {len(json.dumps(big))} bytes; this server takes at most 10000 (ctxflow serve --max-request-mb)."
    assert model.n_calls == 1


class _Busy(FakeLLM):
    """Holds the model (the server's lock) until ``release`` is set."""

    def __init__(self):
        super().__init__(responses=["done"], context=100)
        self.entered, self.release = threading.Event(), threading.Event()

    def generate(self, prompts, **kw):
        self.entered.set()
        self.release.wait(30)
        return super().generate(prompts, **kw)


@pytest.mark.parametrize("chat", [False, True])
def test_hopelessly_long_prompt_is_refused_without_waiting_for_the_model(serve, chat):
    model = _Busy()
    port = serve(model)
    first = threading.Thread(target=_post, args=(port, "/v1/completions", {"prompt": "hi"}))
    first.start()
    try:
        assert model.entered.wait(10)  # the model is busy with the first request
        long = "word " * 1000  # 5000 characters; the context holds 100 tokens
        body = {"messages": [{"role": "user", "content": long}]} if chat else {"prompt": ["ok", long]}
        t0 = time.monotonic()
        status, _, data = _post(port, "/v1/chat/completions" if chat else "/v1/completions", body, timeout=10)
        assert time.monotonic() - t0 < 5
        assert status == 400
        assert _message(data) == (f"prompt {0 if chat else 1} has 5000 characters: far more than the context of 100 tokens can hold. "
                                  "Shorten it, or split the document into chunks that fit.")
    finally:
        model.release.set()
        first.join(30)


# -- the real `ctxflow serve` with a small context and body cap ----------------------------------
@pytest.fixture(scope="module")
def small():
    s = Served("--max-context", "256", "--max-request-mb", "0.05")
    yield s
    s.stop()


def test_streamed_prompt_too_long_is_400_like_unstreamed(small):
    port = int(small.url.rsplit(":", 1)[1])
    long = "word " * 400  # under 256 * 32 characters, but over 256 tokens
    answers = []
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": long}]}), ("/v1/completions", {"prompt": long})):
        for stream in (False, True):
            status, ctype, data = _post(port, path, {**body, "stream": stream, "max_tokens": 3}, timeout=120)
            assert (status, ctype) == (400, "application/json"), (path, stream, data[:300])
            answers.append(_message(data))
    assert answers[0] == answers[1] and answers[2] == answers[3]
    assert "tokens but the context of" in answers[0] and "is 256 tokens" in answers[0]


def test_served_limits_on_a_real_model(small):
    port = int(small.url.rsplit(":", 1)[1])
    status, _, data = _post(port, "/v1/completions", {"prompt": "Hello", "temperature": float("nan"), "max_tokens": 3}, timeout=120)
    assert status == 400 and _message(data) == "'temperature' must be a finite number >= 0.0, got nan."
    status, _, data = _post(port, "/v1/completions", {"prompt": "Hello " * 20_000, "max_tokens": 1}, timeout=120)
    assert status == 413 and "this server takes at most 52428 " in _message(data)
    status, _, data = _post(port, "/v1/completions", {"prompt": "Hello", "max_tokens": 3, "temperature": 0}, timeout=120)
    assert status == 200 and json.loads(data)["usage"]["completion_tokens"] == 3


# -- 4. and 5. HTTPLLM against unusual servers ------------------------------------------------------
class _Odd(BaseHTTPRequestHandler):
    """Behaves as the request's "model" field says."""
    hits: dict[str, int] = {}

    def log_message(self, *a):
        pass

    def _send(self, obj, ctype="application/json"):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        m = body["model"]
        self.hits[m] = self.hits.get(m, 0) + 1
        choice = {"index": 0, "message": {"role": "assistant", "content": "the whole answer"}, "finish_reason": "length"}
        if m == "json_for_stream":  # ignores "stream": true
            return self._send({"choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}, "application/json; charset=utf-8")
        if m == "bad_usage":
            return self._send({"choices": [choice], "usage": {"prompt_tokens": "n/a", "completion_tokens": None}})
        if m == "usage_list":
            return self._send({"choices": [choice], "usage": [1, 2]})
        events = {"weird_choice": b'data: {"choices": ["x"]}\n\n', "number_text": b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
                  "delta_list": b'data: {"choices": [{"delta": ["a"]}]}\n\n', "stream_bad_usage":
                  b'data: {"choices": [{"delta": {"content": "a"}}], "usage": {"prompt_tokens": "many"}}\n\n'}
        self._send(events[m] + b"data: [DONE]\n\n", "text/event-stream")


@pytest.fixture(scope="module")
def odd():
    httpd = _start(ThreadingHTTPServer(("127.0.0.1", 0), _Odd))
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_stream_request_answered_with_plain_json(odd):
    client = HTTPLLM(odd, model="json_for_stream", context_length=512, retries=2, backoff=0.01)
    pieces: list[str] = []
    g = client.generate_stream("q", pieces.append)
    assert pieces == ["the whole answer"] and g.text == "the whole answer"
    assert (g.n_prompt_tokens, g.n_tokens, g.finish_reason) == (7, 3, "length")
    assert _Odd.hits["json_for_stream"] == 1


@pytest.mark.parametrize("model", ["bad_usage", "usage_list"])
def test_malformed_usage_is_a_bad_response(odd, model):
    with pytest.raises(LLMServerError, match=r"bad response from .*/v1/chat/completions: 'usage' does not hold token counts"):
        HTTPLLM(odd, model=model, context_length=512).generate(["q"])


@pytest.mark.parametrize("model", ["weird_choice", "number_text", "delta_list", "stream_bad_usage"])
def test_malformed_stream_event_is_a_bad_response(odd, model):
    with pytest.raises(LLMServerError, match=r"bad (event in the stream|response) from .*/v1/chat/completions"):
        HTTPLLM(odd, model=model, context_length=512).generate_stream("q", lambda t: None)


def test_body_shorter_than_its_content_length_is_408_after_the_read_timeout(serve):
    """A client that promises more bytes than it sends no longer holds its server thread forever."""
    model = FakeLLM(responses=["hello"])
    port = serve(model, read_timeout=0.5)
    t0 = time.monotonic()
    out = _raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" b'{"prompt": "hi"}')
    assert time.monotonic() - t0 < 5
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 408 ")
    assert _message(body) == ("the request body stopped arriving: Content-Length says 500 bytes and nothing more came for "
                              "0.5 s (ctxflow serve --read-timeout).")
    assert model.n_calls == 0
    assert _post(port, "/v1/completions", {"prompt": "hi"})[0] == 200  # the server still answers


def test_silent_connection_is_closed_after_the_read_timeout(serve):
    port = serve(FakeLLM(responses=["hello"]), read_timeout=0.5)
    t0 = time.monotonic()
    assert _raw(port, b"POST /v1/completions HTTP/1.1\r\n") == b""  # headers never finished: dropped, no answer
    assert time.monotonic() - t0 < 5


def test_oversized_body_that_stops_arriving_is_still_413(serve):
    port = serve(FakeLLM(responses=["hello"]), max_body=1000, read_timeout=0.5)
    out = _raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 413 ") and "takes at most 1000" in _message(body)
