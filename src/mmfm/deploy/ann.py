"""An approximate nearest-neighbour graph beside an index's embeddings, for large collections (``mmfm embed --ann``).

Exact search reads every row per query: ~4 ms at 100k 512-d rows and ~43 ms at 1M on this 2-core machine,
linear beyond. An HNSW graph (faiss ``IndexHNSWFlat``, M 32, inner product on the unit rows) with efSearch 256 (the
default) answered in 1.2 ms at 100k rows and 0.5 ms at 1M, recall@10 0.999 and 0.994 (efSearch 64: 0.3 / 0.2 ms,
recall 0.994 / 0.953; ``benchmarks/ann.py``, synthetic clustered rows): worth its build time (~20 s per 100k rows,
small next to embedding the images) and its memory (+~13% over the rows) once an index is large and queried often
(``mmfm serve``). Exact search stays the default for indexes without one, and ``--exact`` asks for it on any
index.

The graph file is derived from ``image_embeddings.npy`` and holds its own copy of the rows. It is trusted only
while it still describes them: kind, row count and width match meta.json, and a sample of its stored rows equals
the same rows of the .npy file (``load_ann``); otherwise the search refuses and says to rebuild. ``write_index``
deletes the graph of an earlier index written to the same folder unless it builds a new one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..util.atomic import atomic_write

ANN_FILE = "image_embeddings.hnsw"
_FOURCC = b"IHNf"            # faiss's tag for IndexHNSWFlat files
DEFAULT_M, DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH = 32, 80, 256


def require_faiss():
    """faiss, or one line saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UserError("an approximate index needs faiss: pip install 'mmfm[ann]' (faiss-cpu)") from None
    return faiss


def build_hnsw(embeddings: np.ndarray, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION):
    """A faiss HNSW graph over unit rows, searched by inner product (= cosine)."""
    faiss = require_faiss()
    graph = faiss.IndexHNSWFlat(int(embeddings.shape[1]), int(m), faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = int(ef_construction)
    graph.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return graph


def write_ann(root: str | os.PathLike, graph) -> dict:
    """Write a graph from ``build_hnsw`` into the index folder; returns meta.json's ``ann`` entry."""
    faiss = require_faiss()
    atomic_write(Path(root) / ANN_FILE, lambda tmp: faiss.write_index(graph, str(tmp)))
    return {"kind": "hnsw", "file": ANN_FILE, "m": int(graph.hnsw.nb_neighbors(1)),
            "ef_construction": int(graph.hnsw.efConstruction), "rows": int(graph.ntotal)}


def _max_bytes(rows: int, dim: int, m: int) -> int:
    # The rows, then per row its neighbour lists (2m on level 0, m per upper level: a few on average), its level
    # and offsets, plus headers: a generous bound that still stops a file that is not this graph being read.
    return rows * dim * 4 + rows * (8 * m + 64) * 4 + (1 << 20)


def load_ann(index, sample: int = 64):
    """The index's HNSW graph, checked against its embeddings; None when the index has none."""
    entry = index.meta.get("ann")
    if entry is None:
        return None
    root = Path(index.root)
    rebuild = "rebuild it with `mmfm embed ... --ann`, or search with --exact"
    if not isinstance(entry, dict) or entry.get("kind") != "hnsw" or entry.get("file") != ANN_FILE \
            or not isinstance(entry.get("m"), int) or not 2 <= entry["m"] <= 256:
        raise UserError(f"index {root}: meta.json's ann entry is not an HNSW graph mmfm wrote: {rebuild}")
    path = root / ANN_FILE
    rows, dim = index.image_embeddings.shape
    if not path.is_file():
        raise UserError(f"index {root}: {ANN_FILE} is missing: {rebuild}")
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    if head != _FOURCC or size > _max_bytes(rows, dim, entry["m"]):
        raise UserError(f"index {root}: {ANN_FILE} is not the HNSW graph of {rows} rows of {dim} it should be: {rebuild}")
    faiss = require_faiss()
    try:
        graph = faiss.read_index(str(path))
    except RuntimeError as e:
        raise UserError(f"index {root}: {ANN_FILE} cannot be read ({str(e).splitlines()[-1][:120]}): {rebuild}") from None
    if type(graph).__name__ != "IndexHNSWFlat" or graph.ntotal != rows or graph.d != dim \
            or graph.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise UserError(f"index {root}: {ANN_FILE} holds {graph.ntotal} rows of {graph.d}, meta.json says {rows} "
                        f"of {dim}: {rebuild}")
    # Its rows must be the index's rows (a graph left from other embeddings would find their neighbours).
    picks = np.unique(np.random.default_rng(rows).integers(0, rows, min(sample, rows)))
    if not all(np.array_equal(graph.reconstruct(int(i)), index.image_embeddings[i]) for i in picks):
        raise UserError(f"index {root}: {ANN_FILE} was built from other embeddings than image_embeddings.npy: {rebuild}")
    return graph


def unit_query(query: np.ndarray) -> np.ndarray:
    """The query as a float32 vector of length 1 (the rows are unit vectors: inner product = cosine)."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    return q / max(float(np.linalg.norm(q)), 1e-12)


def ann_search(graph, embeddings: np.ndarray, query: np.ndarray, top_k: int = 5,
               ef_search: int = DEFAULT_EF_SEARCH) -> list[tuple[int, float]]:
    """(row, cosine) of the ``top_k`` rows the graph finds for ``query``, best first (cosines exact for those rows)."""
    q = unit_query(query)
    k = min(top_k, len(embeddings))
    graph.hnsw.efSearch = max(int(ef_search), k)
    _, ids = graph.search(q[None], k)
    ids = [int(i) for i in ids[0] if i >= 0]
    scores = embeddings[ids] @ q
    order = sorted(range(len(ids)), key=lambda n: (-scores[n], ids[n]))
    return [(ids[n], float(scores[n])) for n in order]
