"""Exact vs approximate nearest-neighbour search over an embedding index: does an approximate index earn its place?

``mmfm search`` ranks every row of an index by cosine (one matrix-vector product, then the top k). This measures
that against faiss (``pip install faiss-cpu``): its exact inner-product index, an IVF index (k-means cells,
``nprobe`` cells searched) and HNSW (a graph, ``efSearch`` candidates), at the same recall@10 measured against the
exact top 10. One query at a time (what ``mmfm search`` and ``mmfm serve`` answer), all threads of the machine.

The rows are synthetic unit vectors in clusters (``--clusters`` centres on the sphere; each row a centre plus
variation along 32 shared directions plus a little noise: cosine to its centre ~0.8), the queries fresh draws
from the same mixture: structured like an index of CLIP image embeddings (which need weights this machine
cannot download), but not one, so recall on real embeddings will differ; the speeds are what they are for any
float32 rows of this size.

    python benchmarks/ann.py --rows 100000 1000000 --json benchmarks/results/ann.json

Runtime: ~15 min on 2 cores (HNSW's build dominates: it runs at the smaller size only unless --hnsw-rows).
Expected: exact search is memory-bound, ~linear in rows; at 1M rows IVF answers in a few ms at recall >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmfm.deploy.search import search  # noqa: E402


def clustered(n: int, dim: int, clusters: int, seed: int, intrinsic: int = 32, spread: float = 0.8,
              noise: float = 0.1) -> np.ndarray:
    """``n`` unit rows: a cluster centre, plus variation along ``intrinsic`` shared directions (embeddings vary
    along few directions), plus a little isotropic noise. The centres and directions depend on ``seed`` only
    through the first generator, so rows and queries drawn with other ``seed``s share them."""
    shared = np.random.default_rng(12345)
    centres = shared.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(shared.standard_normal((dim, intrinsic)))[0].T.astype(np.float32)   # intrinsic x dim
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):   # in pieces: no n x dim float64 temporaries
        m = min(65536, n - start)
        z = (spread / np.sqrt(intrinsic)) * rng.standard_normal((m, intrinsic)).astype(np.float32)
        x = centres[rng.integers(0, clusters, m)] + z @ basis
        x += (noise / np.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_queries(fn, queries: np.ndarray, k: int) -> tuple[float, list[np.ndarray]]:
    """Median seconds per single query, and each query's top-k row ids."""
    fn(queries[0], k)   # warm-up
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(np.asarray(fn(q, k)))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), ids


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def measure(rows: int, args, rng: np.random.Generator) -> list[dict]:
    import faiss
    dim, k = args.dim, args.k
    x = clustered(rows, dim, args.clusters, args.seed)
    queries = clustered(args.queries, dim, args.clusters, args.seed + 1)
    out = []

    def row(engine: str, setting: str, build_s: float, index_bytes: int, fn):
        per_query, ids = timed_queries(fn, queries, k)
        r = {"rows": rows, "engine": engine, "setting": setting, "build_s": build_s, "index_mb": index_bytes / 2**20,
             "ms_per_query": 1e3 * per_query, "recall_at_10": recall(ids, truth)}
        out.append(r)
        print(f"| {rows:,} | {engine} | {setting} | {build_s:.1f} | {r['index_mb']:.0f} | {r['ms_per_query']:.2f} | "
              f"{r['recall_at_10']:.3f} |", flush=True)

    def mmfm_exact(q, k):
        return [i for i, _ in search(x, q, k)]
    truth = [np.asarray(mmfm_exact(q, k)) for q in queries]
    row("mmfm search (exact)", "-", 0.0, x.nbytes, mmfm_exact)

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    row("faiss IndexFlatIP (exact)", "-", time.perf_counter() - t, x.nbytes, lambda q, k: flat.search(q[None], k)[1][0])

    if args.exact_only:
        return out
    nlist = args.nlist or int(4 * np.sqrt(rows))
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train = x[rng.choice(rows, min(rows, 64 * nlist), replace=False)]
    ivf.train(train)
    ivf.add(x)
    build = time.perf_counter() - t
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        row("faiss IVFFlat", f"nlist {nlist}, nprobe {nprobe}", build, x.nbytes + nlist * dim * 4,
            lambda q, k: ivf.search(q[None], k)[1][0])
    del ivf

    if rows <= args.hnsw_rows:
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(x)
        build = time.perf_counter() - t
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            row("faiss HNSWFlat", f"M {args.hnsw_m}, efSearch {ef}", build, x.nbytes + rows * args.hnsw_m * 2 * 4,
                lambda q, k: hnsw.search(q[None], k)[1][0])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4 sqrt(rows))")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--hnsw-rows", type=int, default=100_000, help="build HNSW only up to this many rows (slow)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--exact-only", action="store_true", help="only the two exact lines")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import faiss
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, {args.queries} "
          f"single queries, top {args.k}; recall@10 against mmfm's exact top 10")
    print("| rows | engine | setting | build s | index MiB | ms/query (median) | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    results = [r for n in args.rows for r in measure(n, args, rng)]
    if args.json:
        Path(args.json).write_text(json.dumps({"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
                                               "args": vars(args), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
