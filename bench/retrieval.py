"""Retrieval benchmark: faiss flat / HNSW / IVF at 100k and 1M vectors (d=384), plus embedding throughput.

For each size N and index type: build time, query time (batched: all queries in one ``search`` call
on ``--threads`` threads, reported per query, median of ``--repeats`` passes; single: one query per
call, one thread), recall@10 against exact search (IndexFlatIP ground truth), and memory (bytes of
the index structure, and the process RSS growth while building it). HNSW is measured with float32
vectors (``IndexHNSWFlat``; efConstruction 40, 64 and 256) and with float16 codes (``IndexHNSWSQ``
fp16, efConstruction 256: what ``memory.knn`` builds with ``hnsw_storage="float16"``). ``ivf_pq4``
rows: IVF lists of 4-bit PQ codes (2 dims per code) scanned with faiss's SIMD fast-scan kernels, the
best ``k * k_factor`` candidates re-ranked exactly on the float32 vectors (``IndexRefineFlat`` over
``IndexIVFPQFastScan``: what ``memory.knn`` builds with ``index="ivf", ivf_codes="pq4"``).

Vectors. Embedding 1M real chunks is far too slow on this machine, so:

* real: the bundled document (examples/data/jargon.txt) is chunked (sentences, 128 tokens) and
  embedded with the default embedder (all-MiniLM-L6-v2, 384-d). This also measures embedding
  throughput (chunks/s, batch 64 vs batch 1) and gives a small real-vector recall check.
* synthetic at scale ("clustered model fitted to the real embeddings"): k-means (64 centroids) of
  the real embeddings; ``n_topics`` topic centres = a random real centroid + Gaussian noise of the
  spread between real centroids; each vector = its topic centre + noise drawn with the covariance
  (PCA spectrum) of the real within-cluster residuals, then L2-normalised. Queries are fresh draws
  from the same model (not in the base set). Random unit vectors would make ANN artificially hard.

    HF_HUB_OFFLINE=1 python bench/retrieval.py                 # 100k and 1M (about 15 min on 2 cores)
    HF_HUB_OFFLINE=1 python bench/retrieval.py --sizes 100000  # quick

* real at scale (``--real-dir``): 101k chunks of real text (the Jargon File and the Python sources and
  docs of installed packages) embedded with the same MiniLM weights by ``bench/embed_corpus.py`` on the
  lent GPU machine (fp16; 2 calls of 50.5k rows, each under the 64 MiB a call may return); 100k base
  vectors, 1k held-out chunks as queries. This is the row the 100k goal is judged on: nearest
  neighbours of real text embeddings are far better separated than in the Gaussian model.

Writes bench/results/retrieval.json and bench/results/retrieval.png (recall@10 vs ms/query).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
D = 384
K = 10


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- real embeddings and throughput ---------------------------------------------------------------
def real_embeddings(max_chunks: int, timed: int, cache: str | None = None,
                    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64)) -> tuple[np.ndarray, dict]:
    """MiniLM vectors of ``max_chunks`` real chunks, and the embedding throughput: the same ``timed``
    chunks encoded at each of ``batch_sizes`` (best of 2 passes), so the rates compare like with like."""
    if cache and Path(cache + ".npy").exists():  # vectors and throughput of an earlier run (same settings)
        info = json.loads(Path(cache + ".json").read_text())
        if info["chunks"] == max_chunks and info.get("timed_chunks") == timed and info.get("batch_sizes") == list(batch_sizes):
            print("embedding (cached):", json.dumps(info), flush=True)
            return np.load(cache + ".npy"), info
    from ctxflow.chunking import chunk_text
    from ctxflow.llm.embed import STEmbedder

    text = (ROOT / "examples/data/jargon.txt").read_text(encoding="utf-8")
    chunks = chunk_text(text, "sentences", doc_id="jargon", size=128)[:max_chunks]
    texts = [c.text for c in chunks]
    emb = STEmbedder()
    emb.warm_up()
    st = emb.model
    st.encode(texts[:64], batch_size=64, normalize_embeddings=True)  # warm
    sample = texts[:timed]
    rates = {}
    for bs in batch_sizes:
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            st.encode(sample, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            best = min(best, time.perf_counter() - t)
        rates[bs] = round(len(sample) / best, 1)
        print(f"embedding: batch {bs}: {rates[bs]} chunks/s", flush=True)
    top = max(rates, key=rates.get)
    t = time.perf_counter()
    vecs = st.encode(texts, batch_size=top, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    all_s = time.perf_counter() - t
    import torch

    info = {"model": emb.model_id, "dim": int(vecs.shape[1]), "chunks": len(texts),
            "mean_chunk_chars": round(float(np.mean([len(s) for s in texts])), 1), "torch_threads": torch.get_num_threads(),
            "timed_chunks": len(sample), "mean_timed_chunk_chars": round(float(np.mean([len(s) for s in sample])), 1),
            "batch_sizes": list(batch_sizes), "chunks_per_s_by_batch_size": {str(b): r for b, r in rates.items()},
            "best_batch_size": top, "batched_speedup_vs_1": round(rates[top] / rates[batch_sizes[0]], 2),
            "all_chunks_at_best_batch": {"chunks": len(texts), "seconds": round(all_s, 2), "chunks_per_s": round(len(texts) / all_s, 1)},
            "note": "sentence-transformers encode sorts a call's texts by length, so a batch pads to similar lengths; "
                    "on CPU the encoder is compute-bound, so batching gains little beyond fewer calls"}
    print("embedding:", json.dumps(info), flush=True)
    vecs = np.asarray(vecs, dtype=np.float32)
    if cache:
        np.save(cache + ".npy", vecs)
        Path(cache + ".json").write_text(json.dumps(info))
    return vecs, info


class ClusteredModel:
    """Synthetic vectors shaped like the real embeddings (see the module docstring): a Gaussian mixture
    whose components are the k-means clusters of the real embeddings (weights = cluster sizes) with the
    shared covariance of the real within-cluster residuals, each draw L2-normalised."""

    def __init__(self, real: np.ndarray, k: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        km = faiss.Kmeans(real.shape[1], k, niter=25, seed=seed, spherical=True)
        km.train(real)
        _, assign = km.index.search(real, 1)
        self.cents = km.centroids.astype(np.float32)  # (k, d)
        resid = real - self.cents[assign[:, 0]]
        w, v = np.linalg.eigh(np.cov(resid, rowvar=False))
        self.noise = (v * np.sqrt(np.clip(w, 0, None))).T.astype(np.float32)  # (d, d): z @ noise ~ N(0, cov)
        self.weights = np.bincount(assign[:, 0], minlength=k) / len(real)
        self.rng = rng
        self.desc = {"components": k, "fitted_on_real_chunks": len(real),
                     "residual_top10_var_share": round(float(w[::-1][:10].sum() / w.sum()), 3),
                     "recipe": "Gaussian mixture: component = k-means cluster of the real MiniLM embeddings (weight = its size), "
                               "covariance = covariance of the real within-cluster residuals; each draw L2-normalised. "
                               "Queries are fresh draws (not in the base set)."}

    def sample(self, n: int, block: int = 100_000) -> np.ndarray:
        out = np.empty((n, self.cents.shape[1]), dtype=np.float32)
        for a in range(0, n, block):
            m = min(block, n - a)
            z = self.rng.standard_normal((m, self.cents.shape[1]), dtype=np.float32)
            x = self.cents[self.rng.choice(len(self.cents), m, p=self.weights)] + z @ self.noise
            faiss.normalize_L2(x)
            out[a:a + m] = x
        return out


# -- index measurements ---------------------------------------------------------------------------
def recall(found: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(g[:K])) / K for f, g in zip(found, gt)]))


def time_queries(index, xq: np.ndarray, threads: int, n_single: int, repeats: int = 3) -> tuple[np.ndarray, float, float]:
    """(ids of the batched search, batched ms/query (median of ``repeats`` passes), single-query ms/query on one thread)."""
    faiss.omp_set_num_threads(threads)
    index.search(xq[:20], K)  # warm
    times = []
    for _ in range(repeats):  # median of the batched passes (the VM's clock and neighbours drift by +-15% between runs)
        t = time.perf_counter()
        _, ids = index.search(xq, K)
        times.append((time.perf_counter() - t) * 1000 / len(xq))
    batch_ms = sorted(times)[len(times) // 2]
    faiss.omp_set_num_threads(1)
    qs = xq[:n_single]
    index.search(qs[:1], K)
    t = time.perf_counter()
    for i in range(len(qs)):
        index.search(qs[i:i + 1], K)
    single_ms = (time.perf_counter() - t) * 1000 / len(qs)
    faiss.omp_set_num_threads(threads)
    return ids, batch_ms, single_ms


def hnsw_bytes(index, bytes_per_value: int = 4) -> int:
    h = index.hnsw
    return int(index.ntotal * index.d * bytes_per_value + h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4)


def ivf_bytes(index) -> int:
    inv = faiss.extract_index_ivf(index).invlists
    n = sum(inv.list_size(i) for i in range(inv.nlist))
    return int(n * (index.d * 4 + 8) + index.nlist * index.d * 4)


def row(kind: str, params: dict, build_s: float, mem: int, rss: float, ids, bms, sms, gt) -> dict:
    r = {"index": kind, **params, "build_s": round(build_s, 2), "index_mb": round(mem / 2**20, 1), "rss_growth_mb": round(rss, 1),
         "recall_at_10": round(recall(ids, gt), 4), "ms_per_query_batched": round(bms, 4), "ms_per_query_single": round(sms, 4)}
    print("  ", json.dumps(r), flush=True)
    return r


def bench_size(xb: np.ndarray, xq: np.ndarray, a: argparse.Namespace, big: bool) -> dict:
    n = len(xb)
    out: dict = {"n": n, "queries": len(xq), "rows": []}
    # flat = exact search = ground truth
    r0 = rss_mb()
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(D)
    flat.add(xb)
    build = time.perf_counter() - t
    gt_ids, bms, sms = time_queries(flat, xq, a.threads, a.single // (10 if big else 2))
    out["rows"].append(row("flat", {}, build, n * D * 4, rss_mb() - r0, gt_ids, bms, sms, gt_ids))
    del flat
    gc.collect()
    # HNSW
    # storage: float32 vectors (IndexHNSWFlat) or float16 (IndexHNSWSQ fp16: half the bytes per distance)
    for m, efc, store in ([(16, 32, "float32")] if big else [(16, 40, "float32"), (32, 64, "float32"), (32, 256, "float32"),
                                                             (32, 256, "float16")]):
        r0 = rss_mb()
        t = time.perf_counter()
        if store == "float16":
            idx = faiss.IndexHNSWSQ(D, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
            idx.train(xb[:1000])  # fp16 needs no statistics
        else:
            idx = faiss.IndexHNSWFlat(D, m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = efc
        idx.add(xb)
        build = time.perf_counter() - t
        grow = rss_mb() - r0
        for ef in ((16, 32, 64, 128) if big else (16, 24, 28, 32, 40, 48, 64, 96, 128)):
            idx.hnsw.efSearch = ef
            ids, bms, sms = time_queries(idx, xq, a.threads, a.single, 3 if big else a.repeats)
            out["rows"].append(row("hnsw", {"M": m, "efConstruction": efc, "efSearch": ef, "storage": store}, build,
                                   hnsw_bytes(idx, 2 if store == "float16" else 4), grow, ids, bms, sms, gt_ids))
        del idx
        gc.collect()
    # IVF (flat lists), trained on a sample
    nlist = 1024 if n >= 50_000 else max(4, int(np.sqrt(n)))
    r0 = rss_mb()
    t = time.perf_counter()
    quant = faiss.IndexFlatIP(D)
    idx = faiss.IndexIVFFlat(quant, D, nlist, faiss.METRIC_INNER_PRODUCT)
    per = 32 if big else 64
    idx.cp.max_points_per_centroid = per  # k-means on at most `per` points per list
    idx.train(xb[: min(n, per * nlist)])
    idx.add(xb)
    build = time.perf_counter() - t
    grow = rss_mb() - r0
    for nprobe in ((8, 16, 32, 64) if big else (4, 8, 16, 32, 64, 128)):
        idx.nprobe = nprobe
        ids, bms, sms = time_queries(idx, xq, a.threads, a.single, 3 if big else a.repeats)
        out["rows"].append(row("ivf", {"nlist": nlist, "nprobe": nprobe}, build, ivf_bytes(idx), grow, ids, bms, sms, gt_ids))
    del idx, quant
    gc.collect()
    # IVF with 4-bit PQ codes (2 dims per code) scanned by faiss's SIMD fast-scan kernels, the best
    # k * k_factor candidates re-ranked exactly on the float32 vectors (memory.knn ivf_codes: pq4)
    for nlist in ((4096,) if big else (256, 512, 1024)):
        if n < 39 * nlist:  # too few vectors to train the lists (the small real sample)
            continue
        r0 = rss_mb()
        t = time.perf_counter()
        quant = faiss.IndexFlatIP(D)
        base = faiss.IndexIVFPQFastScan(quant, D, nlist, D // 2, 4, faiss.METRIC_INNER_PRODUCT)
        base.cp.max_points_per_centroid = 64
        base.train(xb[: min(n, 64 * nlist)])
        idx = faiss.IndexRefineFlat(base)
        idx.add(xb)
        build = time.perf_counter() - t
        grow = rss_mb() - r0
        mem = n * (D // 2 // 2 + 8) + nlist * D * 4 + n * D * 4  # 4-bit codes + ids + centroids + refinement vectors
        for nprobe in ((32, 64, 128) if big else (32, 48, 64, 96)):
            for kf in (4, 8):
                base.nprobe = nprobe
                idx.k_factor = kf
                ids, bms, sms = time_queries(idx, xq, a.threads, a.single, 3 if big else a.repeats)
                out["rows"].append(row("ivf_pq4", {"nlist": nlist, "nprobe": nprobe, "k_factor": kf}, build, mem, grow,
                                       ids, bms, sms, gt_ids))
        del idx, base, quant
        gc.collect()
    return out


def fastest(rows: list[dict], goal: float = 0.97) -> dict:
    """The approximate index rows reaching recall@10 >= ``goal`` with the least ms/query, batched and single."""
    ok = [r for r in rows if r["index"] != "flat" and r["recall_at_10"] >= goal]
    return {"batched": min(ok, key=lambda r: r["ms_per_query_batched"], default=None),
            "single": min(ok, key=lambda r: r["ms_per_query_single"], default=None)}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = ([res["real_100k"]] if res.get("real_100k") else []) + list(res["synthetic"]) + list(res.get("synthetic_alt", [])) \
        + ([res["real_sample"]] if res.get("real_sample") else [])
    cols = min(2, len(sets))
    rows = (len(sets) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5 * rows), squeeze=False)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, sets):
        for kind, mk in (("flat", "s"), ("hnsw", "o"), ("ivf", "^"), ("ivf_pq4", "D")):
            groups: dict = {}
            for r in s["rows"]:
                if r["index"] == kind:
                    groups.setdefault((r.get("M"), r.get("efConstruction"), r.get("nlist"), r.get("storage"), r.get("k_factor")),
                                      []).append(r)
            for key, rs in groups.items():
                lab = kind + (f" M={key[0]} efC={key[1]}" if key[0] else "") + (f" nlist={key[2]}" if key[2] else "") \
                    + (" fp16" if key[3] == "float16" else "") + (f" refine x{key[4]}" if key[4] else "")
                ax.plot([r["ms_per_query_batched"] for r in rs], [r["recall_at_10"] for r in rs], marker=mk, label=lab + " (batched)")
                ax.plot([r["ms_per_query_single"] for r in rs], [r["recall_at_10"] for r in rs], marker=mk, ls=":", alpha=0.6,
                        label=lab + " (single)")
        ax.axhline(0.97, color="grey", lw=0.8)
        ax.axvline(0.1, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ms per query")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{s.get('label', 'synthetic')}\nn={s['n']:,} d={D}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=1000, help="queries per size (batched timing, recall)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="batched passes per row below 200k vectors (the median is kept)")
    ap.add_argument("--real-chunks", type=int, default=500, help="real chunks embedded (batched throughput, fitted model)")
    ap.add_argument("--timed-embed", type=int, default=200, help="chunks encoded at each batch size (throughput)")
    ap.add_argument("--embedding-only", action="store_true", help="measure only the embedding throughput and update that "
                                                                   "section of an existing --out JSON")
    ap.add_argument("--embed-cache", help="PATH prefix: reuse/keep the real embeddings (PATH.npy, PATH.json) between runs")
    ap.add_argument("--real-dir", help="folder of bench/embed_corpus.py output (emb_<part>_<k>.npy + emb_<part>.json): "
                                         "real embeddings at scale; the first --real-n rows are the base, the rest the queries")
    ap.add_argument("--real-n", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/retrieval.json"))
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    t_all = time.perf_counter()
    real, emb_info = real_embeddings(a.real_chunks, timed=a.timed_embed, cache=a.embed_cache)
    if a.embedding_only:
        old = json.loads(Path(a.out).read_text())
        old["embedding"] = emb_info | {"loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()],
                                       "measured": "separately (--embedding-only), same machine"}
        Path(a.out).write_text(json.dumps(old, indent=1))
        return
    res: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "faiss": faiss.__version__, "faiss_threads": a.threads,
                    "loadavg_1_5_15_at_start": [round(x, 1) for x in os.getloadavg()],
                    "note": "2-core machine; the load averages at start and end say whether anything else ran beside it; "
                            "rows of one size were measured back to back in one run"},
        "dim": D, "k": K, "embedding": emb_info,
        "timing": "batched = all queries in one faiss search call on faiss_threads threads, time / queries; "
                  "single = one query per search call, 1 thread (latency)",
        "memory": "index_mb = bytes of the index structure (vectors + links/lists); rss_growth_mb = process RSS growth while building",
    }
    # small check on real vectors: half as base, the rest as queries
    nb = len(real) * 3 // 4
    print(f"real sample: {nb} base / {len(real) - nb} queries", flush=True)
    small = argparse.Namespace(**{**vars(a), "single": 100})
    rs = bench_size(real[:nb], real[nb:], small, big=False)
    rs["label"] = "real MiniLM embeddings of jargon.txt chunks"
    res["real_sample"] = rs
    if a.real_dir:
        d = Path(a.real_dir)
        parts = sorted(d.glob("emb_*.json"), key=lambda f: int(f.stem.split("_")[1]))
        files = sorted(d.glob("emb_*_*.npy"), key=lambda f: tuple(int(x) for x in f.stem.split("_")[1:]))
        xr = np.concatenate([np.load(f) for f in files]).astype(np.float32)
        faiss.normalize_L2(xr)  # stored as float16
        descs = [json.loads(f.read_text()) for f in parts]
        if len({x["text_sha1"] for x in descs}) != 1:
            raise SystemExit(f"{d}: the parts were embedded from different corpora (text_sha1 differs)")
        print(f"real at scale: {a.real_n} base / {len(xr) - a.real_n} queries from {d}", flush=True)
        rr = bench_size(xr[: a.real_n], xr[a.real_n:], a, big=False)
        rr["label"] = "real MiniLM embeddings of text chunks (Jargon File + Python package sources/docs)"
        rr["corpus"] = {k: v for k, v in descs[0].items() if k != "rows"} | {
            "recipe": "bench/embed_corpus.py on the lent GPU machine (fp16 MiniLM, same weights as the default embedder); "
                      "queries are held-out chunks of the same corpus (not in the base set)"}
        rr["fastest_at_recall_0.97"] = fastest(rr["rows"])
        res["real_100k"] = rr
        del xr
        gc.collect()
    model = ClusteredModel(real)
    res["synthetic_model"] = model.desc
    res["synthetic"] = []
    for n in (int(s) for s in a.sizes.split(",")):
        big = n > 200_000
        t = time.perf_counter()
        xb = model.sample(n)
        xq = model.sample(a.queries // (3 if big else 1))
        print(f"synthetic n={n}: generated in {time.perf_counter() - t:.1f}s, rss {rss_mb():.0f} MB", flush=True)
        s = bench_size(xb, xq, a, big)
        s["label"] = "clustered synthetic (fitted to real embeddings)"
        res["synthetic"].append(s)
        del xb
        gc.collect()
        res["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        s["fastest_at_recall_0.97"] = fastest(s["rows"])
        res["total_s"] = round(time.perf_counter() - t_all, 1)
        res["machine"]["loadavg_1_5_15_at_end"] = [round(x, 1) for x in os.getloadavg()]
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))  # after each size, so a long run keeps what it measured
        plot(res, Path(a.out).with_suffix(".png"))
    print(f"wrote {a.out} in {time.perf_counter() - t_all:.0f}s; max rss {res['max_rss_mb']} MB", flush=True)


if __name__ == "__main__":
    main()
