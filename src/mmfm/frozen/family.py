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

from pydantic import Field, model_validator
from torch import nn

from ..models.frozen import FrozenConfig
from ..train.config import Strict
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


class FrozenOptions(Strict):
    """A Frozen model's ``options:`` in run configs (all off by default: captioning alone, as in the paper)."""

    vision_init: str | None = Field(None, description="a saved mmfm CLIP (a directory, or '@label' of an earlier "
                                    "model of the run) whose image tower starts the vision encoder; its tower config "
                                    "and output width must be the Frozen config's vision / vision_embed_dim")
    prefix_weight: float = Field(0.0, ge=0, description="weight of the prefix-on-description loss (0: off; see "
                                 "FrozenModel.forward); needs a dataset with scene descriptions (shapes)")
    prefix_targets: int | None = Field(None, ge=1, description="how many of the last prefix slots the prefix loss "
                                       "places on description words (default: all of them)")
    vqa_fraction: float = Field(0.0, ge=0, le=1, description="share of training items with a VQA target instead "
                                "of a caption (0: captions only); needs a dataset with questions (shapes)")

    @model_validator(mode="after")
    def _targets_need_the_loss(self):
        if self.prefix_targets is not None and not self.prefix_weight:
            raise ValueError("prefix_targets: only used by the prefix loss; set prefix_weight > 0 or remove it")
        return self


def init_vision(model: nn.Module, directory: str) -> None:
    """Start Frozen's vision encoder from the image tower of a saved mmfm CLIP (same tower config)."""
    from ..api import from_pretrained
    clip = from_pretrained(directory)
    want, have = model.config.vision, getattr(clip.config, "vision", None)
    if want != have or model.config.vision_embed_dim != getattr(clip.config, "embed_dim", None):
        raise ValueError(f"options.vision_init: {directory} has image tower {have} with output width "
                         f"{getattr(clip.config, 'embed_dim', None)}; the Frozen config's vision is {want} with "
                         f"vision_embed_dim {model.config.vision_embed_dim}")
    model.visual.load_state_dict(clip.visual.state_dict())


class FrozenFamily:
    """Frozen: a frozen causal LM captions images through a trained vision encoder and linear map."""

    name = "frozen"
    Options = FrozenOptions

    def check_options(self, config, options: FrozenOptions) -> None:
        if options.prefix_targets and options.prefix_targets > config.prefix_length:
            raise ValueError(f"options.prefix_targets ({options.prefix_targets}) cannot exceed the config's "
                             f"prefix_length ({config.prefix_length})")

    def initialize(self, model: nn.Module, options: FrozenOptions) -> None:
        if options.vision_init:
            init_vision(model, options.vision_init)

    def prepare(self, model: nn.Module, tokenizer: str | None = None) -> FrozenTokenizer:
        """The tokenizer, recorded in the model's config so the saved model names it too."""
        tok = tokenizer_for(model, tokenizer)
        if tokenizer is not None:
            model.config = dataclasses.replace(model.config, tokenizer=str(tokenizer))
        return tok

    def image_size(self, model: nn.Module) -> int:
        return int(model.config.image_size)

    def objective(self, tokenizer: FrozenTokenizer, train_cfg, options: FrozenOptions | None = None):
        from .objective import FrozenObjective
        options = options or FrozenOptions()
        return FrozenObjective.for_tokenizer(tokenizer, max_new_tokens=tokenizer.context_length,
                                             prefix_weight=options.prefix_weight)

    def train_view(self, dataset, transform, tokenizer: FrozenTokenizer, seed: int,
                   options: FrozenOptions | None = None, model: nn.Module | None = None):
        """Captions (``ImageTextView``); with VQA targets or the prefix loss, ``CaptionVQAView`` (shapes)."""
        from ..data import ImageTextView
        options = options or FrozenOptions()
        if options.vqa_fraction > 0 or options.prefix_weight > 0:
            from .tasks import CaptionVQAView
            if not (callable(getattr(dataset, "scene", None))):
                raise ValueError("options: vqa_fraction / prefix_weight need a dataset with scenes (questions and "
                                 "descriptions: shapes)")
            targets = 0
            if options.prefix_weight > 0:
                targets = options.prefix_targets or (model.config.prefix_length if model is not None else 1)
            return CaptionVQAView(dataset, transform, tokenizer, options.vqa_fraction, seed=seed,
                                  prefix_targets=targets)
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

