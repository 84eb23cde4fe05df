"""A causal language model built from its Hugging Face config dict (Frozen's ``lm``), with random weights.

Shapes come from the dict alone, so a model of any size can be built on the meta device (``mmfm info``).
Reading *pretrained* weights (a local directory, the Hugging Face cache, a download) is not done here: it
needs the hub's network checks and checkpoint errors, which live above models (``mmfm.frozen.lm``).
``transformers`` is imported only when a model is built.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..util.hf import quiet_transformers


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
