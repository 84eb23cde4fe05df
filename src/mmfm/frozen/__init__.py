"""Frozen (Tsimpoukelli et al., 2021): few-shot multimodal learning with a frozen language model.

The model and its config live in :mod:`mmfm.models.frozen`; this package has everything around it:

* :mod:`.lm` - load a causal LM / tokenizer (hub or local, fast offline failure); ``family: causal_lm`` for
  ``mmfm run`` (a small LM and a word-level tokenizer trained on text by the Trainer);
* :mod:`.text` - the LM tokenizer as an mmfm tokenizer (``FrozenTokenizer``);
* :mod:`.objective` - ``FrozenObjective`` for mmfm's ``Trainer``;
* :mod:`.generate` - greedy / beam / nucleus decoding from interleaved image-text prompts;
* :mod:`.io` - ``save_frozen`` / ``load_frozen``;
* :mod:`.family`, :mod:`.evals` - what ``mmfm run`` asks of Frozen (tokenizer, objective, view, saving, its
  options) and its ``captioning`` / ``vqa`` / ``binding`` evaluation kinds;
* :mod:`.tasks` - the caption+VQA training view and the evaluations on ``shapes`` (the text corpus about
  ``shapes`` is data: :mod:`mmfm.data.shapes_text`; the experiment is ``experiments/frozen_shapes/``);
* :mod:`.cli` - ``caption_files`` / ``vqa_files`` behind ``mmfm caption`` / ``mmfm vqa``.
"""
from __future__ import annotations

import importlib

from ..models.frozen import FrozenConfig, FrozenModel

_EXPORTS = {
    "FrozenTokenizer": ".text", "attention_mask_from_ids": ".text",
    "FrozenObjective": ".objective",
    "generate": ".generate", "caption": ".generate", "answer": ".generate", "score_continuations": ".generate",
    "embed_prompts": ".generate",
    "save_frozen": ".io", "load_frozen": ".io",
    "load_tokenizer": ".lm", "build_language_model": ".lm", "train_word_tokenizer": ".lm",
    "tiny_gpt2_config": ".lm",
    "caption_files": ".cli", "vqa_files": ".cli",
}

__all__ = ["FrozenConfig", "FrozenModel", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmfm.frozen' has no attribute {name!r}")
