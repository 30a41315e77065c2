"""The four strategies from YAML: registered types, parameters checked, grey box checked at validate."""
from __future__ import annotations

import pytest

from ctxflow.errors import SpecError
from ctxflow.graph.spec import dumps, loads

SPEC = """
version: 1
models:
  llm: {{type: {model}}}
components:
  chunk: {{type: chunk.tokens, size: 24}}
  answer: {{type: aggregate.{kind}, llm: llm{params}}}
connections:
  - chunk.chunks -> answer.chunks
inputs: {{document: chunk.text, question: answer.question}}
outputs: {{answer: answer.answer}}
"""


@pytest.mark.parametrize("kind,params", [
    ("map_reduce", ", map_tokens: 8, collapse_tokens: 8, max_depth: 2, max_new_tokens: 8"),
    ("map_reduce", ", mode: summary, map_batch: 2"),
    ("refine", ", early_stop: 2, chunks_per_step: 1, max_new_tokens: 8"),
])
def test_black_box_strategies_run_from_yaml(kind, params):
    p = loads(SPEC.format(model="fake, responses: [The answer is 7.]", kind=kind, params=params))
    p.validate()
    doc = " ".join(f"Sentence {i} is here." for i in range(40)) + " The number is 7."
    ans = p.run({"document": doc, "question": "What is the number?"})["answer"]
    assert "7" in ans.text and ans.trace["calls"] >= 2
    assert loads(dumps(p)).to_dict() == p.to_dict()


@pytest.mark.parametrize("kind,params", [("pcw", ", n_windows: 3, dedupe: bos"), ("nbce", ", beta: 0.5, pooling: mean"),
                                         ("pcw", ", keep_windows: 2, rank: relevance, rescale: 0.5, answer_prefix: 'Answer:'")])
def test_grey_box_strategies_need_a_local_model(kind, params):
    with pytest.raises(SpecError, match="grey-box"):
        loads(SPEC.format(model="fake", kind=kind, params=params)).validate()
    p = loads(SPEC.format(model="local, model: default, max_context: 512", kind=kind, params=params))
    p.validate()  # nothing loads here
    assert p.models["llm"].max_context == 512  # the emulated window reaches the component at warm-up


@pytest.mark.parametrize("kind,params,what", [
    ("pcw", ", dedupe: everything", "dedupe"),
    ("pcw", ", rank: luck", "rank"),
    ("nbce", ", pooling: max", "pooling"),
    ("map_reduce", ", mode: poem", "mode"),
    ("refine", ", early_stop: 0", "early_stop"),
])
def test_bad_parameters_are_clear_errors(kind, params, what):
    with pytest.raises(Exception, match=what):
        loads(SPEC.format(model="fake", kind=kind, params=params))
