"""Persisted stores: versioned data folders under a checksummed manifest, committed atomically.

Layout of a store folder (e.g. ``stores/<name>/``)::

    manifest.json   format, bank type, version, data folder, embedder id/dim/spec, counts,
                    params, and {file: {sha256, bytes}} for every data file
    v000007/        the data files of the current version (what the manifest names)
    v000006/        the previous version, kept for readers that are still loading it
    .lock           the writers' lock (filelock)

Commit (:func:`commit`), under the lock:

1. remove leftovers of crashed writers (``*.tmp*`` entries, version folders other than the
   current and the previous one);
2. write every file into ``v<n>.tmp-<pid>/``, fsync each, rename the folder to ``v<n>/``,
   fsync the store folder;
3. write ``manifest.json.tmp-<pid>``, fsync, ``os.replace`` it onto ``manifest.json`` (atomic),
   fsync the folder;
4. delete versions older than the previous one.

A crash before step 3's rename leaves the old manifest naming the old, untouched version; after
it, the new manifest names a version that was fully on disk before the rename. Readers take no
lock: they read the manifest (an atomic rename makes it old or new, never half), then the files it
names, verify checksums, and retry if a writer moved the manifest on meanwhile.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock, Timeout

from .. import __version__
from ..errors import StoreError
from ..llm.base import Embedder

#: the on-disk format this code writes; it reads this one and older ones
FORMAT = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


# -- small serialisation helpers ----------------------------------------------------------------
def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def npy_load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- locking ------------------------------------------------------------------------------------
def store_lock(path: str | os.PathLike, timeout: float = 600) -> FileLock:
    """The writers' lock of the store at ``path`` (re-entrant within a process; use as ``with``).

    Hold it around a read-modify-write (open, add, save) so no other writer commits in between."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StoreError(f"store {p} is a file; a store is a folder (give a new or existing store folder).")
    p.mkdir(parents=True, exist_ok=True)
    key = str((p / LOCK).resolve())
    with _LOCKS_GUARD:
        lk = _LOCKS.get(key)
        if lk is None:
            lk = _LOCKS[key] = FileLock(key, timeout=timeout)
    return lk


def _acquire(lk: FileLock, path: Path) -> None:
    try:
        lk.acquire()
    except Timeout:
        raise StoreError(f"store {path} is locked by another writer (lock file {lk.lock_file}); try again later.") from None


# -- manifest -----------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the store at ``path``; StoreError if there is none or it is unreadable/newer."""
    p = Path(path)
    mpath = p / MANIFEST
    if p.exists() and not p.is_dir():
        raise StoreError(f"no store at {p}: it is a file; a store is a folder made by `ctxflow index FILES --store FOLDER`.")
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        if not p.exists():
            raise StoreError(f"no store at {p}: the folder does not exist (create one with `ctxflow index FILES --store {p}`).") from None
        raise StoreError(f"no store at {p}: it has no {MANIFEST} (a store folder holds {MANIFEST} and its data; "
                         f"create one with `ctxflow index FILES --store {p}`).") from None
    try:
        m = json.loads(raw.decode("utf-8"))
        if not isinstance(m, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"store {p}: {MANIFEST} is not valid JSON ({exc}); expected the object ctxflow writes.") from None
    fmt = m.get("format")
    if not isinstance(fmt, int):
        raise StoreError(f"store {p}: {MANIFEST} has no integer 'format' (found {fmt!r}); valid formats: 1..{FORMAT}.")
    if fmt > FORMAT:
        raise StoreError(f"store {p} has format {fmt}, newer than this ctxflow {__version__} reads (formats 1..{FORMAT}); "
                         f"upgrade ctxflow or rebuild the store.")
    if fmt < 1:
        raise StoreError(f"store {p} has format {fmt}; valid formats are 1..{FORMAT}.")
    return m


def store_version(path: str | os.PathLike) -> int | None:
    """The committed version number of the store at ``path`` (None when there is no store)."""
    try:
        return int(json.loads((Path(path) / MANIFEST).read_bytes()).get("version", 0))
    except (OSError, ValueError, AttributeError):
        return None


def check_bank(m: dict[str, Any], path: Path, expected: str) -> None:
    found = m.get("bank")
    if found != expected:
        raise StoreError(f"store {path} holds a {found!r} bank, not {expected!r}; open it with "
                         f"ctxflow.memory.open_store() (which picks the right type) or as a {found!r} bank.")


def embedder_info(embedder: Embedder | None) -> dict[str, Any] | None:
    if embedder is None:
        return None
    try:
        spec = embedder.spec()
    except Exception:  # pragma: no cover - a spec is a convenience
        spec = None
    return {"id": str(getattr(embedder, "model_id", type(embedder).__name__)), "dim": int(embedder.dim), "spec": spec}


def check_embedder(m: dict[str, Any], path: Path, embedder: Embedder | None) -> None:
    """StoreError unless ``embedder`` is the one the store's vectors were made with."""
    want = m.get("embedder")
    if not want or embedder is None:
        return
    got_id = str(getattr(embedder, "model_id", type(embedder).__name__))
    got_dim = int(embedder.dim)
    if got_id != want.get("id") or got_dim != want.get("dim"):
        raise StoreError(
            f"store {path} was built with embedder {want.get('id')!r} (dim {want.get('dim')}) but was opened with "
            f"{got_id!r} (dim {got_dim}); open it with embedder {want.get('id')!r}, or rebuild the store with the new embedder."
        )


def embedder_from_manifest(m: dict[str, Any], path: Path) -> Embedder:
    """Recreate the store's embedder from the spec its manifest records."""
    info = m.get("embedder") or {}
    spec = dict(info.get("spec") or {})
    if not spec.get("type"):
        raise StoreError(f"store {path} needs the embedder {info.get('id')!r} (dim {info.get('dim')}) and records no way to "
                         f"build it; pass embedder=... when opening it.")
    from ..graph.registry import get_model

    try:
        cls = get_model(str(spec.pop("type")))
        return cls(**spec)
    except Exception as exc:
        raise StoreError(f"store {path} needs the embedder {info.get('id')!r}, which could not be created from {info.get('spec')!r} "
                         f"({exc}); pass embedder=... when opening it.") from None


# -- writing ------------------------------------------------------------------------------------
def _vnum(name: str) -> int | None:
    if len(name) == 7 and name[0] == "v" and name[1:].isdigit():
        return int(name[1:])
    return None


_OWN_TMP = re.compile(r"^(v\d{6}|" + re.escape(MANIFEST) + r")\.tmp-\d+$")  # what commit() writes before renaming


def _cleanup(p: Path, keep: set[str]) -> None:
    """Remove leftovers of crashed writers: only names ctxflow writes (never a user's own files)."""
    for child in p.iterdir():
        name = child.name
        stale_tmp = bool(_OWN_TMP.match(name))
        stale_version = _vnum(name) is not None and child.is_dir() and name not in keep
        if stale_tmp or stale_version:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                try:
                    child.unlink()
                except FileNotFoundError:  # pragma: no cover
                    pass


def check_new_store_folder(p: Path) -> None:
    """A store is created only in an empty folder (or one holding only a crashed first commit's
    leftovers): never over a user's files, nor over the data of a store whose manifest is gone."""
    others = sorted(c.name for c in p.iterdir()
                    if not c.name.startswith(".") and not _OWN_TMP.match(c.name))  # .lock, .gitkeep, .DS_Store
    if any(_vnum(n) is not None for n in others):
        raise StoreError(f"store {p} is incomplete: it holds data ({', '.join(n for n in others if _vnum(n) is not None)}) "
                         f"but no {MANIFEST}; restore {MANIFEST} from a backup, or delete the folder to start a new store.")
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise StoreError(f"{p} is not a store and not empty ({shown}); give a new or empty folder for the store.")


def commit(path: str | os.PathLike, bank: str, files: dict[str, bytes], *, embedder: Embedder | None = None,
           counts: dict[str, int] | None = None, params: dict[str, Any] | None = None,
           base_version: int | None = None, hook: Callable[[str], None] | None = None) -> int:
    """Write ``files`` as the next version of the store at ``path``; return the new version number.

    ``base_version``: the version the caller's data was read from; if another writer committed
    since, StoreError (the caller would silently drop that writer's entries). ``hook(stage)`` is
    called between steps (tests use it to crash at chosen points)."""
    p = Path(path)
    step = hook or (lambda stage: None)
    lk = store_lock(p)
    _acquire(lk, p)
    try:
        old = None
        if (p / MANIFEST).exists():
            old = read_manifest(p)
        cur_v = int(old.get("version", 0)) if old else 0
        if base_version is not None and old is not None and cur_v != base_version:
            raise StoreError(f"store {p} changed since this bank was opened (version {base_version}, now {cur_v}): another writer "
                             f"committed. Reopen it (under ctxflow.memory.store_lock) and apply your changes again.")
        if old is None:
            check_new_store_folder(p)
        keep = {old["data"]} if old and old.get("data") else set()
        _cleanup(p, keep | ({f"v{cur_v - 1:06d}"} if cur_v > 1 else set()))
        step("cleaned")
        new_v = cur_v + 1
        data = f"v{new_v:06d}"
        tmp = p / f"{data}.tmp-{os.getpid()}"
        tmp.mkdir()
        entries = {}
        for name, blob in files.items():
            _write_file(tmp / name, blob)
            entries[name] = {"sha256": sha256(blob), "bytes": len(blob)}
            step("file")
        _fsync_dir(tmp)
        os.rename(tmp, p / data)
        _fsync_dir(p)
        step("data")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "format": FORMAT, "bank": bank, "version": new_v, "data": data, "created_by": f"ctxflow {__version__}",
            "created": (old or {}).get("created", now), "updated": now, "embedder": embedder_info(embedder),
            "counts": dict(counts or {}), "params": dict(params or {}), "files": entries,
        }
        mtmp = p / f"{MANIFEST}.tmp-{os.getpid()}"
        _write_file(mtmp, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        step("manifest-tmp")
        os.replace(mtmp, p / MANIFEST)
        _fsync_dir(p)
        step("committed")
        # the previous version stays for readers that are still loading it
        _cleanup(p, {data} | keep)
        return new_v
    finally:
        lk.release()


# -- reading ------------------------------------------------------------------------------------
def load(path: str | os.PathLike, retries: int = 20) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(manifest, {file: bytes})`` of the committed version, checksums verified. No lock needed."""
    p = Path(path)
    last: StoreError | None = None
    for attempt in range(retries):
        m = read_manifest(p)
        try:
            return m, _read_files(p, m)
        except StoreError as exc:
            # a writer may have replaced the manifest and deleted the version we were reading
            if store_version(p) == m.get("version"):
                raise
            last = exc
            time.sleep(0.005 * (attempt + 1))
    raise last or StoreError(f"store {p} kept changing while being read; try again.")  # pragma: no cover


def _read_files(p: Path, m: dict[str, Any]) -> dict[str, bytes]:
    data = m.get("data")
    files = m.get("files")
    if not isinstance(data, str) or not isinstance(files, dict):
        raise StoreError(f"store {p}: {MANIFEST} lacks 'data' (a version folder) or 'files' (name -> checksum); "
                         f"it is not a manifest ctxflow wrote.")
    out: dict[str, bytes] = {}
    for name, info in files.items():
        fp = p / data / name
        try:
            blob = fp.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"store {p} is incomplete: {data}/{name}, named in {MANIFEST}, is missing; restore the folder "
                             f"from a backup or rebuild the store.") from None
        got = sha256(blob)
        want = (info or {}).get("sha256")
        if got != want:
            raise StoreError(f"store {p} is corrupt: checksum mismatch in {data}/{name}: sha256 is {got[:16]}... ({len(blob)} bytes) "
                             f"but {MANIFEST} records {str(want)[:16]}... ({(info or {}).get('bytes')} bytes); restore it "
                             f"from a backup or rebuild the store.")
        out[name] = blob
    return out


# -- bank types ---------------------------------------------------------------------------------
BANKS: dict[str, type] = {}


def register_bank(cls: type) -> type:
    """Class decorator: make ``cls`` (with a ``bank_type``) openable by :func:`open_store`."""
    BANKS[cls.bank_type] = cls
    return cls


def open_store(path: str | os.PathLike, embedder: Embedder | None = None, llm: Any = None) -> Any:
    """Open the store at ``path`` as the bank type its manifest names."""
    from . import _load_all

    _load_all()
    m = read_manifest(path)
    kind = m.get("bank")
    if kind not in BANKS:
        raise StoreError(f"store {path} holds a bank of unknown type {kind!r}; known types: {', '.join(sorted(BANKS))}.")
    return BANKS[kind].open(path, embedder=embedder, llm=llm)


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest of ``path`` (for live stores such as the triple store's
    SQLite database, whose data commits through SQLite itself). Takes the writers' lock."""
    p = Path(path)
    lk = store_lock(p)
    _acquire(lk, p)
    try:
        m = {"format": FORMAT, "created_by": f"ctxflow {__version__}",
             "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **manifest}
        tmp = p / f"{MANIFEST}.tmp-{os.getpid()}"
        _write_file(tmp, json.dumps(m, indent=2, ensure_ascii=False).encode("utf-8"))
        os.replace(tmp, p / MANIFEST)
        _fsync_dir(p)
    finally:
        lk.release()
