"""Dense banks: cosine and faiss kNN (flat, HNSW with tombstones, IVF training, auto choice)."""
from __future__ import annotations

import numpy as np
import pytest

from ctxflow.errors import UserError
from ctxflow.memory import CosineBank, KnnBank, open_store

from .fakes import HashEmbedder, make_chunks, random_chunks

TEXTS = ["The password is swift-apple.", "Paris is the capital of France.", "Alice met Bob in Paris.",
         "The code 12345 opens the door.", "Dogs are loyal animals."]


@pytest.fixture
def emb():
    return HashEmbedder(128)


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf", "auto"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_add_search_remove(emb, index, metric):
    bank = KnnBank(emb, index=index, metric=metric)
    bank.add(make_chunks(TEXTS))
    assert len(bank) == 5
    hits = bank.search("capital of France", 3)
    assert hits[0].item.text == TEXTS[1]
    assert [h.meta["rank"] for h in hits] == [0, 1, 2]
    assert all(h.meta["bank"] == "knn" and h.meta["metric"] == metric for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    if metric == "l2":
        assert all(h.score <= 0 for h in hits)
    assert bank.remove(["doc#1", "nope"]) == 1
    assert len(bank) == 4
    assert all(h.item.id != "doc#1" for h in bank.search("capital of France", 5))
    assert len(bank.search("capital of France", 10)) == 4


def test_add_replaces_same_id(emb):
    bank = KnnBank(emb, index="flat")
    bank.add(make_chunks(TEXTS))
    bank.add(make_chunks(["A completely new first chunk about zebras."]))
    assert len(bank) == 5
    assert bank.search("zebras", 1)[0].item.id == "doc#0"
    assert all("swift" not in c.text for c in bank.chunks)


def test_hnsw_tombstones_then_rebuild(emb):
    chunks = random_chunks(200, seed=1)
    bank = KnnBank(emb, index="hnsw", rebuild_ratio=0.25)
    bank.add(chunks)
    assert bank.kind == "hnsw"
    bank.remove([c.id for c in chunks[:20]])
    assert bank.tombstones == 20 and bank._index.ntotal == 200  # HNSW cannot delete: tombstones
    for c in chunks[:20]:
        assert all(h.item.id != c.id for h in bank.search(c.text, 5))
    assert bank.search(chunks[50].text, 1)[0].item.id == chunks[50].id
    bank.remove([c.id for c in chunks[20:60]])  # 60 > 25% of 200: rebuilt from the kept vectors
    assert bank.tombstones == 0 and bank._index.ntotal == 140 == len(bank)
    assert bank.search(chunks[150].text, 1)[0].item.id == chunks[150].id
    bank.rebuild()
    assert bank._index.ntotal == 140


def test_ivf_trains_once_there_are_enough_vectors(emb):
    bank = KnnBank(emb, index="ivf", nlist=8, nprobe=8)
    chunks = random_chunks(600, seed=2)
    bank.add(chunks[:100])
    assert bank.kind == "flat"  # 100 < 39 * 8: not trainable yet, exact search meanwhile
    assert bank.search(chunks[7].text, 1)[0].item.id == chunks[7].id
    bank.add(chunks[100:])
    assert bank.kind == "ivf" and bank._index.is_trained and bank._index.nlist == 8
    for c in chunks[::97]:
        assert bank.search(c.text, 1)[0].item.id == c.id
    assert bank.remove([chunks[0].id]) == 1 and bank._index.ntotal == 599  # IVF deletes for real


def test_auto_choice_by_size(emb):
    bank = KnnBank(emb, index="auto", auto_hnsw_at=50, auto_ivf_at=400)
    chunks = random_chunks(450, seed=3)
    bank.add(chunks[:40])
    assert bank.kind == "flat"
    bank.add(chunks[40:100])
    assert bank.kind == "hnsw"
    bank.add(chunks[100:])
    assert bank.kind == "ivf"
    assert bank.target_kind(10) == "flat" and bank.target_kind(60) == "hnsw"
    assert bank.search(chunks[420].text, 1)[0].item.id == chunks[420].id
    # defaults: exact below 20k vectors
    assert KnnBank(emb).target_kind(19_999) == "flat" and KnnBank(emb).target_kind(20_000) == "hnsw"


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_save_open_round_trip(emb, tmp_path, index):
    chunks = random_chunks(400, seed=4)
    bank = KnnBank(emb, index=index, nlist=8)
    bank.add(chunks)
    bank.remove([chunks[3].id])
    bank.save(tmp_path / "s")
    again = open_store(tmp_path / "s", embedder=emb)
    assert isinstance(again, KnnBank) and again.kind == bank.kind and len(again) == 399
    assert again.tombstones == bank.tombstones
    q = chunks[10].text
    assert [h.item.id for h in again.search(q, 5)] == [h.item.id for h in bank.search(q, 5)]
    again.add(make_chunks(["fresh entry about kiwis"], doc_id="new"))
    assert again.search("kiwis", 1)[0].item.id == "new#0"


def test_cosine_bank_normalises(tmp_path):
    class Unnormalised(HashEmbedder):
        def embed(self, texts, kind="passage"):
            return 7.0 * super().embed(texts, kind)

    bank = CosineBank(Unnormalised(64))
    bank.add(make_chunks(TEXTS))
    top = bank.search(TEXTS[3], 2)
    assert top[0].item.text == TEXTS[3] and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert top[0].meta["bank"] == "cosine" and -1.0 <= top[1].score <= 1.0
    bank.save(tmp_path / "c")
    assert open_store(tmp_path / "c", embedder=Unnormalised(64)).search(TEXTS[3], 1)[0].item.id == "doc#3"


def test_empty_and_bad_params(emb):
    assert KnnBank(emb).search("anything") == []
    assert KnnBank(emb).remove(["x"]) == 0
    with pytest.raises(UserError, match="index must be one of auto, flat, hnsw, ivf"):
        KnnBank(emb, index="annoy")
    with pytest.raises(UserError, match="metric must be one of ip, l2"):
        KnnBank(emb, metric="cos")
    v = np.asarray(emb.embed(["x"]))
    assert v.shape == (1, 128)


def test_hnsw_float16_storage(emb, tmp_path):
    """fp16 HNSW codes: same neighbours as exact search on clear queries, scores within fp16 rounding,
    tombstones and a store round trip like float32; a bad storage name is a clear error."""
    chunks = random_chunks(300, seed=7)
    exact = KnnBank(emb, index="flat")
    half = KnnBank(emb, index="hnsw", hnsw_storage="float16", ef_construction=128)
    exact.add(chunks)
    half.add(chunks)
    assert half.kind == "hnsw" and "SQ" in type(half._inner()).__name__
    for c in chunks[::30]:
        e, h = exact.search(c.text, 5), half.search(c.text, 5)
        assert h[0].item.id == c.id == e[0].item.id
        assert h[0].score == pytest.approx(e[0].score, abs=5e-3)
    half.remove([chunks[0].id])
    assert half.tombstones == 1 and all(x.item.id != chunks[0].id for x in half.search(chunks[0].text, 5))
    half.save(tmp_path / "h")
    again = open_store(tmp_path / "h", embedder=emb)
    assert again.params["hnsw_storage"] == "float16" and again.tombstones == 1
    assert [x.item.id for x in again.search(chunks[60].text, 5)] == [x.item.id for x in half.search(chunks[60].text, 5)]
    with pytest.raises(UserError, match="hnsw_storage must be one of float32, float16; got 'int4'"):
        KnnBank(emb, index="hnsw", hnsw_storage="int4")


def test_ivf_pq4_fast_scan_with_exact_refinement(emb, tmp_path):
    """IVF lists of 4-bit PQ codes (fast-scan) re-ranked exactly: the scores equal exact search's, the
    neighbours match it on clear queries, removals are tombstones (rebuilt past the ratio), and the
    store round trip keeps it all."""
    chunks = random_chunks(1000, seed=11)
    exact = KnnBank(emb, index="flat")
    exact.add(chunks)
    bank = KnnBank(emb, index="ivf", ivf_codes="pq4", nlist=16, nprobe=16, refine=4)
    bank.add(chunks[:500])
    assert bank.kind == "flat"  # 500 < 39 * 16 points: 4-bit codes need 16 centroids per part
    bank.add(chunks[500:])
    assert bank.kind == "ivf" and bank._index.ntotal == 1000
    overlap = []
    for c in chunks[::50]:
        got, want = bank.search(c.text, 5), exact.search(c.text, 1000)
        assert got[0].item.id == c.id
        true = {h.item.id: h.score for h in want}
        assert [h.score for h in got] == pytest.approx([true[h.item.id] for h in got], abs=1e-5)  # refined: exact scores
        overlap.append(len({h.item.id for h in got} & {h.item.id for h in want[:5]}) / 5)
    assert np.mean(overlap) >= 0.8, overlap  # recall@5 against exact search (hash vectors: near-uniform distances)
    assert bank.remove([chunks[0].id, chunks[1].id]) == 2
    assert bank.tombstones == 2 and bank._index.ntotal == 1000
    assert all(h.item.id not in (chunks[0].id, chunks[1].id) for h in bank.search(chunks[0].text, 5))
    bank.save(tmp_path / "pq")
    again = open_store(tmp_path / "pq", embedder=emb)
    assert again.kind == "ivf" and again.tombstones == 2 and again.params["ivf_codes"] == "pq4"
    assert [h.item.id for h in again.search(chunks[7].text, 5)] == [h.item.id for h in bank.search(chunks[7].text, 5)]
    bank.remove([c.id for c in chunks[2:400]])  # past rebuild_ratio: rebuilt from the kept vectors
    assert bank.tombstones == 0 and bank._index.ntotal == 600 == len(bank)
    assert bank.search(chunks[700].text, 1)[0].item.id == chunks[700].id
    with pytest.raises(UserError, match="ivf_codes must be one of flat, pq4"):
        KnnBank(emb, index="ivf", ivf_codes="pq8")
    with pytest.raises(UserError, match="refine must be an integer >= 1"):
        KnnBank(emb, index="ivf", ivf_codes="pq4", refine=0)
