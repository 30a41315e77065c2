"""The Ret-LLM style triple store: write, read with patterns, fuzzy arguments, SQLite persistence."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ctxflow.errors import StoreError
from ctxflow.memory import TripleStore, open_store

from .fakes import HashEmbedder, make_chunks

ROOT = Path(__file__).resolve().parents[2]
FACTS = [("Marie Curie", "born in", "Warsaw", "bio#0"), ("Marie Curie", "discovered", "Polonium", "bio#1"),
         ("Pierre Curie", "married", "Marie Curie", "bio#1"), ("Warsaw", "capital of", "Poland", "geo#0"),
         ("Paris", "capital of", "France", "geo#1")]


def _spo(results):
    return [(r.item.subject, r.item.relation, r.item.object) for r in results]


def test_write_and_read_patterns():
    ts = TripleStore()
    ids = ts.write_many(FACTS)
    assert len(ids) == 5 and ts.write("Marie Curie", "born in", "Warsaw", "bio#0") == ids[0]  # no duplicates
    assert ts.write("", "x", "y") is None
    assert len(ts.read()) == 5
    assert _spo(ts.read(subject="marie curie")) == [FACTS[0][:3], FACTS[1][:3]]  # normalised match
    assert _spo(ts.read(relation="capital of")) == [FACTS[3][:3], FACTS[4][:3]]
    assert _spo(ts.read(object="Marie Curie")) == [FACTS[2][:3]]
    assert _spo(ts.read(subject="Marie Curie", relation="discovered")) == [FACTS[1][:3]]
    assert _spo(ts.read("Warsaw", "capital of", "Poland")) == [FACTS[3][:3]]
    assert ts.read(subject="Einstein") == []
    r = ts.read(subject="Paris")[0]
    assert r.score == 1.0 and r.item.source == "geo#1" and r.item.id is not None and str(r.item) == "(Paris; capital of; France)"
    assert ts.counts()["triples"] == 5


def test_fuzzy_arguments_through_embeddings():
    ts = TripleStore(embedder=HashEmbedder(256), threshold=0.6)
    ts.write_many(FACTS)
    fuzzy = ts.read(subject="Marie Curies")  # a variant spelling: no exact key
    assert {t.item.subject for t in fuzzy} == {"Marie Curie"} and all(0.6 <= t.score < 1.0 for t in fuzzy)
    assert ts.read(subject="Marie Curies", fuzzy=False) == []
    loose = ts.read(subject="Curie", threshold=0.4)
    assert {t.item.subject for t in loose} >= {"Marie Curie", "Pierre Curie"}
    assert ts.read(subject="Curie", threshold=0.99) == []
    # without an embedder, fuzzy matching falls back to string similarity
    plain = TripleStore(threshold=0.8)
    plain.write_many(FACTS)
    assert {t.item.subject for t in plain.read(subject="Marie Curi")} == {"Marie Curie"}


def test_persisted_in_sqlite_and_shared_across_processes(tmp_path):
    path = tmp_path / "t"
    ts = TripleStore(path, embedder=HashEmbedder(64))
    ts.write_many(FACTS[:3])
    assert (path / "triples.sqlite").exists() and (path / "manifest.json").exists()
    # another process writes; each write is committed when write() returns
    code = ("from ctxflow.memory import TripleStore; from tests.memory.fakes import HashEmbedder; "
            f"TripleStore({str(path)!r}, embedder=HashEmbedder(64)).write('Warsaw', 'capital of', 'Poland', 'geo#0')")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert _spo(ts.read(relation="capital of")) == [FACTS[3][:3]]
    ts.close()
    again = open_store(path, embedder=HashEmbedder(64))
    assert isinstance(again, TripleStore) and len(again.read()) == 4
    with pytest.raises(StoreError, match="built with embedder 'hash-bow-64' .dim 64. but was opened with 'hash-bow-32' .dim 32."):
        TripleStore(path, embedder=HashEmbedder(32))


def test_in_memory_store_saved_to_folder(tmp_path):
    ts = TripleStore()
    ts.write_many(FACTS)
    ts.save(tmp_path / "t")
    assert len(TripleStore.open(tmp_path / "t").read()) == 5
    ts.write("Bob", "likes", "tea")  # now writes to the saved store
    assert len(TripleStore(tmp_path / "t").read()) == 6
    with pytest.raises(StoreError, match="already holds a store"):
        TripleStore().save(tmp_path / "t")


def test_corrupt_or_newer_database(tmp_path):
    path = tmp_path / "t"
    TripleStore(path).write_many(FACTS)
    con = sqlite3.connect(path / "triples.sqlite")
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreError, match="has format 99, newer than this ctxflow reads"):
        TripleStore(path)
    bad = tmp_path / "bad"
    TripleStore(bad)
    (bad / "triples.sqlite").write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        (bad / f"triples.sqlite{extra}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        TripleStore(bad)


def test_as_a_bank_extracts_and_answers():
    ts = TripleStore()
    ts.add(make_chunks(["Marie Curie was born in Warsaw.", "Warsaw is the capital of Poland.", "Paris is a big city."]))
    assert len(ts) == 3 and ts.counts()["triples"] >= 3
    hits = ts.search("Where was Marie Curie born?", 2)
    assert hits[0].item.id == "doc#0" and hits[0].meta["bank"] == "triples" and hits[0].meta["facts"]
    assert hits[0].meta["citation"]["end"] == len("Marie Curie was born in Warsaw.")
    assert ts.remove(["doc#0"]) == 1 and ts.read(subject="Marie Curie") == []
    assert ts.search("Marie Curie", 3) == []
