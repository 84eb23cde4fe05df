"""Few-shot LoRA trains through the Trainer and gives the numbers of the loop it replaced.

``old_lora_few_shot`` below is that loop (mmfm before issue 15), kept here only as the reference: same
optimizer (AdamW on the trainable parameters, constant lr, no clipping, no warm-up) and the same batches
(``torch.randperm(n, generator)[:batch_size]`` each step), and the same dropout masks.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfm.adapt import FEW_SHOT_METHODS, apply_lora, few_shot, lora_few_shot, register_few_shot_method
from mmfm.api import create_model
from mmfm.data import get_dataset


def _task_templates(dataset, attribute):
    tasks = dataset.zero_shot_tasks() if hasattr(dataset, "zero_shot_tasks") else {}
    for task in tasks.values():
        if task.attribute == attribute:
            return list(task.templates)
    return list(getattr(dataset, "templates", None) or ["a photo of a {}."])


def _class_text_features(model, tokens, num_classes):
    emb = F.normalize(model.encode_text(tokens), dim=-1)
    emb = emb.reshape(num_classes, -1, emb.shape[-1]).mean(dim=1)
    return F.normalize(emb, dim=-1)


def old_lora_few_shot(episode) -> dict:
    """The few-shot LoRA loop as it was before it ran on the Trainer (options as the tests below use them)."""
    from mmfm.eval.features import default_transform, extract_image_features, model_device
    from mmfm.eval.zero_shot import build_zero_shot_classifier
    from mmfm.tokenizer import get_tokenizer
    from mmfm.train.losses import clip_loss
    from mmfm.train.schedule import adamw_kernel
    opts = dict(episode.options)
    objective = opts.pop("objective", "ce")
    steps, lr = int(opts.pop("steps", 50)), float(opts.pop("lr", 1e-3))
    weight_decay, batch_size = float(opts.pop("weight_decay", 0.0)), int(opts.pop("batch_size", 32))
    templates = list(opts.pop("templates", None) or _task_templates(episode.train_dataset, episode.attribute))
    device = torch.device(opts.pop("device", None) or model_device(episode.model))
    seed = int(opts.pop("seed", episode.seed))
    transform = opts.pop("transform", None) or default_transform(episode.model)
    lora_kw = {k: opts.pop(k) for k in ("r", "alpha", "dropout", "target_modules", "towers", "bias") if k in opts}
    preset = opts.pop("preset", "fewshot-r2")
    torch.manual_seed(seed)
    model = apply_lora(copy.deepcopy(episode.model), preset, **lora_kw).to(device)
    images = torch.stack([transform(episode.train_dataset[int(i)].image) for i in episode.train_indices])
    labels = torch.as_tensor(episode.train_labels, dtype=torch.long)
    tok = get_tokenizer(model.context_length)
    classnames = episode.classnames
    class_tokens = tok([t.format(c) for c in classnames for t in templates]).to(device)
    pair_tokens = tok([templates[0].format(classnames[int(y)]) for y in labels]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adamw_kernel([{"params": params}]))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randperm(len(labels), generator=gen)[:batch_size]
        img = F.normalize(model.encode_image(images[idx].to(device)), dim=-1)
        scale = model.scale() if hasattr(model, "scale") else torch.tensor(100.0)
        if objective == "ce":
            classes = _class_text_features(model, class_tokens, len(classnames))
            loss = F.cross_entropy(scale * img @ classes.T, labels[idx].to(device))
        else:
            txt = F.normalize(model.encode_text(pair_tokens[idx]), dim=-1)
            loss = clip_loss(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    weights = build_zero_shot_classifier(model, classnames, templates, device=device, use_cache=False)
    feats = extract_image_features(model, episode.test_dataset, kind="embedding", attribute=episode.attribute,
                                   device=device, transform=transform, use_cache=False, progress=False)
    scores = F.normalize(feats.features, dim=-1) @ weights
    return {"predictions": scores.argmax(dim=1).numpy().astype(np.int64), "final_loss": float(loss.detach()),
            "scores": scores}


@pytest.fixture(scope="module")
def episode():
    """One real episode (3 shots of each colour) of a tiny CLIP, as ``few_shot`` hands it to a method."""
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    train = get_dataset("shapes", split="train", size=48, image_size=32)
    test = get_dataset("shapes", split="test", size=24, image_size=32)
    seen = []

    def capture(ep):
        seen.append(ep)
        return np.zeros(len(ep.test_labels), dtype=np.int64)

    register_few_shot_method("_capture", capture, overwrite=True)
    try:
        few_shot(model, train, test, shots=(3,), seeds=(4,), method="_capture", task="color", progress=False)
    finally:
        FEW_SHOT_METHODS.pop("_capture")
    return seen[0]


@pytest.mark.parametrize("options", [
    {"objective": "ce", "steps": 6, "batch_size": 8, "lr": 1e-2},
    {"objective": "contrastive", "steps": 6, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.1},
    {"objective": "ce", "steps": 3, "batch_size": 64, "lr": 1e-2, "preset": "qv-r16", "r": 2},   # batch > shots
    # trainable biases (1-D) decayed too, as the old loop's one AdamW group did
    {"objective": "ce", "steps": 4, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.1, "bias": "all"},
], ids=["ce", "contrastive-decay", "ce-whole-set", "ce-decay-biases"])
def test_lora_few_shot_gives_the_numbers_of_the_loop_it_replaced(episode, options):
    episode = copy.copy(episode)
    episode.options = options
    before = [p.detach().clone() for p in episode.model.parameters()]
    new = lora_few_shot(episode)
    old = old_lora_few_shot(episode)
    assert new["extra"]["final_loss"] == old["final_loss"]   # bit for bit: same batches, steps and dropout masks
    assert np.array_equal(new["predictions"], old["predictions"])
    assert all(torch.equal(a, b) for a, b in zip(before, episode.model.parameters()))   # a copy was adapted
