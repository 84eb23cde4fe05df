"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the frozen CLIP's image embedding.

    a(f) = ReLU(W2 ReLU(W1 f))                (W1: D -> D/4, W2: D/4 -> D, no biases)
    f'   = ratio * a(f) + (1 - ratio) * f     (ratio 0.2: the paper's best for the visual adapter)
    logits = 100 * normalise(f') W            (W: the frozen zero-shot text classifier)

Only W1 and W2 train, with cross-entropy on the k-shot set. Defaults: reduction 4 and ratio 0.2 (the paper);
SGD with momentum, lr 2e-3, cosine, batch 32 (the CoOp training recipe its code builds on); 200 epochs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import CLIP_SCALE, episode_features, train_loop


class Adapter(nn.Module):
    def __init__(self, dim: int, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        self.fc1 = nn.Linear(dim, max(1, dim // reduction), bias=False)
        self.fc2 = nn.Linear(max(1, dim // reduction), dim, bias=False)
        self.ratio = ratio

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.fc2(F.relu(self.fc1(f))))
        return self.ratio * a + (1 - self.ratio) * f


def clip_adapter_method(episode):
    """``episode.options``: reduction (4), ratio (0.2), lr (2e-3), epochs (200), batch_size (32)."""
    o = episode.options
    f = episode_features(episode)
    torch.manual_seed(episode.seed)
    adapter = Adapter(f.train.shape[1], int(o.get("reduction", 4)), float(o.get("ratio", 0.2)))

    def logits(x):
        # 100 is the papers' constant (OpenAI CLIP's scale). Here it only sets the training temperature:
        # no other logits are mixed in, so predictions do not depend on it. A small CLIP's own scale (often
        # 10-30) would make the same lr learn several times slower.
        return CLIP_SCALE * F.normalize(adapter(x), dim=-1) @ f.classifier

    def loss(idx):
        return F.cross_entropy(logits(f.train[idx]), f.train_labels[idx])

    train_loop(adapter.parameters(), loss, len(f.train), epochs=int(o.get("epochs", 200)),
               batch_size=int(o.get("batch_size", 32)), lr=float(o.get("lr", 2e-3)), optimizer="sgd", seed=episode.seed)
    with torch.no_grad():
        out = logits(f.test)
    return {"predictions": out.argmax(1).numpy(), "extra": {"trainable": sum(p.numel() for p in adapter.parameters())}}
