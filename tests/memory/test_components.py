"""Banks as pipeline components (index cache, persisted stores), the CLI functions, and the real
default embedder."""
from __future__ import annotations

import argparse

import pytest

import ctxflow
from ctxflow.chunking import SentenceChunker
from ctxflow.errors import UserError
from ctxflow.graph.registry import COMPONENTS
from ctxflow.memory import KnnBank, open_store, read_manifest
from ctxflow.memory.cli import register, index_main, search_store
from ctxflow.memory.cosine import CosineMemory
from ctxflow.memory.knn import KnnMemory

from .fakes import HashEmbedder, make_chunks

DOC = ("The lighthouse keeper lived on a rocky island. Every night he lit the great lamp. "
       "The password to the supply shed was swift-apple. Ships passed safely because of the light. "
       "Order 12345 brought oil for the lamp in winter. The keeper's cat was called Pepper.")

BANKS = ["memory.cosine", "memory.knn", "memory.bm25", "memory.hybrid", "memory.graph", "memory.triples"]


def test_all_banks_register_with_the_common_shape():
    import ctxflow.memory  # noqa: F401

    for name in BANKS:
        cls = COMPONENTS[name]
        socks = cls.input_sockets()
        assert set(socks) == {"query", "chunks", "top_k"} and socks["query"].required
        assert not socks["chunks"].required and not socks["top_k"].required
        assert set(cls.output_sockets()) == {"hits"}


@pytest.mark.parametrize("name", BANKS)
def test_each_bank_in_a_pipeline(name):
    emb = HashEmbedder(128)
    params = {"memory.bm25": {}, "memory.graph": {"embedder": "embed"}, "memory.triples": {}}.get(name, {"embedder": "embed"})
    p = ctxflow.Pipeline(models={"embed": emb})
    p.add("chunk", SentenceChunker(size=16))
    p.add("bank", COMPONENTS[name](top_k=3, **params))
    p.connect("chunk.chunks", "bank.chunks")
    p.expose_input("document", "chunk.text")
    p.expose_input("question", "bank.query")
    p.expose_output("hits", "bank.hits")
    hits = p.run({"document": DOC, "question": "What was the password swift-apple for?"}).outputs["hits"]
    assert hits and "swift-apple" in hits[0].item.text, [h.item.text for h in hits]
    assert DOC[hits[0].item.start:hits[0].item.end] == hits[0].item.text
    assert hits[0].meta["rank"] == 0 and hits[0].meta["bank"]


def test_same_document_is_embedded_once():
    emb = HashEmbedder(64)
    comp = CosineMemory(embedder=emb, top_k=2)
    chunks = make_chunks(DOC.split(". "))
    comp.run(query="lamp", chunks=chunks)
    n = emb.n_texts
    assert n == len(chunks) + 1
    comp.run(query="keeper cat", chunks=[c.model_copy() for c in chunks])  # same texts: cached index
    assert emb.n_texts == n + 1  # only the query was embedded
    comp.run(query="lamp", chunks=chunks[:-1])  # different chunks: indexed again
    assert emb.n_texts == n + 1 + len(chunks) - 1 + 1


def test_component_searches_a_store_and_sees_new_versions(tmp_path):
    emb = HashEmbedder(64)
    bank = KnnBank(emb, index="flat")
    bank.add(make_chunks(["alpha entry", "beta entry"]))
    bank.save(tmp_path / "s")
    comp = KnnMemory(embedder=emb, store=str(tmp_path / "s"), top_k=1)
    comp.warm_up()
    assert comp.run(query="beta")["hits"][0].item.text == "beta entry"
    bank.add(make_chunks(["gamma entry"], doc_id="new"))
    bank.save(tmp_path / "s")
    assert comp.run(query="gamma")["hits"][0].item.text == "gamma entry"
    with pytest.raises(UserError, match="has nothing to search: connect its 'chunks' input"):
        KnnMemory(embedder=emb).run(query="x")
    with pytest.raises(UserError, match="parameter .top_k. of memory.cosine: expected int >= 1"):
        CosineMemory(embedder=emb, top_k=0)
    with pytest.raises(UserError, match="model name that was never bound"):
        KnnMemory(embedder="embed").run(query="x", chunks=make_chunks(["a"]))


def test_index_main_walks_appends_and_reports(tmp_path, capsys):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    (docs / "a.txt").write_text("The vault code is 12345. Nobody else knows it.")
    (docs / "sub" / "b.md").write_text("# Notes\n\nThe password is swift-apple.\n")
    (docs / "sub" / "latin1.txt").write_bytes("Caf\xe9 au lait costs 3 euros.".encode("latin-1"))
    (docs / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01\x02" * 50)
    (docs / "empty.txt").write_text("  \n")
    (docs / ".hidden" / "secret.txt").write_text("should not be indexed")
    store = str(tmp_path / "stores" / "docs")
    emb = HashEmbedder(64)
    assert index_main([str(docs)], store, embedder=emb, quiet=True) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "image.bin (" in err and "binary" in err and "empty.txt" in err
    assert "latin1.txt (1 byte(s)) invalid UTF-8 replaced" in err
    assert "indexed 3 chunk(s) from 3 file(s)" in err and "(knn bank" in err
    m = read_manifest(store)
    assert m["bank"] == "knn" and m["counts"]["docs"] == 3
    top = search_store(store, "what is the password", 1, embedder=emb)
    assert "swift-apple" in top[0].item.text and top[0].item.meta["path"].endswith("b.md")
    # append one more file, and index an existing one again (its old chunks are replaced)
    (tmp_path / "c.txt").write_text("Pepper is the keeper's cat.")
    (docs / "a.txt").write_text("The vault code changed to 67890.")
    assert index_main([str(tmp_path / "c.txt"), str(docs / "a.txt")], store, embedder=emb, quiet=True) == 0
    bank = open_store(store, embedder=emb)
    assert len(bank) == 4 and read_manifest(store)["version"] == 2
    assert not any("12345" in c.text for c in bank.chunks)
    with pytest.raises(UserError, match="holds a 'knn' bank; index into it without --bank"):
        index_main([str(docs)], store, bank="bm25", embedder=emb, quiet=True)
    assert index_main([str(docs / "image.bin")], str(tmp_path / "other"), bank="bm25", quiet=True) == 2
    with pytest.raises(UserError, match="not found"):
        index_main([str(tmp_path / "missing")], store, quiet=True)


@pytest.mark.parametrize("bank", ["bm25", "graph", "triples"])
def test_index_main_other_banks(tmp_path, bank, capsys):
    (tmp_path / "a.txt").write_text("Marie Curie was born in Warsaw. The password is swift-apple.")
    store = str(tmp_path / bank)
    assert index_main([str(tmp_path / "a.txt")], store, bank=bank, quiet=True) == 0
    assert read_manifest(store)["bank"] == bank
    hits = search_store(store, "swift-apple password", 1)
    assert hits and "swift-apple" in hits[0].item.text


def test_register():
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["index", "docs", "more.txt", "--store", "stores/x", "--bank", "hybrid", "--size", "64", "-q"])
    assert args.paths == ["docs", "more.txt"] and args.store == "stores/x" and args.bank == "hybrid"
    assert args.size == 64 and args.quiet and args.chunker == "sentences" and callable(args.fn)


def test_real_default_embedder_store(tmp_path, embedder):
    """With all-MiniLM-L6-v2: semantic retrieval, persisted, reopened with the embedder rebuilt from the manifest."""
    (tmp_path / "doc.txt").write_text(DOC)
    store = str(tmp_path / "s")
    assert index_main([str(tmp_path / "doc.txt")], store, bank="hybrid", size=24, embedder=embedder, quiet=True) == 0
    m = read_manifest(store)
    assert m["embedder"]["dim"] == 384 and m["embedder"]["spec"]["type"] == "sentence-transformers"
    hits = search_store(store, "What was the name of the keeper's pet?", 2)  # the embedder is recreated from the manifest
    assert "Pepper" in hits[0].item.text
    hits = search_store(store, "order 12345", 1, embedder=embedder)
    assert "12345" in hits[0].item.text


def test_index_never_touches_files_that_are_not_its_own(tmp_path, monkeypatch, capsys):
    from ctxflow.errors import StoreError

    emb = HashEmbedder(64)
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html.tmpl").write_text("<html>{{t}}</html>")
    (site / "README.txt").write_text("The docs live here.")
    with pytest.raises(StoreError, match="is not a store and not empty \\(README.txt, page.html.tmpl\\)"):
        index_main([str(site)], str(site), embedder=emb, quiet=True)
    assert sorted(p.name for p in site.iterdir() if p.name != ".lock") == ["README.txt", "page.html.tmpl"]
    # a store whose manifest is gone is not overwritten
    store = tmp_path / "st"
    assert index_main([str(site / "README.txt")], str(store), embedder=emb, quiet=True) == 0
    (store / "manifest.json").unlink()
    with pytest.raises(StoreError, match="is incomplete: it holds data \\(v000001\\) but no manifest.json"):
        index_main([str(site / "page.html.tmpl")], str(store), embedder=emb, quiet=True)
    assert (store / "v000001").is_dir()
    # a store path that is a file, and a first index that indexes nothing
    with pytest.raises(StoreError, match="is a file"):
        index_main([str(site / "README.txt")], str(site / "README.txt"), embedder=emb, quiet=True)
    (tmp_path / "empty.txt").write_text("")
    assert index_main([str(tmp_path / "empty.txt")], str(tmp_path / "new"), embedder=emb, quiet=True) == 2
    assert not (tmp_path / "new" / "manifest.json").exists()
    # the same file indexed from two working folders is one document; the store's own files are skipped
    store2 = tmp_path / "docs" / "store"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Pepper is the keeper's cat.")
    monkeypatch.chdir(tmp_path)
    assert index_main(["docs"], "docs/store", embedder=emb, quiet=True) == 0
    monkeypatch.chdir(tmp_path / "docs")
    assert index_main(["."], "store", embedder=emb, quiet=True) == 0
    assert len(open_store(store2, embedder=emb)) == 1


def test_reindexing_a_store_with_relative_ids_replaces_its_documents(tmp_path, monkeypatch):
    """Stores written before ids were absolute hold the path as given: re-indexing replaces those."""
    from ctxflow.memory.store import open_store as open_

    emb = HashEmbedder(64)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Pepper is the keeper's cat.")
    bank = ctxflow.memory.KnnBank(emb)
    bank.add(SentenceChunker(size=64).run(text="Pepper was the old cat.", doc_id="docs/a.txt")["chunks"])
    bank.save(tmp_path / "st")
    assert index_main(["docs"], "st", embedder=emb, quiet=True) == 0
    chunks = open_(tmp_path / "st", embedder=emb).chunks
    assert [c.doc_id for c in chunks] == [str(tmp_path / "docs" / "a.txt")] and "keeper" in chunks[0].text

