"""Evaluation cache keys name the architecture as well as the weights (issue 14 item 2), and the
fingerprint memo never outlives a change of the weights.

Two models with equal weights but different configs (GELU vs QuickGELU) compute different features; they
used to share cached features and zero-shot classifiers in one process, and across runs with a cache folder.
"""
from __future__ import annotations

import copy

import pytest
import torch

from mmfm.adapt import apply_lora, merge_lora, unload_lora, unmerge_lora
from mmfm.eval import FeatureCache, extract_image_features, model_fingerprint
from mmfm.eval.zero_shot import build_zero_shot_classifier
from mmfm.api import create_model
from mmfm.models import get_model_config


def gelu_and_quickgelu():
    torch.manual_seed(0)
    gelu = create_model("ViT-tiny-test").eval()
    cfg = get_model_config("ViT-tiny-test")
    cfg.quick_gelu = True
    quick = create_model(cfg).eval()
    quick.load_state_dict(gelu.state_dict())
    return gelu, quick


def test_equal_weights_other_activation_do_not_share_features_or_classifiers(shapes_small):
    gelu, quick = gelu_and_quickgelu()
    assert model_fingerprint(gelu) != model_fingerprint(quick)
    kw = dict(progress=False)   # the process-wide in-memory cache
    a = extract_image_features(gelu, shapes_small, **kw).features
    b = extract_image_features(quick, shapes_small, **kw).features
    assert not torch.equal(a, b)
    assert torch.equal(b, extract_image_features(quick, shapes_small, use_cache=False, **kw).features)
    names, templates = ["red", "blue"], ["a {} shape"]
    wa = build_zero_shot_classifier(gelu, names, templates)
    wb = build_zero_shot_classifier(quick, names, templates)
    assert not torch.equal(wa, wb)
    assert torch.equal(wb, build_zero_shot_classifier(quick, names, templates, use_cache=False))


def test_equal_weights_other_activation_do_not_share_a_cache_folder_across_runs(shapes_small, tmp_path):
    gelu, quick = gelu_and_quickgelu()
    first_run = FeatureCache(tmp_path)
    extract_image_features(gelu, shapes_small, cache=first_run, progress=False)
    second_run = FeatureCache(tmp_path)   # a new process: nothing in memory, the files on disk
    b = extract_image_features(quick, shapes_small, cache=second_run, progress=False)
    assert b.perf is not None and not b.perf.cached
    assert torch.equal(b.features, extract_image_features(quick, shapes_small, use_cache=False, progress=False).features)
    # The same weights and architecture still hit, whatever object holds them.
    again = extract_image_features(copy.deepcopy(gelu), shapes_small, cache=FeatureCache(tmp_path), progress=False)
    assert again.perf.cached


def _fresh_fingerprint(model) -> str:
    return model_fingerprint(copy.deepcopy(model))   # a new object: no memo, hashed from scratch


@pytest.mark.parametrize("safe", [True, False], ids=["safe-merge", "unsafe-merge"])
def test_the_fingerprint_follows_lora_merge_unmerge_and_unload(safe):
    torch.manual_seed(0)
    model = apply_lora(create_model("ViT-tiny-test"), r=2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(std=0.5)
    previous = model_fingerprint(model)
    for mutate in (lambda m: merge_lora(m, safe=safe), unmerge_lora, lambda m: merge_lora(m, safe=safe),
                   lambda m: unload_lora(m, merge=False)):
        mutate(model)
        fp = model_fingerprint(model)   # memoised from the step before: must notice PEFT's .data writes
        assert fp == _fresh_fingerprint(model) != previous
        previous = fp


def test_the_fingerprint_follows_writes_through_data_and_dtype_changes():
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    fp = model_fingerprint(model)
    model.visual.proj.data.mul_(2.0)   # no _version change, same address
    assert model_fingerprint(model) == _fresh_fingerprint(model) != fp
    half = model.to(torch.bfloat16)
    assert model_fingerprint(half) == _fresh_fingerprint(half) != fp


def test_the_fingerprint_memo_does_not_keep_replaced_weights_alive():
    """After ``model.cpu()`` (or any ``.data`` swap) the old weights must be freed, not held by the memo."""
    import gc
    import weakref
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    fp = model_fingerprint(model)
    old = weakref.ref(model.visual.proj.untyped_storage())
    model.visual.proj.data = torch.randn_like(model.visual.proj)   # what Module._apply does on .to(device)
    gc.collect()
    assert old() is None
    assert model_fingerprint(model) == _fresh_fingerprint(model) != fp
