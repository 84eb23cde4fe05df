"""What the few-shot adaptation methods share: the frozen CLIP's normalised image embeddings of an
episode, its zero-shot text classifier, a CoOp-style few-shot validation draw, and one small training loop.

Every method here keeps the CLIP model itself untouched: it reads frozen features (or, for CoOp, runs the
frozen text tower) and trains only its own few parameters. Image embeddings are computed once per dataset
and cached by ``mmfm.eval``'s feature cache, so 5 shot counts x 3 seeds x several methods cost one pass;
the papers' random-crop augmentation of the few-shot images is therefore left out (a documented deviation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ...eval.features import FeatureSet, extract_image_features
from ...eval.few_shot import sample_k_shot
from ...eval.zero_shot import build_zero_shot_classifier

#: CLIP's logit scale as the adapter papers write their formulas: OpenAI's CLIP learns exp(s) = 100.
CLIP_SCALE = 100.0


def clip_scale(model) -> float:
    """The temperature of "CLIP's logits" in the papers' formulas: the model's own learned scale (100 for
    OpenAI's weights, where it equals the papers' constant), so a small CLIP trained here is not
    over-confident by the ratio of 100 to its own scale."""
    return float(model.scale().detach()) if hasattr(model, "scale") else CLIP_SCALE


@dataclass
class EpisodeFeatures:
    train: torch.Tensor          # [N_train, D] normalised embeddings of the k-shot images
    train_labels: torch.Tensor   # [N_train]
    val: torch.Tensor            # [N_val, D] a disjoint few-shot validation draw (min(k, 4) per class)
    val_labels: torch.Tensor
    test: torch.Tensor           # [N_test, D]
    classifier: torch.Tensor     # [D, C] zero-shot text classifier (unit columns)


def _embeddings(episode, dataset) -> FeatureSet:
    return extract_image_features(episode.model, dataset, kind="embedding", attribute=episode.attribute,
                                  batch_size=episode.batch_size, num_workers=episode.num_workers,
                                  device=episode.device, transform=episode.transform, progress=False)


def validation_indices(labels: np.ndarray, exclude: np.ndarray, k: int, seed: int) -> np.ndarray:
    """CoOp's few-shot validation set: ``min(k, 4)`` examples per class, drawn with the episode's seed from
    the training split without the k-shot training examples."""
    masked = labels.copy()
    masked[exclude] = -1
    return sample_k_shot(masked, min(k, 4), seed + 10_000)


def episode_features(episode) -> EpisodeFeatures:
    train_all = _embeddings(episode, episode.train_dataset)
    test = _embeddings(episode, episode.test_dataset)
    labels = train_all.labels.numpy()
    val_idx = validation_indices(labels, episode.train_indices, episode.shots, episode.seed)
    norm = lambda x: F.normalize(x.float(), dim=-1)   # noqa: E731
    templates = episode.templates or ["a photo of a {}."]
    classifier = build_zero_shot_classifier(episode.model, episode.classnames, templates, device=episode.device)
    idx = torch.as_tensor(episode.train_indices, dtype=torch.long)
    return EpisodeFeatures(norm(train_all.features[idx]), train_all.labels[idx],
                           norm(train_all.features[torch.as_tensor(val_idx, dtype=torch.long)]),
                           train_all.labels[torch.as_tensor(val_idx, dtype=torch.long)],
                           norm(test.features), classifier.float())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    keep = labels >= 0
    return float((logits[keep].argmax(1) == labels[keep]).float().mean()) if keep.any() else float("nan")


def train_loop(params: Iterable[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, *,
               epochs: int, batch_size: int, lr: float, optimizer: str, seed: int, weight_decay: float = 0.0,
               eps: float = 1e-8, warmup_epochs: int = 0, warmup_lr: float = 1e-5) -> list[float]:
    """Mini-batch training of a method's own parameters on ``n`` cached examples: ``loss_fn(batch_indices)``.

    SGD (momentum 0.9) or AdamW, a cosine schedule over ``epochs`` after ``warmup_epochs`` at a constant
    ``warmup_lr`` (CoOp's schedule). Shuffling uses its own generator, so a seed gives one result."""
    params = [p for p in params]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, (epochs - warmup_epochs) * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    losses, step = [], 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(steps_per_epoch):
            if epoch < warmup_epochs:
                rate = warmup_lr
            else:
                rate = 0.5 * lr * (1 + math.cos(math.pi * min(step, total) / total))
                step += 1
            for group in opt.param_groups:
                group["lr"] = rate
            loss = loss_fn(order[i * batch_size:(i + 1) * batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses
