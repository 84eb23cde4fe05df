"""The one dataset interface every dataset in mmfm implements.

Every dataset (the embedded synthetic ones, custom folders, and later CIFAR,
Food-101, Flickr30k, ...) exposes raw :class:`Sample` objects through
:class:`MultimodalDataset`.  Everything model-specific (image transforms,
tokenisation, caption sampling, skipping broken files) lives in
:mod:`mmfm.data.pipeline`, so a dataset only has to answer two questions:
"how many samples?" and "what is sample *i*?".

Datasets also describe their label space (``classes``, ``attribute_classes``)
and how to talk about it (``templates``), which is all zero-shot evaluation
needs; see :meth:`MultimodalDataset.zero_shot_tasks`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch.utils.data

__all__ = [
    "DEFAULT_TEMPLATES",
    "ImageLoadError",
    "MultimodalDataset",
    "SPELLINGS",
    "Sample",
    "ZeroShotTask",
    "ZeroShotTasks",
    "load_image",
    "to_rgb",
]

#: Generic prompts used when a dataset does not define its own.
DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
]


@dataclass
class Sample:
    """One raw example: an RGB image plus whatever text and labels it has."""

    image: PIL.Image.Image
    """The image, always in RGB mode."""
    captions: list[str]
    """Zero or more captions.  Label-only datasets may have none; the pipeline
    then builds a caption from the dataset's templates and the class name."""
    label: int | None = None
    """Index into ``dataset.classes`` of the primary label, if any."""
    attributes: dict[str, int] = field(default_factory=dict)
    """Extra labels, each an index into ``dataset.attribute_classes[name]``."""


#: Words spelled one way in British and another in American English, in both directions. A name
#: (a zero-shot task, a word a word-level LM knows) may be given in either spelling.
SPELLINGS: dict[str, str] = {"color": "colour", "colors": "colours", "colored": "coloured", "gray": "grey",
                             "center": "centre", "centered": "centred"}
SPELLINGS |= {v: k for k, v in SPELLINGS.items()}


@dataclass(frozen=True)
class ZeroShotTask:
    """A zero-shot classification task: classify images into ``classnames``
    by comparing them with the text embeddings of the filled-in templates."""

    name: str
    classnames: list[str]
    templates: list[str]
    attribute: str | None = None
    """Which label the task predicts: ``None`` = the primary ``Sample.label``,
    otherwise the key in ``Sample.attributes``."""

    def prompts(self) -> list[list[str]]:
        """``prompts()[c]`` = every template filled with class ``c``'s name
        (the usual CLIP "prompt ensemble")."""
        return [[t.format(c) for t in self.templates] for c in self.classnames]

    def target(self, sample: Sample) -> int | None:
        """The ground-truth class index of ``sample`` for this task."""
        if self.attribute is None:
            return sample.label
        return sample.attributes.get(self.attribute)


class ZeroShotTasks(dict):
    """Zero-shot tasks by name, where a name also answers to its other spelling (``colour`` for ``color``)."""

    def _key(self, name):
        if isinstance(name, str) and not dict.__contains__(self, name):
            other = SPELLINGS.get(name.lower())
            if other is not None and dict.__contains__(self, other):
                return other
        return name

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, self._key(name))

    def __getitem__(self, name) -> ZeroShotTask:
        return dict.__getitem__(self, self._key(name))

    def get(self, name, default=None):
        return dict.get(self, self._key(name), default)


class ImageLoadError(OSError):
    """An image file exists but cannot be decoded (truncated, bad bytes...).

    It subclasses :class:`OSError` (like PIL's own ``UnidentifiedImageError``)
    so callers can catch every "this file is broken" case with one clause; the
    pipeline uses that to skip the sample instead of crashing the run.
    """


def load_image(path: str | Path) -> PIL.Image.Image:
    """Open an image file as a fully decoded RGB image.

    ``convert("RGB")`` forces PIL to decode all pixels now, so a truncated or
    corrupt file fails *here*, with the path in the message, rather than later
    inside some transform.  Every failure becomes :class:`ImageLoadError`.
    """
    try:
        with PIL.Image.open(path) as img:
            return to_rgb(img)
    except FileNotFoundError:
        raise  # a missing file is a configuration error, not a corrupt image
    except Exception as exc:  # PIL raises many types: OSError, SyntaxError, ValueError...
        raise ImageLoadError(f"cannot read image {str(path)!r}: {exc}") from exc


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale pixels of a 16-bit, 32-bit integer or float image mapped to 0..255.

    PIL's own ``convert`` clips them at 255 (16/32-bit images turn white) or truncates them
    (float images in 0..1 turn black). A mode says how wide its values are only for ``I;16``;
    ``I`` and ``F`` are containers, so their range is read from the values: integers up to 255
    or 65535 are taken as 8- or 16-bit data, floats in 0..1 or 0..255 as such, anything else
    is stretched from its minimum to its maximum.
    """
    x = np.nan_to_num(values.astype(np.float64))
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "I" and lo >= 0 and hi <= 255 or mode == "F" and lo >= 0 and 1 < hi <= 255:
        scale = 255.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scale = 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scale = 1.0
    else:  # out of every usual range: stretch
        x, scale = x - lo, max(hi - lo, 1e-12)
    return np.clip(np.rint(x * (255.0 / scale)), 0, 255).astype(np.uint8)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """A decoded RGB copy of ``image``, with 16-bit, 32-bit and float greyscale scaled to 8 bits.

    Always a copy, loaded now: a truncated file fails here, and the result outlives the open file.
    """
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = PIL.Image.fromarray(_to_8bit(np.asarray(image), image.mode))  # uint8 [H, W] -> mode L
        return grey.convert("RGB")
    return image.convert("RGB")


class MultimodalDataset(torch.utils.data.Dataset):
    """Base class of all mmfm datasets: a finite, indexable list of samples.

    Subclasses implement :meth:`__len__` and :meth:`get_sample`, and set the
    descriptive attributes below in ``__init__``.  Indices are interpreted by
    the dataset itself; ``get_sample(i)`` must be deterministic (the same index
    always gives the same sample) so runs are reproducible and resumable.
    """

    name: str = "dataset"
    label_name: str = "label"
    """Name of the primary zero-shot task (e.g. ``"shape"``, ``"digit"``)."""
    classes: list[str] | None = None
    """Class names of the primary label (``None`` for caption-only data)."""
    attribute_classes: dict[str, list[str]] = {}  # read-only default; subclasses assign their own
    """Class names per attribute in ``Sample.attributes``."""
    templates: list[str] = DEFAULT_TEMPLATES
    """Caption templates containing ``"{}"`` for the class name.  Used to
    caption samples that have no captions, and for zero-shot prompts."""
    attribute_templates: dict[str, list[str]] = {}
    """Optional per-attribute zero-shot templates (falls back to ``templates``)."""

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        raise NotImplementedError

    def get_sample(self, i: int) -> Sample:
        """Return raw sample ``i`` (``0 <= i < len(self)``)."""
        raise NotImplementedError

    def get_captions(self, i: int) -> list[str]:
        """The captions of sample ``i``.

        The default decodes the whole sample; datasets that can produce
        captions without touching the image override this, which makes
        building retrieval indices (:func:`mmfm.data.all_captions`) cheap.
        """
        return self.get_sample(i).captions

    def get_label(self, i: int) -> int | None:
        """The primary label of sample ``i`` (default: via :meth:`get_sample`;
        override when it is available without decoding the image)."""
        return self.get_sample(i).label

    def _check_index(self, i: int) -> int:
        """Normalise a (possibly negative) index, raising ``IndexError`` when
        out of range; Python's iteration protocol relies on that error."""
        n = len(self)
        if not isinstance(i, int):
            i = int(i)  # accept numpy / torch integer scalars
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} of size {n}")
        return i

    def __getitem__(self, i: int) -> Sample:
        return self.get_sample(self._check_index(i))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.get_sample(i)

    # -------------------------------------------------------------- captions
    def template_caption(self, label: int | None, rng: random.Random | None = None) -> str:
        """Make a caption for a sample that has none, from a template and the
        class name.  With ``rng`` the template is drawn at random, otherwise
        the first template is used (deterministic, for evaluation)."""
        if label is None or not self.classes or not self.templates:
            raise ValueError(
                f"{self.name}: a sample has neither captions nor a label, so no caption can be made"
            )
        template = rng.choice(self.templates) if rng is not None else self.templates[0]
        return template.format(self.classes[label])

    # ------------------------------------------------------------- zero-shot
    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        """Zero-shot tasks this dataset supports, by name.

        Default: one task for the primary label (named ``label_name``) using
        ``templates``, plus one per attribute, using
        ``attribute_templates[attr]`` when given, else ``templates``.
        """
        tasks = ZeroShotTasks()
        if self.classes:
            tasks[self.label_name] = ZeroShotTask(
                self.label_name, list(self.classes), list(self.templates), None
            )
        for attr, names in self.attribute_classes.items():
            if attr in tasks:  # the primary label may also be listed as an attribute
                continue
            templates = self.attribute_templates.get(attr, self.templates)
            tasks[attr] = ZeroShotTask(attr, list(names), list(templates), attr)
        return tasks

    def __repr__(self) -> str:
        n_classes = len(self.classes) if self.classes else 0
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, classes={n_classes})"
