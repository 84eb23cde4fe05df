"""Training memory: nothing is built in a training step that the next optimizer step throws away."""
from contextlib import nullcontext

import torch

from mmfm.api import create_model
from mmfm.models import layers
from mmfm.train.objectives import ContrastiveObjective, split_batch


def _cached(model) -> int:
    return sum(len(m._cache._entries) for m in model.modules() if isinstance(getattr(m, "_cache", None), layers.PackedCache))


def _batch(n=8):
    torch.manual_seed(1)
    batch = {"image": torch.randn(n, 3, 32, 32), "text": torch.randint(1, 1000, (n, 16))}
    batch["text"][:, 9] = 49407
    return batch


def test_accumulation_builds_no_packed_copies_of_trained_weights():
    # The no-grad feature pass of contrastive accumulation used to pack every projection (a second copy of
    # the weights, ~0.6 GB for ViT-B-32) that the optimizer step made stale at once.
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    ContrastiveObjective().forward_backward(model, split_batch(_batch(), 4), lambda l: l.backward(), nullcontext,
                                            lambda last: nullcontext())
    assert _cached(model) == 0
    with torch.no_grad():                       # inference after training still uses the packed path
        model.eval().encode_image(torch.randn(2, 3, 32, 32))
    assert _cached(model) > 0


def test_feature_pass_computes_what_the_gradient_pass_recomputes():
    # With the same kernels in both passes, the cached negatives are bitwise the features the gradient pass
    # recomputes (the packed kernels differed by ~1e-6).
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test").train()
    b = _batch(4)
    with torch.no_grad():
        cached = model(image=b["image"], text=b["text"])
    live = model(image=b["image"], text=b["text"])
    assert torch.equal(cached["image_features"], live["image_features"].detach())
    assert torch.equal(cached["text_features"], live["text_features"].detach())
