"""Frozen's training objective for mmfm's ``Trainer``: captioning cross-entropy through the frozen LM.

The loss is a mean over caption tokens, so the base ``Objective``'s plain gradient accumulation is
already exact (up to the token-count weighting of micro-batches, as everywhere else) and AMP, resume
and DDP come from the trainer unchanged. What this adds: the batch's ``text`` tensor (from
``ImageTextView`` with a ``FrozenTokenizer``) becomes ``input_ids`` with an attention mask recovered
from the ids, and inference (timed for the latency report) is greedy captioning.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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

    def inference(self, model: nn.Module, batch: dict) -> Callable[[], object]:
        """Greedy captioning of the batch's images (what a user waits for), up to ``max_new_tokens``."""
        core = unwrap(model)
        images = batch["image"]
        if self.tokenizer is None:
            return lambda: core(**self.model_inputs(batch))
        from .generate import generate
        prompts = [[img] for img in images]
        return lambda: generate(core, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens)
