"""Command-line side of the stores: ``ctxflow index`` and the search behind ``ctxflow ask --store``.

    ctxflow index PATH... --store DIR [--bank knn|cosine|bm25|hybrid|graph|triples]
                  [--chunker sentences] [--size 128] [--extractor rules|llm|both] [--quiet]

Files and folders (walked recursively, hidden entries skipped) are read as UTF-8 (invalid bytes
replaced and reported; binary and empty files skipped and reported), chunked with
:func:`ctxflow.chunking.chunk_text`, and added to the store, which is created or appended to (a
file indexed again replaces its old chunks). The whole update is one commit under the store's
writer lock: readers see the old store until it is complete.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from ..errors import DocumentError, UserError
from ..types import Chunk, Scored
from .store import MANIFEST, read_manifest, store_lock

BANK_CHOICES = ("knn", "cosine", "bm25", "hybrid", "graph", "triples")
_EMBEDDED = ("knn", "cosine", "hybrid")


def walk(paths: list[str]) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, sorted, hidden names skipped)."""
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        yield Path(root) / f
        else:
            yield p


def _chunk(text: str, doc_id: str, chunker: str, size: int) -> list[Chunk]:
    try:
        from ..chunking import chunk_text
    except ImportError:  # pragma: no cover - the chunking package is part of ctxflow
        return [Chunk(doc_id=doc_id, index=i, start=a, end=min(a + 4 * size, len(text)), text=text[a:a + 4 * size])
                for i, a in enumerate(range(0, len(text), 4 * size)) if text[a:a + 4 * size].strip()]
    return chunk_text(text, chunker, doc_id=doc_id, size=size)


def default_embedder() -> Any:
    from ..llm.embed import STEmbedder

    return STEmbedder()


def new_bank(bank: str, embedder: Any, llm: Any, store: str, extractor: str | None = None) -> Any:
    from . import BM25Bank, CosineBank, GraphBank, HybridBank, KnnBank, TripleStore

    if bank == "knn":
        return KnnBank(embedder)
    if bank == "cosine":
        return CosineBank(embedder)
    if bank == "hybrid":
        return HybridBank(embedder)
    if bank == "bm25":
        return BM25Bank()
    extractor = extractor or ("both" if llm is not None else "rules")
    if bank == "graph":
        return GraphBank(llm=llm, embedder=embedder, extractor=extractor)
    return TripleStore(store, embedder=embedder, llm=llm, extractor=extractor)


def index_main(paths: list[str], store: str, bank: str | None = None, chunker: str = "sentences", size: int = 128,
               embedder: Any = None, llm: Any = None, quiet: bool = False, stream: Any = None, extractor: str | None = None) -> int:
    """Index ``paths`` into the store ``store`` (created or appended to). Returns the exit status."""
    from tqdm import tqdm

    from ..formats import place
    from ..io import document_from_bytes
    from .store import check_new_store_folder, open_store

    err = stream or sys.stderr
    if not paths:
        raise UserError("nothing to index: give files or folders, e.g. ctxflow index docs/ --store stores/docs.")
    if bank is not None and bank not in BANK_CHOICES:
        raise UserError(f"unknown bank {bank!r}; valid banks: {', '.join(BANK_CHOICES)}.")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"not found: {', '.join(missing)}.")
    sp = Path(store)
    # a file's identity is its absolute path (the same file indexed from another folder is replaced, not
    # added twice); the store's own files are never indexed into it
    own = sp.resolve()
    given = {Path(os.path.abspath(f)): f for f in walk(paths) if own not in f.resolve().parents}  # not resolve(): keep symlinks
    files = list(given)
    with store_lock(sp):
        exists = (sp / MANIFEST).exists()
        if not exists:
            check_new_store_folder(sp)  # before any work: never over a user's files or a store missing its manifest
        kind = read_manifest(sp).get("bank") if exists else (bank or "knn")
        if bank is not None and kind != bank:
            raise UserError(f"store {store} holds a {kind!r} bank; index into it without --bank (or --bank {kind}), "
                            f"or choose a new store folder for a {bank!r} bank.")
        if embedder is None and kind in _EMBEDDED and not exists:
            embedder = default_embedder()
        b = open_store(sp, embedder=embedder, llm=llm) if exists else new_bank(kind, embedder, llm, store, extractor)
        by_doc: dict[str, list[str]] = {}
        for cid in (b.ids() if hasattr(b, "ids") else []):
            by_doc.setdefault(cid.rsplit("#", 1)[0], []).append(cid)
        skipped, replaced, n_chunks, n_files = [], [], 0, 0
        for f in tqdm(files, desc=f"indexing into {store}", unit="file", file=err, disable=quiet, dynamic_ncols=True):
            try:
                doc = document_from_bytes(f.read_bytes(), str(f))
            except DocumentError as exc:
                why = str(exc).removeprefix(str(f)).lstrip(" :") or str(exc)  # the message starts with the path already
                skipped.append(f"{f} ({why})")
                continue
            except OSError as exc:
                skipped.append(f"{f} (unreadable: {exc.strerror or exc})")
                continue
            if doc.meta.get("replaced_bytes"):
                replaced.append(f"{f} ({doc.meta['replaced_bytes']} byte(s))")
            chunks = _chunk(doc.text, doc.id, chunker, size)
            nl = [i for i, ch in enumerate(doc.text) if ch == "\n"]
            for c in chunks:
                c.meta.setdefault("path", str(f))
                if not place(c.meta, doc.meta, c.start):  # a converted PDF/HTML/...: its page or section
                    c.meta.setdefault("line", bisect.bisect_left(nl, c.start) + 1)  # 1-based line of the chunk's start
            # earlier ids of this file: its absolute path, or (stores written before ids were absolute)
            # the path as given or relative to here
            for old_id in dict.fromkeys((doc.id, str(given[f]), os.path.relpath(f))):
                if by_doc.get(old_id):
                    b.remove(by_doc.pop(old_id))
            b.add(chunks)
            n_chunks += len(chunks)
            n_files += 1
        version = b.save(sp) if n_files else None  # nothing indexed: no new (empty) store, no new version
    for s in skipped:
        print(f"skipped {s}", file=err)
    for r in replaced:
        print(f"warning: {r} invalid UTF-8 replaced by U+FFFD", file=err)
    if not n_files:
        print(f"error: no text file indexed from {', '.join(paths)} ({len(skipped)} skipped).", file=err)
        return 2
    v = f", version {version}" if version and kind != "triples" else ""
    print(f"indexed {n_chunks} chunk(s) from {n_files} file(s) into {store} ({kind} bank, {len(b)} chunk(s) in all{v})"
          + (f"; skipped {len(skipped)} file(s)" if skipped else ""), file=err)
    return 0


def search_store(store: str, question: str, k: int = 5, embedder: Any = None, llm: Any = None) -> list[Scored[Chunk]]:
    """The ``k`` best chunks of the store for ``question`` (for ``ctxflow ask --store DIR QUESTION``)."""
    from .store import open_store

    if not question.strip():
        raise UserError("the question is empty: ask something.")
    return open_store(store, embedder=embedder, llm=llm).search(question, k)


def _verify(citations: list[Any], err: Any) -> None:
    """Give each citation its 1-based ``line`` and check that it quotes its source file exactly
    (``meta.verified``); a file changed or gone since indexing is reported on ``err``."""
    from ..io import document_from_bytes

    from ..chunking.base import LineIndex
    from ..formats import place

    docs: dict[str, Any] = {}
    for c in citations:
        path = c.meta.get("path")
        if path and path not in docs:
            try:
                docs[path] = document_from_bytes(Path(path).read_bytes(), path)
            except Exception:
                docs[path] = None
        doc = docs.get(path) if path else None
        text = doc.text if doc is not None else None
        if text is None:
            c.meta["verified"] = False
            if path:
                print(f"warning: {path} (cited) can no longer be read; the quote comes from the store.", file=err)
            continue
        if not place(c.meta, doc.meta, c.start):  # a converted PDF/HTML/EPUB/DOCX: its page or section
            c.meta["line"] = LineIndex(text).line(c.start)  # \n, \r\n or a lone \r each end a line
        c.meta["verified"] = text[c.start:c.end] == c.text
        if not c.meta["verified"]:
            print(f"warning: {path} changed since it was indexed: [{c.start}:{c.end}] no longer quotes the cited text; "
                  f"re-run `ctxflow index` on it.", file=err)


def ask_store(args: argparse.Namespace, llm: Any = None, embedder: Any = None, k: int = 5, stream: Any = None) -> int:
    """``ctxflow ask --store DIR QUESTION [--json] [--stream]``: retrieve from the store, answer with the
    local LLM (``aggregate.stuff`` over the hits), cite exact spans of the indexed files."""
    from ..aggregate.stuff import Stuff
    from ..events import EventBus, use_bus
    from ..run.stream import TokenPrinter
    from ..types import Answer
    from .store import open_store

    out, err = stream or sys.stdout, sys.stderr
    question = args.positional[0].strip()
    if getattr(args, "executor", None):
        raise UserError("--executor cannot be combined with --store: a store is answered by retrieval + one LLM call, "
                        "which runs here; to index on a cluster use the Python API (docs/scaling.md).")
    if getattr(args, "pipeline", None):
        raise UserError("--pipeline cannot be combined with --store: a store is answered by retrieval + one LLM call; "
                        "to use a pipeline, give it a memory bank with `store: DIR` and run `ctxflow run`.")
    bank = open_store(args.store, embedder=embedder)
    hits = bank.search(question, k)
    printer = TokenPrinter(out) if getattr(args, "stream", False) and not args.json else None
    if hits:
        if llm is None:
            from ..llm.local import LocalLM

            llm = LocalLM(model=getattr(args, "model", None) or "default")
        with use_bus(EventBus([printer] if printer else [])):
            ans = Stuff(llm=llm).run(chunks=hits, question=question)["answer"]
    else:
        ans = Answer(text="The store holds nothing relevant to this question.", trace={"strategy": "stuff", "chunks_used": 0})
    _verify(ans.citations, err)
    retrieved = [{"doc_id": h.item.doc_id, "path": h.item.meta.get("path"), "start": h.item.start, "end": h.item.end,
                  "score": h.score, **{key: h.meta[key] for key in ("facts", "entities") if key in h.meta}} for h in hits]
    if args.json:
        res = {"answer": ans.text, "citations": [
            {"start": c.start, "end": c.end, "text": c.text, "doc_id": c.doc_id, "score": c.score, **c.meta} for c in ans.citations],
            "score": ans.score, "store": args.store, "bank": getattr(bank, "bank_type", None), "question": question,
            "retrieved": retrieved, "trace": ans.trace}
        print(json.dumps(res, ensure_ascii=False), file=out)
        return 0
    from ..cli import print_answer

    if printer is not None and printer.printed:
        print(file=out)
        print_answer(ans, stream=out, text=False)
    else:
        print_answer(ans, stream=out)
    facts = [f for r in retrieved for f in r.get("facts", [])]
    if facts:
        print("\nFacts:", file=out)
        for f in dict.fromkeys(facts):
            print(f"  {f}", file=out)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    llm = None
    if getattr(args, "extractor", "rules") != "rules":
        if args.bank not in ("graph", "triples"):
            raise UserError(f"--extractor {args.extractor} applies to graph and triples stores; add --bank graph or --bank triples.")
        from ..llm.local import LocalLM

        llm = LocalLM()
    return index_main(args.paths, args.store, bank=args.bank, chunker=args.chunker, size=args.size, quiet=args.quiet, llm=llm,
                      extractor=args.extractor)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ctxflow index`` on the CLI's subparsers (sets ``fn=cmd_index``)."""
    p = subparsers.add_parser("index", help="index files or folders into a persisted memory store",
                              description="Chunk files (folders recursively) and add them to a store folder, creating it or appending.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to index")
    p.add_argument("--store", "-s", required=True, metavar="DIR", help="the store folder (e.g. stores/docs)")
    p.add_argument("--bank", "-b", choices=BANK_CHOICES, default=None, help="bank type of a new store (default: knn)")
    p.add_argument("--chunker", default="sentences", help="chunker kind: sentences, tokens, recursive, code, markdown")
    p.add_argument("--size", type=int, default=128, help="chunk size in tokens (default 128)")
    p.add_argument("--extractor", choices=("rules", "llm", "both"), default="rules",
                   help="graph/triples stores: facts from deterministic rules (default), the local LLM, or both")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_index)
    return p
