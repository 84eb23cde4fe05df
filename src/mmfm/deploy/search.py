"""Exact top-k search by cosine: the index's rows are unit vectors, so one matrix-vector product ranks them all
(a million 512-d rows, 2 GB of float32: ~43 ms a query here). Large indexes queried often can carry an approximate
graph as well (:mod:`mmfm.deploy.ann`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..util.atomic import atomic_write
from .ann import DEFAULT_EF_SEARCH, ann_search, unit_query


def search(embeddings: np.ndarray, query: np.ndarray, top_k: int = 5) -> list[tuple[int, float]]:
    """(row, cosine) of the ``top_k`` rows most similar to ``query``, best first; ties keep row order."""
    scores = embeddings @ unit_query(query)
    n = len(scores)
    k = min(top_k, n)
    if k <= 0:
        return []
    scores = np.where(np.isnan(scores), -np.inf, scores)   # a damaged row never ranks
    # The k-th best score by selection (linear), not a sort of every row; rows tied with it keep row order.
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    picked = np.concatenate([above, np.flatnonzero(scores == kth)[:k - len(above)]])
    top = picked[np.lexsort((picked, -scores[picked]))]
    return [(int(i), float(scores[i])) for i in top]


def contact_sheet(hits: list[dict], out: str | os.PathLike, thumb: int = 160, columns: int = 5) -> Path:
    """A PNG grid of the hits' images, each captioned with its rank and cosine (``hits``: dicts with path, score)."""
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageOps

    from ..data.base import load_image
    caption = 16
    cols = max(1, min(columns, len(hits)))
    rows = max(1, -(-len(hits) // cols))
    sheet = PIL.Image.new("RGB", (cols * thumb, rows * (thumb + caption)), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for n, hit in enumerate(hits):
        x, y = (n % cols) * thumb, (n // cols) * (thumb + caption)
        try:
            # contain() also enlarges: a 64-pixel image fills its cell instead of a corner of it.
            img = PIL.ImageOps.contain(load_image(hit["path"]), (thumb - 4, thumb - 4))   # 4 px between cells
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except OSError:   # moved or deleted since it was embedded: an empty cell says so
            draw.text((x + 4, y + thumb // 2), "(unreadable)", fill="red")
        draw.text((x + 4, y + thumb + 2), f"{n + 1}. {hit['score']:.3f} {Path(hit['path']).name}"[:thumb // 6],
                  fill="black")
    out = Path(out)
    atomic_write(out, lambda p: sheet.save(p, format="PNG"))
    return out


def search_index(index, query: np.ndarray, top_k: int = 5, graph=None, ef_search: int | None = None) \
        -> tuple[list[tuple[int, float]], str]:
    """Search an index's image rows: through its approximate graph when one is given (``ann.load_ann``), else
    exactly. Returns the hits and how they were found ("exact" or "hnsw, efSearch N")."""
    if graph is None:
        return search(index.image_embeddings, query, top_k), "exact"
    ef = ef_search or DEFAULT_EF_SEARCH
    return ann_search(graph, index.image_embeddings, query, top_k, ef), f"hnsw, efSearch {max(ef, top_k)}"
