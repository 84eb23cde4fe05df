"""Contrastive losses over a *global* batch: the InfoNCE (CLIP) loss and the SigLIP sigmoid loss.

Both take image/text features of the whole global batch (all ranks, all accumulation micro-batches)
in which only one slice is "live" (carries gradient); see ``objectives.ContrastiveObjective`` for why.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              rows: slice | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of the scaled cosine-similarity matrix; positives on the diagonal.

    ``rows`` restricts the loss to a slice of the batch (the "local loss": local images against all
    texts and local texts against all images), which costs O(local x global) instead of O(global^2).
    """
    n = image_features.shape[0]
    labels = torch.arange(n, device=image_features.device)
    if rows is None:
        logits = logit_scale * image_features @ text_features.T
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    li = logit_scale * image_features[rows] @ text_features.T
    lt = logit_scale * text_features[rows] @ image_features.T
    return (F.cross_entropy(li, labels[rows]) + F.cross_entropy(lt, labels[rows])) / 2


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al. 2023): every pair is an independent binary classification."""
    img = image_features if rows is None else image_features[rows]
    n = image_features.shape[0]
    logits = logit_scale * img @ text_features.T + logit_bias
    targets = -torch.ones_like(logits)
    offset = 0 if rows is None else rows.start
    idx = torch.arange(img.shape[0], device=img.device)
    targets[idx, idx + offset] = 1.0
    return -F.logsigmoid(targets * logits).sum() / n
