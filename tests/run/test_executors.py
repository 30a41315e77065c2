"""Executors: the same pipeline file gives the same greedy answers locally and on a local Ray
cluster (real model, real Ray with ``num_cpus=2``; Ray is started once for this folder: ``ray_cluster``
in conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ctxflow.aggregate.map_reduce  # noqa: F401  (registers aggregate.map_reduce)
from ctxflow.errors import SpecError, UserError
from ctxflow.graph.spec import loads
from ctxflow.run import LocalExecutor, current_executor, make_executor, parse_executor_arg, use_executor

ray = pytest.importorskip("ray", reason="Ray tests need the ray extra: pip install 'ctxflow[ray]'")

DATA = Path(__file__).resolve().parents[1] / "data" / "jargon_excerpt.txt"

# cache: false so the Ray run cannot be answered from the local run's LLM-call cache
PIPELINE = """
version: 1
models:
  llm: {type: local, model: default, cache: false}
  embed: {type: sentence-transformers, model: default}
components:
  chunk: {type: chunk.tokens, size: 120, overlap: 0, llm: llm}
  bank: {type: memory.cosine, embedder: embed, top_k: 3}
  answer: {type: aggregate.map_reduce, llm: llm, map_tokens: 12, max_new_tokens: 12}
connections:
  - chunk.chunks -> bank.chunks
  - bank.hits -> answer.chunks
inputs: {document: chunk.text, question: [bank.query, answer.question]}
outputs: {answer: answer.answer}
"""
QUESTIONS = ["What does grok mean?", "What is a heisenbug?"]


@pytest.fixture(scope="module")
def document() -> str:
    return DATA.read_text(encoding="utf-8")[:4000]


def _answers(pipeline, document):
    calls = []
    out = []
    for q in QUESTIONS:
        res = pipeline.run({"document": document, "question": q}, subscribers=[lambda ev: calls.append(ev) if ev.kind == "llm_call" else None])
        out.append(res["answer"].text)
    return out, calls


def test_same_greedy_answers_local_and_ray(ray_cluster, document):
    local = loads(PIPELINE)
    assert local.executor is None
    want, local_calls = _answers(local, document)
    assert all(a.strip() for a in want)
    assert not any(c.data.get("executor") == "ray" for c in local_calls)

    remote = loads(PIPELINE + "executor: {type: ray, address: local, actors: 2}\n")
    assert remote.executor.spec() == {"type": "ray", "address": "local", "actors": 2}
    got, ray_calls = _answers(remote, document)
    assert got == want
    # the map steps really ran on the two actors, computed there (not cached), not in this process
    mapped = [c for c in ray_calls if c.data.get("executor") == "ray"]
    assert mapped and all(c.data["completion_tokens"] > 0 and c.data["cached"] == 0 for c in mapped)
    pids = set(remote.executor.worker_pids())
    assert len(pids) == 2 and os.getpid() not in pids
    assert set().union(*(c.data["workers"] for c in mapped)) == pids
    remote.executor.close()


def test_ray_embedding_and_tasks_match_local(ray_cluster, embedder):
    ex = make_executor({"type": "ray", "actors": 2})
    texts = [f"sentence number {i} about hackers and their jargon" for i in range(7)]
    got = ex.map_embed(embedder, texts)
    want = LocalExecutor().map_embed(embedder, texts)
    assert got.shape == want.shape == (7, embedder.dim)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(ex.last_workers) == 2
    assert ex.map(abs, [-3, 2, -1]) == [3, 2, 1]  # stateless steps as Ray tasks
    assert ex.map_generate(None, []) == []
    ex.close()


def test_current_executor_follows_the_pipeline():
    assert isinstance(current_executor(), LocalExecutor)
    mine = LocalExecutor(batch_size=2)
    with use_executor(mine):
        assert current_executor() is mine
        with use_executor(None):
            assert current_executor() is mine
    assert current_executor() is not mine


def test_executor_spec_errors():
    with pytest.raises(SpecError, match="unknown executor type 'spark'.*local, ray"):
        make_executor({"type": "spark"})
    with pytest.raises(SpecError, match="actors"):
        make_executor({"type": "ray", "actors": 0})
    with pytest.raises(SpecError, match="address"):
        make_executor({"type": "ray", "address": "nowhere"})
    with pytest.raises(SpecError, match="unknown parameter 'actor'"):
        make_executor({"type": "ray", "actor": 2})
    ex = parse_executor_arg("ray:actors=3,address=auto")
    assert ex.spec() == {"type": "ray", "address": "auto", "actors": 3}
    assert parse_executor_arg("local").spec() == {"type": "local"}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_executor_arg("ray:actors")


def test_yaml_executor_error_is_located():
    with pytest.raises(SpecError, match=r"<string>:\d+:\d+: executor: unknown executor type 'dask'"):
        loads(PIPELINE + "executor: {type: dask}\n")
