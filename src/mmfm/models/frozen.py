"""Frozen (Tsimpoukelli et al., NeurIPS 2021): a trainable vision encoder that talks to a frozen language model.

    image -> vision encoder -> linear map -> N "visual prefix" embeddings  ┐
                                                                           ├-> frozen causal LM -> text
    text  -> the LM's own (frozen) token embeddings ───────────────────────┘

Only the vision encoder and the linear map are trained, on image captioning; the LM is never updated,
so whatever it learned from text alone (answering questions, copying a new word it was just told) is
kept and can be reached through images, few-shot, by interleaving images and text in the prompt.

Shapes come from the config alone: ``lm`` is a Hugging Face config dict (GPT-2 family by default), so
``mmfm info frozen-rn50-gpt2-large`` counts 800M parameters on the meta device without downloading
anything. The LM's *weights* come from ``pretrained_lm`` (a hub name or a local directory) only when a
real model is built. ``transformers`` and ``torchvision`` are imported lazily: ``import mmfm.models``
stays fast.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..util.weights import track_loads
from .causal_lm import causal_lm_from_config
from .config import ConfigError, ModelConfig, VisionConfig
from .factory import register_builder
from .registry import register_config_class, register_model
from .torchvision_tower import TorchvisionEncoder
from .towers import build_image_tower

IGNORE_INDEX = -100   # label value cross-entropy skips: visual prefix, prompt and padding positions


@dataclass
class FrozenConfig(ModelConfig):
    """Frozen = vision encoder + linear map to ``prefix_length`` LM embeddings + a frozen causal LM.

    vision: a torchvision classification model name (``"resnet50"``, as in the paper, trained from
        scratch) or an mmfm image tower (a ``VisionConfig`` or its dict: ModifiedResNet / ViT).
    vision_embed_dim: mmfm towers only: width of the tower's output (its attention pool / projection);
        default the tower's feature width. torchvision models use their pooled features.
    image_size: input resolution; for an mmfm tower it must equal ``vision.image_size`` (default: that).
    prefix_length: number of visual prefix embeddings (the paper's n = 2).
    lm: Hugging Face config of the LM as a dict (``model_type`` defaults to ``"gpt2"``). Fixes every
        shape, so the model can be built without weights. Required unless ``pretrained_lm`` is a
        local directory (whose config.json is then read).
    pretrained_lm: hub identifier or local directory of the LM weights (``AutoModelForCausalLM``).
        None: the LM is built from ``lm`` with random weights (tests, shape-only uses) and its weights
        are then part of this model's state dict; otherwise they are not (they are re-read from here).
    tokenizer: hub identifier or local directory of the tokenizer (default ``pretrained_lm``).
    context_length: caption tokens (including the end-of-text token) used for training.
    """

    vision: str | VisionConfig = "resnet50"
    vision_embed_dim: int | None = None
    image_size: int | None = None
    prefix_length: int = 2
    lm: dict[str, Any] | None = None
    pretrained_lm: str | None = None
    tokenizer: str | None = None
    context_length: int = 32
    family: Literal["frozen"] = "frozen"

    NESTED: ClassVar[dict[str, Any]] = {"vision": VisionConfig}

    def __post_init__(self):
        if isinstance(self.vision, dict):
            names = {f.name for f in dataclasses.fields(VisionConfig)}
            unknown = sorted(set(self.vision) - names)
            if unknown:
                raise ConfigError(f"frozen.vision: unknown key(s) {unknown}; allowed keys: {sorted(names)}")
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.vision, VisionConfig):
            if self.image_size is None:
                self.image_size = self.vision.image_size
            elif self.image_size != self.vision.image_size:
                raise ConfigError(f"frozen: image_size {self.image_size} differs from vision.image_size "
                                  f"{self.vision.image_size}")
        elif not isinstance(self.vision, str) or not self.vision:
            raise ConfigError(f"frozen.vision: expected a torchvision model name or a vision tower config, "
                              f"got {self.vision!r}")
        if self.image_size is None:
            self.image_size = 224
        if self.prefix_length < 1:
            raise ConfigError(f"frozen.prefix_length must be >= 1, got {self.prefix_length}")
        if self.context_length < 2:
            raise ConfigError(f"frozen.context_length must be >= 2, got {self.context_length}")
        if self.lm is None and self.pretrained_lm is None:
            raise ConfigError("frozen: give the language model's config (`lm`), its weights (`pretrained_lm`), or both")
        if self.lm is not None and not isinstance(self.lm, dict):
            raise ConfigError(f"frozen.lm: expected a Hugging Face config dict, got {type(self.lm).__name__}")

    @property
    def tokenizer_path(self) -> str | None:
        return self.tokenizer or self.pretrained_lm

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(self.vision, VisionConfig) and isinstance(d["vision"].get("layers"), tuple):
            d["vision"]["layers"] = list(d["vision"]["layers"])
        return d


# ------------------------------------------------------------------------------------------
# Vision encoder: anything that maps [B, 3, H, W] to a pooled feature vector [B, C].
def build_vision_encoder(cfg: FrozenConfig) -> tuple[nn.Module, int]:
    """(encoder, width of its output)."""
    if isinstance(cfg.vision, VisionConfig):
        dim = cfg.vision_embed_dim or cfg.vision.feature_dim
        # The tower's own head (attention pool / projection) is kept and trained: every parameter is
        # used, which DDP requires, and it is the tower's natural pooled output.
        return build_image_tower(cfg.vision, dim), dim
    if cfg.vision_embed_dim is not None:
        raise ConfigError("frozen.vision_embed_dim applies to mmfm vision towers only, not torchvision models")
    encoder = TorchvisionEncoder(cfg.vision)
    return encoder, encoder.feature_dim


def _building_on_meta() -> bool:
    """True inside ``with torch.device("meta")`` (mmfm info, shape checks): no weights may be read then."""
    return torch.get_default_device().type == "meta"


# ------------------------------------------------------------------------------------------
# The language model: (lm config dict or None, pretrained_lm, load_weights) -> causal LM.
LMLoader = Callable[[Optional[dict], str, bool], nn.Module]


def _language_model(cfg: FrozenConfig, lm_loader: LMLoader | None) -> nn.Module:
    """Random weights from ``cfg.lm`` unless ``cfg.pretrained_lm`` must be read (weights, or on the meta device
    the shapes of a config that gives only ``pretrained_lm``)."""
    on_meta = _building_on_meta()
    if cfg.pretrained_lm is None or (on_meta and cfg.lm is not None):
        return causal_lm_from_config(cfg.lm)
    if lm_loader is None:
        raise ConfigError(f"frozen: the language model {cfg.pretrained_lm!r} has to be read from disk or the hub: "
                          "build this config with mmfm.create_model (which reads it), or give FrozenModel the "
                          "lm (lm=) or a loader (lm_loader=)")
    return lm_loader(cfg.lm, cfg.pretrained_lm, not on_meta)


class FrozenModel(nn.Module):
    """``visual`` (trained) -> ``mapper`` (trained) -> ``lm`` (frozen, always in eval mode).

    ``forward(image, input_ids, attention_mask=None, labels=None) -> {"loss", "logits"}``: the LM reads
    [visual prefix; token embeddings]; the loss is next-token cross-entropy on the text tokens only
    (``labels`` default to ``input_ids`` with padding ignored; pass labels with ``IGNORE_INDEX`` on a
    prompt to train on answers only). ``logits`` cover every position, prefix included. With
    ``prefix_targets`` the loss also pulls the prefix onto given token embeddings (see ``forward``).
    """

    def __init__(self, cfg: FrozenConfig, lm: nn.Module | None = None, lm_loader: LMLoader | None = None):
        """``lm``: the language model, already built; else built from ``cfg.lm`` (random weights) or, when
        ``cfg.pretrained_lm`` is to be read, by ``lm_loader(cfg.lm, cfg.pretrained_lm, load_weights)``:
        reading weights from disk or the hub is not models' job (``mmfm.create_model`` passes the loader)."""
        super().__init__()
        self.config = cfg
        self.visual, feature_dim = build_vision_encoder(cfg)
        if lm is None:
            lm = _language_model(cfg, lm_loader)
        self.lm = lm
        self.embed_dim = int(lm.get_input_embeddings().embedding_dim)
        self.mapper = nn.Linear(feature_dim, cfg.prefix_length * self.embed_dim)
        self.lm.requires_grad_(False)
        self.lm.eval()
        track_loads(self)   # loading weights advances mmfm's weights version (caches re-check)
        # The LM's weights are saved with the model only when they cannot be re-read from pretrained_lm
        # (a checkpoint of Frozen on GPT-2 Large is then ~115 MB, not 3 GB).
        self.lm_in_state_dict = cfg.pretrained_lm is None
        if not self.lm_in_state_dict:
            self.register_state_dict_post_hook(_drop_lm_keys)

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def prefix_length(self) -> int:
        return self.config.prefix_length

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Visual prefix: [B, 3, H, W] -> [B, prefix_length, embed_dim] in the LM's embedding space."""
        features = self.visual(images)
        return self.mapper(features).view(images.shape[0], self.prefix_length, self.embed_dim)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)

    # -- training -------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, prefix_targets: torch.Tensor | None = None,
                prefix_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """``prefix_targets`` [B, m] (optional, m <= prefix_length): token ids the last m visual prefix
        embeddings should sit on (the first prefix_length - m stay free). Adds ``prefix_weight`` x the squared
        distance between each of those prefix embeddings and the LM's embedding of its target token, relative
        to the embeddings' mean squared norm (so 1.0 is a meaningful weight).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = self.embed_images(image)
        tokens = self.embed_tokens(input_ids)
        embeds = torch.cat([prefix, tokens.to(prefix.dtype)], dim=1)
        n = self.prefix_length
        mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], n), attention_mask], dim=1)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits
        if labels is None:
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        # Position n-1 (the last prefix slot) predicts the first text token, and so on.
        text_logits = logits[:, n - 1:-1]
        loss = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        out = {"loss": loss, "logits": logits}
        if prefix_targets is not None:
            m = prefix_targets.shape[-1] if prefix_targets.ndim == 2 else 0
            if prefix_targets.ndim != 2 or prefix_targets.shape[0] != input_ids.shape[0] or not 1 <= m <= n:
                raise ValueError(f"prefix_targets must be [batch, m] with batch {input_ids.shape[0]} and "
                                 f"1 <= m <= prefix_length = {n}, got {list(prefix_targets.shape)}")
            target = self.embed_tokens(prefix_targets).float()
            scale = self.lm.get_input_embeddings().weight.detach().float().pow(2).sum(-1).mean()
            out["caption_loss"] = loss
            out["prefix_loss"] = (prefix[:, n - m:].float() - target).pow(2).sum(-1).mean() / scale
            out["loss"] = loss + prefix_weight * out["prefix_loss"]
        return out

    def train(self, mode: bool = True) -> "FrozenModel":
        # The LM is a fixed function: no dropout in it, ever, even while the vision side trains.
        super().train(mode)
        self.lm.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.lm, "gradient_checkpointing_enable") and enable:
            self.lm.gradient_checkpointing_enable()

    # -- state ----------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, except that a state dict without the LM is complete when the LM is external."""
        if self.lm_in_state_dict or any(k.startswith("lm.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("lm.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"error loading FrozenModel state: missing keys {missing}, unexpected keys "
                               f"{result.unexpected_keys}")
        return result.__class__(missing, result.unexpected_keys)


def _drop_lm_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "lm.")]:
        del state_dict[key]


register_config_class("frozen", FrozenConfig)
register_builder(FrozenConfig, FrozenModel)   # create_model(cfg, ...) builds Frozen with a random or given LM


# ------------------------------------------------------------------------------------------
# Named configs. GPT-2 shapes are those of the released checkpoints, so ``pretrained_lm`` loads into them.
def gpt2_config(n_embd: int, n_layer: int, n_head: int, vocab_size: int = 50257, n_positions: int = 1024,
                **kw: Any) -> dict[str, Any]:
    return {"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd,
            "n_layer": n_layer, "n_head": n_head, **kw}


GPT2_SIZES = {"gpt2": gpt2_config(768, 12, 12), "gpt2-medium": gpt2_config(1024, 24, 16),
              "gpt2-large": gpt2_config(1280, 36, 20), "gpt2-xl": gpt2_config(1600, 48, 25)}

_SMALL_LM = gpt2_config(128, 2, 4, vocab_size=512, n_positions=128, bos_token_id=0, eos_token_id=0)
_TINY_LM = gpt2_config(32, 2, 2, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0)

_NAMED: dict[str, tuple[FrozenConfig, str]] = {
    "frozen-rn50-gpt2-large": (
        FrozenConfig(vision="resnet50", lm=copy.deepcopy(GPT2_SIZES["gpt2-large"]), pretrained_lm="gpt2-large"),
        "Frozen at the published scale: ResNet-50 (from scratch) + frozen GPT-2 Large, 2 visual tokens"),
    "frozen-rn50-gpt2": (
        FrozenConfig(vision="resnet50", lm=copy.deepcopy(GPT2_SIZES["gpt2"]), pretrained_lm="gpt2"),
        "ResNet-50 + frozen GPT-2 (124M), 2 visual tokens"),
    "frozen-rn18-gpt2": (
        FrozenConfig(vision="resnet18", image_size=128, lm=copy.deepcopy(GPT2_SIZES["gpt2"]), pretrained_lm="gpt2"),
        "ResNet-18 at 128px + frozen GPT-2 (124M): a single-GPU Frozen"),
    "frozen-small-64": (
        FrozenConfig(vision=VisionConfig(kind="modified_resnet", image_size=64, width=32, layers=(1, 1, 1, 1)),
                     vision_embed_dim=256, lm=_SMALL_LM, context_length=24),
        "small ModifiedResNet at 64px + a randomly initialised 2-layer GPT-2 (CPU; see experiments/frozen_shapes)"),
    "frozen-tiny-test": (
        FrozenConfig(vision=VisionConfig(kind="modified_resnet", image_size=32, width=8, layers=(1, 1, 1, 1),
                                         head_width=16),
                     vision_embed_dim=32, lm=_TINY_LM, context_length=12),
        "tiny Frozen for unit tests (random LM)"),
}

for _name, (_cfg, _desc) in _NAMED.items():
    register_model(_name, _cfg, _desc, overwrite=True)
