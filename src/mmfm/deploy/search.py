"""Exact top-k search by cosine: the index's rows are unit vectors, so one matrix-vector product ranks them all
(for a million 512-d rows that is 2 GB of float32 and well under a second; no approximate index needed here)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..util.atomic import atomic_write


def search(embeddings: np.ndarray, query: np.ndarray, top_k: int = 5) -> list[tuple[int, float]]:
    """(row, cosine) of the ``top_k`` rows most similar to ``query``, best first; ties keep row order."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = embeddings @ q
    k = min(top_k, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
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
