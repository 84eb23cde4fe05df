"""Tiny Frozen models for the tests: a word-level tokenizer, a 2-layer GPT-2 of width 32, a small ResNet."""
from __future__ import annotations

import pytest
import torch

from mmfm.models.config import VisionConfig
from mmfm.models.frozen import FrozenConfig

TEXTS = ["a small red circle at the top left", "a large blue square in the centre", "a green star",
         "Q: what shape is this? A: circle", "Q: what colour is it? A: red", "This is a dax.", "This is a blicket.",
         "Q: What is this? A: dax", "there is a yellow cross", "a photo of a pink heart", "two three cyan purple orange"]


@pytest.fixture(scope="session")
def hf_tokenizer():
    from mmfm.frozen.lm import train_word_tokenizer
    return train_word_tokenizer(TEXTS)


@pytest.fixture(scope="session")
def tokenizer(hf_tokenizer):
    from mmfm.frozen.text import FrozenTokenizer
    return FrozenTokenizer(hf_tokenizer, context_length=12)


@pytest.fixture(scope="session")
def lm_config(hf_tokenizer):
    from mmfm.frozen.lm import tiny_gpt2_config
    return tiny_gpt2_config(len(hf_tokenizer), hf_tokenizer.eos_token_id, n_embd=32, n_layer=2, n_head=2, n_positions=64)


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory, hf_tokenizer, lm_config):
    """A "pretrained" LM directory (random weights, saved like any Hugging Face model) with its tokenizer."""
    from transformers import AutoModelForCausalLM

    from mmfm.models.causal_lm import lm_config as hf_config
    path = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config(lm_config)).save_pretrained(str(path))
    hf_tokenizer.save_pretrained(str(path))
    return path


def tiny_vision() -> VisionConfig:
    return VisionConfig(kind="modified_resnet", image_size=32, width=8, layers=(1, 1, 1, 1), head_width=16)


@pytest.fixture
def tiny_config(lm_config, lm_dir) -> FrozenConfig:
    return FrozenConfig(vision=tiny_vision(), vision_embed_dim=32, prefix_length=2, lm=dict(lm_config),
                        pretrained_lm=str(lm_dir), context_length=12)


@pytest.fixture
def tiny_model(tiny_config):
    from mmfm.api import create_model   # the door reads the LM from lm_dir (models never read weights)
    torch.manual_seed(0)
    return create_model(tiny_config)
