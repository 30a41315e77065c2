"""Subprocess workers for the crash and concurrency tests (run as ``python -m tests.memory.workers``).

    writer STORE START BATCH [PAUSE_STAGE PAUSE_AT]   add batches START, START+1, ... forever, one
        commit each, printing ``committed <batch> <version>``; with PAUSE_STAGE, print ``stage <name>``
        and sleep when the PAUSE_AT-th save reaches that commit stage (the parent then SIGKILLs us).
    reader STORE SECONDS BATCH   open and query the store in a loop; print a JSON summary.
"""
from __future__ import annotations

import json
import sys
import time

from ctxflow.memory import KnnBank, open_store, store_lock
from ctxflow.memory.store import MANIFEST

from .fakes import HashEmbedder, make_chunks


def batch_chunks(b: int, size: int) -> list:
    return make_chunks([f"batch {b} item {j} token{b}x{j} lorem ipsum {j * 7 % 13}" for j in range(size)], doc_id=f"b{b}")


def writer(store: str, start: int, size: int, pause_stage: str | None = None, pause_at: int = 1) -> None:
    emb = HashEmbedder(32)
    saves = 0
    print("ready", flush=True)
    b = start
    while True:
        with store_lock(store):
            bank = KnnBank.open(store, embedder=emb) if (__import__("pathlib").Path(store) / MANIFEST).exists() \
                else KnnBank(emb, index="flat")
            bank.add(batch_chunks(b, size))
            saves += 1

            def hook(stage: str) -> None:
                if pause_stage and stage == pause_stage and saves == pause_at:
                    print(f"stage {stage}", flush=True)
                    time.sleep(60)

            v = bank.save(store, hook=hook)
        print(f"committed {b} {v}", flush=True)
        b += 1


def reader(store: str, seconds: float, size: int) -> None:
    from ctxflow.memory.knn import KnnMemory

    emb = HashEmbedder(32)
    comp = KnnMemory(embedder=emb, store=store, top_k=3)
    t_end = time.time() + seconds
    reads, versions, errors = 0, set(), []
    while time.time() < t_end:
        try:
            bank = open_store(store, embedder=emb)
            ids = set(bank.ids())
            n = len(ids)
            batches = n // size
            expect = {f"b{b}#{j}" for b in range(batches) for j in range(size)}
            if n % size or ids != expect:
                errors.append(f"inconsistent: {n} chunks, missing {sorted(expect - ids)[:3]}, extra {sorted(ids - expect)[:3]}")
            if batches:
                q = batch_chunks(batches - 1, size)[1].text
                top = bank.search(q, 1)
                if not top or top[0].item.id != f"b{batches - 1}#1":
                    errors.append(f"search for batch {batches - 1} item 1 returned {top[0].item.id if top else None}")
                hits = comp.run(query=q)["hits"]
                if not hits:
                    errors.append("component returned no hits")
            versions.add(bank._origin[1])
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every error is a failure to report
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"reads": reads, "versions": sorted(versions), "errors": errors[:10], "n_errors": len(errors)}), flush=True)


if __name__ == "__main__":
    cmd, store = sys.argv[1], sys.argv[2]
    if cmd == "writer":
        writer(store, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None,
               int(sys.argv[6]) if len(sys.argv) > 6 else 1)
    elif cmd == "reader":
        reader(store, float(sys.argv[3]), int(sys.argv[4]))
    else:  # pragma: no cover
        raise SystemExit(f"unknown command {cmd}")
