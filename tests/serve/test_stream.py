"""Streaming the final answer: LocalLM.generate_stream, ``token`` events from the answering
component, and ``ctxflow ask --stream`` (real model)."""
from __future__ import annotations

from pathlib import Path

from ctxflow.cli import main
from ctxflow.graph.spec import loads
from ctxflow.llm.local import LocalLM
from ctxflow.run.stream import TokenPrinter
from ctxflow.types import Chunk

DATA = Path(__file__).resolve().parents[1] / "data" / "jargon_excerpt.txt"


def test_generate_stream_equals_generate():
    m = LocalLM(cache=False)
    for kw in ({"max_new_tokens": 24}, {"max_new_tokens": 40, "stop": ["."]}, {"max_new_tokens": 16, "temperature": 0.8, "seed": 7}):
        pieces: list[str] = []
        g = m.generate_stream("Describe the sea in two sentences.", pieces.append, **kw)
        want = m.generate(["Describe the sea in two sentences."], **kw)[0]
        assert "".join(pieces) == g.text == want.text, kw
        assert (g.n_tokens, g.finish_reason) == (want.n_tokens, want.finish_reason)
        assert len(pieces) > 1
    assert g.finish_reason == "length"


def test_generate_stream_uses_the_call_cache(llm):
    want = llm.generate(["Name three fruits."], max_new_tokens=12)[0]
    pieces: list[str] = []
    g = llm.generate_stream("Name three fruits.", pieces.append, max_new_tokens=12)
    assert g.cached and pieces == [want.text]


PIPE = """
version: 1
models:
  llm: {type: local, model: default, cache: false}
components:
  answer: {type: aggregate.stuff, llm: llm, max_new_tokens: 24}
inputs: {chunks: answer.chunks, question: answer.question}
outputs: {answer: answer.answer}
"""


def test_answer_tokens_are_events_only_when_someone_listens():
    p = loads(PIPE)
    chunk = Chunk(doc_id="d", index=0, start=0, end=53, text="The Zorbex lamp was invented by Ada Brill in 1931.")
    inputs = {"chunks": [chunk], "question": "Who invented the Zorbex lamp?"}
    seen: list = []
    res = p.run(inputs, subscribers=[seen.append])
    assert not [e for e in seen if e.kind == "token"]  # nobody asked: no token events
    streamed: list = []

    class Listener:
        wants_tokens = True

        def __call__(self, ev):
            streamed.append(ev)

    res2 = p.run(inputs, subscribers=[Listener()])
    tokens = [e for e in streamed if e.kind == "token"]
    assert len(tokens) > 1 and all(e.component == "answer" for e in tokens)
    assert "".join(e.data["text"] for e in tokens).strip() == res2["answer"].text == res["answer"].text


def test_ask_stream_prints_tokens_then_citations(capsys, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DATA.read_text(encoding="utf-8")[:2500], encoding="utf-8")
    pipe = tmp_path / "qa.yaml"  # a small retrieve-then-stuff pipeline: aggregate.stuff streams its answer
    pipe.write_text("""version: 1
models:
  llm: {type: local, model: default, cache: false}
  embed: {type: sentence-transformers, model: default}
components:
  chunk: {type: chunk.tokens, size: 128, overlap: 0, llm: llm}
  bank: {type: memory.cosine, embedder: embed, top_k: 2}
  answer: {type: aggregate.stuff, llm: llm, max_new_tokens: 24}
connections: [chunk.chunks -> bank.chunks, bank.hits -> answer.chunks]
inputs: {document: chunk.text, question: [bank.query, answer.question]}
outputs: {answer: answer.answer}
""", encoding="utf-8")
    printed: list[str] = []
    orig = TokenPrinter.__call__

    def spy(self, ev):  # record what reaches the terminal piece by piece
        if ev.kind == "token":
            printed.append(ev.data["text"])
        orig(self, ev)

    TokenPrinter.__call__ = spy
    try:
        assert main(["ask", str(doc), "What does grok mean?", "--stream", "-q", "--pipeline", str(pipe)]) == 0
    finally:
        TokenPrinter.__call__ = orig
    out = capsys.readouterr().out
    assert len(printed) > 1
    text = "".join(printed).strip()
    assert out.startswith(text) and out.count(text) == 1  # printed once, as it came
    assert "Citations:" in out
