"""Shared helpers for the adaptation tests: a tiny synthetic image-text set and a short training run."""
from __future__ import annotations

import pytest
import torch

from mmfm.train import TrainConfig, Trainer


def synthetic_pairs(n: int = 16, image_size: int = 32, context_length: int = 16, seed: int = 0) -> list[dict]:
    """``n`` dicts ``{"image", "text"}`` of random pixels and random token ids ending in an end-of-text id."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.zeros(context_length, dtype=torch.long)
        length = int(torch.randint(3, context_length, (1,), generator=g))
        ids[:length - 1] = torch.randint(1, 1000, (length - 1,), generator=g)
        ids[length - 1] = 49407   # the largest id: where argmax pooling reads the feature
        items.append({"image": torch.randn(3, image_size, image_size, generator=g), "text": ids})
    return items


def train_briefly(model, out_dir, steps: int = 3, lr: float = 1e-2, image_size: int = 32,
                  context_length: int = 16) -> None:
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=lr, device="cpu", progress=False, tensorboard=False,
                      grad_clip=None, log_every=1)
    Trainer(model, synthetic_pairs(16, image_size, context_length), cfg, out_dir).fit()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture
def train():
    """``train(model, out_dir, steps=3, ...)``: a few Trainer steps on synthetic pairs."""
    return train_briefly


@pytest.fixture(name="snapshot")
def snapshot_fixture():
    return snapshot


@pytest.fixture(autouse=True)
def _few_threads():
    # The test machine's cores are shared: keep each test on one intra-op thread.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
