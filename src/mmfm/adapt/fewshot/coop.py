"""CoOp: context optimisation (Zhou et al., IJCV 2022). Learned word vectors replace the prompt template.

The prompt of class c is ``[SOT] v_1 ... v_M <name of c> . [EOT]`` where ``v_1..v_M`` are M trainable
vectors in the text tower's token-embedding space, shared by every class (``class_specific=False``, the
default) or one set per class (CSC). Both CLIP towers stay frozen; the context vectors get their gradient
through the frozen text transformer, from cross-entropy of CLIP's logits (the model's own temperature)
between the k-shot images and the C class prompts.

Defaults (the paper's released configs): M = 16 vectors initialised from N(0, 0.02), class name at the
end, SGD (momentum 0.9) lr 2e-3, cosine schedule after 1 warm-up epoch at 1e-5, batch 32, and 50 epochs for
1 shot, 100 for 2 and 4, 200 for 8 and 16. Image embeddings are computed once (no augmentation).
Works with mmfm's CLIP text transformer (any CLIP mmfm loads), not with a ``PretrainedTextTower``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ...util.modes import eval_mode, requires_grad
from .common import clip_scale, episode_features, train_loop

EPOCHS_BY_SHOTS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Turn off ``requires_grad`` on every weight of ``model`` for the block, and restore it after, so a
    method's backward pass reaches only its own parameters and leaves the model as it found it."""
    with requires_grad(model, False), eval_mode(model):   # every module's own flags come back afterwards
        yield model


class PromptLearner(nn.Module):
    """The class prompts' text features ``[C, D]`` as a function of the learned context vectors."""

    def __init__(self, model: nn.Module, classnames: list[str], n_ctx: int = 16, class_specific: bool = False,
                 seed: int = 0):
        super().__init__()
        text = model.text
        if not hasattr(text, "token_embedding") or not hasattr(text, "transformer"):
            raise ValueError(f"CoOp needs mmfm's CLIP text transformer; this model's text tower is "
                             f"{type(text).__name__}")
        self.text = [text]                         # a list: not registered as a submodule (not ours to train)
        tok = model.get_tokenizer()
        placeholder = " ".join(["x"] * n_ctx)
        ids = tok([f"{placeholder} {name}." for name in classnames])
        if ids.shape[1] < n_ctx + 3:
            raise ValueError(f"n_ctx={n_ctx} does not fit the text tower's context length {ids.shape[1]}")
        self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long), persistent=False)
        self.n_ctx = n_ctx
        g = torch.Generator().manual_seed(seed)
        width = text.token_embedding.weight.shape[1]
        self.ctx = nn.Parameter(torch.randn(len(classnames) if class_specific else 1, n_ctx, width, generator=g) * 0.02)

    def forward(self) -> torch.Tensor:
        text, ids = self.text[0], self.ids
        emb = text.token_embedding(ids)                                  # [C, L, W], frozen
        ctx = self.ctx.expand(ids.shape[0], -1, -1).to(emb.dtype)
        x = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)
        pool = text.pool_index(ids)
        n = int(pool.max()) + 1                                          # causal: padding after EOT is unused
        x = x[:, :n] + text.positional_embedding[:n].to(x.dtype)
        return text.forward_head(text.ln_final(text.transformer.forward_pooled(x, pool, is_causal=True)))


def coop_method(episode):
    """``episode.options``: n_ctx (16), class_specific (False), lr (2e-3), epochs (by shots), batch_size (32)."""
    o = episode.options
    f = episode_features(episode)
    model = episode.model
    with frozen(model):
        learner = PromptLearner(model, list(episode.classnames), int(o.get("n_ctx", 16)),
                                bool(o.get("class_specific", False)), seed=episode.seed).to(f.train.device)
        scale = clip_scale(model)

        def logits(images):
            return scale * images @ F.normalize(learner(), dim=-1).T

        def loss(idx):
            return F.cross_entropy(logits(f.train[idx]), f.train_labels[idx])

        epochs = int(o.get("epochs", EPOCHS_BY_SHOTS.get(episode.shots, 200)))
        train_loop([learner.ctx], loss, len(f.train), epochs=epochs, batch_size=int(o.get("batch_size", 32)),
                   lr=float(o.get("lr", 2e-3)), optimizer="sgd", seed=episode.seed, warmup_epochs=1, warmup_lr=1e-5)
        with torch.no_grad():
            out = logits(f.test)
    return {"predictions": out.argmax(1).numpy(), "extra": {"trainable": learner.ctx.numel(), "epochs": epochs}}
