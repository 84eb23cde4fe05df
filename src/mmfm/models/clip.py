"""CLIP: an image tower and a text tower projected into one embedding space, with a learnable temperature.

``CLIP`` is also the base of every two-tower model (hybrids: ``mmfm.models.hybrid``): the image tower is whatever
``cfg.vision.kind`` names in the tower registry (``mmfm.models.towers``), the text tower an mmfm text
transformer or, when the config names one (``text_encoder``), a pretrained transformers encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..util.weights import track_loads
from .config import CLIPConfig
from .precision import module_dtype
from .text import TextTransformer
from .towers import build_image_tower


def build_text_tower(cfg, load_weights: bool = True) -> nn.Module:
    """``cfg.text_encoder`` (a pretrained transformers encoder, when the config has one) or ``cfg.text``."""
    if getattr(cfg, "text_encoder", None) is not None:
        from .pretrained_text import PretrainedTextTower
        return PretrainedTextTower(cfg.text_encoder, cfg.embed_dim, load_weights=load_weights)
    return TextTransformer(cfg.text, cfg.embed_dim, cfg.quick_gelu)


def _run_tower(tower: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` with a floating ``x`` cast to ``tower``'s weight dtype, and a low-precision result as float32."""
    dtype = module_dtype(tower)
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    y = fn(x)
    return y.float() if dtype in (torch.float16, torch.bfloat16) else y


class CLIP(nn.Module):
    """``visual`` and ``text`` towers; ``forward`` returns both embeddings and the (clamped) logit scale.

    The loss lives in ``mmfm.train.losses`` rather than here: distributed training needs to gather
    features across processes and contrastive gradient accumulation needs to re-use cached features,
    and both are easier when the model only produces embeddings.
    """

    def __init__(self, cfg: CLIPConfig, load_weights: bool = True):
        # load_weights=False: towers that can start from pretrained weights (a torchvision trunk, a transformers
        # encoder) are built with random ones (the meta device, where only shapes matter).
        super().__init__()
        self.config = cfg
        self.visual = build_image_tower(cfg.vision, cfg.embed_dim, cfg.quick_gelu, load_weights=load_weights)
        self.text = build_text_tower(cfg, load_weights=load_weights)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        bias = getattr(cfg, "init_logit_bias", None)   # SigLIP-style; hybrids have none
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        track_loads(self)   # loading weights advances mmfm's weights version (caches re-check)

    # Inference -----------------------------------------------------------------------------
    # A model cast to bf16/fp16 (``create_model(precision=...)``) takes float32 images and returns float32
    # embeddings: inputs are cast to the tower's dtype here, at its boundary, and outputs back, so callers
    # (evaluation, search, export) never see the weights' dtype. Under autocast the weights stay fp32 and
    # nothing is cast here.
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = _run_tower(self.visual, self.visual, images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = _run_tower(self.text, self.text, ids)
        return F.normalize(x, dim=-1) if normalize else x

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-projection image features (the default input of a linear probe)."""
        return _run_tower(self.visual, self.visual.forward_features, images)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP so the temperature cannot collapse."""
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"logit_scale": self.scale()}
        if image is not None:
            out["image_features"] = self.encode_image(image, normalize=True)
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    @torch.no_grad()
    def logits(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image, logits_per_text) as open_clip / HF compute them."""
        out = self(images, ids)
        li = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        if "logit_bias" in out:
            li = li + out["logit_bias"]
        return li, li.T

    # Locking ---------------------------------------------------------------------------------
    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the image tower, except its last ``unlocked_groups`` groups of layers."""
        self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_groups: int = 0) -> None:
        self.text.lock(unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in (self.visual, self.text):
            if hasattr(tower, "transformer"):
                tower.transformer.grad_checkpointing = enable

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def get_tokenizer(self):
        """``tokenizer(list[str]) -> LongTensor[N, context_length]`` for this model's text tower."""
        from ..tokenizer import get_tokenizer
        return get_tokenizer(self.context_length)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: gains, biases, embeddings, temperature."""
        names = set()
        for n, p in self.named_parameters():
            if p.ndim < 2 or "embedding" in n or n in ("logit_scale", "logit_bias"):
                names.add(n)
        return names
