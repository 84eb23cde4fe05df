"""Locked-tower hybrids: a torchvision image model + a 2-layer head, trained against an mmfm text tower.

The published setup this reproduces: a ResNet-50 with a new head (2048 -> 2048 -> GELU -> 512)
trained contrastively against the *frozen* text encoder of CLIP ViT-B/32 (``hybrid_from_clip``):
about 29M of 92M parameters train (31%). The mirror image, LiT ("locked-image tuning": a pretrained
image tower locked, the text tower trained), is :func:`lit`.

``HybridCLIP`` is a ``CLIP`` built by ``CLIP.__init__`` from a hybrid config: the image tower is the
registered ``torchvision`` tower (``torchvision_tower.py``) or any other registered tower whose config the
``vision`` field holds, the text tower CLIP's or a pretrained transformers encoder (``text_encoder``). So the
CLIP forward contract (``forward(image, text) -> {"image_features", "text_features", "logit_scale"}``,
``encode_*``, ``lock_*``) and everything built on it (trainer, evaluation, checkpoints) work unchanged.

Initial weights. ``HybridConfig`` can ask for torchvision ImageNet weights (``vision.weights``) and
for a CLIP checkpoint whose text tower initialises ours (``text_pretrained``, read by the door,
``mmfm.create_model``: models never read checkpoints). They are loaded when the model is built (never on
the meta device, where only shapes matter), and the built model's
config then records them in ``initialized_from`` and clears the two fields: they are instructions
for building a *new* model, so a saved hybrid reloads from its own weights without a download.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch

from .clip import CLIP
from .config import ConfigError, ModelConfig, TextConfig, VisionConfig
from .factory import register_builder
from .pretrained_text import PretrainedTextConfig
from .registry import get_model_config, register_config_class, register_model
from .torchvision_tower import TorchvisionConfig

# A hybrid's image tower is a torchvision model + head unless its config names another registered tower.
HybridVisionConfig = TorchvisionConfig


@dataclass
class HybridConfig(ModelConfig):
    embed_dim: int = 512
    vision: HybridVisionConfig | VisionConfig = field(default_factory=HybridVisionConfig)
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

    # A vision mapping with a ``kind`` is an mmfm tower (VisionConfig), without one a torchvision model.
    NESTED: ClassVar[dict[str, Any]] = {"vision": lambda d: VisionConfig if "kind" in d else HybridVisionConfig,
                                        "text": TextConfig, "text_encoder": PretrainedTextConfig}


def _on_meta_device() -> bool:
    """Whether tensors are being created on the meta device (``with torch.device("meta"):``)."""
    return torch.empty(0).device.type == "meta"


# ---------------------------------------------------------------------------------------------
# The model
class HybridCLIP(CLIP):
    """A torchvision image tower + head and an mmfm text tower, with CLIP's forward contract.

    ``text_pretrained`` (a checkpoint path) is read by ``text_pretrained_loader(path) -> CLIP``: reading
    checkpoints is the door's job (``mmfm.create_model`` passes its own), so models never import it.
    """

    def __init__(self, cfg: HybridConfig, load_initial_weights: bool | None = None,
                 text_pretrained_loader: Callable[[str], CLIP] | None = None):
        cfg = copy.deepcopy(cfg)
        load = (not _on_meta_device()) if load_initial_weights is None else load_initial_weights
        if cfg.text_encoder is not None and cfg.text_pretrained is not None:
            raise ConfigError("text_pretrained (a CLIP text tower) and text_encoder (a transformers encoder) "
                              "both name the text tower: keep one")
        if load and cfg.text_pretrained is not None and text_pretrained_loader is None:
            raise ConfigError(f"text_pretrained {cfg.text_pretrained!r} is a checkpoint: build this config with "
                              "mmfm.create_model (which reads it), or load the text tower with mmfm.hybrid_from_clip")
        super().__init__(cfg, load_weights=load)
        if load:
            if getattr(cfg.vision, "weights", None) is not None:   # torchvision towers only
                cfg.initialized_from["vision"] = f"torchvision:{cfg.vision.torchvision_name}:{cfg.vision.weights}"
                cfg.vision.weights = None
            if cfg.text_pretrained is not None:
                load_text_tower(self, text_pretrained_loader(cfg.text_pretrained), cfg.text_pretrained)
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


def load_text_tower(model: HybridCLIP, clip: CLIP, source: str | None = None) -> HybridCLIP:
    """Copy the text tower of a CLIP model into ``model``; ``source`` names where it came from (provenance).

    A checkpoint path is read by the door: ``mmfm.api.hybrid_from_clip(path)``."""
    name = source if source is not None else f"an in-memory {type(clip).__name__}"
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


def hybrid_from_clip(clip: CLIP, torchvision_name: str = "resnet50", weights: str | None = None,
                     lock_text: bool = True, image_size: int | None = None, head_hidden: int = 2048,
                     source: str | None = None) -> HybridCLIP:
    """A hybrid whose text tower (config and weights) comes from an mmfm CLIP model (``source``: where it was
    read from, recorded as provenance; ``mmfm.api.hybrid_from_clip`` also takes a checkpoint path).

    The text tower is frozen by default (the published setup: a ResNet-50 + head trained against
    CLIP ViT-B/32's frozen text encoder). ``image_size`` defaults to the CLIP model's. ``weights``:
    torchvision ImageNet weights for the trunk (needs internet or a ``TORCH_HOME`` cache), or None.
    """
    cfg = HybridConfig(embed_dim=clip.text.output_dim,
                       vision=HybridVisionConfig(torchvision_name, weights, image_size or clip.image_size, head_hidden),
                       text=copy.deepcopy(clip.config.text), lock_text=lock_text,
                       quick_gelu=bool(getattr(clip.config, "quick_gelu", False)))
    model = HybridCLIP(cfg)
    load_text_tower(model, clip, source)
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
