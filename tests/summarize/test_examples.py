"""The example scripts import, and the Python-built pipeline equals its YAML round trip (no model loads)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import ctxflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines main(); nothing runs at import
    return mod


@pytest.mark.parametrize("name", ["qa", "summarize_book", "summarize_code", "pipeline_in_python"])
def test_example_imports_and_has_main(name):
    assert callable(load(name).main)


def test_pipeline_in_python_builds_a_valid_pipeline_that_round_trips():
    p = load("pipeline_in_python").build()
    assert p.order() == ["chunk", "bank", "pick", "answer"]
    assert ctxflow.loads(ctxflow.dumps(p), "x.yaml") == p
