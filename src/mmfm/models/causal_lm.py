"""A causal language model built from its Hugging Face config dict (Frozen's ``lm``), with random weights.

Shapes come from the dict alone, so a model of any size can be built on the meta device (``mmfm info``).
Reading *pretrained* weights (a local directory, the Hugging Face cache, a download) is not done here: it
needs the hub's network checks and checkpoint errors, which live above models (``mmfm.frozen.lm``).
``transformers`` is imported only when a model is built.

``family: causal_lm`` (:class:`CausalLMConfig`, :class:`CausalLM`) is such an LM trained from scratch on text by
``mmfm run`` (the tokenizer, data and saving are :class:`mmfm.frozen.lm.CausalLMFamily`'s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..util.hf import quiet_transformers
from .config import ConfigError, ModelConfig
from .factory import register_builder
from .registry import register_config_class


def lm_config(lm_cfg: dict[str, Any]):
    """The transformers config object of a config dict (``model_type`` defaults to ``"gpt2"``)."""
    from transformers import AutoConfig
    d = dict(lm_cfg)
    model_type = d.pop("model_type", "gpt2")
    with quiet_transformers():   # GPT2Config warns about its default token ids with a small vocabulary
        return AutoConfig.for_model(model_type, **d)


def causal_lm_from_config(lm_cfg: dict[str, Any]) -> nn.Module:
    """``AutoModelForCausalLM`` of ``lm_cfg``'s shapes, randomly initialised (transformers' own init)."""
    from transformers import AutoModelForCausalLM
    with quiet_transformers():
        return AutoModelForCausalLM.from_config(lm_config(lm_cfg))


@torch.no_grad()
def init_sinusoidal_positions(model: nn.Module, scale: float = 0.02) -> None:
    """Start a GPT-2's (trainable) position embeddings from the original Transformer's sinusoids.

    A learned table starts as noise, and a head that looks "one token back" then has to be learned for
    every position separately; with sinusoids, the offset between two positions is a fixed rotation,
    which attention can pick up at once. ``scale`` matches GPT-2's embedding initialisation (std 0.02).
    """
    if not hasattr(getattr(model, "transformer", None), "wpe"):
        raise ValueError("sinusoidal position embeddings apply to GPT-2 models (transformer.wpe)")
    wpe = model.transformer.wpe
    n, d = wpe.weight.shape
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    wpe.weight.copy_(scale * math.sqrt(2.0) * table)   # sqrt(2): unit variance per entry before scaling


# ------------------------------------------------------------------------------------------
# A causal LM as a model family of its own (``family: causal_lm``), so `mmfm run` trains it with the Trainer.
@dataclass
class CausalLMConfig(ModelConfig):
    """A causal LM trained from scratch on text (next-token cross-entropy on padded documents).

    lm: the Hugging Face config dict (``model_type`` defaults to ``"gpt2"``). ``vocab_size`` and the token ids
        may be left out: ``mmfm run`` fills them in from the tokenizer (:func:`complete_lm_config`).
    sinusoidal_positions: GPT-2 only: start the position table from sinusoids (:func:`init_sinusoidal_positions`).
    """

    family: Literal["causal_lm"] = "causal_lm"
    lm: dict[str, Any] = field(default_factory=dict)
    sinusoidal_positions: bool = False

    def __post_init__(self):
        if not isinstance(self.lm, dict):
            raise ConfigError(f"causal_lm.lm: expected a mapping (a Hugging Face config dict), got {self.lm!r}")
        if not isinstance(self.sinusoidal_positions, bool):
            raise ConfigError(f"causal_lm.sinusoidal_positions: expected true/false, got {self.sinusoidal_positions!r}")


def complete_lm_config(lm: dict[str, Any], vocab_size: int, eos_id: int) -> dict[str, Any]:
    """A small GPT-2's config dict (no dropout) with ``lm``'s entries over it and the tokenizer's sizes where
    ``lm`` names none: what a from-scratch LM on a freshly trained tokenizer needs."""
    base = {"model_type": "gpt2", "n_positions": 128, "n_embd": 128, "n_layer": 4, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return {**base, "vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id, **lm}


class CausalLM(nn.Module):
    """``lm`` (a transformers causal LM) with mmfm's model interface: ``config`` and a forward that returns
    ``{"loss", "logits"}``: the mean cross-entropy of every next token inside ``attention_mask``."""

    def __init__(self, config: CausalLMConfig):
        super().__init__()
        if "vocab_size" not in config.lm:
            raise ConfigError("causal_lm.lm: no vocab_size (mmfm run fills it in from the tokenizer; when building "
                              "the model yourself, give it)")
        self.config = config
        self.lm = causal_lm_from_config(config.lm)
        if config.sinusoidal_positions:
            init_sinusoidal_positions(self.lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100)
        return {"loss": loss, "logits": logits}


register_config_class("causal_lm", CausalLMConfig)
register_builder(CausalLMConfig, CausalLM)
