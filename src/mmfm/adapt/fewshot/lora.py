"""Few-shot method ``"lora"``: fine-tune a LoRA'd copy of the model on the k-shot images with the class
prompts, through the Trainer (no output folder), then classify the test set zero-shot with it."""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...train.losses import clip_loss
from ...train.objectives import Objective
from ..lora import apply_lora


def _task_templates(dataset, attribute: str | None) -> list[str]:
    tasks = dataset.zero_shot_tasks() if hasattr(dataset, "zero_shot_tasks") else {}
    for task in tasks.values():
        if task.attribute == attribute:
            return list(task.templates)
    return list(getattr(dataset, "templates", None) or ["a photo of a {}."])


def _class_text_features(model: nn.Module, tokens: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised prompt-ensemble class embeddings ``[C, D]``, differentiable through the text tower."""
    emb = F.normalize(model.encode_text(tokens), dim=-1)
    emb = emb.reshape(num_classes, -1, emb.shape[-1]).mean(dim=1)   # tokens are class-major: [C * T]
    return F.normalize(emb, dim=-1)


class _ShotStream(torch.utils.data.IterableDataset):
    """The k-shot examples, ``steps`` batches of them: each step's ``torch.randperm(n, generator)[:batch_size]``
    from one generator seeded with ``seed`` (the draw of the loop this replaced, so the numbers are its own)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int):
        self.images, self.labels, self.steps, self.batch_size, self.seed = images, labels, steps, batch_size, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            for i in torch.randperm(len(self.labels), generator=gen)[:self.batch_size]:
                yield {"image": self.images[i], "label": self.labels[i]}


class FewShotLoraObjective(Objective):
    """The two few-shot losses on a batch of k-shot images and their labels.

    ``"ce"``: cross-entropy of the images against every class's prompt-ensemble embedding (the zero-shot
    classifier, differentiable through the text tower); ``"contrastive"``: CLIP's loss on (image, its class's
    first prompt) pairs."""

    def __init__(self, kind: str, class_tokens: torch.Tensor, prompt_tokens: torch.Tensor, num_classes: int):
        self.kind, self.class_tokens, self.prompt_tokens = kind, class_tokens, prompt_tokens
        self.num_classes = num_classes

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        img = F.normalize(model.encode_image(batch["image"]), dim=-1)
        scale = model.scale() if hasattr(model, "scale") else torch.tensor(100.0)
        if self.kind == "ce":
            classes = _class_text_features(model, self.class_tokens, self.num_classes)
            return {"loss": F.cross_entropy(scale * img @ classes.T, batch["label"])}
        txt = F.normalize(model.encode_text(self.prompt_tokens[batch["label"]]), dim=-1)
        return {"loss": clip_loss(img, txt, scale)}


def lora_few_shot(episode) -> dict[str, Any]:
    """Few-shot method ``"lora"`` of ``mmfm.adapt.few_shot(..., method="lora")`` (:mod:`mmfm.adapt.fewshot`).

    Fine-tunes a LoRA'd copy of ``episode.model`` on the k-shot images with the class prompts
    ("a photo of a {class}"), then classifies the test set zero-shot with the adapted model.
    ``episode.options`` (``few_shot(method_options=...)``): ``preset`` (``fewshot-r2``), any
    :func:`apply_lora` option (``r``, ``alpha``, ...), ``objective`` (``"ce"``: cross-entropy over the
    zero-shot classifier built from every class's prompts, the default; ``"contrastive"``: CLIP's loss
    on (image, its class prompt) pairs), ``steps`` (50), ``lr`` (1e-3), ``weight_decay`` (0.0),
    ``batch_size`` (32), ``templates`` (the task's), ``transform`` (the model's eval transform),
    ``device`` (the model's), ``seed`` (the episode's).

    Training is the Trainer's, without an output folder: AdamW (betas 0.9/0.999, eps 1e-8) at a constant
    lr, weight decay on every trainable parameter (trainable biases included), no clipping, a fresh random
    batch of the shots each step.
    """
    from ...eval.features import default_transform, extract_image_features, model_device
    from ...eval.zero_shot import build_zero_shot_classifier
    from ...tokenizer import get_tokenizer
    from ...train import TrainConfig, Trainer
    opts = dict(episode.options)
    objective = opts.pop("objective", "ce")
    if objective not in ("ce", "contrastive"):
        raise ValueError(f"lora_few_shot: objective must be 'ce' or 'contrastive', got {objective!r}")
    steps, lr = int(opts.pop("steps", 50)), float(opts.pop("lr", 1e-3))
    weight_decay, batch_size = float(opts.pop("weight_decay", 0.0)), int(opts.pop("batch_size", 32))
    templates = list(opts.pop("templates", None) or _task_templates(episode.train_dataset, episode.attribute))
    device = torch.device(opts.pop("device", None) or model_device(episode.model))
    seed = int(opts.pop("seed", episode.seed))
    transform = opts.pop("transform", None) or default_transform(episode.model)
    lora_kw = {k: opts.pop(k) for k in ("r", "alpha", "dropout", "target_modules", "towers", "bias") if k in opts}
    preset = opts.pop("preset", "fewshot-r2")
    if opts:
        raise ValueError(f"lora_few_shot: unknown option(s) {sorted(opts)}")

    t0 = time.perf_counter()
    torch.manual_seed(seed)   # the adapters' initialisation, then the dropout masks: the Trainer leaves it to us
    # Each episode adapts a fresh copy: the caller's model (and the next episode) never see the adapter.
    model = apply_lora(copy.deepcopy(episode.model), preset, **lora_kw).to(device)
    images = torch.stack([transform(episode.train_dataset[int(i)].image) for i in episode.train_indices])
    labels = torch.as_tensor(episode.train_labels, dtype=torch.long)
    tok = get_tokenizer(model.context_length)
    classnames = episode.classnames
    loss_fn = FewShotLoraObjective(objective, tok([t.format(c) for c in classnames for t in templates]).to(device),
                                   tok([templates[0].format(c) for c in classnames]).to(device), len(classnames))
    final_loss = float("nan")
    if steps > 0:
        batch = min(batch_size, len(labels))
        cfg = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, weight_decay=weight_decay, weight_decay_on="all",
                          betas=(0.9, 0.999), eps=1e-8, schedule="constant", grad_clip=None, seed=seed,
                          device=str(device), log_every=steps)
        stream = _ShotStream(images, labels, steps, batch, seed)
        final_loss = Trainer(model, stream, cfg, None, objective=loss_fn,
                             collate_fn=torch.utils.data.default_collate).fit().final_loss
    train_s = time.perf_counter() - t0

    model.eval()
    weights = build_zero_shot_classifier(model, classnames, templates, device=device, use_cache=False)
    feats = extract_image_features(model, episode.test_dataset, kind="embedding", attribute=episode.attribute,
                                   device=device, transform=transform, use_cache=False, progress=False)
    scores = F.normalize(feats.features, dim=-1) @ weights
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"predictions": scores.argmax(dim=1).numpy().astype(np.int64),
            "extra": {"final_loss": final_loss, "train_s": train_s, "objective": objective, "preset": preset,
                      "trainable_params": int(trainable)}}
