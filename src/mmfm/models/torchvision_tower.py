"""The one adapter from a torchvision classification model to an mmfm image tower (hybrids, LiT, Frozen).

A torchvision model is a trunk (convolutions or blocks, global pooling) followed by a classifier. The adapter
builds it by name (``torchvision.models.list_models()``), with clear errors for unknown names and for weights
that cannot be downloaded, removes the classifier, and reads the pooled features the classifier received.

Stripping the classifier: two rules, because saved checkpoints depend on which one built them (the rule
decides both the state-dict keys and the feature width; tests/models/test_towers.py pins both):

- ``"last_linear"`` (hybrids): the model's last ``nn.Linear`` becomes an identity, wherever it sits (``fc``,
  ``classifier[-1]``, ``heads.head``, ``head``); layers before it in the classifier stay, e.g. MobileNetV3's
  hidden Linear (features 1024) and ConvNeXt's LayerNorm.
- ``"classifier"`` (Frozen): the whole classifier attribute (``fc``, ``classifier``, ``heads``, ``head``: the
  first that holds a Linear) becomes an identity; the features are what its first Linear received
  (MobileNetV3: 576, the pooled trunk).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from .config import ConfigError
from .towers import Group, ImageTower, register_image_tower

StripRule = Literal["last_linear", "classifier"]
_CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")


def torchvision_model(name: str, weights: str | None = None, where: str = "vision.torchvision_name") -> nn.Module:
    """``torchvision.models.<name>(weights=...)`` with clear errors for unknown names and for downloads
    that cannot happen (no internet)."""
    import torchvision
    from torchvision.models import get_model_builder, get_model_weights
    try:
        builder = get_model_builder(name)
    except ValueError:
        names = torchvision.models.list_models(module=torchvision.models)
        raise ConfigError(f"{where}: {name!r} is not a torchvision classification model; choose one of {names}") from None
    if weights is None:
        return builder(weights=None)
    enum = get_model_weights(name)
    try:
        resolved = enum.verify(weights)
    except (KeyError, ValueError):
        raise ConfigError(f"vision.weights: {weights!r} is not a weight set of {name}; choose 'DEFAULT', one of "
                          f"{[w.name for w in enum]} or None (random initialisation)") from None
    try:
        return builder(weights=resolved)
    except OSError as e:   # urllib's URLError, socket errors, a read-only cache directory
        from torch.hub import get_dir
        raise RuntimeError(
            f"cannot get the torchvision weights {name} {resolved.name} ({resolved.url}): {type(e).__name__}: {e}. "
            f"Without internet access, put the file in {os.path.join(get_dir(), 'checkpoints')} (set TORCH_HOME "
            f"to point at a cache that has it), or build with vision.weights=None for random initialisation."
        ) from e


def strip_classifier(model: nn.Module, rule: StripRule, where: str = "vision") -> int:
    """Replace ``model``'s classifier by an identity (``rule``: see the module docstring); returns the width of
    the features it received."""
    if rule == "last_linear":
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to replace by a projection head")
        name, last = linears[-1]
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        return last.in_features
    for attr in _CLASSIFIER_NAMES:
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        linears = [head] if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)]
        if linears:
            setattr(model, attr, nn.Identity())
            return linears[0].in_features   # the first Linear: everything from it on is the classifier
    raise ConfigError(f"{where}: cannot find the classification head of torchvision model {type(model).__name__} "
                      f"(looked for {', '.join(_CLASSIFIER_NAMES)})")


@dataclass
class TorchvisionConfig:
    """A torchvision classification model (any name ``torchvision.models.list_models()`` gives) whose
    classifier is replaced by ``Linear(features, head_hidden) -> GELU -> Linear(head_hidden, embed_dim)``
    (no head when ``head_hidden`` is None)."""

    torchvision_name: str = "resnet50"
    weights: str | None = None        # torchvision weights ("DEFAULT", "IMAGENET1K_V2", ...) or None: random init
    image_size: int = 224
    head_hidden: int | None = 2048

    kind: ClassVar[str] = "torchvision"   # the registered tower it builds (not a field: saved configs lack it)


@register_image_tower("torchvision")
class TorchvisionTower(ImageTower):
    """``trunk`` (the torchvision model without its classifier) followed by the projection ``head``
    (``Linear(features, head_hidden) -> GELU -> Linear(head_hidden, embed_dim)``; no head if ``head_hidden``
    is None: the tower's output is then its pooled features).

    ``cfg``: ``torchvision_name``, ``weights`` (torchvision's, loaded only with ``load_weights``), ``head_hidden``.
    """

    strip: StripRule = "last_linear"
    trunk_name = "trunk"                 # the attribute (so the state-dict prefix) of the trunk
    where = "vision.torchvision_name"    # the config field an unknown name is reported against

    def __init__(self, cfg: TorchvisionConfig, embed_dim: int | None, quick_gelu: bool = False, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        trunk = torchvision_model(cfg.torchvision_name, cfg.weights if load_weights else None, self.where)
        self.feature_dim = strip_classifier(trunk, self.strip, self.where)
        self.add_module(self.trunk_name, trunk)
        if cfg.head_hidden is not None:
            self.head = nn.Sequential(nn.Linear(self.feature_dim, cfg.head_hidden), nn.GELU(),
                                      nn.Linear(cfg.head_hidden, embed_dim))
        else:
            self.head = None

    @classmethod
    def check_config(cls, cfg) -> None:
        if not isinstance(cfg, TorchvisionConfig):
            raise ConfigError("vision.kind: a torchvision tower is configured by its own fields (torchvision_name, "
                              "weights, image_size, head_hidden), without a kind")

    @property
    def body(self) -> nn.Module:
        return self._modules[self.trunk_name]

    @property
    def output_dim(self) -> int:
        return self.head[-1].out_features if self.head is not None else self.feature_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features before the head (what a linear probe uses)."""
        out = self.body(x)
        if not torch.is_tensor(out):   # Inception/GoogLeNet return (logits, aux...) in training mode
            out = out[0]
        return out.flatten(1)          # some classifiers (ConvNeXt) also held the flatten

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) if self.head is not None else features

    def groups(self) -> list[Group]:
        """The head, then the trunk's top-level stages from the output end (a ``features`` Sequential, as in
        EfficientNet/MobileNet/ConvNeXt/VGG, is split into its stages)."""
        stages: list[nn.Module] = []
        for name, child in self.body.named_children():
            if name == "features" and isinstance(child, nn.Sequential):
                stages += list(child.children())
            else:
                stages.append(child)
        head = [self.head] if self.head is not None else []
        return head + [s for s in reversed(stages) if any(True for _ in s.parameters())]


class TorchvisionEncoder(TorchvisionTower):
    """Frozen's vision encoder: a torchvision model trained from scratch, classifier removed, no head: pooled
    features [B, C]. Its checkpoints name the trunk ``net`` and were built with the ``"classifier"`` rule."""

    strip = "classifier"
    trunk_name = "net"
    where = "frozen.vision"
    freeze_bn_stats = False   # Frozen's encoder always trains; its BatchNorm statistics always update, as before

    def __init__(self, name: str):
        super().__init__(TorchvisionConfig(name, weights=None, head_hidden=None), None)
