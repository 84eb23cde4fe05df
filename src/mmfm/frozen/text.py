"""The LM's tokenizer in the shape mmfm's data pipeline expects: ``list[str] -> LongTensor[N, ctx]``.

``ImageTextView`` stores one tensor per caption, so the attention mask is not carried along; it is
recovered from the ids instead (``attention_mask_from_ids``). That works even for GPT-2, whose only
special token serves as both end-of-text and padding: a caption ends at its *first* end-of-text token,
and everything after it is padding.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..models.frozen import IGNORE_INDEX


def attention_mask_from_ids(ids: torch.Tensor, pad_id: int, eos_id: int | None) -> torch.Tensor:
    """1 for real tokens (up to and including the first EOS), 0 for right padding."""
    if eos_id is None or pad_id != eos_id:
        return (ids != pad_id).long()
    is_eos = (ids == eos_id).long()
    eos_before = torch.cumsum(is_eos, dim=-1) - is_eos      # EOS tokens strictly before each position
    return (eos_before == 0).long()


class FrozenTokenizer:
    """Adapter around a Hugging Face tokenizer.

    ``__call__(texts)``: ids of each text + EOS (so generation learns to stop), right-padded or truncated
    to ``context_length``; usable as ``ImageTextView``'s tokenizer. ``encode_pair(prompt, target)``: the
    same for a prompt/answer pair, with labels that ignore the prompt (VQA-style training targets).
    """

    def __init__(self, tokenizer, context_length: int = 32):
        if tokenizer.eos_token_id is None:
            raise ValueError("the LM's tokenizer has no end-of-text token; Frozen needs one to stop generating")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.pad_id: int = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id

    @classmethod
    def from_pretrained(cls, identifier: str, context_length: int = 32) -> "FrozenTokenizer":
        from .lm import load_tokenizer
        return cls(load_tokenizer(identifier), context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids`` up to the first EOS."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _pad(self, ids: list[int]) -> list[int]:
        ids = ids[:self.context_length]
        return ids + [self.pad_id] * (self.context_length - len(ids))

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self._pad(self.encode(t) + [self.eos_id]) for t in texts], dtype=torch.long)

    def encode_pair(self, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [ctx], labels [ctx]): prompt, target and EOS; loss only on the target and EOS.

        The two are encoded separately, exactly as at inference time, where the prompt is encoded
        alone and the target is generated after it.
        """
        p = self.encode(prompt)
        t = self.encode((" " + target) if prompt else target) + [self.eos_id]
        ids = self._pad(p + t)
        labels = ([IGNORE_INDEX] * len(p) + t)[:self.context_length]
        labels += [IGNORE_INDEX] * (self.context_length - len(labels))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return attention_mask_from_ids(ids, self.pad_id, self.eos_id)
