"""Image and text embeddings in batches: a DataLoader decodes images in worker processes so the model never
waits on JPEG decoding; an unreadable image is skipped and reported, never the end of a long run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from ..util.modes import eval_mode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class Embedded(NamedTuple):
    embeddings: np.ndarray              # (N, D) float32, each row of unit length
    paths: list[str]                    # the N images embedded, in input order
    skipped: list[tuple[str, str]]      # (path, why) for each image that could not be read


def find_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files named as given; folders walked recursively for image suffixes (sorted, so runs repeat)."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(str(path))
        else:
            raise UserError(f"{item} does not exist: name image files or folders of images")
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}: "
                        f"name image files or folders that hold some")
    return found


class _Images(Dataset):
    """(index, pixels or None, why it failed) per path: a failure is data, so one bad file skips one image."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from ..data.base import load_image
        try:
            return i, self.transform(load_image(self.paths[i])), ""
        except Exception as e:   # PIL raises many types; the reason is reported with the path
            return i, None, " ".join(str(e).split()) or type(e).__name__


def _collate(batch):
    """Readable images stacked, unreadable ones listed (module level: worker processes pickle it)."""
    ok = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, why) for i, x, why in batch if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, bad


@torch.no_grad()
def embed_images(model: torch.nn.Module, paths: Sequence[str | os.PathLike], batch_size: int = 64,
                 workers: int = 2, progress: bool = False) -> Embedded:
    """Normalised float32 image embeddings of ``paths`` with ``model`` (its eval transform).

    ``workers`` decoding processes (0: decode in this process). Unreadable images are left out and listed
    in ``skipped``; ``paths`` of the result names the rows of ``embeddings``.
    """
    from ..data.transforms import image_transform
    paths = [str(p) for p in paths]
    device = next(model.parameters()).device
    loader = DataLoader(_Images(paths, image_transform(model.image_size)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate, persistent_workers=False)
    rows, kept, skipped = [], [], []
    from tqdm.auto import tqdm
    with eval_mode(model):      # nothing that reports on a model changes it: every module's mode comes back
        for idx, pixels, bad in tqdm(loader, desc="embed", unit="batch", disable=not progress, dynamic_ncols=True):
            skipped += [(paths[i], why) for i, why in bad]
            if pixels is None:
                continue
            rows.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
            kept += [paths[i] for i in idx]
    emb = torch.cat(rows).numpy() if rows else np.zeros((0, model.config.embed_dim), dtype=np.float32)
    return Embedded(np.ascontiguousarray(emb, dtype=np.float32), kept, skipped)


@torch.no_grad()
def embed_texts(model: torch.nn.Module, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Normalised float32 text embeddings, (len(texts), D)."""
    device = next(model.parameters()).device
    tokenizer = model.get_tokenizer()
    with eval_mode(model):
        rows = [model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device), normalize=True).float().cpu()
                for i in range(0, len(texts), batch_size)]
    return np.ascontiguousarray(torch.cat(rows).numpy(), dtype=np.float32)
