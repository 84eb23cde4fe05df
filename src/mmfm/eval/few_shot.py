"""Few-shot primitives: the k-shot draw and the episode a few-shot method is given.

An *episode* is one (k, seed) pair: draw k training examples per class with that seed, adapt a
classifier on them, measure accuracy on the whole test set. The methods and the evaluation that runs
them over shots and seeds are adaptation: :mod:`mmfm.adapt.fewshot` (``few_shot``, the method registry).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .features import FeatureSet


# ---------------------------------------------------------------------------------------------
# Episodes
@dataclass
class FewShotEpisode:
    """Everything a few-shot method may use. Feature attributes are computed on first access."""

    model: nn.Module
    train_dataset: Any
    test_dataset: Any
    train_indices: np.ndarray          # dataset indices of the k-shot training examples
    train_labels: np.ndarray           # their labels (same order)
    test_labels: np.ndarray            # labels of the whole test set (-1 = unlabelled, ignored)
    classnames: list[str]
    shots: int
    seed: int
    attribute: str | None = None
    templates: list[str] = field(default_factory=list)   # the task's prompt templates (zero-shot init)
    options: dict[str, Any] = field(default_factory=dict)
    # How the evaluation loads images, for methods that run the model themselves.
    device: torch.device | None = None
    transform: Callable | None = None
    batch_size: int = 64
    num_workers: int = 0
    _features: Callable[[str], FeatureSet] | None = None

    @property
    def train_features(self) -> np.ndarray:
        """Features of the k-shot training examples, ``[len(train_indices), D]``."""
        return self._features("train").features.numpy()[self.train_indices]

    @property
    def test_features(self) -> np.ndarray:
        return self._features("test").features.numpy()


FewShotMethod = Callable[[FewShotEpisode], Any]
"""``method(episode)`` returns test predictions ``[N_test]`` (class indices), or class scores
``[N_test, C]``, or a dict with ``"predictions"`` and optionally ``"extra"`` (recorded per episode)."""


def sample_k_shot(labels: np.ndarray, k: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of ``k`` examples of every class present in ``labels``, drawn without replacement.

    Deterministic given ``(labels, k, seed)``; a class with fewer than k examples contributes all of
    them. Unlabelled entries (-1) are never drawn. Indices come back sorted per class, classes in order.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[labels >= 0]) if num_classes is None else np.arange(num_classes)
    chosen = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) == 0:
            continue
        chosen.append(np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False)))
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def dataset_labels(dataset, attribute: str | None = None) -> np.ndarray | None:
    """Labels without decoding images, when the dataset can give them cheaply (it overrides
    ``get_label``); None when only a full pass could (then the feature pass provides them)."""
    from ..data.base import MultimodalDataset
    get_label = getattr(type(dataset), "get_label", None)
    if attribute is None and get_label is not None and get_label is not MultimodalDataset.get_label:
        return np.array([(-1 if (lab := dataset.get_label(i)) is None else int(lab)) for i in range(len(dataset))],
                        dtype=np.int64)
    return None
