"""mmfm's data layer.

* :mod:`.base` - the common interface: :class:`Sample`,
  :class:`MultimodalDataset`, :class:`ZeroShotTask`.
* :mod:`.pipeline` - the model-ready view: :class:`ImageTextView`,
  :func:`collate_skip_none`, :func:`all_captions`.
* Embedded datasets (no download): :class:`Shapes` (synthetic, captioned),
  :class:`Digits` (scikit-learn handwritten digits).
* Your own data: :class:`CustomDataset` (folder + CSV/JSONL) and WebDataset
  shards (:func:`write_shards`, :class:`ShardDataset` to stream them for
  training, :class:`ShardFolder` to evaluate on them).

Datasets are also available by name through :func:`get_dataset`; other
modules add theirs with :func:`register_dataset`::

    from mmfm.data import get_dataset, register_dataset
    ds = get_dataset("shapes", split="val", size=500)
    register_dataset("cifar10", Cifar10)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .base import DEFAULT_TEMPLATES, ImageLoadError, MultimodalDataset, Sample, ZeroShotTask, load_image
from .custom import CustomDataset, custom_dataset
from .digits import Digits
from .pipeline import ImageTextView, SampleEncoder, all_captions, caption_rng, collate_skip_none
from .shapes import Shapes, questions
from .shapes_text import TextCorpus, shapes_text, text_file
from .shard_folder import ShardFolder
from .shards import ShardDataset, ShardImageTextView, WrittenShards, shards_from_folder, write_shards

__all__ = [
    "DEFAULT_TEMPLATES",
    "CustomDataset",
    "Digits",
    "ImageLoadError",
    "ImageTextView",
    "MultimodalDataset",
    "Sample",
    "SampleEncoder",
    "ShardDataset",
    "ShardFolder",
    "ShardImageTextView",
    "Shapes",
    "WrittenShards",
    "ZeroShotTask",
    "all_captions",
    "available_datasets",
    "caption_rng",
    "collate_skip_none",
    "get_dataset",
    "is_text_corpus",
    "load_image",
    "questions",
    "register_dataset",
    "shards_from_folder",
    "write_shards",
]

DatasetFactory = Callable[..., MultimodalDataset]

_REGISTRY: dict[str, DatasetFactory] = {
    "shapes": Shapes,
    "digits": Digits,
    "custom": custom_dataset,       # root, split, annotations (CustomDataset's other arguments)
    "shards": ShardFolder,          # root = the folder `mmfm shards` wrote, split
    "wds": ShardFolder,
    "shapes_text": shapes_text,     # text about shapes scenes, no images (a causal LM's corpus)
    "text_file": text_file,         # path: .txt (a document per line) or .jsonl ({"text": ...} per line)
}


# Registered names whose factory returns a TextCorpus (documents, no images): a causal LM's training data,
# not something an image-text evaluation can read.
_TEXT_CORPORA: set[str] = {name for name, factory in _REGISTRY.items() if factory in (shapes_text, text_file)}


def register_dataset(name: str, factory: DatasetFactory, *, overwrite: bool = False,
                     text_corpus: bool = False) -> None:
    """Make ``get_dataset(name, **kwargs)`` call ``factory(**kwargs)``.

    Names are case-insensitive.  Re-registering a name is an error unless
    ``overwrite=True`` (protects against two modules silently fighting over a
    name). ``text_corpus``: the factory returns a :class:`TextCorpus` (text only).
    """
    key = name.lower()
    if key in _REGISTRY and not overwrite and _REGISTRY[key] is not factory:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory
    (_TEXT_CORPORA.add if text_corpus else _TEXT_CORPORA.discard)(key)


def is_text_corpus(name: str) -> bool:
    """Whether the registered dataset ``name`` is a text corpus (documents without images)."""
    return name.lower() in _TEXT_CORPORA


def available_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset(name: str, **kwargs: Any) -> MultimodalDataset:
    """Build a registered dataset: ``get_dataset("shapes", split="val")``."""
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}") from None
    _check_arguments(name, factory, kwargs)
    return factory(**kwargs)


def _check_arguments(name: str, factory: DatasetFactory, kwargs: dict[str, Any]) -> None:
    """An argument the dataset does not take (``annotations`` for ``shapes``) is bad input, named as such,
    not a TypeError from deep inside the constructor."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        takes = [p for p in params if p not in ("self", "args", "kwargs")]
        raise ValueError(f"dataset {name!r} does not take {unknown} (it takes {takes})")


# The benchmark datasets (CIFAR, Food-101, Flowers-102, DTD, EuroSAT, Flickr30k, CC TSV) register
# themselves here so `get_dataset("cifar10", root=...)` works without importing mmfm.eval first.
from .benchmarks import register_benchmark_datasets as _register_benchmarks  # noqa: E402

_register_benchmarks()

# clip_benchmark's WebDataset exports by its names (`wds/vtab/eurosat`, `wds/cifar100`, ...): the data of
# open_clip's published tables.
from .clip_benchmark_wds import CLIP_BENCHMARK_WDS as _WDS_NAMES, clip_benchmark_wds as _wds  # noqa: E402

for _name in _WDS_NAMES:
    register_dataset(_name, _wds(_name))
