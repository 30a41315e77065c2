"""The Ray executor when things go wrong (real Ray with ``num_cpus=2``, ``ray_cluster`` in conftest.py;
fake models, so no weights are loaded): too many actors, actors that cannot start, Ctrl-C and an
error in one shard, errors raised on workers, and the driver's settings on the workers."""
from __future__ import annotations

import _thread
import gc
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import ctxflow.aggregate.map_reduce  # noqa: F401  (registers aggregate.map_reduce)
from ctxflow.cli import main
from ctxflow.errors import ContextOverflowError, UserError
from ctxflow.llm.base import Generation
from ctxflow.llm.fake import FakeLLM

pytest.importorskip("ray", reason="Ray tests need the ray extra: pip install 'ctxflow[ray]'")
from ctxflow.run.ray import RayExecutor  # noqa: E402


class Sleepy(FakeLLM):
    """Echoes, but sleeps a minute on a batch holding the prompt "slow"."""

    def generate(self, prompts, **kw):
        if "slow" in prompts:
            time.sleep(60)
        return super().generate(prompts, **kw)


class EnvProbe(FakeLLM):
    """Answers the value of the environment variable named by each prompt (on the actor)."""

    def generate(self, prompts, **kw):
        return [Generation(str(os.environ.get(p)), n_prompt_tokens=1, n_tokens=1, finish_reason="eos") for p in prompts]


def _finishes(fn, within: float):
    """``fn()`` in a thread: its result or its error; a failure (not a hang) if it still runs after ``within`` s."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert not t.is_alive(), f"still waiting after {within} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def ex(ray_cluster):
    """Two one-CPU actors: they hold the whole 2-CPU cluster."""
    e = RayExecutor(actors=2)
    e.worker_pids()
    yield e
    e.close()


@pytest.fixture(scope="module")
def server_500():
    """An OpenAI-compatible server whose every completion fails with HTTP 500."""

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(500, {"error": {"message": "model crashed: CUDA OOM"}})

    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{s.server_address[1]}"
    s.shutdown()


@pytest.fixture
def http_pipeline(tmp_path, server_500):
    path = tmp_path / "mr.yaml"
    path.write_text(f"""version: 1
models:
  llm: {{type: http, base_url: "{server_500}", model: m, retries: 0, context_length: 2048}}
components:
  chunk: {{type: chunk.tokens, size: 32}}
  mr: {{type: aggregate.map_reduce, llm: llm}}
connections:
  - chunk.chunks -> mr.chunks
inputs: {{document: chunk.text, question: mr.question}}
outputs: {{answer: mr.answer}}
""")
    return ["run", str(path), "-i", "document=" + "word " * 100, "-i", "question=what?", "-q"]


def test_env_reaches_actors_and_tasks(ray_cluster, monkeypatch, tmp_path):
    # set after the cluster started: its workers only see it if the executor forwards it
    monkeypatch.setenv("CTXFLOW_NO_CACHE", "1")
    monkeypatch.setenv("CTXFLOW_CACHE_DIR", str(tmp_path))
    e = RayExecutor(actors=1)
    try:
        got = [g.text for g in e.map_generate(EnvProbe(), ["CTXFLOW_NO_CACHE", "CTXFLOW_CACHE_DIR"])]
        assert got == ["1", str(tmp_path)]
        assert e.map(os.getenv, ["CTXFLOW_NO_CACHE", "CTXFLOW_CACHE_DIR"]) == ["1", str(tmp_path)]
    finally:
        e.close()


def test_more_actors_than_the_cluster_holds_is_an_error_not_a_hang(ray_cluster):
    e = RayExecutor(actors=3)
    with pytest.raises(UserError, match=r"3 actors x 1 CPU = 3 CPUs, but the local Ray has 2 CPUs \(room for 2 such actors\): "
                                        r"set actors: 2, lower cpus_per_actor.*num_cpus"):
        _finishes(lambda: e.map_generate(FakeLLM(echo=True), ["a", "b", "c"]), 30)
    assert e._pool == []
    with pytest.raises(UserError, match=r"1 GPU = 1 CPUs and 1 GPUs, but the local Ray has 2 CPUs and 0 GPUs.*lower gpus_per_actor"):
        _finishes(lambda: RayExecutor(actors=1, gpus_per_actor=1).worker_pids(), 30)


def test_cli_too_many_actors_says_what_to_change(ray_cluster, http_pipeline, capsys):
    assert _finishes(lambda: main([*http_pipeline, "--executor", "ray:actors=3"]), 30) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "the ray executor asks for 3 actors" in err and "set actors: 2" in err
    assert "Traceback" not in err


def test_cli_prints_an_actors_error_like_the_local_executor(ray_cluster, http_pipeline, capsys):
    want = "error: component 'mr' (aggregate.map_reduce): "
    assert main([*http_pipeline, "--executor", "local"]) == 2
    local = capsys.readouterr().err
    assert want in local and "HTTP 500: model crashed: CUDA OOM" in local
    assert main([*http_pipeline, "--executor", "ray:actors=1"]) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert line == next(x for x in local.splitlines() if x.startswith("error:"))
    assert "\x1b[" not in err and "Traceback" not in err and "ray::" not in err
    gc.collect()  # the run's executor (and its actor) is gone: free the CPU for the next tests


def test_actors_that_cannot_start_time_out(ex):
    other = RayExecutor(actors=1, start_timeout_s=1)  # ex's actors hold both CPUs
    t = time.monotonic()
    with pytest.raises(UserError, match=r"1 of 1 Ray actors did not start within 1 s.*ray status"):
        _finishes(other.worker_pids, 30)
    assert time.monotonic() - t < 10 and other._pool == []


def test_ctrl_c_stops_the_map_step_and_frees_the_actors(ex):
    before = set(ex.worker_pids())
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    t = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ex.map_generate(Sleepy(echo=True), ["slow", "slow"])  # a minute on each actor
    finally:
        timer.cancel()
    assert time.monotonic() - t < 10
    # the next step does not wait behind the abandoned minute: the busy actors were replaced
    t = time.monotonic()
    assert [g.text for g in ex.map_generate(FakeLLM(echo=True), ["a", "b"])] == ["a", "b"]
    assert time.monotonic() - t < 30
    assert not before & set(ex.worker_pids())


def test_error_in_one_shard_stops_the_others_and_keeps_its_type(ex):
    before = set(ex.worker_pids())
    t = time.monotonic()
    with pytest.raises(ContextOverflowError) as info:  # shard 1 fails at once, shard 2 sleeps a minute
        ex.map_generate(Sleepy(echo=True, context=3), ["one two three four", "slow"])
    assert type(info.value) is ContextOverflowError
    assert str(info.value) == "prompt 0 has 4 tokens but the context of fake is 3 tokens."
    assert time.monotonic() - t < 30
    t = time.monotonic()
    assert [g.text for g in ex.map_generate(FakeLLM(echo=True), ["a", "b"])] == ["a", "b"]
    assert time.monotonic() - t < 30
    assert len(before & set(ex.worker_pids())) == 1  # the idle actor kept its models, the busy one was replaced


def test_task_error_is_raised_as_itself(ex):
    with pytest.raises(ValueError) as info:
        ex.map(int, ["1", "x"])
    assert type(info.value) is ValueError and str(info.value) == "invalid literal for int() with base 10: 'x'"
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised on a Ray worker" in note and "\x1b[" not in note
    assert ex.map(int, ["1", "2"]) == [1, 2]
