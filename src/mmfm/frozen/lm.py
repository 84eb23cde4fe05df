"""The language side of Frozen: its tokenizer, and training a small causal LM from text.

Loading a tokenizer follows mmfm's rule for pretrained weights (local directory, Hugging Face cache or
download, fast failure offline, never a silent fallback), through the same resolver as the LM.

The LM itself is built by :mod:`mmfm.models.causal_lm` (from its config dict) and read from disk or the hub
by :mod:`mmfm.checkpoints.language_model` (``mmfm.create_model`` builds a Frozen model with it); this module
keeps what is Frozen's own: the tokenizer and training a small LM from text.

Training (for the Frozen experiment, where nothing can be downloaded): a word-level tokenizer trained with
Hugging Face ``tokenizers`` and saved as a ``PreTrainedTokenizerFast`` directory, and a tiny GPT-2 trained on
text alone by mmfm's Trainer (``family: causal_lm`` in ``mmfm run``: :class:`CausalLMFamily`) and saved with
``save_pretrained``, so both load back through the same ``AutoTokenizer`` / ``AutoModelForCausalLM`` path as
GPT-2 Large would.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

# Reading a pretrained LM is checkpoints' job (the door passes it to FrozenModel); the names stay importable here.
from ..checkpoints.language_model import (build_language_model, check_lm_config,  # noqa: F401
                                          language_model_config, resolve_pretrained)
from ..data.shapes_text import TextCorpus
from ..models.causal_lm import init_sinusoidal_positions  # noqa: F401
from ..train.objectives import Objective
from ..util.hf import quiet_transformers  # noqa: F401  (the Frozen modules import it from here)

PAD, UNK, EOS = "<pad>", "<unk>", "<|endoftext|>"


def load_tokenizer(identifier: str):
    """A Hugging Face tokenizer (hub identifier or local directory), with the same fast offline failure."""
    from transformers import AutoTokenizer
    with quiet_transformers():
        return resolve_pretrained(identifier, lambda ident, local_only: AutoTokenizer.from_pretrained(
            ident, local_files_only=local_only))


# ------------------------------------------------------------------------------------------
# Training a small LM from text (the Frozen experiment's stand-in for a pretrained GPT-2).
def train_word_tokenizer(texts: Sequence[str], out_dir: str | Path | None = None):
    """A word-level tokenizer (words and punctuation marks are tokens) with pad/unk/eos.

    Word-level keeps the Frozen experiment's vocabulary to a few hundred entries, so a tiny LM can learn every word.
    Case is kept: the article "a" and the answer marker "A:" stay different tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()   # splits "dax." into "dax" "."
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS], min_frequency=1))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS,
                                   bos_token=EOS, clean_up_tokenization_spaces=True)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def tiny_gpt2_config(vocab_size: int, eos_id: int, n_embd: int = 128, n_layer: int = 4, n_head: int = 4,
                     n_positions: int = 128, dropout: float = 0.0) -> dict[str, Any]:
    """A GPT-2 config dict for a CPU-sized LM (what FrozenConfig.lm holds)."""
    return {"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": n_embd,
            "n_layer": n_layer, "n_head": n_head, "bos_token_id": eos_id, "eos_token_id": eos_id,
            "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}


# ------------------------------------------------------------------------------------------
# `family: causal_lm` for `mmfm run`: a text LM trained by the Trainer (what Frozen's `pretrained_lm` then reads).
@dataclass
class LMTokenizer:
    """A Hugging Face tokenizer and the LM's context: documents are cut to ``context_length - 1`` tokens + EOS."""

    hf: Any
    context_length: int

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        eos = self.hf.eos_token_id
        if eos is None:
            raise ValueError("causal_lm: the tokenizer has no end-of-text token (eos_token); documents end with one")
        ids = self.hf(list(texts), add_special_tokens=False)["input_ids"]
        return [x[:self.context_length - 1] + [eos] for x in ids]

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id


class DocumentStream(IterableDataset):
    """Tokenised documents, endlessly: pass after pass over the corpus, each pass in a new order drawn from one
    ``random.Random(seed)``, with no break between passes (a batch may end one pass and start the next), so
    every document is seen once per pass and no batch is short. Resumable: ``resume_at`` skips the documents
    of the batches already trained on. Under DDP, rank r takes every r-th document of the stream."""

    def __init__(self, documents: list[list[int]], seed: int = 0):
        if not documents:
            raise ValueError("causal_lm: the training corpus has no document")
        self.documents, self.seed, self.skip = documents, seed, 0

    def set_epoch(self, epoch: int) -> None:     # one endless epoch: nothing to do
        pass

    def resume_at(self, step_in_epoch: int, batch: int) -> None:
        self.skip = step_in_epoch * batch

    def __iter__(self):
        from ..train.distributed import dist_info
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ValueError("causal_lm: the document stream is read by one DataLoader worker (train.num_workers <= 1)")
        rank, world = (lambda d: (d.rank, d.world_size) if d.enabled else (0, 1))(dist_info())
        rng, n, taken = random.Random(self.seed), 0, 0
        while True:
            order = list(range(len(self.documents)))
            rng.shuffle(order)
            for i in order:
                if n % world == rank:
                    if taken >= self.skip:
                        yield {"input_ids": self.documents[i]}
                    taken += 1
                n += 1


class EncodedDocuments(Dataset):
    """Tokenised documents in their order (validation)."""

    def __init__(self, documents: list[list[int]]):
        self.documents = documents

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.documents[index]}


def pad_documents(pad_id: int):
    """Collate: documents padded (not packed: each is modelled from its own start, as a prompt will be) to the
    longest of the batch, with their attention mask."""
    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, it in enumerate(items):
            ids[r, :len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[r, :len(it["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask}
    return collate


class CausalLMObjective(Objective):
    """Next-token cross-entropy inside the attention mask (:class:`mmfm.models.causal_lm.CausalLM`'s loss)."""

    input_keys = ("input_ids", "attention_mask")


WORD_LEVEL = "word-level"


class CausalLMFamily:
    """``family: causal_lm``: a causal LM trained from scratch on a text dataset (``shapes_text``, ``text_file``).

    tokenizer: ``word-level`` (trained on the training corpus and its ``vocabulary``: :func:`train_word_tokenizer`)
    or a pretrained tokenizer (a directory or hub id). The config's ``lm`` gets its vocabulary size and token ids
    from it (:func:`mmfm.models.causal_lm.complete_lm_config`) before the model is built. Saved with
    ``save_pretrained`` (model and tokenizer in ``<label>/model``), which Frozen's ``pretrained_lm`` reads.
    """

    name = "causal_lm"

    def complete_config(self, config, tokenizer: str | None, train_dataset):
        import dataclasses
        from ..models.causal_lm import complete_lm_config
        if tokenizer is None:
            raise ValueError(f"tokenizer: a causal_lm model needs one: {WORD_LEVEL!r} (trained on the training "
                             f"corpus) or a tokenizer directory / hub id")
        texts = getattr(train_dataset, "texts", None)
        if texts is None:
            raise ValueError(f"train_data: a causal_lm model trains on a text dataset (shapes_text, text_file), "
                             f"not {type(train_dataset).__name__}")
        if tokenizer == WORD_LEVEL:
            hf = train_word_tokenizer(list(getattr(train_dataset, "vocabulary", [])) + list(texts))
        else:
            hf = load_tokenizer(tokenizer)
        lm = complete_lm_config(config.lm, len(hf), hf.eos_token_id)
        return dataclasses.replace(config, lm=lm), LMTokenizer(hf, int(lm["n_positions"]))

    def image_size(self, model) -> None:
        return None      # text only: no image transform

    def objective(self, tokenizer: LMTokenizer, train_cfg, options=None):
        return CausalLMObjective()

    def collate(self, tokenizer: LMTokenizer):
        return pad_documents(tokenizer.pad_id)

    def train_view(self, dataset, transform, tokenizer: LMTokenizer, seed: int, options=None, model=None):
        return DocumentStream(tokenizer.encode_documents(dataset.texts), seed)

    def val_view(self, dataset, transform, tokenizer: LMTokenizer):
        return EncodedDocuments(tokenizer.encode_documents(dataset.texts))

    def save(self, model, directory: Path, tokenizer: LMTokenizer) -> None:
        with quiet_transformers():
            model.lm.save_pretrained(str(Path(directory) / "model"))
            tokenizer.hf.save_pretrained(str(Path(directory) / "model"))
