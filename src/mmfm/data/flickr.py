"""Captioned image datasets for retrieval: Flickr30k (Karpathy split) and Conceptual Captions (TSV).

Flickr30k layout (``root``)::

    dataset_flickr30k.json      Karpathy's split file: {"images": [{"filename", "split", "sentences": [{"raw"}, ...]}]}
    flickr30k-images/<filename> the official image archive, extracted

The Karpathy split has 29,000 train / 1,014 val / 1,000 test images with 5 captions each; the
CLIP paper's Flickr30k retrieval numbers are on its 1,000 test images. Flickr30k cannot be
downloaded automatically (the images need a request form), so ``download=True`` is an error that says
so. The same reader accepts Karpathy's COCO file (entries with a ``filepath`` sub-folder).

Conceptual Captions: a TSV of (caption, image) rows, the way CC3M is distributed
(``Train_GCC-training.tsv``: caption TAB url, no header) or as produced by download tools
(with a header naming the columns, and a local path instead of the URL). WebDataset shards are
handled by :mod:`mmfm.data.shards`.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from .base import MultimodalDataset, Sample, load_image

__all__ = ["Flickr30k", "ConceptualCaptionsTSV", "flickr30k", "cc3m_tsv"]

_FLICKR_IMAGE_DIRS = ("flickr30k-images", "flickr30k_images", "images", ".")


class Flickr30k(MultimodalDataset):
    """Images and their captions from a Karpathy-style split file.

    Args:
        root: folder holding ``dataset_flickr30k.json`` and the images.
        split: ``"train"``, ``"val"``, ``"test"`` (Karpathy's ``"restval"`` counts as train for COCO).
        annotations: the split file, if not ``<root>/dataset_flickr30k.json``.
        images_dir: the image folder, if not one of ``<root>/flickr30k-images``, ``flickr30k_images``,
            ``images`` or ``root`` itself (the first that exists).
        max_captions: keep at most this many captions per image (Flickr30k has 5; a handful have more in COCO).
    """

    name = "flickr30k"

    def __init__(self, root: str | Path, split: str = "test", annotations: str | Path | None = None,
                 images_dir: str | Path | None = None, max_captions: int | None = None, download: bool = False):
        if download:
            raise ValueError("Flickr30k cannot be downloaded automatically: request the images at "
                             "https://shannon.cs.illinois.edu/DenotationGraph/ and get Karpathy's "
                             "dataset_flickr30k.json, then point root at them")
        if split not in ("train", "val", "test"):
            raise ValueError(f"flickr30k: split must be 'train', 'val' or 'test', got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.annotations = Path(annotations).expanduser() if annotations else self.root / "dataset_flickr30k.json"
        if not self.annotations.is_file():
            raise FileNotFoundError(
                f"flickr30k: Karpathy split file {self.annotations} not found (expected "
                f"<root>/dataset_flickr30k.json and images in <root>/flickr30k-images/)")
        if images_dir is not None:
            self.images_dir = Path(images_dir).expanduser()
        else:
            found = [self.root / d for d in _FLICKR_IMAGE_DIRS if (self.root / d).is_dir()]
            self.images_dir = found[0] if found else self.root / _FLICKR_IMAGE_DIRS[0]
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"flickr30k: image folder {self.images_dir} not found (expected the "
                                    f"extracted flickr30k-images archive under {self.root})")
        entries = json.loads(self.annotations.read_text())["images"]
        wanted = {"train": ("train", "restval")}.get(split, (split,))
        self.items: list[tuple[str, list[str]]] = []
        for e in entries:
            if e.get("split") not in wanted:
                continue
            rel = str(Path(e["filepath"]) / e["filename"]) if e.get("filepath") else e["filename"]
            caps = [s["raw"].strip() for s in e.get("sentences", []) if s.get("raw", "").strip()]
            self.items.append((rel, caps[:max_captions] if max_captions else caps))
        self.classes = None
        self.attribute_classes = {}

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, i: int) -> Path:
        return self.images_dir / self.items[i][0]

    def get_captions(self, i: int) -> list[str]:
        return list(self.items[self._check_index(i)][1])

    def get_label(self, i: int) -> None:
        return None

    def get_sample(self, i: int) -> Sample:
        return Sample(image=load_image(self.image_path(i)), captions=list(self.items[i][1]))

    def cache_key(self) -> str:
        return f"{self.name}|{self.split}|{self.annotations.resolve()}|{self.images_dir.resolve()}|{len(self)}"

    def __repr__(self) -> str:
        return f"Flickr30k(split={self.split!r}, root={str(self.root)!r}, images={len(self)})"


def flickr30k(root: str | Path, split: str = "test", **kw) -> Flickr30k:
    return Flickr30k(root, split=split, **kw)


# ---------------------------------------------------------------------------------------------
_CAPTION_NAMES = ("caption", "captions", "text", "title")
_PATH_NAMES = ("url", "image", "image_path", "path", "filepath", "file", "filename", "img")


class ConceptualCaptionsTSV(MultimodalDataset):
    """Conceptual Captions (or any caption/image TSV) with images stored locally.

    Args:
        tsv: the TSV file.
        image_root: folder that relative image paths (and URL-derived names) are resolved against;
            default the TSV's folder.
        caption_col / path_col: column names (with a header) or indices (default 0 and 1: CC3M's
            ``caption TAB url``).
        header: ``True``/``False``, or ``None`` to detect it (first row names a known column).
        url_to_path: how a URL row finds its local file: ``url_to_path(url, row) -> relative path``.
            Default: the URL's last path component (what ``wget`` would save it as). Rows that are
            not URLs are local paths already.
        skip_missing: drop rows whose image file does not exist (a web crawl always has dead links;
            the number dropped is ``num_missing``). With False, a missing file fails when read.
    """

    name = "cc3m_tsv"

    def __init__(self, tsv: str | Path, image_root: str | Path | None = None, caption_col: int | str = 0,
                 path_col: int | str = 1, header: bool | None = None,
                 url_to_path: Callable[[str, int], str] | None = None, skip_missing: bool = True,
                 split: str = "val"):
        self.tsv = Path(tsv).expanduser()
        if not self.tsv.is_file():
            raise FileNotFoundError(f"cc3m_tsv: caption file {self.tsv} not found")
        self.image_root = Path(image_root).expanduser() if image_root is not None else self.tsv.parent
        self.split = split
        with self.tsv.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        rows = [r for r in rows if r]
        if header is None:
            header = bool(rows) and any(c.strip().lower() in _CAPTION_NAMES + _PATH_NAMES for c in rows[0])
        names = [c.strip().lower() for c in rows[0]] if header and rows else []
        body = rows[1:] if header else rows
        ci, pi = self._column(caption_col, names), self._column(path_col, names)
        self.items: list[tuple[Path, str]] = []
        self.num_missing = 0
        for row_index, row in enumerate(body):
            if len(row) <= max(ci, pi):
                raise ValueError(f"{self.tsv}: row {row_index + 1 + bool(header)} has {len(row)} columns, "
                                 f"expected at least {max(ci, pi) + 1}")
            path = self._local_path(row[pi].strip(), row_index, url_to_path)
            if skip_missing and not path.is_file():
                self.num_missing += 1
                continue
            self.items.append((path, row[ci].strip()))
        self.classes = None
        self.attribute_classes = {}

    @staticmethod
    def _column(col: int | str, names: Sequence[str]) -> int:
        if isinstance(col, int):
            return col
        if col.lower() not in names:
            raise ValueError(f"column {col!r} not in the TSV header {list(names)}")
        return list(names).index(col.lower())

    def _local_path(self, value: str, row_index: int, url_to_path) -> Path:
        if urlparse(value).scheme in ("http", "https"):
            rel = url_to_path(value, row_index) if url_to_path else Path(urlparse(value).path).name
            return self.image_root / rel
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.image_root / p

    def __len__(self) -> int:
        return len(self.items)

    def get_captions(self, i: int) -> list[str]:
        return [self.items[self._check_index(i)][1]]

    def get_label(self, i: int) -> None:
        return None

    def get_sample(self, i: int) -> Sample:
        path, caption = self.items[i]
        return Sample(image=load_image(path), captions=[caption])

    def cache_key(self) -> str:
        return f"{self.name}|{self.tsv.resolve()}|{self.image_root.resolve()}|{len(self)}"

    def __repr__(self) -> str:
        return f"ConceptualCaptionsTSV(tsv={str(self.tsv)!r}, images={len(self)}, missing={self.num_missing})"


_CC_TSV_NAMES = {"train": ("train.tsv", "cc3m_train.tsv", "Train_GCC-training.tsv"),
                 "val": ("val.tsv", "cc3m_val.tsv", "Validation_GCC-1.1.0-Validation.tsv")}


def cc3m_tsv(root: str | Path | None = None, split: str = "val", tsv: str | Path | None = None,
             image_root: str | Path | None = None, **kw) -> ConceptualCaptionsTSV:
    """Factory for ``get_dataset("cc3m_tsv", root=..., split=...)``: finds the TSV in ``root``
    (``<split>.tsv``, ``cc3m_<split>.tsv`` or CC3M's official file name) unless ``tsv`` is given, and
    takes images from ``<root>/images`` when that folder exists, else from ``root``."""
    if tsv is None:
        if root is None:
            raise ValueError("cc3m_tsv needs root (a folder with the TSV) or tsv (the file)")
        root = Path(root).expanduser()
        candidates = [root / n for n in _CC_TSV_NAMES.get(split, (f"{split}.tsv",))]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"cc3m_tsv: no caption TSV for split {split!r} in {root}; expected one of "
                                    + ", ".join(str(c) for c in candidates))
        tsv = found[0]
    if image_root is None and root is not None:
        images = Path(root).expanduser() / "images"
        image_root = images if images.is_dir() else Path(root).expanduser()
    return ConceptualCaptionsTSV(tsv, image_root=image_root, split=split, **kw)
