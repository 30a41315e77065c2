"""Shared test setup.

* Everything runs offline (``HF_HUB_OFFLINE=1``).
* The LLM-call cache (``CTXFLOW_CACHE_DIR``) is a fresh temporary folder per test session, so no
  test sees answers cached by an earlier run; the de-quantized model weights stay in the persistent
  ``CTXFLOW_MODEL_DIR`` (default ``~/.cache/ctxflow/models``) so they are converted only once per
  machine.
* Session fixtures ``llm`` (the default LocalLM, SmolLM2-135M-Instruct) and ``embedder`` (the default
  all-MiniLM-L6-v2) load their weights once per session. ``llm`` uses the LLM-call cache: a test that
  must reach the model every time (e.g. to compare two ways of computing the same thing) should use
  ``LocalLM(cache=False)``, which shares the already loaded weights and costs nothing to build.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_persistent = Path(os.environ.get("CTXFLOW_CACHE_DIR") or Path.home() / ".cache" / "ctxflow")
os.environ.setdefault("CTXFLOW_MODEL_DIR", str(_persistent / "models"))
_CALLS = tempfile.mkdtemp(prefix="ctxflow-test-calls-")
os.environ["CTXFLOW_CACHE_DIR"] = _CALLS
os.environ.pop("CTXFLOW_NO_CACHE", None)
atexit.register(shutil.rmtree, _CALLS, True)


@pytest.fixture(scope="session")
def llm():
    """The default local LLM (SmolLM2-135M-Instruct), loaded once per session, with the call cache."""
    from ctxflow.llm.local import LocalLM

    m = LocalLM()
    m.warm_up()
    return m


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (all-MiniLM-L6-v2), loaded once per session."""
    from ctxflow.llm.embed import STEmbedder

    e = STEmbedder()
    e.warm_up()
    return e
