"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022), on the frozen CLIP's embeddings.

A cache model built from the few-shot set: keys ``K`` = the normalised image embeddings of the N shots,
values ``V`` = their one-hot labels. For a test embedding ``f`` (normalised)::

    A = exp(-beta * (1 - f K^T))              # affinities to the cached shots
    logits = alpha * A V + s * f W            # cache knowledge + CLIP's zero-shot logits (W: text classifier)

with ``s`` = 100 in the paper, OpenAI CLIP's learned scale; mmfm uses the model's own scale (100 for OpenAI
weights).

Tip-Adapter is training-free; Tip-Adapter-F makes ``K`` learnable (initialised from the cache) and trains it
on the few-shot set with cross-entropy. In both, ``alpha`` and ``beta`` are then chosen by a grid search on
a validation set (here CoOp's few-shot validation draw, ``min(k, 4)`` per class, disjoint from the shots).

Defaults (from the paper's released configs): init alpha = beta = 1; search beta in [0.1, 7], alpha in
[0.1, 3]; Tip-Adapter-F: AdamW, lr 1e-3, eps 1e-4, 20 epochs, cosine, batch 256. The grid is coarser than the
paper's 200 x 20 (``options["search_steps"]``, default 30 x 15) to keep CPU runs short.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .common import CLIP_SCALE, accuracy, clip_scale, episode_features, train_loop


def tip_logits(test: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, classifier: torch.Tensor,
               alpha: float, beta: float, scale: float = CLIP_SCALE) -> torch.Tensor:
    """The paper's formula. ``test`` [M, D] and ``keys`` [N, D] normalised, ``values`` [N, C] one-hot,
    ``classifier`` [D, C]."""
    affinity = torch.exp(-beta * (1 - test @ keys.T))
    return alpha * affinity @ values + scale * test @ classifier


def search_alpha_beta(val: torch.Tensor, val_labels: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      classifier: torch.Tensor, beta_max: float = 7.0, alpha_max: float = 3.0,
                      steps: tuple[int, int] = (30, 15), scale: float = CLIP_SCALE) -> tuple[float, float, float]:
    """Best (alpha, beta, validation accuracy) on the grid; ties go to the first (smallest beta, alpha)."""
    best = (1.0, 1.0, -1.0)
    for beta in np.linspace(0.1, beta_max, steps[0]):
        for alpha in np.linspace(0.1, alpha_max, steps[1]):
            acc = accuracy(tip_logits(val, keys, values, classifier, float(alpha), float(beta), scale), val_labels)
            if acc > best[2]:
                best = (float(alpha), float(beta), acc)
    return best


def _tip(episode, finetune: bool):
    o = episode.options
    f = episode_features(episode)
    num_classes = f.classifier.shape[1]
    values = F.one_hot(f.train_labels, num_classes).float()
    keys = f.train.clone()
    scale = clip_scale(episode.model)
    extra = {"trainable": 0}
    if finetune:
        keys = torch.nn.Parameter(keys)
        alpha, beta = float(o.get("init_alpha", 1.0)), float(o.get("init_beta", 1.0))

        def loss(idx):
            x = f.train[idx]
            return F.cross_entropy(tip_logits(x, keys, values, f.classifier, alpha, beta, scale), f.train_labels[idx])

        train_loop([keys], loss, len(f.train), epochs=int(o.get("epochs", 20)), batch_size=int(o.get("batch_size", 256)),
                   lr=float(o.get("lr", 1e-3)), optimizer="adamw", eps=1e-4, seed=episode.seed)
        keys = keys.detach()
        extra["trainable"] = keys.numel()
    if len(f.val):
        alpha, beta, val_acc = search_alpha_beta(f.val, f.val_labels, keys, values, f.classifier,
                                                 float(o.get("beta_max", 7.0)), float(o.get("alpha_max", 3.0)),
                                                 tuple(o.get("search_steps", (30, 15))), scale)
    else:   # no examples left for validation: the paper's initial values
        alpha, beta, val_acc = float(o.get("init_alpha", 1.0)), float(o.get("init_beta", 1.0)), float("nan")
    extra.update(alpha=alpha, beta=beta, val_accuracy=val_acc)
    with torch.no_grad():
        logits = tip_logits(f.test, keys, values, f.classifier, alpha, beta, scale)
    return {"predictions": logits.argmax(1).numpy(), "extra": extra}


def tip_adapter_method(episode):
    """Training-free Tip-Adapter (``episode.options``: init_alpha, init_beta, alpha_max, beta_max, search_steps)."""
    return _tip(episode, finetune=False)


def tip_adapter_f_method(episode):
    """Tip-Adapter-F: cache keys fine-tuned (options as Tip-Adapter, plus lr, epochs, batch_size)."""
    return _tip(episode, finetune=True)
