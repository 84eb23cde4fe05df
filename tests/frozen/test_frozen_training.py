"""Frozen through mmfm's Trainer: only the vision side learns; the LM is bit-identical and gets no gradient."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from mmfm.data import ImageTextView, Shapes
from mmfm.data.transforms import image_transform
from mmfm.frozen.objective import FrozenObjective
from mmfm.frozen.tasks import CaptionVQAView
from mmfm.train import TrainConfig, Trainer
from mmfm.train.objectives import split_batch

DDP_WORKER = Path(__file__).with_name("frozen_ddp_worker.py")


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
    from mmfm.api import create_model   # the door reads pretrained_lm
    train, val = _views(tokenizer)
    torch.manual_seed(0)
    first = create_model(tiny_config)
    Trainer(first, train, _cfg(max_steps=2), tmp_path, objective=FrozenObjective.for_tokenizer(tokenizer)).fit()
    ckpt = torch.load(sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)
    assert not any(k.startswith("lm.") for k in ckpt["model"])     # checkpoints carry the trained part only
    torch.manual_seed(1)
    second = create_model(tiny_config)
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
    from mmfm.data.shapes_text import description
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


def _grads(model, objective, micro_batches):
    model.zero_grad(set_to_none=True)
    out = objective.forward_backward(model, micro_batches, lambda l: l.backward(), nullcontext, lambda last: nullcontext())
    return out["loss"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("with_prefix_targets", [False, True])
def test_accumulation_weights_micro_batches_by_tokens_and_equals_one_big_batch(tiny_model, tokenizer,
                                                                               with_prefix_targets):
    captions = ["a green star", "a small red circle at the top left", "a red circle",
                "there is a yellow cross a photo of a pink heart"]
    batch = {"image": torch.randn(4, 3, 32, 32), "text": tokenizer(captions)}
    if with_prefix_targets:
        batch["prefix_targets"] = torch.tensor([tokenizer.encode(c)[-2:] for c in captions])
    tiny_model.eval()                       # BatchNorm on running stats: the split cannot change the forward
    objective = FrozenObjective.for_tokenizer(tokenizer, prefix_weight=0.5)
    loss, full = _grads(tiny_model, objective, [batch])
    split_loss, split = _grads(tiny_model, objective, split_batch(batch, 2))
    assert split_loss == pytest.approx(loss, rel=1e-5)
    for n, g in full.items():
        torch.testing.assert_close(split[n], g, rtol=1e-4, atol=1e-7, msg=n)
    # The halves hold 9 and 5 target tokens: a plain mean of the two micro-batch losses would be another gradient.
    halves = split_batch(batch, 2)
    tiny_model.zero_grad(set_to_none=True)
    for half in halves:
        (tiny_model(**objective.model_inputs(half))["loss"] / 2).backward()
    assert not torch.allclose(tiny_model.mapper.weight.grad, full["mapper.weight"], rtol=1e-3, atol=1e-7)


def test_bf16_autocast_training_runs_and_leaves_the_lm_alone(tiny_model, tokenizer, tmp_path):
    lm_before = {n: p.detach().clone() for n, p in tiny_model.lm.named_parameters()}
    train, _ = _views(tokenizer)
    result = Trainer(tiny_model, train, _cfg(max_steps=2, precision="bf16"), tmp_path,
                     objective=FrozenObjective.for_tokenizer(tokenizer, 4)).fit()
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert all(torch.equal(p, lm_before[n]) and p.grad is None for n, p in tiny_model.lm.named_parameters())


def test_trains_on_custom_csv_and_webdataset_shards(tiny_model, tokenizer, tmp_path):
    from mmfm.data.custom import CustomDataset
    from mmfm.data.shards import ShardDataset, write_shards
    shapes = Shapes("train", size=8, image_size=32)
    (tmp_path / "images").mkdir()
    rows = ["path,caption"]
    for i in range(8):
        shapes[i].image.save(tmp_path / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{shapes[i].captions[0]}")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    custom = ImageTextView(CustomDataset(tmp_path), image_transform(32, train=True), tokenizer)
    written = write_shards(shapes, tmp_path / "shards", maxcount=4, image_format="png")
    stream = ShardDataset(written.pattern).with_transforms(image_transform(32, train=True), tokenizer)
    for name, data in (("custom", custom), ("shards", stream)):
        result = Trainer(tiny_model, data, _cfg(max_steps=2), tmp_path / name,
                         objective=FrozenObjective.for_tokenizer(tokenizer, 4)).fit()
        assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss)), name


@pytest.mark.slow
def test_two_ranks_equal_one_rank_double_batch_and_the_trainer_runs_ddp(tmp_path, run_ranks):
    single = run_ranks(DDP_WORKER, tmp_path / "single.pt", 1, 8, 1)
    for other in (run_ranks(DDP_WORKER, tmp_path / "ddp.pt", 2, 4, 1), run_ranks(DDP_WORKER, tmp_path / "acc.pt", 2, 4, 2)):
        assert float(other["loss"]) == pytest.approx(float(single["loss"]), rel=1e-5)
        assert set(other["grads"]) == set(single["grads"]) and not any(n.startswith("lm.") for n in single["grads"])
        for n, g in single["grads"].items():
            torch.testing.assert_close(other["grads"][n], g, rtol=1e-4, atol=1e-7, msg=n)
        assert int(other["trainer_steps"]) == 2 and bool(other["lm_unchanged"])
