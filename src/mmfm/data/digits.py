"""Digits: scikit-learn's bundled handwritten digits as a captioned dataset.

1,797 real 8x8 greyscale scans of handwritten digits ship with scikit-learn
(``sklearn.datasets.load_digits``), so this is real data with no download.
Images are upsampled to ``image_size`` and converted to RGB; each image gets
captions made from templates ("a handwritten digit 7.", "an image of the
digit seven.").  The split is a fixed, stratified 70/10/20 partition chosen
by ``seed``, so every class has the same share in every split and the splits
never overlap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import PIL.Image

from .base import MultimodalDataset, Sample

__all__ = ["DIGIT_NAMES", "Digits", "digit_split_indices"]

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Caption phrasings: {name} = number word, {digit} = numeral.  Every sample
# gets all of them; the pipeline samples one per epoch.
_CAPTION_TEMPLATES = (
    "a photo of the number {name}.",
    "a handwritten digit {digit}.",
    "an image of the digit {name}.",
    "the number {digit}, written by hand.",
    "a blurry handwritten {name}.",
)

_SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8] scaled to 0..255, targets int [N]); cached
    because load_digits parses a CSV each call.  sklearn is imported lazily
    because it takes about a second."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # pixel range 0..16
    return images, bunch.target.astype(np.int64)


def digit_split_indices(
    split: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> np.ndarray:
    """Indices into ``load_digits()`` of ``split``, stratified by class.

    Each class is shuffled with ``seed`` and cut into consecutive
    train/val/test blocks of the given fractions, so the three splits are
    disjoint, together cover every image, and keep the class balance.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    _, targets = _load_raw()
    rng = np.random.default_rng(seed)
    which = _SPLITS.index(split)
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        bounds = np.rint(np.cumsum([0.0, *fractions]) * len(idx)).astype(int)
        chosen.append(idx[bounds[which] : bounds[which + 1]])
    return np.sort(np.concatenate(chosen))


class Digits(MultimodalDataset):
    """Handwritten digits 0-9 (scikit-learn), upsampled RGB, with captions.

    Args:
        split: ``"train"`` (70%), ``"val"`` (10%) or ``"test"`` (20%).
        image_size: output side in pixels (upsampled from 8x8).
        seed: seed of the stratified split.
        resample: PIL filter used to upsample (bicubic keeps strokes smooth).
        fractions: train/val/test fractions.
    """

    name = "digits"
    label_name = "digit"

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        seed: int = 0,
        resample: int = PIL.Image.Resampling.BICUBIC,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
    ) -> None:
        self.split = split
        self.image_size = image_size
        self.seed = seed
        self.resample = resample
        self.indices = digit_split_indices(split, seed, fractions)
        self._images, self._targets = _load_raw()
        self.classes = list(DIGIT_NAMES)
        self.attribute_classes = {}
        self.templates = [
            "a photo of the number {}.",
            "a handwritten digit {}.",
            "an image of the digit {}.",
        ]

    def __len__(self) -> int:
        return len(self.indices)

    def get_label(self, i: int) -> int:
        return int(self._targets[self.indices[i]])

    def get_captions(self, i: int) -> list[str]:
        label = self.get_label(i)
        return [t.format(name=DIGIT_NAMES[label], digit=label) for t in _CAPTION_TEMPLATES]

    def get_sample(self, i: int) -> Sample:
        j = self.indices[i]
        grey = PIL.Image.fromarray(self._images[j])  # uint8 2-D -> mode "L"
        if self.image_size != 8:
            grey = grey.resize((self.image_size, self.image_size), self.resample)
        return Sample(image=grey.convert("RGB"), captions=self.get_captions(i), label=self.get_label(i))

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, size={len(self)}, image_size={self.image_size}, seed={self.seed})"
