"""Causal text transformer: token + positional embedding, pre-LN blocks, ln_final, projection at end-of-text."""
from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig
from .layers import LayerNorm, Transformer
from .towers import Group, Tower


class TextTransformer(Tower):
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

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.cfg.context_length:
            raise ValueError(f"text has {n} tokens, more than the context length {self.cfg.context_length}")
        return self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        # Causal attention: with SDPA's is_causal no mask tensor is materialised.
        return self.ln_final(self.transformer(self.embed(ids), is_causal=True))

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        pool = self.pool_index(ids)
        # Attention is causal, so the feature at the end-of-text token depends only on the tokens up to it:
        # the padding after the batch's last end-of-text token cannot change the result (or any gradient)
        # and is not computed. Captions are mostly far shorter than the 77-token context, so this skips most
        # of the text tower's work. Under torch.compile the length stays static (no data-dependent shapes).
        if not torch.compiler.is_compiling() and not torch.jit.is_scripting() and ids.shape[1] > 1:
            n = int(pool.max()) + 1
            if n < ids.shape[1]:
                ids = ids[:, :n]
        # Only the end-of-text token is read, so the last block computes only it (exact; see forward_pooled).
        return self.ln_final(self.transformer.forward_pooled(self.embed(ids), pool, is_causal=True))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.text_projection

    def groups(self) -> list[Group]:
        """[ln_final + text_projection], block[-1], ..., block[0], [token + positional embeddings]."""
        return [[self.ln_final, self.text_projection]] + list(reversed(self.transformer.blocks)) + \
               [[self.token_embedding, self.positional_embedding]]
