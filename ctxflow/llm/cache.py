"""On-disk cache of LLM calls (SQLite), so an interrupted run resumes without repeating work.

Key = sha256 of (model id, call kind, full prompt, generation parameters), JSON-canonical.
Only deterministic calls are cached by default (greedy generation, logprobs); sampled calls
are cached only when a seed is given. Each batch is committed as it finishes, so a run killed
half-way keeps every finished batch. WAL mode lets several processes share one cache.

The cache lives in ``$CTXFLOW_CACHE_DIR`` (default ``~/.cache/ctxflow``) as ``llm_calls.sqlite``;
``CTXFLOW_NO_CACHE=1`` turns it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def cache_root() -> Path:
    """Where ctxflow keeps its caches (``$CTXFLOW_CACHE_DIR``, else ``~/.cache/ctxflow``), not created."""
    return Path(os.environ.get("CTXFLOW_CACHE_DIR") or Path.home() / ".cache" / "ctxflow")


def cache_dir() -> Path:
    """:func:`cache_root`, created if missing."""
    d = cache_root()
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_key(model_id: str, kind: str, prompt: Any, params: dict[str, Any]) -> str:
    blob = json.dumps({"m": model_id, "k": kind, "p": prompt, "a": params}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMCache:
    """A key -> JSON value store in one SQLite file. Thread-safe; process-safe through SQLite."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "llm_calls.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = self._connect()
        except sqlite3.OperationalError:  # locked, read-only, ...: not damage
            raise
        except sqlite3.DatabaseError as exc:  # not a database / malformed: moved aside (kept), a fresh one made
            self._start_over(exc)
        self.hits = 0
        self.misses = 0
        self._write_failed = False  # warned once about a failed write

    key = staticmethod(make_key)

    def _start_over(self, exc: Exception) -> None:
        """The file is damaged (found on open or on any later read/write): move it aside, keeping it,
        and continue with an empty cache (cached answers are recomputed once)."""
        old = getattr(self, "_conn", None)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(self.path) + suffix)
            if part.exists():
                os.replace(part, str(aside) + suffix)
        warnings.warn(f"the LLM-call cache {self.path} was damaged ({exc}); moved it to {aside} and started an "
                      "empty one (cached answers are recomputed once)", RuntimeWarning, stacklevel=3)
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.execute("SELECT 1 FROM calls LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with self._lock:
            try:
                for i in range(0, len(keys), 500):
                    part = keys[i : i + 500]
                    q = f"SELECT key, value FROM calls WHERE key IN ({','.join('?' * len(part))})"
                    for k, v in self._conn.execute(q, part):
                        found[k] = json.loads(v)
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as exc:  # damage found on reading: every key is a miss
                self._start_over(exc)
                found = {}
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def get(self, key: str) -> Any | None:
        return self.get_many([key]).get(key)

    def put_many(self, items: Iterable[tuple[str, str, str, Any]]) -> None:
        """Store ``(key, model, kind, value)`` rows in one transaction. Rows that cannot be written (disk
        full, read-only file, locked past the timeout) are dropped with a warning: the answers they hold
        are returned to the caller all the same, and only a later run recomputes them."""
        rows = [(k, m, kind, json.dumps(v, ensure_ascii=False)) for k, m, kind, v in items]
        if not rows:
            return
        with self._lock:
            for attempt in (0, 1):
                try:
                    self._insert(rows)
                    return
                except sqlite3.OperationalError as exc:
                    if not self._write_failed:
                        warnings.warn(f"could not write to the LLM-call cache {self.path} ({exc}); answers not "
                                      "stored there are recomputed by a later run", RuntimeWarning, stacklevel=2)
                    self._write_failed = True
                    return
                except sqlite3.DatabaseError as exc:  # damage found on writing: start over, write once more
                    if attempt:
                        raise
                    self._start_over(exc)

    def _insert(self, rows: list[tuple[str, str, str, str]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("INSERT OR REPLACE INTO calls (key, model, kind, value) VALUES (?, ?, ?, ?)", rows)
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise

    def put(self, key: str, model: str, kind: str, value: Any) -> None:
        self.put_many([(key, model, kind, value)])

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def clear(self, model: str | None = None) -> int:
        with self._lock:
            cur = self._conn.execute("DELETE FROM calls" + (" WHERE model = ?" if model else ""), (model,) if model else ())
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_default: LLMCache | None = None
_unusable: set[str] = set()  # cache locations already reported as unusable


def default_cache() -> LLMCache | None:
    """The process-wide cache, or None when ``CTXFLOW_NO_CACHE`` is set or the cache folder cannot be
    written (read-only, not a folder, ...: the run goes on without the cache, with one warning)."""
    global _default
    if os.environ.get("CTXFLOW_NO_CACHE", "").lower() in ("1", "true", "yes"):
        return None
    where = str(cache_root())
    try:
        path = cache_dir() / "llm_calls.sqlite"
        if _default is None or _default.path != path:
            _default = LLMCache(path)
    except (OSError, sqlite3.OperationalError) as exc:
        if where not in _unusable:
            _unusable.add(where)
            warnings.warn(f"cannot use the LLM-call cache in {where} ({exc}); running without it (set "
                          "CTXFLOW_CACHE_DIR to a writable folder, or CTXFLOW_NO_CACHE=1 to silence this)",
                          RuntimeWarning, stacklevel=2)
        return None
    return _default
