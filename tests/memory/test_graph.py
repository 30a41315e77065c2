"""Knowledge-graph bank: rule and LLM extraction (malformed output), linking, k-hop answers."""
from __future__ import annotations

import pytest

from ctxflow.errors import UserError
from ctxflow.llm.fake import FakeLLM
from ctxflow.memory import GraphBank, open_store
from ctxflow.memory.extract import extract_rules, normalize_entity, parse_triples

from .fakes import HashEmbedder, make_chunks

TEXTS = ["Marie Curie was born in Warsaw. Marie Curie discovered Polonium with Pierre Curie.",
         "Warsaw is the capital of Poland. Poland joined the European Union in 2004.",
         "Password: swift-apple",
         "The old harbour of Marseille was a busy port."]


def test_normalize_entity():
    assert normalize_entity("The  Dogs!") == normalize_entity("dog") == "dog"
    assert normalize_entity("Cities") == "city" and normalize_entity("boxes") == "box"
    assert normalize_entity("glass") == "glass" and normalize_entity("analysis") == "analysis"
    assert normalize_entity("Marie Curie's") == "marie curie"
    assert normalize_entity("  'swift-apple' ") == "swift-apple"
    assert normalize_entity("...") == ""


def test_rule_extraction_patterns():
    facts = extract_rules("Paris is the capital of France. Alice met Bob in Paris.\nPassword: swift-apple")
    assert ("Password", "is", "swift-apple") in facts  # X: Y
    assert ("Paris", "is", "capital of France") in facts  # X is a/the Y
    assert ("capital", "of", "France") in facts  # X of Y
    assert ("Alice", "met", "Bob") in facts  # capitalised entities, linked by the words between
    assert ("Alice", "co-occurs with", "Paris") in facts
    assert ("Dogs", "are a", "loyal breed") in extract_rules("Dogs are a loyal breed.")


def test_parse_malformed_llm_output():
    out = parse_triples("Sure! Here are the facts:\n1. (Marie Curie; discovered; Polonium)\n- (Warsaw | is capital of | Poland)\n"
                        "(only; two)\n* [\"Pierre Curie\", \"married\", \"Marie Curie\"]\nno structure at all\n)))(((;;;\n"
                        "Fact 7: Poland; joined; European Union\n(a; b; c) and (d; e; f)\n(" + "x" * 500 + "; y; z)")
    assert out == [("Marie Curie", "discovered", "Polonium"), ("Warsaw", "is capital of", "Poland"),
                   ("Pierre Curie", "married", "Marie Curie"), ("Poland", "joined", "European Union"), ("a", "b", "c"), ("d", "e", "f")]
    for junk in (None, 42, "", "\x00\x01", "(;;)", "((((", "a; b"):
        assert parse_triples(junk) == []


def test_llm_extraction_never_crashes_on_garbage():
    llm = FakeLLM(responses=["(Marie Curie; discovered; Polonium)\n(Warsaw; capital of)", "complete garbage {{{ ]]]",
                             "", "1. Marseille | has | harbour\n2) (Marseille; is in; France)"])
    bank = GraphBank(llm=llm, extractor="llm")
    bank.add(make_chunks(TEXTS))
    assert len(llm.prompts) == 4 and "(subject; relation; object)" in llm.prompts[0]
    assert bank.g.has_edge("marie curie", "polonium") and bank.g.has_edge("marseille", "france")
    assert bank.g.number_of_edges() == 3
    hits = bank.search("What did Marie Curie discover?", 3)
    assert hits[0].item.id == "doc#0" and "(Marie Curie; discovered; Polonium)" in hits[0].meta["facts"]


def test_both_extractors_and_llm_errors():
    class Broken(FakeLLM):
        def generate(self, prompts, **kw):
            raise RuntimeError("model exploded")

    with pytest.warns(UserWarning, match="fact extraction failed"):
        bank = GraphBank(llm=Broken(), extractor="both")
        bank.add(make_chunks(TEXTS))
    assert bank.g.has_edge("warsaw", "poland")  # the rules still ran
    with pytest.raises(UserError, match="needs an llm"):
        GraphBank(extractor="llm")


def test_k_hop_neighbourhood_with_citations():
    bank = GraphBank(hops=1)
    bank.add(make_chunks(TEXTS))
    nb = bank.neighbourhood("Where was Marie Curie born?")
    assert "Marie Curie" in nb["entities"]
    assert {f["hop"] for f in nb["facts"]} == {1}
    assert all(f["citations"] and f["citations"][0]["start"] == 0 for f in nb["facts"])
    one = {c for f in nb["facts"] for c in f["chunks"]}
    two = bank.neighbourhood("Where was Marie Curie born?", hops=2)
    assert {f["hop"] for f in two["facts"]} == {1, 2}
    assert "doc#1" in {c for f in two["facts"] for c in f["chunks"]} - one  # Warsaw -> Poland, two hops away
    hits = bank.search("Marie Curie", 5)
    assert hits[0].item.id == "doc#0" and hits[0].meta["citation"] == {"doc_id": "doc", "start": 0, "end": len(TEXTS[0])}
    assert bank.search("password", 1)[0].item.id == "doc#2"
    assert bank.search("nothing known here", 3) == []


def test_embedding_linking():
    emb = HashEmbedder(256)
    bank = GraphBank(embedder=emb, link_threshold=0.5)
    bank.add(make_chunks(TEXTS))
    links = bank.link("Tell me about Curie")  # no exact entity named; close to "Marie Curie" / "Pierre Curie"
    assert any("curie" in k for k in links) and all(s < 1.0 for s in links.values())
    assert bank.search("Tell me about Curie", 1)[0].item.id == "doc#0"


def test_remove_and_persist(tmp_path):
    bank = GraphBank()
    bank.add(make_chunks(TEXTS))
    n_facts = bank.g.number_of_edges()
    bank.save(tmp_path / "g")
    again = open_store(tmp_path / "g")
    assert isinstance(again, GraphBank) and again.g.number_of_edges() == n_facts and len(again) == 4
    assert [h.item.id for h in again.search("Warsaw", 3)] == [h.item.id for h in bank.search("Warsaw", 3)]
    assert again.remove(["doc#1"]) == 1
    assert "poland" not in again.g and "warsaw" in again.g  # Poland was only in doc#1; Warsaw is also in doc#0
    assert all(h.item.id != "doc#1" for h in again.search("Poland", 5))
