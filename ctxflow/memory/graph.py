"""A knowledge-graph bank on networkx: facts extracted from chunks, answered by neighbourhood.

``add`` extracts ``(subject; relation; object)`` triples from every chunk (rules, the LLM, or
both; see :mod:`ctxflow.memory.extract`) into a multi-digraph whose nodes are normalised
entities and whose edges are relations, each remembering the chunks that state it.

A query is *linked* to entities: word n-grams of the query that equal an entity key, entity keys
contained in the query, and (with an embedder) entities whose label embeds within
``link_threshold`` cosine of the query or of one of its n-grams. The answer is the ``hops``-hop
neighbourhood of the linked entities: its facts (closer facts first) and the chunks that support
them, as hits whose ``meta`` lists the facts and cites the chunk's offsets.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import networkx as nx
import numpy as np

from ..errors import UserError
from ..graph.component import OptionalEmbedderRef, OptionalLLMRef, component
from ..graph.params import FiniteFloat, PositiveInt
from ..types import Chunk, Citation, Scored
from .base import BankComponent, MemoryBank, chunks_from_jsonl, chunks_to_jsonl, hit
from .extract import extract, normalize_entity, normalize_relation
from .store import json_bytes, register_bank

#: optional model references (``LLMRef | None`` would hide the reference from the pipeline)
EXTRACTORS = ("rules", "llm", "both")


@register_bank
class GraphBank(MemoryBank):
    bank_type = "graph"

    def __init__(self, llm: Any = None, embedder: Any = None, extractor: str = "rules", hops: int = 1,
                 link_threshold: float = 0.6, max_facts: int = 50):
        if extractor not in EXTRACTORS:
            raise UserError(f"extractor must be one of {', '.join(EXTRACTORS)}; got {extractor!r}.")
        if extractor != "rules" and llm is None:
            raise UserError(f"extractor {extractor!r} needs an llm; pass llm=... or use extractor='rules'.")
        self.llm, self.embedder = llm, embedder
        self.params = {"extractor": extractor, "hops": hops, "link_threshold": link_threshold, "max_facts": max_facts}
        self.g = nx.MultiDiGraph()
        self.chunks: dict[str, Chunk] = {}
        self.facts_of: dict[str, list[tuple[str, str, str]]] = {}  # chunk id -> triples as stated
        self._vec_keys: list[str] = []
        self._vecs: np.ndarray | None = None

    # -- building ---------------------------------------------------------------------------
    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list({c.id: c for c in chunks}.values())
        self.remove([c.id for c in chunks if c.id in self.chunks])
        if not chunks:
            return
        triples = extract([c.text for c in chunks], self.params["extractor"], self.llm)
        for c, ts in zip(chunks, triples):
            self.chunks[c.id] = c
            self.facts_of[c.id] = []
            for s, r, o in ts:
                self.add_fact(s, r, o, c.id)

    def add_fact(self, subject: str, relation: str, obj: str, chunk_id: str | None = None) -> bool:
        """Add one fact (optionally supported by a chunk already in the bank); False if unusable."""
        sk, ok, rel = normalize_entity(subject), normalize_entity(obj), normalize_relation(relation) or "related to"
        if not sk or not ok or sk == ok:
            return False
        for key, label in ((sk, subject), (ok, obj)):
            if key not in self.g:
                self.g.add_node(key, label=label.strip())
        data = self.g.get_edge_data(sk, ok, key=rel)
        if data is None:
            self.g.add_edge(sk, ok, key=rel, relation=rel, chunks=[])
            data = self.g.get_edge_data(sk, ok, key=rel)
        if chunk_id is not None and chunk_id not in data["chunks"]:
            data["chunks"].append(chunk_id)
            self.facts_of.setdefault(chunk_id, []).append((subject, relation, obj))
        return True

    def remove(self, ids: Iterable[str]) -> int:
        n = 0
        for cid in set(ids):
            if cid not in self.chunks:
                continue
            n += 1
            del self.chunks[cid]
            for s, r, o in self.facts_of.pop(cid, []):
                sk, ok, rel = normalize_entity(s), normalize_entity(o), normalize_relation(r) or "related to"
                data = self.g.get_edge_data(sk, ok, key=rel)
                if data is not None and cid in data["chunks"]:
                    data["chunks"].remove(cid)
                    if not data["chunks"]:
                        self.g.remove_edge(sk, ok, key=rel)
        self.g.remove_nodes_from([v for v in list(self.g.nodes) if self.g.degree(v) == 0])
        return n

    def __len__(self) -> int:
        return len(self.chunks)

    def ids(self) -> list[str]:
        return list(self.chunks)

    # -- querying ---------------------------------------------------------------------------
    def _node_vectors(self) -> tuple[list[str], np.ndarray | None]:
        keys = list(self.g.nodes)
        if self.embedder is None or not keys:
            return keys, None
        if keys != self._vec_keys or self._vecs is None:
            known = dict(zip(self._vec_keys, self._vecs)) if self._vecs is not None else {}
            new = [k for k in keys if k not in known]
            if new:
                vecs = np.asarray(self.embedder.embed([self.g.nodes[k]["label"] for k in new], kind="passage"), dtype=np.float32)
                known.update(zip(new, vecs))
            self._vec_keys, self._vecs = keys, np.vstack([known[k] for k in keys])
        return self._vec_keys, self._vecs

    def link(self, query: str, max_links: int = 8) -> dict[str, float]:
        """Entities the query names: ``{entity key: link score}`` (1.0 = exact string match)."""
        words = [w for w in (normalize_entity(w) for w in query.split()) if w]
        qn = " " + " ".join(words) + " "
        grams = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(len(words), i + 5) + 1)}
        links = {k: 1.0 for k in grams if k in self.g}
        for k in self.g.nodes:
            if k not in links and len(k) > 2 and f" {k} " in qn:
                links[k] = 1.0
        keys, vecs = self._node_vectors()
        if vecs is not None:
            probes = [query] + sorted(g for g in grams if len(g) > 2)[:32]
            q = np.asarray(self.embedder.embed(probes, kind="query"), dtype=np.float32)
            sims = (q @ vecs.T).max(axis=0)
            for i in np.argsort(-sims)[:max_links].tolist():
                if sims[i] >= self.params["link_threshold"] and keys[i] not in links:
                    links[keys[i]] = float(sims[i])
        return dict(sorted(links.items(), key=lambda kv: -kv[1])[:max_links])

    def neighbourhood(self, query: str, hops: int | None = None) -> dict[str, Any]:
        """The linked entities, and the facts within ``hops`` of them with their supporting chunks."""
        hops = self.params["hops"] if hops is None else hops
        links = self.link(query)
        und = self.g.to_undirected(as_view=True)
        dist: dict[str, tuple[int, float]] = {}
        for key, score in links.items():
            for node, d in nx.single_source_shortest_path_length(und, key, cutoff=max(0, hops - 1)).items():
                if node not in dist or (d, -score) < (dist[node][0], -dist[node][1]):
                    dist[node] = (d, score)
        facts: dict[tuple[str, str, str], dict[str, Any]] = {}
        for node, (d, score) in dist.items():
            for u, v, rel, data in list(self.g.out_edges(node, keys=True, data=True)) + list(self.g.in_edges(node, keys=True, data=True)):
                f = facts.get((u, rel, v))
                w = score / (1 + d)
                if f is None or w > f["score"]:
                    facts[(u, rel, v)] = {"subject": self.g.nodes[u]["label"], "relation": rel, "object": self.g.nodes[v]["label"],
                                          "hop": d + 1, "score": w, "chunks": list(data["chunks"])}
        ranked = sorted(facts.values(), key=lambda f: (-f["score"], f["hop"], f["subject"], f["relation"], f["object"]))
        ranked = ranked[: self.params["max_facts"]]
        for f in ranked:
            f["citations"] = [Citation.from_chunk(self.chunks[c]).model_dump() for c in f["chunks"] if c in self.chunks]
        return {"entities": {self.g.nodes[k]["label"]: s for k, s in links.items()}, "facts": ranked}

    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]:
        nb = self.neighbourhood(query)
        per: dict[str, dict[str, Any]] = {}
        for f in nb["facts"]:
            for cid in f["chunks"]:
                if cid in self.chunks:
                    e = per.setdefault(cid, {"score": 0.0, "facts": []})
                    e["score"] += f["score"]
                    e["facts"].append(f"({f['subject']}; {f['relation']}; {f['object']})")
        order = sorted(per.items(), key=lambda kv: (-kv[1]["score"], self.chunks[kv[0]].doc_id, self.chunks[kv[0]].start))[:k]
        out = []
        for r, (cid, e) in enumerate(order):
            c = self.chunks[cid]
            out.append(hit(c, e["score"], r, self.bank_type, facts=e["facts"][:10], entities=list(nb["entities"]),
                           citation={"doc_id": c.doc_id, "start": c.start, "end": c.end}))
        return out

    # -- persistence ------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, bytes], dict[str, int], dict[str, Any]]:
        graph = {"nodes": [[k, d["label"]] for k, d in self.g.nodes(data=True)],
                 "edges": [[u, v, rel, d["chunks"]] for u, v, rel, d in self.g.edges(keys=True, data=True)],
                 "facts_of": {cid: [list(t) for t in ts] for cid, ts in self.facts_of.items()}}
        files = {"chunks.jsonl": chunks_to_jsonl(self.chunks.values()), "graph.json": json_bytes(graph)}
        counts = {"chunks": len(self), "entities": self.g.number_of_nodes(), "facts": self.g.number_of_edges()}
        return files, counts, dict(self.params)

    @classmethod
    def _restore(cls, files: dict[str, bytes], manifest: dict[str, Any], embedder: Any, llm: Any) -> "GraphBank":
        params = dict(manifest.get("params") or {})
        if params.get("extractor") != "rules" and llm is None:
            params["extractor"] = "rules"  # searching needs no model; adding later then uses the rules
        bank = cls(llm=llm, embedder=embedder, **params)
        bank.chunks = {c.id: c for c in chunks_from_jsonl(files["chunks.jsonl"])}
        g = json.loads(files["graph.json"])
        for k, label in g["nodes"]:
            bank.g.add_node(k, label=label)
        for u, v, rel, chunks in g["edges"]:
            bank.g.add_edge(u, v, key=rel, relation=rel, chunks=list(chunks))
        bank.facts_of = {cid: [tuple(t) for t in ts] for cid, ts in g["facts_of"].items()}
        return bank


@component("memory.graph", outputs={"hits": list[Scored[Chunk]]})
class GraphMemory(BankComponent):
    """Knowledge-graph retrieval: facts about the entities a question names, with their chunks."""

    bank_class = GraphBank

    def __init__(self, llm: OptionalLLMRef = None, embedder: OptionalEmbedderRef = None, extractor: str = "rules",
                 hops: PositiveInt = 1, link_threshold: FiniteFloat = 0.6, top_k: PositiveInt = 5, store: str | None = None):
        if extractor not in EXTRACTORS:
            raise UserError(f"extractor must be one of {', '.join(EXTRACTORS)}; got {extractor!r}.")
        if extractor != "rules" and llm is None:
            raise UserError(f"extractor {extractor!r} needs an llm (a models: entry); or use extractor: rules.")
        self.llm, self.embedder = llm, embedder
        self.bank_params = {"extractor": extractor, "hops": hops, "link_threshold": link_threshold}
        self._setup(top_k, store)

    def open_kwargs(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, str) else v) for k, v in (("embedder", self.embedder), ("llm", self.llm))}

    def new_bank(self) -> GraphBank:
        kw = self.open_kwargs()
        if self.bank_params["extractor"] != "rules" and kw["llm"] is None:
            raise UserError(f"{self.type_name}: llm {self.llm!r} was never bound; run the component in a pipeline with that model.")
        return GraphBank(**kw, **self.bank_params)
