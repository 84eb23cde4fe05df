"""Frozen through mmfm's Trainer: only the vision side learns; the LM is bit-identical and gets no gradient."""
from __future__ import annotations

import torch

from mmfm.data import ImageTextView, Shapes
from mmfm.data.transforms import image_transform
from mmfm.frozen.objective import FrozenObjective
from mmfm.frozen.tasks import CaptionVQAView
from mmfm.train import TrainConfig, Trainer


def _views(tokenizer, n=16):
    train = ImageTextView(Shapes("train", size=n, image_size=32), image_transform(32, train=True), tokenizer)
    val = ImageTextView(Shapes("val", size=4, image_size=32), image_transform(32), tokenizer, caption_mode="first")
    return train, val


def _cfg(**kw):
    base = dict(max_steps=3, batch_size=4, lr=1e-3, device="cpu", progress=False, tensorboard=False, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_only_the_vision_side_trains(tiny_model, tokenizer, tmp_path):
    lm_before = {n: p.detach().clone() for n, p in tiny_model.lm.named_parameters()}
    vision_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not n.startswith("lm.")}
    train, val = _views(tokenizer)
    result = Trainer(tiny_model, train, _cfg(), tmp_path, objective=FrozenObjective.for_tokenizer(tokenizer, 4),
                     val_data=val).fit()
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))
    for n, p in tiny_model.lm.named_parameters():
        assert p.grad is None, n
        assert torch.equal(p, lm_before[n]), n              # bit-identical
    changed = [n for n, p in tiny_model.named_parameters() if not n.startswith("lm.") and not torch.equal(p, vision_before[n])]
    assert any(n.startswith("mapper.") for n in changed) and any(n.startswith("visual.") for n in changed)
    assert result.params["trainable"] == sum(p.numel() for p in vision_before.values())
    assert "batch_1" in result.latency                     # greedy captioning was timed


def test_resume_restores_the_vision_side(tiny_config, tokenizer, tmp_path):
    from mmfm.models.frozen import FrozenModel
    train, val = _views(tokenizer)
    torch.manual_seed(0)
    first = FrozenModel(tiny_config)
    Trainer(first, train, _cfg(max_steps=2), tmp_path, objective=FrozenObjective.for_tokenizer(tokenizer)).fit()
    ckpt = torch.load(sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)
    assert not any(k.startswith("lm.") for k in ckpt["model"])     # checkpoints carry the trained part only
    torch.manual_seed(1)
    second = FrozenModel(tiny_config)
    result = Trainer(second, train, _cfg(max_steps=3), tmp_path, objective=FrozenObjective.for_tokenizer(tokenizer)).fit()
    assert result.resumed_from_step == 2 and result.steps == 3


def test_vqa_targets_mix_in(tiny_model, tokenizer, tmp_path):
    ds = Shapes("train", size=8, image_size=32)
    view = CaptionVQAView(ds, image_transform(32), tokenizer, vqa_fraction=1.0, seed=0)
    item = view[0]
    assert item["labels"].shape == item["text"].shape
    assert (item["labels"] == -100).sum() > (item["text"] == tokenizer.pad_id).sum()   # prompt masked too
    result = Trainer(tiny_model, view, _cfg(max_steps=2), tmp_path,
                     objective=FrozenObjective.for_tokenizer(tokenizer)).fit()
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_prefix_targets_are_the_last_words_of_the_description_and_train(tiny_model, tokenizer, tmp_path):
    from mmfm.frozen.corpus import description
    ds = Shapes("train", size=8, image_size=32)
    view = CaptionVQAView(ds, image_transform(32), tokenizer, seed=0, prefix_targets=2)
    item = view[3]
    assert tokenizer.decode(item["prefix_targets"]) == " ".join(description(ds.scene(3)).split()[-2:])
    assert "prefix_targets" not in CaptionVQAView(ds, image_transform(32), tokenizer)[3]
    objective = FrozenObjective.for_tokenizer(tokenizer, prefix_weight=5.0)
    batch = {k: torch.stack([view[i][k] for i in range(2)]) for k in ("image", "text", "prefix_targets")}
    inputs = objective.model_inputs(batch)
    assert inputs["prefix_weight"] == 5.0 and torch.equal(inputs["prefix_targets"], batch["prefix_targets"])
    before = tiny_model(**{k: v for k, v in inputs.items()})["prefix_loss"].item()
    Trainer(tiny_model, view, _cfg(max_steps=8, lr=3e-3), tmp_path, objective=objective).fit()
    after = tiny_model.eval()(**inputs)["prefix_loss"].item()
    assert after < before
