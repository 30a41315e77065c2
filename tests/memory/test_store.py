"""Persisted stores: manifest, atomic commits, and clear errors for wrong embedder, newer
format, checksum mismatch, missing files, wrong bank type and lost updates."""
from __future__ import annotations

import json

import pytest

from ctxflow.errors import StoreError
from ctxflow.memory import BM25Bank, GraphBank, KnnBank, open_store, read_manifest, store_lock
from ctxflow.memory.store import FORMAT

from .fakes import HashEmbedder, make_chunks, random_chunks


@pytest.fixture
def store(tmp_path):
    bank = KnnBank(HashEmbedder(32), index="flat")
    bank.add(random_chunks(50, seed=9))
    bank.save(tmp_path / "s")
    return tmp_path / "s"


def test_manifest_records_everything(store):
    m = read_manifest(store)
    assert m["format"] == FORMAT and m["bank"] == "knn" and m["version"] == 1 and m["data"] == "v000001"
    assert m["embedder"]["id"] == "hash-bow-32" and m["embedder"]["dim"] == 32 and m["embedder"]["spec"] == {"type": "test-hash"}
    assert m["counts"]["chunks"] == 50 and m["counts"]["docs"] == 1
    assert set(m["files"]) == {"chunks.jsonl", "vectors.npy", "ids.npy", "state.json", "index.faiss"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"].values())
    assert m["params"]["index"] == "flat"


def test_versions_advance_and_old_ones_are_pruned(store):
    emb = HashEmbedder(32)
    for i in range(4):
        bank = KnnBank.open(store, embedder=emb)
        bank.add(make_chunks([f"extra {i}"], doc_id=f"x{i}"))
        assert bank.save(store) == i + 2
    versions = sorted(p.name for p in store.iterdir() if p.name.startswith("v"))
    assert versions == ["v000004", "v000005"]  # the current one and the previous one (for slow readers)
    assert len(open_store(store, embedder=emb)) == 54


def test_wrong_embedder(store):
    with pytest.raises(StoreError) as ei:
        KnnBank.open(store, embedder=HashEmbedder(64))
    msg = str(ei.value)
    assert "was built with embedder 'hash-bow-32' (dim 32)" in msg and "opened with 'hash-bow-64' (dim 64)" in msg
    assert "open it with embedder 'hash-bow-32'" in msg
    with pytest.raises(StoreError, match="built with embedder 'hash-bow-32'.*opened with 'other-32'"):
        open_store(store, embedder=HashEmbedder(32, name="other"))


def test_embedder_rebuilt_from_manifest_or_clear_error(store):
    with pytest.raises(StoreError, match="needs the embedder 'hash-bow-32', which could not be created from .*'test-hash'"):
        open_store(store)


def test_newer_format(store):
    m = json.loads((store / "manifest.json").read_text())
    m["format"] = FORMAT + 1
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError) as ei:
        open_store(store, embedder=HashEmbedder(32))
    assert f"has format {FORMAT + 1}, newer than this ctxflow" in str(ei.value)
    assert f"reads (formats 1..{FORMAT})" in str(ei.value) and "upgrade ctxflow" in str(ei.value)


def test_checksum_mismatch(store):
    f = store / "v000001" / "chunks.jsonl"
    data = bytearray(f.read_bytes())
    data[10] ^= 0x20
    f.write_bytes(bytes(data))
    with pytest.raises(StoreError) as ei:
        open_store(store, embedder=HashEmbedder(32))
    msg = str(ei.value)
    assert "is corrupt: checksum mismatch in v000001/chunks.jsonl" in msg and "but manifest.json records" in msg
    assert "restore it from a backup or rebuild the store" in msg


def test_missing_file_wrong_bank_and_no_store(store, tmp_path):
    with pytest.raises(StoreError, match="holds a 'knn' bank, not 'bm25'"):
        BM25Bank.open(store)
    with pytest.raises(StoreError, match="no store at .*nowhere: the folder does not exist"):
        open_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="it has no manifest.json"):
        open_store(tmp_path / "empty")
    (store / "v000001" / "ids.npy").unlink()
    with pytest.raises(StoreError, match="is incomplete: v000001/ids.npy, named in manifest.json, is missing"):
        open_store(store, embedder=HashEmbedder(32))
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        open_store(store)


def test_lost_update_is_refused(store):
    emb = HashEmbedder(32)
    a, b = KnnBank.open(store, embedder=emb), KnnBank.open(store, embedder=emb)
    a.add(make_chunks(["from a"], doc_id="a"))
    a.save(store)
    b.add(make_chunks(["from b"], doc_id="b"))
    with pytest.raises(StoreError, match="changed since this bank was opened .version 1, now 2.: another writer committed"):
        b.save(store)
    with store_lock(store):  # the right way: reopen under the lock, apply, save
        b = KnnBank.open(store, embedder=emb)
        b.add(make_chunks(["from b"], doc_id="b"))
        b.save(store)
    assert {"a#0", "b#0"} <= set(open_store(store, embedder=emb).ids())


@pytest.mark.parametrize("stage", ["cleaned", "file", "data", "manifest-tmp", "committed"])
def test_failure_at_each_commit_stage_keeps_a_whole_version(store, stage):
    emb = HashEmbedder(32)
    bank = KnnBank.open(store, embedder=emb)
    bank.add(make_chunks(["the new entry"], doc_id="new"))

    def boom(s):
        if s == stage:
            raise KeyboardInterrupt(s)

    with pytest.raises(KeyboardInterrupt):
        bank.save(store, hook=boom)
    again = open_store(store, embedder=emb)
    assert len(again) == (51 if stage == "committed" else 50)
    bank2 = KnnBank.open(store, embedder=emb)  # the next writer cleans up and commits
    bank2.add(make_chunks(["later"], doc_id="later"))
    bank2.save(store)
    assert not [p for p in store.iterdir() if ".tmp" in p.name]
    assert "later#0" in open_store(store, embedder=emb).ids()


def test_open_store_picks_the_bank_type(tmp_path):
    g = GraphBank()
    g.add(make_chunks(["Alice met Bob in Paris."]))
    g.save(tmp_path / "g")
    assert isinstance(open_store(tmp_path / "g"), GraphBank)
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    m["bank"] = "vectordb9000"
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="unknown type 'vectordb9000'; known types: bm25, cosine, graph, hybrid, knn, triples"):
        open_store(tmp_path / "g")
