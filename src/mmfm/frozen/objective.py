"""Frozen's training objective for mmfm's ``Trainer``: captioning cross-entropy through the frozen LM.

The loss is a mean over target tokens, and micro-batches (and DDP ranks) hold different numbers of
them, so averaging their losses would weight a token of a short-caption micro-batch more than one of a
long-caption micro-batch. ``forward_backward`` weights each micro-batch's mean by its share of the
step's tokens, counted over all micro-batches and all ranks: k micro-batches of B, or N ranks of B, give
the loss and gradients of one batch of kB or NB (tested). The optional prefix-on-description term is a
mean over images and is weighted by images the same way. AMP and resume come from the trainer unchanged.
Also: the batch's ``text`` tensor (from ``ImageTextView`` with a ``FrozenTokenizer``) becomes
``input_ids`` with an attention mask recovered from the ids, and inference (timed for the latency
report) is greedy captioning.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models.frozen import IGNORE_INDEX
from ..train.distributed import dist_info
from ..train.objectives import Objective, unwrap
from .text import attention_mask_from_ids


class FrozenObjective(Objective):
    input_keys = ("image", "input_ids", "attention_mask", "labels", "prefix_targets")

    def __init__(self, pad_id: int, eos_id: int | None, tokenizer=None, max_new_tokens: int = 20,
                 prefix_weight: float = 1.0):
        self.pad_id, self.eos_id = pad_id, eos_id
        self.prefix_weight = prefix_weight      # for batches with "prefix_targets" (see FrozenModel.forward)
        self.tokenizer = tokenizer               # a FrozenTokenizer, for the latency measurement's decoding
        self.max_new_tokens = max_new_tokens

    @classmethod
    def for_tokenizer(cls, tokenizer, max_new_tokens: int = 20, prefix_weight: float = 1.0) -> "FrozenObjective":
        return cls(tokenizer.pad_id, tokenizer.eos_id, tokenizer, max_new_tokens, prefix_weight)

    def model_inputs(self, batch: dict) -> dict:
        ids = batch["input_ids"] if "input_ids" in batch else batch["text"]
        if not torch.is_tensor(ids) or ids.ndim != 2:
            raise TypeError("Frozen needs token ids [B, T] in batch['text'] or batch['input_ids'] "
                            "(use ImageTextView with a FrozenTokenizer, caption_mode 'random' or 'first')")
        inputs = {"image": batch["image"], "input_ids": ids}
        mask = batch.get("attention_mask")
        inputs["attention_mask"] = mask if mask is not None else attention_mask_from_ids(ids, self.pad_id, self.eos_id)
        if batch.get("labels") is not None:
            inputs["labels"] = batch["labels"]
        if batch.get("prefix_targets") is not None:
            inputs["prefix_targets"] = batch["prefix_targets"]
            inputs["prefix_weight"] = self.prefix_weight
        return inputs

    def _counts(self, batch: dict) -> tuple[int, int]:
        """(target tokens, images) of a batch: what its caption and prefix losses are means over."""
        inputs = self.model_inputs(batch)
        labels = inputs.get("labels")
        tokens = int((labels != IGNORE_INDEX).sum()) if labels is not None else int(inputs["attention_mask"].sum())
        return tokens, int(inputs["image"].shape[0])

    def forward_backward(self, model, micro_batches, backward, autocast, sync) -> dict[str, float]:
        counts = [self._counts(mb) for mb in micro_batches]
        local = torch.tensor([sum(c[0] for c in counts), sum(c[1] for c in counts)], dtype=torch.float64)
        info = dist_info()
        totals = local
        if info.enabled:   # DDP averages gradients over ranks: weights are shares of the global batch x world
            import torch.distributed as dist
            totals = local.to(micro_batches[0]["image"].device, copy=True)   # all_reduce works in place
            dist.all_reduce(totals)
            totals = totals.cpu()
        all_tokens, all_images = float(totals[0]), float(totals[1])
        caption_sum = prefix_sum = 0.0
        for i, (mb, (tokens, images)) in enumerate(zip(micro_batches, counts)):
            with sync(i == len(micro_batches) - 1):
                with autocast():
                    out = self.loss(model, mb)
                caption = out.get("caption_loss", out["loss"])
                if not tokens:   # every target masked: a mean over nothing is NaN; zero gradient instead
                    caption = 0.0 * out["logits"].sum()     # (that still uses every parameter, as DDP wants)
                weighted = caption * (tokens * info.world_size / max(all_tokens, 1.0))
                if "prefix_loss" in out:
                    weighted = weighted + self.prefix_weight * out["prefix_loss"] * (images * info.world_size / all_images)
                backward(weighted)
            if tokens:
                caption_sum += float(out.get("caption_loss", out["loss"]).detach()) * tokens
            if "prefix_loss" in out:
                prefix_sum += float(out["prefix_loss"].detach()) * images
        # this rank's loss over its whole batch, the same number one un-split batch would report
        return {"loss": caption_sum / max(float(local[0]), 1.0) + self.prefix_weight * prefix_sum / float(local[1])}

    def inference(self, model: nn.Module, batch: dict) -> Callable[[], object]:
        """Greedy captioning of the batch's images (what a user waits for), up to ``max_new_tokens``."""
        core = unwrap(model)
        images = batch["image"]
        if self.tokenizer is None:
            return lambda: core(**self.model_inputs(batch))
        from .generate import generate
        prompts = [[img] for img in images]
        return lambda: generate(core, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens)
