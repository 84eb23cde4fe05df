"""Frozen's answers to what ``mmfm run`` asks a model family: its tokenizer, its objective, its training and
validation views, and how a trained model is saved (:class:`mmfm.experiment.ModelFamily` is the protocol).

The training view is ``ImageTextView`` over *any* caption dataset (shapes, a CSV/JSONL folder, shards,
Flickr30k, Conceptual Captions) with the LM's tokenizer: each image with one of its captions, drawn from
(seed, epoch, index) as for CLIP, so resumed runs see the same captions. ``FrozenObjective`` turns the
view's ``text`` into ``input_ids`` with their attention mask, so no collate of its own is needed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ..models.frozen import FrozenConfig
from .text import FrozenTokenizer


def is_frozen(model: nn.Module) -> bool:
    return isinstance(getattr(model, "config", None), FrozenConfig)


def tokenizer_for(model: nn.Module, tokenizer: str | None = None) -> FrozenTokenizer:
    """The LM's tokenizer: ``tokenizer`` (a directory or hub id), else the one the model's config names
    (``tokenizer``, default its ``pretrained_lm``). Padded/truncated to the config's ``context_length``."""
    cfg = model.config
    source = tokenizer or cfg.tokenizer_path
    if source is None:
        raise ValueError("tokenizer: this Frozen model names no tokenizer (no `tokenizer`, no `pretrained_lm` in its "
                         "config); give the LM's tokenizer directory as the model's `tokenizer:`")
    return FrozenTokenizer.from_pretrained(str(source), cfg.context_length)


class FrozenFamily:
    """Frozen: a frozen causal LM captions images through a trained vision encoder and linear map."""

    name = "frozen"

    def prepare(self, model: nn.Module, tokenizer: str | None = None) -> FrozenTokenizer:
        """The tokenizer, recorded in the model's config so the saved model names it too."""
        tok = tokenizer_for(model, tokenizer)
        if tokenizer is not None:
            model.config = dataclasses.replace(model.config, tokenizer=str(tokenizer))
        return tok

    def image_size(self, model: nn.Module) -> int:
        return int(model.config.image_size)

    def objective(self, tokenizer: FrozenTokenizer, train_cfg):
        from .objective import FrozenObjective
        return FrozenObjective.for_tokenizer(tokenizer, max_new_tokens=tokenizer.context_length)

    def train_view(self, dataset, transform, tokenizer: FrozenTokenizer, seed: int):
        from ..data import ImageTextView
        return ImageTextView(dataset, transform, tokenizer, caption_mode="random", seed=seed)

    def val_view(self, dataset, transform, tokenizer: FrozenTokenizer):
        from ..data import ImageTextView
        return ImageTextView(dataset, transform, tokenizer, caption_mode="first")

    def save(self, model: nn.Module, directory: Path, tokenizer: FrozenTokenizer) -> None:
        """``save_frozen`` into ``directory/model``: the vision side (the LM is referenced, not copied) and,
        when the config names no tokenizer, a copy of it, so ``load_frozen(directory / "model")`` gives back a
        model that captions alike."""
        from .io import save_frozen
        save_frozen(model, Path(directory) / "model", tokenizer)

