"""The training / evaluation view of a dataset: raw samples -> model tensors.

:class:`ImageTextView` wraps any :class:`~mmfm.data.base.MultimodalDataset`
and turns each :class:`~mmfm.data.base.Sample` into a dict of tensors::

    {"image": FloatTensor[3, H, W], "text": LongTensor[ctx], "label": int, "index": int}

Three properties matter for training and are handled here, once, for every
dataset:

* **Reproducible caption sampling.**  An image with several captions gets one
  of them per epoch, drawn from ``(seed, epoch, index)`` rather than from the
  global RNG, so a resumed run (or another worker layout) sees exactly the
  same captions.
* **Robustness.**  A corrupt image must not kill a long run: the view returns
  ``None`` for it and :func:`collate_skip_none` drops it from the batch and
  reports how many were dropped in ``batch["n_skipped"]``.  Counting in the
  batch (rather than in the dataset object) works with DataLoader workers,
  which run on copies of the dataset.
* **Label-only data.**  A sample without captions gets one made from the
  dataset's templates and its class name.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import PIL.Image
import torch
from torch.utils.data import default_collate

from .base import MultimodalDataset, Sample, ZeroShotTask

__all__ = [
    "CaptionMode",
    "ImageTextView",
    "SampleEncoder",
    "all_captions",
    "caption_rng",
    "collate_skip_none",
]

logger = logging.getLogger(__name__)

CaptionMode = Literal["random", "first", "all"]
Tokenizer = Callable[[list[str]], torch.Tensor]
ImageTransform = Callable[[PIL.Image.Image], torch.Tensor]


def caption_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A private RNG determined only by ``(seed, epoch, index)``.

    Seeding ``random.Random`` with a string hashes it with SHA-512, which is
    stable across processes and Python runs (unlike ``hash()``), and the three
    numbers never collide with each other thanks to the separators.
    """
    return random.Random(f"mmfm-caption/{seed}/{epoch}/{index}")


def _default_transform(image: PIL.Image.Image) -> torch.Tensor:
    from torchvision.transforms.functional import to_tensor  # lazy: torchvision import is slow

    return to_tensor(image)


class SampleEncoder:
    """Turns one raw :class:`Sample` into the model-ready dict.

    Shared by :class:`ImageTextView` (map-style datasets) and the WebDataset
    reader in :mod:`mmfm.data.shards`, so both produce identical items.
    ``classes``/``templates`` are only needed to caption label-only samples.
    """

    def __init__(
        self,
        image_transform: ImageTransform | None,
        tokenizer: Tokenizer | None,
        caption_mode: CaptionMode = "random",
        seed: int = 0,
        classes: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        return_attributes: bool = False,
    ) -> None:
        if caption_mode not in ("random", "first", "all"):
            raise ValueError(f"caption_mode must be 'random', 'first' or 'all', got {caption_mode!r}")
        self.image_transform = image_transform or _default_transform
        self.tokenizer = tokenizer
        self.caption_mode = caption_mode
        self.seed = seed
        self.classes = list(classes) if classes else None
        self.templates = list(templates) if templates else None
        self.return_attributes = return_attributes

    def captions_for(self, sample: Sample, index: int, epoch: int) -> list[str]:
        """The caption(s) used for ``sample``: one for "random"/"first", all
        for "all".  Captionless samples get a template caption."""
        captions = [c for c in sample.captions if c]
        mode = self.caption_mode
        if not captions:
            if sample.label is None or not self.classes or not self.templates:
                raise ValueError(
                    f"sample {index} has neither captions nor a label; cannot make a caption"
                )
            name = self.classes[sample.label]
            if mode == "random":
                return [caption_rng(self.seed, epoch, index).choice(self.templates).format(name)]
            # deterministic evaluation captions: the first template, like all_captions()
            return [self.templates[0].format(name)]
        if mode == "random":
            return [caption_rng(self.seed, epoch, index).choice(captions)]
        if mode == "first":
            return captions[:1]
        return captions

    def tokenize(self, captions: list[str]) -> torch.Tensor | list[str]:
        if self.tokenizer is None:  # raw text, e.g. for generative models with their own tokenizer
            return captions
        return torch.as_tensor(self.tokenizer(captions), dtype=torch.long)

    def __call__(self, sample: Sample, index: int, epoch: int = 0) -> dict[str, Any]:
        captions = self.captions_for(sample, index, epoch)
        text = self.tokenize(captions)
        if self.caption_mode != "all":
            text = text[0]  # [ctx] (or a single string without tokenizer)
        item: dict[str, Any] = {
            "image": self.image_transform(sample.image),
            "text": text,
            "label": -1 if sample.label is None else int(sample.label),
            "index": int(index),
        }
        if self.return_attributes:
            item["attributes"] = {k: int(v) for k, v in sample.attributes.items()}
        return item


class ImageTextView(torch.utils.data.Dataset):
    """Map-style torch dataset of model-ready items built from a
    :class:`MultimodalDataset`.

    Args:
        dataset: the raw dataset.
        image_transform: PIL image -> FloatTensor[3, H, W] (torchvision
            transforms); ``None`` means plain ``to_tensor``.
        tokenizer: ``tokenizer(list[str]) -> LongTensor[N, ctx]``; ``None``
            keeps raw strings in ``item["text"]``.
        caption_mode: ``"random"`` (training: one caption drawn from
            ``(seed, epoch, index)``), ``"first"`` (deterministic evaluation)
            or ``"all"`` (retrieval: ``text`` is ``LongTensor[n_captions, ctx]``).
        seed: seed of the caption draw.
        return_attributes: also return ``item["attributes"]`` (attribute name
            -> class index), e.g. for attribute zero-shot evaluation.

    Items are ``None`` when the image cannot be decoded; use
    :func:`collate_skip_none` as the DataLoader's ``collate_fn``.

    Note: :meth:`set_epoch` changes this object; DataLoader workers see it as
    long as they are re-created each epoch (the default,
    ``persistent_workers=False``).
    """

    def __init__(
        self,
        dataset: MultimodalDataset,
        image_transform: ImageTransform | None,
        tokenizer: Tokenizer | None,
        caption_mode: CaptionMode = "random",
        seed: int = 0,
        return_attributes: bool = False,
    ) -> None:
        self.dataset = dataset
        self.encoder = SampleEncoder(
            image_transform,
            tokenizer,
            caption_mode=caption_mode,
            seed=seed,
            classes=dataset.classes,
            templates=dataset.templates,
            return_attributes=return_attributes,
        )
        self.epoch = 0

    @property
    def caption_mode(self) -> CaptionMode:
        return self.encoder.caption_mode

    @property
    def seed(self) -> int:
        return self.encoder.seed

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose caption draw ``__getitem__`` uses."""
        self.epoch = int(epoch)

    @property
    def classes(self) -> list[str] | None:
        return self.dataset.classes

    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        return self.dataset.zero_shot_tasks()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        index = int(index)
        try:
            # The transform is inside the try too: datasets that hand out
            # lazily-decoded PIL images only hit the bad bytes there.
            return self.encoder(self.dataset[index], index, self.epoch)
        except OSError as exc:  # ImageLoadError, PIL.UnidentifiedImageError, truncated files...
            # Skipping beats crashing an hours-long run on one bad file; the
            # warning names the file and collate_skip_none counts the skip.
            logger.warning("skipping sample %d of %s: %s", index, self.dataset.name, exc)
            return None


def collate_skip_none(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` that drops skipped (``None``) items.

    Returns the usual stacked batch plus ``batch["n_skipped"]`` (an ``int``,
    the number of dropped items).  ``"all"``-mode items, whose captions differ
    in number, are concatenated: ``text`` is ``LongTensor[total_captions, ctx]``
    and ``caption_image_index[k]`` is the dataset index of caption ``k``'s image.

    If every item was skipped, the batch holds empty tensors; check
    ``batch["index"].numel() == 0`` before using it.
    """
    items = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(items)
    if not items:
        return {
            "image": torch.empty(0),
            "text": torch.empty(0, dtype=torch.long),
            "label": torch.empty(0, dtype=torch.long),
            "index": torch.empty(0, dtype=torch.long),
            "n_skipped": n_skipped,
        }
    texts = [it["text"] for it in items]
    multi = (isinstance(texts[0], torch.Tensor) and texts[0].dim() == 2) or isinstance(texts[0], list)
    if multi:  # caption_mode == "all": variable number of captions per image
        rest = default_collate([{k: v for k, v in it.items() if k != "text"} for it in items])
        if isinstance(texts[0], list):
            rest["text"] = [c for t in texts for c in t]
        else:
            rest["text"] = torch.cat(texts, dim=0)
        rest["caption_image_index"] = torch.tensor(
            [it["index"] for it, t in zip(items, texts, strict=True) for _ in range(len(t))], dtype=torch.long
        )
        out = rest
    else:
        out = default_collate(items)
    out["n_skipped"] = n_skipped
    return out


def all_captions(dataset: MultimodalDataset) -> tuple[list[str], list[int]]:
    """Every caption of ``dataset`` for text-to-image / image-to-text retrieval.

    Returns ``(captions, image_index)`` where ``image_index[k]`` is the dataset
    index of the image caption ``k`` describes.  A sample without captions
    contributes one caption built from the first template (the same caption
    ``caption_mode="first"``/``"all"`` uses).  Uses ``dataset.get_captions``,
    which most datasets answer without decoding images.
    """
    captions: list[str] = []
    image_index: list[int] = []
    for i in range(len(dataset)):
        caps = [c for c in dataset.get_captions(i) if c]
        if not caps:
            caps = [dataset.template_caption(dataset.get_label(i))]
        captions.extend(caps)
        image_index.extend([i] * len(caps))
    return captions, image_index
