"""The language side of Frozen: its tokenizer, and training a small causal LM from text.

Loading a tokenizer follows mmfm's rule for pretrained weights (local directory, Hugging Face cache or
download, fast failure offline, never a silent fallback), through the same resolver as the LM.

The LM itself is built by :mod:`mmfm.models.causal_lm` (from its config dict) and read from disk or the hub
by :mod:`mmfm.checkpoints.language_model` (``mmfm.create_model`` builds a Frozen model with it); this module
keeps what is Frozen's own: the tokenizer and training a small LM from text.

Training (for the embedded demonstration, where nothing can be downloaded): a word-level tokenizer
trained with Hugging Face ``tokenizers`` and saved as a ``PreTrainedTokenizerFast`` directory, and a
tiny ``GPT2LMHeadModel`` trained on text alone and saved with ``save_pretrained``, so both load back
through the same ``AutoTokenizer`` / ``AutoModelForCausalLM`` path as GPT-2 Large would.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

# Reading a pretrained LM is checkpoints' job (the door passes it to FrozenModel); the names stay importable here.
from ..checkpoints.language_model import (build_language_model, check_lm_config,  # noqa: F401
                                          language_model_config, resolve_pretrained)
from ..models.causal_lm import causal_lm_from_config
from ..util.hf import quiet_transformers  # noqa: F401  (the Frozen modules import it from here)

PAD, UNK, EOS = "<pad>", "<unk>", "<|endoftext|>"


def load_tokenizer(identifier: str):
    """A Hugging Face tokenizer (hub identifier or local directory), with the same fast offline failure."""
    from transformers import AutoTokenizer
    with quiet_transformers():
        return resolve_pretrained(identifier, lambda ident, local_only: AutoTokenizer.from_pretrained(
            ident, local_files_only=local_only))


# ------------------------------------------------------------------------------------------
# Training a small LM from text (the demonstration's stand-in for a pretrained GPT-2).
def train_word_tokenizer(texts: Sequence[str], out_dir: str | Path | None = None):
    """A word-level tokenizer (words and punctuation marks are tokens) with pad/unk/eos.

    Word-level keeps the demo's vocabulary to a few hundred entries, so a tiny LM can learn every word.
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


@torch.no_grad()
def init_sinusoidal_positions(model: nn.Module, scale: float = 0.02) -> None:
    """Start a GPT-2's (trainable) position embeddings from the original Transformer's sinusoids.

    A learned table starts as noise, and a head that looks "one token back" then has to be learned for
    every position separately; with sinusoids, the offset between two positions is a fixed rotation,
    which attention can pick up at once. ``scale`` matches GPT-2's embedding initialisation (std 0.02).
    """
    if not hasattr(getattr(model, "transformer", None), "wpe"):
        raise ValueError("sinusoidal position embeddings apply to GPT-2 models (transformer.wpe)")
    wpe = model.transformer.wpe
    n, d = wpe.weight.shape
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    wpe.weight.copy_(scale * math.sqrt(2.0) * table)   # sqrt(2): unit variance per entry before scaling


def train_text_lm(texts: Sequence[str], tokenizer, lm_cfg: dict[str, Any], out_dir: str | Path | None = None, *,
                  steps: int = 1000, batch_size: int = 64, lr: float = 3e-3, warmup: int = 50, seed: int = 0,
                  context_length: int | None = None, device: str = "cpu", log_every: int = 100,
                  log=print, callback=None, sinusoidal_positions: bool = False,
                  progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Train a causal LM from scratch on ``texts`` (one document each, EOS appended); save it to ``out_dir``.

    Documents are padded, not packed: each is short and should be modelled from its own start, which is
    how the LM will be used (a fresh prompt). ``callback(step, model)`` runs every ``log_every`` steps
    (e.g. to probe a skill while it is learned). ``sinusoidal_positions``: see ``init_sinusoidal_positions``.
    ``progress``: a progress bar over the steps (the demo's LM pretraining is its longest silent phase).
    Returns (model in eval mode, training summary).
    """
    torch.manual_seed(seed)
    model = causal_lm_from_config(lm_cfg).to(device)
    if sinusoidal_positions:
        init_sinusoidal_positions(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ctx = context_length or lm_cfg.get("n_positions", 128)
    encoded = [ids[:ctx - 1] + [eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    from ..train.schedule import adamw_kernel
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01, **adamw_kernel([{"params": params}]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) *
                                              0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    rng = random.Random(seed)
    order: list[int] = []
    history, t0 = [], time.perf_counter()
    model.train()
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc="text LM", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch = [encoded[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, b in enumerate(batch):
            ids[r, :len(b)] = torch.tensor(b)
            mask[r, :len(b)] = 1
        ids, mask = ids.to(device), mask.to(device)
        labels = ids.masked_fill(mask == 0, -100)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": loss.item()})
            if log is not None:
                log(f"  text LM step {step}/{steps}  loss {loss.item():.3f}")
            if callback is not None:
                model.eval()
                with torch.no_grad():
                    callback(step, model)
                model.train()
    bar.close()
    model.eval()
    summary = {"steps": steps, "documents": len(encoded), "final_loss": history[-1]["loss"] if history else None,
               "train_time_s": time.perf_counter() - t0, "history": history,
               "parameters": sum(p.numel() for p in model.parameters())}
    if out_dir is not None:
        with quiet_transformers():
            model.save_pretrained(str(out_dir))
            tokenizer.save_pretrained(str(out_dir))
    return model, summary
