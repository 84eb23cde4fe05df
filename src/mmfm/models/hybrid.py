"""Locked-tower hybrids: a torchvision image model + a 2-layer head, trained against an mmfm text tower.

The published setup this reproduces: a ResNet-50 with a new head (2048 -> 2048 -> GELU -> 512)
trained contrastively against the *frozen* text encoder of CLIP ViT-B/32 (``hybrid_from_clip``):
about 29M of 92M parameters train (31%). The mirror image, LiT ("locked-image tuning": a pretrained
image tower locked, the text tower trained), is :func:`lit`.

``HybridCLIP`` subclasses ``CLIP`` and only replaces the image tower, so the CLIP forward contract
(``forward(image, text) -> {"image_features", "text_features", "logit_scale"}``, ``encode_*``,
``lock_*``) and everything built on it (trainer, evaluation, checkpoints) work unchanged.

Initial weights. ``HybridConfig`` can ask for torchvision ImageNet weights (``vision.weights``) and
for a CLIP checkpoint whose text tower initialises ours (``text_pretrained``). They are loaded when
the model is built (never on the meta device, where only shapes matter), and the built model's
config then records them in ``initialized_from`` and clears the two fields: they are instructions
for building a *new* model, so a saved hybrid reloads from its own weights without a download.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..util.weights import track_loads
from .clip import CLIP
from .config import ConfigError, TextConfig, _from_dict
from .factory import register_builder
from .pretrained_text import PretrainedTextConfig, PretrainedTextTower
from .registry import get_model_config, register_config_class, register_model
from .text import TextTransformer


@dataclass
class HybridVisionConfig:
    """A torchvision classification model (any name ``torchvision.models.list_models()`` gives) whose
    classifier is replaced by ``Linear(features, head_hidden) -> GELU -> Linear(head_hidden, embed_dim)``."""

    torchvision_name: str = "resnet50"
    weights: str | None = None        # torchvision weights ("DEFAULT", "IMAGENET1K_V2", ...) or None: random init
    image_size: int = 224
    head_hidden: int = 2048


@dataclass
class HybridConfig:
    embed_dim: int = 512
    vision: HybridVisionConfig = field(default_factory=HybridVisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    text_pretrained: str | None = None   # a CLIP checkpoint (anything create_model reads) for the text tower
    # A pretrained transformers encoder as the text tower instead of ``text`` (see pretrained_text.py).
    text_encoder: PretrainedTextConfig | None = None
    lock_text: bool = True               # the published setup trains the image side only
    # Text groups left trainable when locked; None: 0 for a CLIP text tower, 1 (its new projection) for
    # a pretrained encoder, whose projection starts random.
    text_unlocked_groups: int | None = None
    quick_gelu: bool = False             # the text tower's activation (True for OpenAI's weights)
    init_logit_scale: float = math.log(1 / 0.07)
    initialized_from: dict[str, str] = field(default_factory=dict)   # provenance, filled at build time
    family: Literal["hybrid"] = "hybrid"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HybridConfig":
        d = dict(d)
        if d.pop("family", "hybrid") != "hybrid":
            raise ConfigError("HybridConfig.from_dict: family must be 'hybrid'")
        vision = _from_dict(HybridVisionConfig, d.pop("vision", {}), "vision")
        text = _from_dict(TextConfig, d.pop("text", {}), "text")
        enc = d.pop("text_encoder", None)
        enc = _from_dict(PretrainedTextConfig, enc, "text_encoder") if enc is not None else None
        cfg = _from_dict(cls, d, "model")
        cfg.vision, cfg.text, cfg.text_encoder = vision, text, enc
        return cfg


# ---------------------------------------------------------------------------------------------
# The image tower
def _on_meta_device() -> bool:
    """Whether tensors are being created on the meta device (``with torch.device("meta"):``)."""
    return torch.empty(0).device.type == "meta"


def _torchvision_model(name: str, weights: str | None) -> nn.Module:
    """``torchvision.models.<name>(weights=...)`` with clear errors for unknown names and for downloads
    that cannot happen (no internet)."""
    import torchvision
    from torchvision.models import get_model_builder, get_model_weights
    try:
        builder = get_model_builder(name)
    except ValueError:
        names = torchvision.models.list_models(module=torchvision.models)
        raise ConfigError(f"vision.torchvision_name: {name!r} is not a torchvision classification model; "
                          f"choose one of {names}") from None
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


def _replace_classifier(model: nn.Module) -> int:
    """Replace the model's last ``nn.Linear`` (torchvision's classifier: ``fc``, ``classifier[-1]``,
    ``heads.head``, ``head``) by an identity; returns the width of the features it received."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier to replace by a projection head")
    name, last = linears[-1]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return last.in_features


class TorchvisionTower(nn.Module):
    """``trunk`` (the torchvision model without its classifier) followed by the projection ``head``."""

    def __init__(self, cfg: HybridVisionConfig, embed_dim: int, weights: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.trunk = _torchvision_model(cfg.torchvision_name, weights)
        feature_dim = _replace_classifier(self.trunk)
        self.head = nn.Sequential(nn.Linear(feature_dim, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, embed_dim))

    @property
    def output_dim(self) -> int:
        return self.head[-1].out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features before the head (what a linear probe uses)."""
        out = self.trunk(x)
        if not torch.is_tensor(out):   # Inception/GoogLeNet return (logits, aux...) in training mode
            out = out[0]
        return out.flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def groups(self) -> list[nn.Module]:
        """Layer groups from the output end: the head, then the trunk's top-level stages (a
        ``features`` Sequential, as in EfficientNet/MobileNet/ConvNeXt/VGG, is split into its stages)."""
        stages: list[nn.Module] = []
        for name, child in self.trunk.named_children():
            if name == "features" and isinstance(child, nn.Sequential):
                stages += list(child.children())
            else:
                stages.append(child)
        return [self.head] + [s for s in reversed(stages) if any(True for _ in s.parameters())]

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower except its last ``unlocked_groups`` groups (1 = the head only)."""
        for p in self.parameters():
            p.requires_grad_(False)
        for group in self.groups()[:max(unlocked_groups, 0)]:
            for p in group.parameters():
                p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True):
        # A locked BatchNorm must not keep updating its running statistics in training mode,
        # or the "frozen" tower would still change.
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self


# ---------------------------------------------------------------------------------------------
# The model
class HybridCLIP(CLIP):
    """A torchvision image tower + head and an mmfm text tower, with CLIP's forward contract."""

    def __init__(self, cfg: HybridConfig, load_initial_weights: bool | None = None):
        # CLIP.__init__ builds CLIP's own towers from a CLIPConfig; only its methods are inherited.
        nn.Module.__init__(self)
        cfg = copy.deepcopy(cfg)
        load = (not _on_meta_device()) if load_initial_weights is None else load_initial_weights
        self.config = cfg
        self.visual = TorchvisionTower(cfg.vision, cfg.embed_dim, weights=cfg.vision.weights if load else None)
        if cfg.text_encoder is not None:
            if cfg.text_pretrained is not None:
                raise ConfigError("text_pretrained (a CLIP text tower) and text_encoder (a transformers encoder) "
                                  "both name the text tower: keep one")
            self.text = PretrainedTextTower(cfg.text_encoder, cfg.embed_dim, load_weights=load)
        else:
            self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = None
        track_loads(self)   # loading weights advances mmfm's weights version (caches re-check)
        if load:
            if cfg.vision.weights is not None:
                cfg.initialized_from["vision"] = f"torchvision:{cfg.vision.torchvision_name}:{cfg.vision.weights}"
                cfg.vision.weights = None
            if cfg.text_pretrained is not None:
                load_text_tower(self, cfg.text_pretrained)
                cfg.text_pretrained = None
        if cfg.lock_text:
            default = 1 if cfg.text_encoder is not None else 0
            self.lock_text_tower(default if cfg.text_unlocked_groups is None else cfg.text_unlocked_groups)

    @property
    def context_length(self) -> int:
        return self.text.context_length if self.config.text_encoder is not None else self.config.text.context_length

    def get_tokenizer(self):
        if self.config.text_encoder is not None:
            return self.text.tokenizer
        return super().get_tokenizer()


def _differences(a: Any, b: Any) -> list[str]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [f"{k}: {da[k]!r} vs {db.get(k)!r}" for k in da if da[k] != db.get(k)]


def load_text_tower(model: HybridCLIP, source: CLIP | str | os.PathLike) -> HybridCLIP:
    """Copy the text tower of a CLIP model (or of a checkpoint ``create_model`` reads) into ``model``."""
    if isinstance(source, (str, os.PathLike)):
        from ..api import create_model
        clip, name = create_model(None, pretrained=str(source)), str(source)
    else:
        clip, name = source, f"an in-memory {type(source).__name__}"
    cfg = model.config
    problems = _differences(cfg.text, clip.config.text)
    if clip.text.output_dim != cfg.embed_dim:
        problems.append(f"embed_dim: {cfg.embed_dim} vs {clip.text.output_dim}")
    if bool(getattr(clip.config, "quick_gelu", False)) != cfg.quick_gelu:
        problems.append(f"quick_gelu: {cfg.quick_gelu} vs {clip.config.quick_gelu}")
    if problems:
        raise ConfigError(f"the text tower of {name} does not fit the hybrid (hybrid vs source): " + "; ".join(problems))
    model.text.load_state_dict(clip.text.state_dict())
    cfg.initialized_from["text"] = name
    return model


def hybrid_from_clip(clip_model_or_path: CLIP | str | os.PathLike, torchvision_name: str = "resnet50",
                     weights: str | None = None, lock_text: bool = True, image_size: int | None = None,
                     head_hidden: int = 2048) -> HybridCLIP:
    """A hybrid whose text tower (config and weights) comes from an mmfm CLIP model or checkpoint.

    The text tower is frozen by default (the published setup: a ResNet-50 + head trained against
    CLIP ViT-B/32's frozen text encoder). ``image_size`` defaults to the CLIP model's. ``weights``:
    torchvision ImageNet weights for the trunk (needs internet or a ``TORCH_HOME`` cache), or None.
    """
    if isinstance(clip_model_or_path, (str, os.PathLike)):
        from ..api import create_model
        clip, source = create_model(None, pretrained=str(clip_model_or_path)), str(clip_model_or_path)
    else:
        clip, source = clip_model_or_path, None
    cfg = HybridConfig(embed_dim=clip.text.output_dim,
                       vision=HybridVisionConfig(torchvision_name, weights, image_size or clip.image_size, head_hidden),
                       text=copy.deepcopy(clip.config.text), lock_text=lock_text,
                       quick_gelu=bool(getattr(clip.config, "quick_gelu", False)))
    model = HybridCLIP(cfg)
    load_text_tower(model, clip)
    if source is not None:
        model.config.initialized_from["text"] = source
    return model


def lit(model: CLIP, unlocked_groups: int = 0) -> CLIP:
    """Locked-image tuning: lock the (pretrained) image tower, train the text tower and temperature.

    ``unlocked_groups`` leaves the last groups of the image tower trainable (for a ViT: ln_post/proj,
    then the last blocks; for a hybrid: 1 = the freshly initialised head). Returns the model.
    """
    model.lock_image_tower(unlocked_groups)
    for p in model.text.parameters():
        p.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    if hasattr(model.config, "lock_text"):
        model.config.lock_text = False   # so a reloaded checkpoint is not re-locked
    return model


# ---------------------------------------------------------------------------------------------
register_config_class("hybrid", HybridConfig)
register_builder(HybridConfig, HybridCLIP)


def _vitb32_text() -> TextConfig:
    return copy.deepcopy(get_model_config("ViT-B-32").text)


def _tiny_text() -> TextConfig:
    return copy.deepcopy(get_model_config("ViT-tiny-test").text)


register_model("rn50-vitb32text", HybridConfig(embed_dim=512, vision=HybridVisionConfig("resnet50"), text=_vitb32_text()),
               "ResNet-50 (random init) + head, ViT-B-32's frozen text tower (use hybrid_from_clip for its weights)",
               overwrite=True)
register_model("rn50-vitb32text-in1k",
               HybridConfig(embed_dim=512, vision=HybridVisionConfig("resnet50", weights="IMAGENET1K_V2"), text=_vitb32_text()),
               "ResNet-50 (torchvision ImageNet weights: needs internet or a TORCH_HOME cache) + head, "
               "ViT-B-32's frozen text tower", overwrite=True)
register_model("hybrid-tiny-test",
               HybridConfig(embed_dim=32, vision=HybridVisionConfig("resnet18", image_size=32, head_hidden=64),
                            text=_tiny_text()),
               "tiny hybrid for unit tests: resnet18 at 32px + a 2-layer text tower", overwrite=True)
