"""``llm.http`` against a real ``ctxflow serve`` process on loopback: completions (chat and raw),
streaming, timeouts, refused connections, bad responses, a server killed mid-stream."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ctxflow.graph.spec import loads
from ctxflow.llm.http import HTTPLLM, LLMServerError

from .conftest import Served

PROMPTS = {True: ["What is the capital of France?", "Name a colour of the sky."],  # chat messages
           False: ["The capital of France is", "Once upon a time, in a small village,"]}  # raw text to continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_models_endpoint_and_context(served):
    with urllib.request.urlopen(served.url + "/v1/models", timeout=30) as r:
        data = json.load(r)
    assert data["object"] == "list" and data["data"][0]["id"] == "default"
    client = HTTPLLM(served.url, model="default")
    assert client.context_length == data["data"][0]["context_length"] == 8192


@pytest.mark.parametrize("chat", [True, False])
def test_completions_equal_the_local_model(served, llm, chat):
    client = HTTPLLM(served.url + "/v1", model="default", max_concurrency=2)
    got = client.generate(PROMPTS[chat], max_new_tokens=12, temperature=0.0, chat=chat)
    want = llm.generate(PROMPTS[chat], max_new_tokens=12, temperature=0.0, chat=chat)
    assert [g.text for g in got] == [w.text for w in want]
    assert all(g.text.strip() for g in got)
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want]
    assert all(g.n_prompt_tokens > 0 for g in got)


@pytest.mark.parametrize("chat", [True, False])
def test_streaming_gives_the_same_text_in_pieces(served, chat):
    client = HTTPLLM(served.url, model="default")
    pieces: list[str] = []
    prompt = "Write one sentence about cats." if chat else "Cats are small animals that"
    g = client.generate_stream(prompt, pieces.append, max_new_tokens=20, temperature=0.0, chat=chat)
    whole = client.generate([prompt], max_new_tokens=20, temperature=0.0, chat=chat)[0]
    assert len(pieces) > 3 and "".join(pieces) == g.text == whole.text
    assert g.finish_reason == whole.finish_reason


def test_raw_sse_wire_format(served):
    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                       "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(served.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = [ln for ln in r.read().decode().split("\n\n") if ln]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_timeout_is_a_clear_error_after_retries(served):
    client = HTTPLLM(served.url, model="default", timeout=0.2, retries=1, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(LLMServerError, match=r"within the timeout of 0.2 s.*after 2 attempts"):
        client.generate(["Tell me a story about a dragon."], max_new_tokens=48, temperature=0.0)
    assert time.monotonic() - t0 < 60  # no hang: the client gave up after its two short waits


class _Stall(BaseHTTPRequestHandler):
    """Starts a stream, sends one piece, then goes quiet."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": null}]}\n\n')
        self.wfile.flush()
        time.sleep(3)


def test_stream_that_goes_quiet_times_out():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = HTTPLLM(f"http://127.0.0.1:{httpd.server_address[1]}", context_length=512, timeout=0.3, retries=3)
        pieces: list[str] = []
        with pytest.raises(LLMServerError, match=r"broke after 4 characters.*sent nothing for 0.3 s"):
            client.generate_stream("hi", pieces.append)
        assert pieces == ["Once"]  # not retried: the piece already given out would repeat
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_refused_connection():
    port = _free_port()
    client = HTTPLLM(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, context_length=2048)
    with pytest.raises(LLMServerError, match=rf"cannot connect to http://127.0.0.1:{port}/v1/chat/completions: connection refused.*ctxflow serve.*after 3 attempts"):
        client.generate(["hi"])
    with pytest.raises(LLMServerError, match="connection refused"):
        HTTPLLM(f"http://127.0.0.1:{port}", retries=0).context_length


def test_server_side_errors_are_clear(served):
    with pytest.raises(LLMServerError, match=r"HTTP 404: model 'nope' is not served here; available: default"):
        HTTPLLM(served.url, model="nope", context_length=100).generate(["hi"])
    with pytest.raises(LLMServerError, match="does not serve model 'nope'"):
        HTTPLLM(served.url, model="nope").context_length
    with pytest.raises(LLMServerError, match=r"HTTP 400: .*8192 tokens"):
        HTTPLLM(served.url, context_length=10**6).generate(["word " * 9000], max_new_tokens=1)


class _Junk(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html>gateway</html>" if "chat" in self.path else json.dumps({"choices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_bad_responses_are_clear():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Junk)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = HTTPLLM(f"http://127.0.0.1:{httpd.server_address[1]}", context_length=512, retries=0)
        with pytest.raises(LLMServerError, match="not JSON: b'<html>gateway</html>'"):
            client.generate(["hi"])
        with pytest.raises(LLMServerError, match=r"no choices\[0\]"):
            client.generate(["hi"], chat=False)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_server_killed_mid_stream():
    victim = Served()
    try:
        client = HTTPLLM(victim.url, timeout=30, retries=2)
        pieces: list[str] = []

        def on_text(t: str) -> None:
            pieces.append(t)
            if len(pieces) == 2:
                victim.kill()

        t0 = time.monotonic()
        with pytest.raises(LLMServerError, match=r"stream from .* broke after \d+ characters"):
            client.generate_stream("Tell me a long story about a dragon.", on_text, max_new_tokens=500, temperature=0.0)
        assert time.monotonic() - t0 < 30 and len(pieces) >= 2
    finally:
        victim.stop()


def test_pipeline_with_an_http_model(served, tmp_path):
    p = loads(f"""
version: 1
models:
  llm: {{type: http, base_url: "{served.url}", model: default, timeout: 120}}
components:
  answer: {{type: aggregate.stuff, llm: llm, max_new_tokens: 16}}
inputs: {{chunks: answer.chunks, question: answer.question}}
outputs: {{answer: answer.answer}}
""")
    from ctxflow.types import Chunk

    chunk = Chunk(doc_id="d", index=0, start=0, end=44, text="The kluge was built by Jim in the year 1987.")
    calls = []
    res = p.run({"chunks": [chunk], "question": "Who built the kluge?"}, subscribers=[calls.append])
    assert res["answer"].text
    assert any(c.kind == "llm_call" and c.data["model"].startswith("http:default@127.0.0.1") for c in calls)
    assert p.to_dict()["models"]["llm"]["type"] == "http"
