"""Real 384-d embeddings at scale for bench/retrieval.py: chunks of real text embedded with the default
embedder (all-MiniLM-L6-v2), on whatever device is fast (the lent GPU machine).

Corpus (deterministic for a given machine): the bundled Jargon File (examples/data/jargon.txt) and the
Python sources and docs (``*.py``, ``*.md``, ``*.rst``, ``*.txt``) of the installed packages under the
interpreter's site-packages, files in sorted path order, each cut at blank lines / line ends into
pieces of 200–600 characters (the sizes our chunkers make for code and prose); exact duplicates
dropped; the pieces shuffled with a fixed seed. That is the kind of text ctxflow indexes (books and
codebases), so nearest-neighbour structure is real rather than modelled.

    python bench/embed_corpus.py --model DIR --n 101000 --part 0/2 --out $OUT

writes ``emb_<part>_<k>.npy`` (float16, at most 16 MiB each, rows of this part in corpus order) and
``emb_<part>.json`` (corpus description). bench/retrieval.py ``--real-dir`` reads them back.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXTS = (".py", ".md", ".rst", ".txt")


def pieces(text: str, lo: int = 200, hi: int = 600):
    buf = ""
    for para in text.replace("\r", "").split("\n\n"):
        for line in para.split("\n"):
            if len(buf) + len(line) + 1 > hi and len(buf) >= lo:
                yield buf
                buf = ""
            buf = (buf + "\n" + line) if buf else line
            while len(buf) > hi:  # one very long line
                yield buf[:hi]
                buf = buf[hi:]
        if len(buf) >= lo:
            yield buf
            buf = ""
        elif buf:
            buf += "\n"
    if buf.strip():
        yield buf


def corpus(n: int, seed: int = 0) -> tuple[list[str], dict]:
    files = [ROOT / "examples" / "data" / "jargon.txt"]
    site = Path(sysconfig.get_paths()["purelib"])
    files += sorted(p for p in site.rglob("*") if p.suffix in EXTS and p.is_file())
    seen, out, used = set(), [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        used += 1
        for p in pieces(text):
            s = p.strip()
            if len(s) < 100:
                continue
            h = hashlib.blake2b(s.encode(), digest_size=8).digest()
            if h not in seen:
                seen.add(h)
                out.append(s)
        if len(out) >= 3 * n:  # enough to shuffle from
            break
    random.Random(seed).shuffle(out)
    out = out[:n]
    desc = {"files_read": used, "site_packages": str(site), "pieces": len(out),
            "mean_chars": round(float(np.mean([len(s) for s in out])), 1),
            "python": sys.version.split()[0]}
    return out, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="sentence-transformers folder of the embedder")
    ap.add_argument("--n", type=int, default=101_000)
    ap.add_argument("--part", default="0/1", help="i/k: embed rows [i*n/k, (i+1)*n/k)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=512)
    a = ap.parse_args()
    i, k = (int(x) for x in a.part.split("/"))
    t = time.perf_counter()
    texts, desc = corpus(a.n)
    desc["corpus_s"] = round(time.perf_counter() - t, 1)
    lo, hi = i * len(texts) // k, (i + 1) * len(texts) // k
    from sentence_transformers import SentenceTransformer
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    st = SentenceTransformer(a.model, device=dev)
    if dev == "cuda":
        st = st.half()
    t = time.perf_counter()
    vecs = st.encode(texts[lo:hi], batch_size=a.batch, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False).astype(np.float16)
    desc.update({"rows": [lo, hi], "embed_s": round(time.perf_counter() - t, 1), "device": dev,
                 "gpu": torch.cuda.get_device_name() if dev == "cuda" else None, "dtype": "float16",
                 "text_sha1": hashlib.sha1("\x00".join(texts).encode()).hexdigest()})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = (16 * 2**20 - 1024) // (vecs.shape[1] * 2)
    for j, s in enumerate(range(0, len(vecs), rows)):
        np.save(out / f"emb_{i}_{j}.npy", vecs[s:s + rows])
    (out / f"emb_{i}.json").write_text(json.dumps(desc, indent=1))
    print(json.dumps(desc))


if __name__ == "__main__":
    main()
