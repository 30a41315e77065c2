"""A triple store in the spirit of Ret-LLM: ``write(subject, relation, object, source)`` and
``read`` with partially filled patterns, in SQLite.

* ``read(subject=None, relation=None, object=None)``: ``None`` is a wildcard; a given argument
  matches its normalised form exactly (score 1) or, with ``fuzzy``, any stored term whose
  embedding is within cosine ``threshold`` of it (without an embedder: ``difflib`` similarity).
  A triple's score is the product of its arguments' match scores; results come best first.
* Persistence: ``TripleStore(path)`` opens (or creates) the store folder ``path`` holding
  ``manifest.json`` and ``triples.sqlite``. Every write is one SQLite transaction (WAL mode), so
  it is durable when ``write`` returns and readers in other processes never see half of it.
  ``TripleStore()`` is in memory; ``save(path)`` copies it into a new store folder.
* As a bank (``memory.triples``), ``add(chunks)`` extracts triples from the chunks (rules or
  the LLM, as :mod:`~ctxflow.memory.graph` does) with the chunk as source, and ``search`` links
  the query's words to stored subjects/objects and returns the chunks stating those facts.
"""
from __future__ import annotations

import difflib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydantic import BaseModel

from ..errors import StoreError, UserError
from ..graph.component import component
from ..graph.params import FiniteFloat, PositiveInt
from ..graph.component import OptionalEmbedderRef, OptionalLLMRef
from ..types import Chunk, Scored
from .base import BankComponent, MemoryBank, hit
from .extract import extract, normalize_entity, normalize_relation
from .graph import EXTRACTORS
from .store import FORMAT, MANIFEST, check_bank, check_embedder, embedder_info, read_manifest, register_bank, store_lock, write_manifest

DB = "triples.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS triples (id INTEGER PRIMARY KEY, subject TEXT NOT NULL, relation TEXT NOT NULL, object TEXT NOT NULL,
    s_key TEXT NOT NULL, r_key TEXT NOT NULL, o_key TEXT NOT NULL, source TEXT NOT NULL DEFAULT '', UNIQUE (s_key, r_key, o_key, source));
CREATE INDEX IF NOT EXISTS triples_s ON triples (s_key);
CREATE INDEX IF NOT EXISTS triples_r ON triples (r_key);
CREATE INDEX IF NOT EXISTS triples_o ON triples (o_key);
CREATE INDEX IF NOT EXISTS triples_src ON triples (source);
CREATE TABLE IF NOT EXISTS terms (key TEXT PRIMARY KEY, label TEXT NOT NULL, vec BLOB);
CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, json TEXT NOT NULL);
"""


class Triple(BaseModel):
    subject: str
    relation: str
    object: str
    source: str = ""
    id: int | None = None

    def __str__(self) -> str:
        return f"({self.subject}; {self.relation}; {self.object})"


@register_bank
class TripleStore(MemoryBank):
    bank_type = "triples"

    def __init__(self, path: str | os.PathLike | None = None, embedder: Any = None, threshold: float = 0.8,
                 llm: Any = None, extractor: str = "rules"):
        if extractor not in EXTRACTORS:
            raise UserError(f"extractor must be one of {', '.join(EXTRACTORS)}; got {extractor!r}.")
        self.embedder, self.llm, self.threshold, self.extractor = embedder, llm, threshold, extractor
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self._terms: tuple[tuple, list[str], np.ndarray | None] | None = None
        if self.path is None:
            self._conn = self._connect(":memory:")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with store_lock(self.path):
            if (self.path / MANIFEST).exists():
                m = read_manifest(self.path)
                check_bank(m, self.path, self.bank_type)
                check_embedder(m, self.path, embedder)
                if not (self.path / DB).exists():
                    raise StoreError(f"store {self.path} is incomplete: {DB}, named in {MANIFEST}, is missing; restore it from a backup.")
            self._conn = self._connect(str(self.path / DB))
            if not (self.path / MANIFEST).exists():
                self._write_manifest()

    def _connect(self, where: str) -> sqlite3.Connection:
        conn = sqlite3.connect(where, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
            if ver > FORMAT:
                raise StoreError(f"store {self.path}: {DB} has format {ver}, newer than this ctxflow reads (1..{FORMAT}); upgrade ctxflow.")
            if where != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                ok = conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise StoreError(f"store {self.path} is corrupt: SQLite's check of {DB} reports {ok!r}; restore it from a backup.")
            conn.executescript(_SCHEMA)
            if ver == 0:
                conn.execute(f"PRAGMA user_version = {FORMAT}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"store {self.path}: {DB} is not a readable SQLite database ({exc}); restore it from a backup.") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _write_manifest(self) -> None:
        assert self.path is not None
        write_manifest(self.path, {"bank": self.bank_type, "version": 1, "data": ".", "files": {}, "live": DB,
                                   "embedder": embedder_info(self.embedder), "counts": self.counts(),
                                   "params": {"threshold": self.threshold, "extractor": self.extractor}})

    # -- the Ret-LLM interface ----------------------------------------------------------------
    def write(self, subject: str, relation: str, obj: str, source: str = "") -> int | None:
        """Store one triple (committed when this returns); its id, or None if an argument is empty."""
        ids = self.write_many([(subject, relation, obj, source)])
        return ids[0] if ids else None

    def write_many(self, rows: Iterable[tuple[str, str, str] | tuple[str, str, str, str]]) -> list[int]:
        """Store triples ``(subject, relation, object[, source])`` in one transaction."""
        clean = []
        for row in rows:
            s, r, o = (str(x).strip() for x in row[:3])
            src = str(row[3]) if len(row) > 3 and row[3] is not None else ""
            sk, rk, ok = normalize_entity(s), normalize_relation(r), normalize_entity(o)
            if sk and rk and ok:
                clean.append((s, r, o, sk, rk, ok, src))
        if not clean:
            return []
        terms = {}
        for s, r, o, sk, rk, ok, _ in clean:
            terms.setdefault(sk, s), terms.setdefault(rk, r), terms.setdefault(ok, o)
        with self._lock:
            have = self._existing_terms(list(terms))
            new = [k for k in terms if k not in have]
            vecs = self._embed([terms[k] for k in new]) if new else None
            ids = []
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for i, k in enumerate(new):
                    blob = vecs[i].astype(np.float32).tobytes() if vecs is not None else None
                    self._conn.execute("INSERT OR IGNORE INTO terms (key, label, vec) VALUES (?, ?, ?)", (k, terms[k], blob))
                for row in clean:
                    self._conn.execute("INSERT OR IGNORE INTO triples (subject, relation, object, s_key, r_key, o_key, source) "
                                       "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    ids.append(self._conn.execute("SELECT id FROM triples WHERE s_key=? AND r_key=? AND o_key=? AND source=?",
                                                  row[3:]).fetchone()[0])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return ids

    def _existing_terms(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            found |= {r[0] for r in self._conn.execute(f"SELECT key FROM terms WHERE key IN ({','.join('?' * len(part))})", part)}
        return found

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        if self.embedder is None or isinstance(self.embedder, str):
            return None
        return np.asarray(self.embedder.embed(texts, kind="passage"), dtype=np.float32)

    def _term_matrix(self) -> tuple[list[str], np.ndarray | None]:
        stamp = tuple(self._conn.execute("SELECT COALESCE(MAX(rowid), 0), COUNT(*) FROM terms").fetchone())
        if self._terms is None or self._terms[0] != stamp:
            rows = self._conn.execute("SELECT key, vec FROM terms").fetchall()
            keys = [k for k, _ in rows]
            vecs = None
            if self.embedder is not None and rows and all(v is not None for _, v in rows):
                vecs = np.vstack([np.frombuffer(v, dtype=np.float32) for _, v in rows])
            self._terms = (stamp, keys, vecs)
        return self._terms[1], self._terms[2]

    def match(self, text: str, fuzzy: bool = True, threshold: float | None = None, relation: bool = False) -> dict[str, float]:
        """Stored term keys matching ``text``: ``{key: score}`` (exact = 1.0)."""
        key = normalize_relation(text) if relation else normalize_entity(text)
        thr = self.threshold if threshold is None else threshold
        with self._lock:
            out = {key: 1.0} if self._existing_terms([key]) else {}
            if not fuzzy:
                return out
            keys, vecs = self._term_matrix()
        if vecs is not None and keys:
            q = self._embed([text])[0]  # type: ignore[index]
            sims = vecs @ q
            for i in np.nonzero(sims >= thr)[0].tolist():
                out.setdefault(keys[i], float(sims[i]))
        elif keys:
            for k in difflib.get_close_matches(key, keys, n=20, cutoff=thr):
                out.setdefault(k, difflib.SequenceMatcher(None, key, k).ratio())
        return out

    def read(self, subject: str | None = None, relation: str | None = None, object: str | None = None,  # noqa: A002
             fuzzy: bool = True, threshold: float | None = None, limit: int | None = None) -> list[Scored[Triple]]:
        """Triples matching the pattern (``None`` = any), best match first."""
        where, args, scores = [], [], []
        for col, val, is_rel in (("s_key", subject, False), ("r_key", relation, True), ("o_key", object, False)):
            if val is None:
                scores.append(None)
                continue
            m = self.match(val, fuzzy, threshold, relation=is_rel)
            if not m:
                return []
            where.append(f"{col} IN ({','.join('?' * len(m))})")
            args.extend(m)
            scores.append(m)
        sql = "SELECT id, subject, relation, object, source, s_key, r_key, o_key FROM triples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for i, s, r, o, src, *keys in rows:
            score = 1.0
            for m, k in zip(scores, keys):
                score *= 1.0 if m is None else m.get(k, 0.0)
            out.append(Scored[Triple](item=Triple(subject=s, relation=r, object=o, source=src, id=i), score=score))
        out.sort(key=lambda t: -t.score)
        return out[:limit] if limit else out

    def counts(self) -> dict[str, int]:
        with self._lock:
            c = self._conn.execute
            return {"triples": c("SELECT COUNT(*) FROM triples").fetchone()[0], "terms": c("SELECT COUNT(*) FROM terms").fetchone()[0],
                    "chunks": c("SELECT COUNT(*) FROM chunks").fetchone()[0]}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the bank interface -----------------------------------------------------------------------
    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list({c.id: c for c in chunks}.values())
        if not chunks:
            return
        self.remove([c.id for c in chunks])
        triples = extract([c.text for c in chunks], self.extractor, self.llm)
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO chunks (id, json) VALUES (?, ?)",
                                   [(c.id, c.model_dump_json()) for c in chunks])
        self.write_many([(s, r, o, c.id) for c, ts in zip(chunks, triples) for s, r, o in ts])

    def remove(self, ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(ids))
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            n = 0
            for i in ids:
                n += self._conn.execute("DELETE FROM chunks WHERE id = ?", (i,)).rowcount
                self._conn.execute("DELETE FROM triples WHERE source = ?", (i,))
            self._conn.execute("COMMIT")
        return n

    def __len__(self) -> int:
        return self.counts()["chunks"]

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM chunks ORDER BY rowid")]

    def search(self, query: str, k: int = 5) -> list[Scored[Chunk]]:
        words = [w for w in query.split() if normalize_entity(w)]
        grams = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(len(words), i + 4) + 1)}
        links: dict[str, float] = {}
        for g in grams:
            for key, s in self.match(g, fuzzy=self.embedder is not None).items():
                links[key] = max(s, links.get(key, 0.0))
        if not links:
            return []
        marks = ",".join("?" * len(links))
        with self._lock:
            rows = self._conn.execute(f"SELECT subject, relation, object, source, s_key, o_key FROM triples WHERE source != '' AND "
                                      f"(s_key IN ({marks}) OR o_key IN ({marks}))", list(links) * 2).fetchall()
        per: dict[str, dict[str, Any]] = {}
        for s, r, o, src, sk, ok in rows:
            e = per.setdefault(src, {"score": 0.0, "facts": []})
            e["score"] += max(links.get(sk, 0.0), links.get(ok, 0.0))
            e["facts"].append(f"({s}; {r}; {o})")
        best = sorted(per.items(), key=lambda kv: (-kv[1]["score"], kv[0]))
        out = []
        with self._lock:
            for src, e in best:
                row = self._conn.execute("SELECT json FROM chunks WHERE id = ?", (src,)).fetchone()
                if row is None:
                    continue
                c = Chunk.model_validate_json(row[0])
                out.append(hit(c, e["score"], len(out), self.bank_type, facts=e["facts"][:10],
                               citation={"doc_id": c.doc_id, "start": c.start, "end": c.end}))
                if len(out) == k:
                    break
        return out

    # -- persistence ------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, bytes], dict[str, int], dict[str, Any]]:  # pragma: no cover - live store
        raise NotImplementedError("a TripleStore persists through SQLite; use save(path)")

    @classmethod
    def _restore(cls, files: dict[str, bytes], manifest: dict[str, Any], embedder: Any, llm: Any) -> "TripleStore":  # pragma: no cover
        raise NotImplementedError

    def save(self, path: str | os.PathLike, hook: Any = None) -> int:
        """Persist: the store's own folder just refreshes its manifest counts; an in-memory store is
        copied (SQLite backup, fsynced, renamed into place) into a new store folder ``path``."""
        p = Path(path)
        if self.path is not None and p.resolve() == self.path.resolve():
            self._write_manifest()
            return 1
        with store_lock(p):
            if (p / MANIFEST).exists() or (p / DB).exists():
                raise StoreError(f"{p} already holds a store; open it with TripleStore({str(p)!r}) and write to it, or save to a new folder.")
            tmp = p / f"{DB}.tmp-{os.getpid()}"
            dest = sqlite3.connect(str(tmp))
            with self._lock:
                self._conn.backup(dest)
            dest.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, p / DB)
            self.path, self._conn = p, self._connect(str(p / DB))
            self._write_manifest()
        return 1

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Any = None, llm: Any = None) -> "TripleStore":
        m = read_manifest(path)
        check_bank(m, Path(path), cls.bank_type)
        params = m.get("params") or {}
        extractor = params.get("extractor", "rules") if llm is not None else "rules"
        return cls(path, embedder=embedder, threshold=float(params.get("threshold", 0.8)), llm=llm, extractor=extractor)


@component("memory.triples", outputs={"hits": list[Scored[Chunk]]})
class TriplesMemory(BankComponent):
    """Facts (subject; relation; object) extracted from the chunks into a triple store; a query
    returns the chunks stating facts about the entities it names (fuzzy through embeddings)."""

    bank_class = TripleStore

    def __init__(self, embedder: OptionalEmbedderRef = None, llm: OptionalLLMRef = None, extractor: str = "rules",
                 threshold: FiniteFloat = 0.8, top_k: PositiveInt = 5, store: str | None = None):
        if extractor not in EXTRACTORS:
            raise UserError(f"extractor must be one of {', '.join(EXTRACTORS)}; got {extractor!r}.")
        if extractor != "rules" and llm is None:
            raise UserError(f"extractor {extractor!r} needs an llm (a models: entry); or use extractor: rules.")
        self.embedder, self.llm, self.extractor, self.threshold = embedder, llm, extractor, threshold
        self._setup(top_k, store)

    def open_kwargs(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, str) else v) for k, v in (("embedder", self.embedder), ("llm", self.llm))}

    def new_bank(self) -> TripleStore:
        return TripleStore(threshold=self.threshold, extractor=self.extractor, **self.open_kwargs())

