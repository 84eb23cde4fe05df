"""Causal text transformer: token + positional embedding, pre-LN blocks, ln_final, projection at end-of-text."""
from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig
from .layers import LayerNorm, Transformer


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.text_projection, std=self.cfg.width ** -0.5)

    @property
    def output_dim(self) -> int:
        return self.text_projection.shape[1]

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token in each sequence."""
        if self.cfg.pool == "eot":
            return (ids == self.cfg.eot_token_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)   # eot has the largest id in CLIP's vocabulary

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.cfg.context_length:
            raise ValueError(f"text has {n} tokens, more than the context length {self.cfg.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        # Causal attention: with SDPA's is_causal no mask tensor is materialised.
        return self.ln_final(self.transformer(x, is_causal=True))

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.forward_tokens(ids)
        return x[torch.arange(x.shape[0], device=x.device), self.pool_index(ids)]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.text_projection

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(ids))

    def lock(self, unlocked_groups: int = 0) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        groups = [[self.ln_final, self.text_projection]] + [[b] for b in reversed(self.transformer.blocks)] + \
                 [[self.token_embedding, self.positional_embedding]]
        for group in groups[:max(unlocked_groups, 0)]:
            for item in group:
                for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
                    p.requires_grad_(True)
