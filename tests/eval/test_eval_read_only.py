"""Evaluations report on a model and change nothing in it (issue 14 item 4): every parameter and buffer
(values, devices, dtypes, requires_grad), the module tree and every module's training flag, including a
submodule whose mode differs from its parent's (a locked tower kept in eval mode while the rest trains).
"""
from __future__ import annotations

import pytest
import torch

from mmfm.adapt import few_shot
from mmfm.eval import encode_texts, extract_image_features, linear_probe, model_fingerprint, retrieval, zero_shot
from mmfm.api import create_model

CALLS = {
    "fingerprint": lambda m, d: model_fingerprint(m),
    "image features": lambda m, d: extract_image_features(m, d, kind="pre_projection", use_cache=False, progress=False),
    "text features": lambda m, d: encode_texts(m, ["a red circle", "a blue square"]),
    "zero-shot": lambda m, d: zero_shot(m, d, task="color", progress=False),
    "linear probe": lambda m, d: linear_probe(m, d, d, task="color", c_values=[1.0], coarse_to_fine=False,
                                              progress=False),
    "few-shot lora": lambda m, d: few_shot(m, d, d, shots=(1,), seeds=(0,), method="lora", task="color",
                                           method_options={"steps": 2}, progress=False),
    "retrieval": lambda m, d: retrieval(m, d, progress=False),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_an_evaluation_leaves_the_model_as_it_was(call, shapes_small, model_state):
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    model.train()
    model.lock_image_tower(unlocked_groups=1)
    model.visual.transformer.blocks[0].eval()   # a frozen part kept in eval mode while the rest trains
    before = model_state(model)
    CALLS[call](model, shapes_small)
    before.assert_same(model)
