"""BM25 with key-preserving tokenisation, and hybrid reciprocal-rank fusion."""
from __future__ import annotations

import pytest

from ctxflow.errors import UserError
from ctxflow.memory import BM25Bank, HybridBank, open_store, rrf, tokenize
from ctxflow.memory.base import hit

from .fakes import HashEmbedder, make_chunks, random_chunks


def test_tokenize_keeps_keys_whole_and_by_parts():
    toks = tokenize("The password is Swift-Apple; call 12345 or v1.2.3, pay 12,345 to user@host.")
    for t in ("swift-apple", "swift", "apple", "12345", "v1.2.3", "12,345", "user@host", "user", "host", "password", "call"):
        assert t in toks, t
    assert "the" not in toks and "is" not in toks
    assert tokenize("end.") == ["end"]


def _haystack() -> list:
    filler = random_chunks(300, seed=5, doc_id="hay")
    keys = make_chunks(["The secret for the vault is swift-apple, keep it safe.", "Order number 12345 shipped on Monday.",
                        "Order number 12354 was cancelled.", "Contact Zyxwv Quorble for access."], doc_id="keys")
    return filler[:150] + keys + filler[150:]


@pytest.mark.parametrize("query,expect", [("swift-apple", "keys#0"), ("what is the vault secret swift apple", "keys#0"),
                                          ("apple", "keys#0"), ("12345", "keys#1"), ("order 12354", "keys#2"),
                                          ("quorble", "keys#3")])
def test_bm25_exact_key_retrieval(query, expect):
    bank = BM25Bank()
    bank.add(_haystack())
    hits = bank.search(query, 3)
    assert hits and hits[0].item.id == expect
    assert hits[0].meta == {"rank": 0, "bank": "bm25"}


def test_bm25_remove_save_open(tmp_path):
    bank = BM25Bank()
    bank.add(_haystack())
    assert bank.search("nothing-like-this zzz", 3) == []
    assert bank.remove(["keys#1"]) == 1
    assert all(h.item.id != "keys#1" for h in bank.search("12345", 5))
    bank.save(tmp_path / "b")
    again = open_store(tmp_path / "b")
    assert isinstance(again, BM25Bank) and len(again) == len(bank)
    assert again.search("swift-apple", 1)[0].item.id == "keys#0"


def test_rrf_fusion_math():
    a, b, c = make_chunks(["a", "b", "c"])
    fused = rrf({"lexical": [hit(a, 9, 0, "x"), hit(b, 5, 1, "x")], "dense": [hit(b, .9, 0, "y"), hit(c, .8, 1, "y")]}, k_rrf=60)
    assert [h.item.text for h in fused] == ["b", "a", "c"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].meta["ranks"] == {"lexical": 2, "dense": 1}
    assert fused[1].meta["ranks"] == {"lexical": 1}
    weighted = rrf({"lexical": [hit(a, 9, 0, "x")], "dense": [hit(c, .8, 0, "y")]}, weights={"lexical": 0.5, "dense": 2}, k_rrf=1)
    assert [h.item.text for h in weighted] == ["c", "a"] and weighted[0].score == pytest.approx(1.0)


def test_hybrid_finds_exact_keys_and_meaning():
    emb = HashEmbedder(32)  # a weak dense model: keys blur into hash collisions
    bank = HybridBank(emb, k_rrf=60)
    bank.add(_haystack())
    for q, expect in (("12345", "keys#1"), ("swift-apple", "keys#0"), ("Quorble", "keys#3")):
        hits = bank.search(q, 3)
        assert hits[0].item.id == expect, (q, [h.meta for h in hits])
        assert hits[0].meta["bank"] == "hybrid" and "lexical" in hits[0].meta["ranks"]
    assert bank.remove(["keys#1"]) == 1 and len(bank) == 303


def test_hybrid_persists(tmp_path):
    emb = HashEmbedder(64)
    bank = HybridBank(emb, weights={"lexical": 2.0})
    bank.add(_haystack())
    bank.save(tmp_path / "h")
    again = open_store(tmp_path / "h", embedder=emb)
    assert isinstance(again, HybridBank) and again.weights == {"lexical": 2.0, "dense": 1.0}
    assert [h.item.id for h in again.search("order 12345", 4)] == [h.item.id for h in bank.search("order 12345", 4)]
    with pytest.raises(UserError, match="weights take the keys 'lexical' and 'dense'"):
        HybridBank(emb, weights={"sparse": 1.0})


def test_bm25_finds_cjk_text_written_without_spaces():
    chunks = make_chunks(["東京は日本の首都です。人口は約千四百万人です。", "大阪は関西地方の中心都市です。たこ焼きが有名です。",
                          "北京是中国的首都。上海是中国最大的城市。", "Tokyo is the capital of Japan."], doc_id="cjk")
    bank = BM25Bank()
    bank.add(chunks)
    assert bank.search("日本の首都はどこですか", 1)[0].item.id == "cjk#0"
    assert bank.search("たこ焼き", 1)[0].item.id == "cjk#1"
    assert bank.search("上海", 1)[0].item.id == "cjk#2"
    assert {h.item.id for h in bank.search("首都", 2)} == {"cjk#0", "cjk#2"}
    assert bank.search("capital", 1)[0].item.id == "cjk#3"
    toks = tokenize("東京abc")
    assert {"東", "京", "東京", "abc"} <= set(toks)


def test_store_with_line_separator_characters_reopens(tmp_path):
    """U+2028/U+2029/U+0085 inside a chunk (web text, JS sources) survive save and reopen."""
    text = "Copied from a web page:\u2028the door code is 4711.\u2029Next\x85line."
    bank = BM25Bank()
    bank.add(make_chunks([text, "other"], doc_id="web"))
    bank.save(tmp_path / "b")
    again = open_store(tmp_path / "b")
    assert len(again) == 2 and again.search("door code", 1)[0].item.text == text
