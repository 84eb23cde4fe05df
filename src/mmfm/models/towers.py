"""Image towers: one base class and one registry, so a new tower is one file.

A tower maps images [B, 3, H, W] to embeddings [B, embed_dim] as ``forward_head(forward_features(x))``:
``forward_features`` is the pooled feature before the projection (what a linear probe reads) and
``forward_head`` the projection. Every tower lists its layers as ``groups()``, from the output end, and the
base class implements what is done with them once for all towers:

- ``lock(unlocked_groups)``: freeze everything except the first ``unlocked_groups`` groups (LiT, hybrids,
  ``CLIP.lock_image_tower``);
- BatchNorm freezing: a BatchNorm whose affine parameters are frozen keeps its running statistics frozen
  too (it stays in eval mode when the tower trains), or a "locked" tower would still drift while the
  other one trains. ``freeze_bn_stats = False`` on a tower turns that off.

Adding a tower ``"mine"``: a file with ``@register_image_tower("mine") class Mine(ImageTower)`` that takes
``(cfg, embed_dim, quick_gelu=False, load_weights=True)``; ``VisionConfig(kind="mine", ...)`` then builds it in
CLIP, hybrids and Frozen (``check_config`` / ``feature_width`` say what the config's fields mean for it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# kind -> tower class. The built-in towers register when their modules are imported (see _builtin_towers).
IMAGE_TOWERS: dict[str, type[ImageTower]] = {}


def register_image_tower(kind: str) -> Callable[[type[ImageTower]], type[ImageTower]]:
    """Class decorator: ``VisionConfig(kind=kind)`` (or any config whose ``kind`` is ``kind``) builds this class."""
    def register(cls: type[ImageTower]) -> type[ImageTower]:
        IMAGE_TOWERS[kind] = cls
        return cls
    return register


def _builtin_towers() -> None:
    # Imported on first lookup rather than at the top: the tower modules import the configs, whose
    # validation looks towers up here.
    from . import modified_resnet, torchvision_tower, vit  # noqa: F401


def image_tower_class(kind: str, where: str = "vision.kind") -> type[ImageTower]:
    if kind not in IMAGE_TOWERS:
        _builtin_towers()
    if kind not in IMAGE_TOWERS:
        from .config import ConfigError
        raise ConfigError(f"{where}: {kind!r} is not one of {sorted(IMAGE_TOWERS)}")
    return IMAGE_TOWERS[kind]


def build_image_tower(cfg: Any, embed_dim: int, quick_gelu: bool = False, load_weights: bool = True) -> ImageTower:
    """The tower ``cfg.kind`` names; ``load_weights=False`` skips any pretrained weights the config asks for."""
    return image_tower_class(cfg.kind)(cfg, embed_dim, quick_gelu=quick_gelu, load_weights=load_weights)


Group = nn.Module | nn.Parameter | list   # a layer, a parameter, or a list of them


def _parameters(group: Group):
    for item in group if isinstance(group, list) else [group]:
        yield from ([item] if isinstance(item, nn.Parameter) else item.parameters())


class Tower(nn.Module):
    """Base of image and text towers: ``forward = forward_head(forward_features)``, locking by groups, and
    frozen BatchNorm statistics, each implemented here once."""

    freeze_bn_stats = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def groups(self) -> list[Group]:
        """Groups of layers from the output end (the projection first, the input embedding last); a group
        is a module, a parameter, or a list of them."""
        raise NotImplementedError

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower, except its last ``unlocked_groups`` groups (1 = the projection/head only)."""
        for p in self.parameters():
            p.requires_grad_(False)
        for group in self.groups()[:max(unlocked_groups, 0)]:
            for p in _parameters(group):
                p.requires_grad_(True)
        self._freeze_bn_stats()   # the new locking decides which BatchNorms may update their statistics

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_bn_stats()
        return self

    def _freeze_bn_stats(self) -> None:
        # Only BatchNorm modes are touched (in a training tower, frozen ones eval, trainable ones train):
        # other submodules keep theirs, e.g. a pretrained encoder that transformers hands over in eval mode.
        if not (self.training and self.freeze_bn_stats):
            return
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(any(p.requires_grad for p in m.parameters()))


class ImageTower(Tower):
    """An image tower built from a config with a ``kind`` (see the module docstring)."""

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise ConfigError if ``cfg``'s fields do not describe a valid tower of this kind."""

    @classmethod
    def feature_width(cls, cfg: Any) -> int:
        """Width of ``forward_features`` for ``cfg`` (without building the tower)."""
        return cfg.width

    @property
    def output_dim(self) -> int:
        raise NotImplementedError
