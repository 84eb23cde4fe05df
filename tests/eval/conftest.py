"""Shared fixtures of the evaluation tests: tiny models and tiny datasets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmfm.data import Digits, Shapes
from mmfm.data.transforms import image_transform


class PixelModel(nn.Module):
    """A fixed, training-free "image tower": features = 8x8 average-pooled pixels (192 dims),
    embedding = a fixed random projection of them. Counts forward calls so tests can tell cache hits."""

    def __init__(self, image_size: int = 32, embed_dim: int = 16, seed: int = 0):
        super().__init__()
        self.image_size = image_size
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(192, embed_dim, generator=g))
        self.calls = 0

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.adaptive_avg_pool2d(x, 8).flatten(1)

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.image_features(x) @ self.proj
        return F.normalize(out, dim=-1) if normalize else out


@pytest.fixture
def pixel_model() -> PixelModel:
    return PixelModel()


@pytest.fixture(scope="session")
def tiny_clip():
    from mmfm.api import create_model
    torch.manual_seed(0)
    return create_model("ViT-tiny-test").eval()


@pytest.fixture(scope="session")
def digits_splits():
    return Digits("train"), Digits("val"), Digits("test")


@pytest.fixture(scope="session")
def shapes_small():
    return Shapes("test", size=48, image_size=32)


@pytest.fixture(scope="session")
def transform32():
    return image_transform(32)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A saved random ViT-tiny-test folder, for evaluations that load weights by path (`mmfm eval`/`mmfm run`)."""
    from mmfm.checkpoints import save_pretrained
    from mmfm.api import create_model
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny"
    save_pretrained(create_model("ViT-tiny-test"), path)
    return str(path)
