"""Frozen's vision side, used for inference (packed/fused weights cached), then trained with the Trainer,
then used again: it computes exactly what a fresh model loading the saved weights computes."""
from __future__ import annotations

import torch

from mmfm.data import ImageTextView, Shapes
from mmfm.data.transforms import image_transform
from mmfm.eval import model_fingerprint
from mmfm.frozen.io import load_frozen, save_frozen
from mmfm.frozen.objective import FrozenObjective
from mmfm.train import TrainConfig, Trainer
from mmfm.util.weights import version


def test_inference_after_training_equals_a_fresh_model_on_the_saved_weights(tiny_model, tokenizer, tmp_path):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tiny_model.eval()
    with torch.inference_mode():
        before = tiny_model.embed_images(x)   # fills the attention pool's packed-weight cache
    fp_before = model_fingerprint(tiny_model)

    train = ImageTextView(Shapes("train", size=8, image_size=32), image_transform(32, train=True), tokenizer)
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-2, device="cpu", progress=False, tensorboard=False, log_every=1)
    Trainer(tiny_model, train, cfg, tmp_path / "run", objective=FrozenObjective.for_tokenizer(tokenizer)).fit()
    tiny_model.eval()
    with torch.inference_mode():
        after = tiny_model.embed_images(x)
    assert not torch.equal(after, before)
    assert model_fingerprint(tiny_model) != fp_before

    save_frozen(tiny_model, tmp_path / "model", tokenizer)
    v = version()
    fresh, _ = load_frozen(tmp_path / "model")
    assert version() > v, "loading weights into a Frozen model advances the weights version"
    with torch.inference_mode():
        assert torch.equal(after, fresh.eval().embed_images(x))
    assert model_fingerprint(fresh) == model_fingerprint(tiny_model)
