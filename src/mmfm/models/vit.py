"""Vision Transformer image tower (as in CLIP): patchify, class token, pre-LN blocks, ln_post, projection."""
from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, VisionConfig, _check_int
from .kernels import PackedCache, patch_embed
from .layers import LayerNorm, Transformer
from .towers import Group, ImageTower, register_image_tower


@register_image_tower("vit")
class VisionTransformer(ImageTower):
    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool = False, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.grid = cfg.image_size // cfg.patch_size
        scale = w ** -0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid ** 2 + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))
        self._cache = PackedCache()   # the patch embedding's packed weight, for inference

    @classmethod
    def check_config(cls, cfg: VisionConfig) -> None:
        _check_int(cfg, "vision", "layers")
        if cfg.image_size % cfg.patch_size:
            raise ConfigError(f"vision: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")

    @property
    def output_dim(self) -> int:
        return self.proj.shape[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch + class token embeddings, [B, 1 + grid^2, width], as the first block sees them."""
        x = patch_embed(self.conv1, x, self._cache)                        # [B, grid^2, w]: conv1 at inference
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block, [B, 1 + grid^2, width] (class token first, before ln_post)."""
        return self.transformer(self.embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the projection (what linear probes use).

        Only the class token is read, so the last block computes only it (exact; see forward_pooled).
        """
        return self.ln_post(self.transformer.forward_pooled(self.embed(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.proj

    def groups(self) -> list[Group]:
        """[ln_post + proj], block[-1], block[-2], ..., [embeddings + ln_pre]."""
        return [[self.ln_post, self.proj]] + list(reversed(self.transformer.blocks)) + \
               [[self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre]]
