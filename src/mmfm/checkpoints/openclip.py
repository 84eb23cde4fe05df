"""open_clip / OpenAI checkpoints: key renaming both ways, config translation, architecture inference.

Naming differences (ours <- theirs):

* text tower: ``text.*`` <- top-level ``token_embedding``, ``positional_embedding``, ``transformer``,
  ``ln_final``, ``text_projection`` (open_clip's ``CLIP``) or ``text.*`` (its ``CustomTextCLIP``);
* blocks: ``transformer.blocks.{i}`` <- ``transformer.resblocks.{i}``;
* attention: separate ``attn.{q,k,v}_proj`` <- one ``attn.in_proj_weight``/``in_proj_bias`` holding
  q, k, v stacked along the output dimension (``nn.MultiheadAttention``'s layout);
* MLP: ``mlp.fc1``/``mlp.fc2`` <- ``mlp.c_fc``/``mlp.c_proj``;
* ResNet attention pool: ``attnpool.attn.{q,k,v,out}_proj`` <- ``attnpool.{q,k,v,c}_proj``.

Everything else (ViT/ResNet stems, BatchNorms, ``proj``, ``logit_scale``) has the same name and layout.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from torch import nn

from ..models.config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from .validate import CheckpointError

# Tensors in open_clip/OpenAI checkpoints that are not weights: the causal mask buffer and the
# scalar attributes OpenAI's TorchScript models carry.
_NON_WEIGHTS = {"attn_mask", "text.attn_mask", "input_resolution", "context_length", "vocab_size"}
_TEXT_TOP_LEVEL = ("token_embedding.", "transformer.", "ln_final.")
_TEXT_TOP_LEVEL_EXACT = ("positional_embedding", "text_projection")
_POOL_PROJ = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "c_proj": "out_proj"}   # theirs -> ours
_POOL_PROJ_BACK = {ours: theirs for theirs, ours in _POOL_PROJ.items()}


# ------------------------------------------------------------------------------------------
# Key renaming
def openclip_to_mmfm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip/OpenAI state dict in mmfm naming. Unknown keys pass through (validation reports them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _NON_WEIGHTS:
            continue
        k = key
        if k.startswith(_TEXT_TOP_LEVEL) or k in _TEXT_TOP_LEVEL_EXACT:
            k = "text." + k
        k = k.replace("transformer.resblocks.", "transformer.blocks.")
        k = k.replace(".mlp.c_fc.", ".mlp.fc1.").replace(".mlp.c_proj.", ".mlp.fc2.")
        m = re.fullmatch(r"visual\.attnpool\.(q_proj|k_proj|v_proj|c_proj)\.(weight|bias)", k)
        if m:
            k = f"visual.attnpool.attn.{_POOL_PROJ[m.group(1)]}.{m.group(2)}"
        m = re.fullmatch(r"(.*\.attn\.)in_proj_(weight|bias)", k)
        if m:
            if value.shape[0] % 3:
                raise CheckpointError(f"{key}: fused q/k/v projection has {value.shape[0]} rows, not a multiple of 3")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{m.group(1)}{name}.{m.group(2)}"] = part
            continue
        if k in ("logit_scale", "logit_bias") and value.numel() == 1:
            value = value.reshape(())   # open_clip's nonscalar_logit_scale stores shape [1]
        out[k] = value
    return out


def mmfm_to_openclip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmfm CLIP state dict in open_clip ``CLIP`` naming (text tower at the top level)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = key[len("text."):] if key.startswith("text.") else key
        k = k.replace("transformer.blocks.", "transformer.resblocks.")
        k = k.replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")
        m = re.fullmatch(r"visual\.attnpool\.attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)", k)
        if m:
            out[f"visual.attnpool.{_POOL_PROJ_BACK[m.group(1)]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"(.*\.attn\.)(q_proj|k_proj|v_proj)\.(weight|bias)", k)
        if m:
            if m.group(2) == "q_proj":   # fuse q, k, v once, when the q projection is met
                parts = [state_dict[key.replace(".attn.q_proj.", f".attn.{n}.")] for n in ("q_proj", "k_proj", "v_proj")]
                out[f"{m.group(1)}in_proj_{m.group(3)}"] = torch.cat(parts, dim=0)
            continue
        out[k] = value
    return out


def to_openclip_state_dict(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP's weights in open_clip naming: ``open_clip.CLIP(**to_openclip_config(cfg)).load_state_dict(sd)``."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    return {k: v.detach() for k, v in mmfm_to_openclip(sd).items()}


# ------------------------------------------------------------------------------------------
# Configs
def to_openclip_config(cfg: CLIPConfig) -> dict[str, Any]:
    """open_clip's ``model_cfg`` (as in ``open_clip_config.json``) for one of our CLIP configs."""
    v, t = cfg.vision, cfg.text
    vision: dict[str, Any] = {"image_size": v.image_size, "width": v.width, "head_width": v.head_width,
                              "mlp_ratio": v.mlp_ratio}
    if v.kind == "modified_resnet":
        vision.update(layers=list(v.layers), patch_size=None)
    else:
        vision.update(layers=v.layers, patch_size=v.patch_size)
    text: dict[str, Any] = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                            "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    if t.pool == "eot":
        text.update(pool_type="eos", eos_id=t.eot_token_id)
    else:
        text.update(pool_type="argmax")
    out = {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.quick_gelu, "vision_cfg": vision, "text_cfg": text,
           "init_logit_scale": cfg.init_logit_scale}
    if cfg.init_logit_bias is not None:
        out["init_logit_bias"] = cfg.init_logit_bias
    return out


# open_clip options we can represent only at their default ("neutral") value, and options that do
# not change the computation (training-only or tokenizer settings) and are ignored.
_NEUTRAL_COMMON = {"ls_init_value": None, "act_kwargs": None, "block_type": (None, "default"), "qk_norm": False,
                   "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                   "scale_fc": False, "final_ln_after_pool": False}
_NEUTRAL_VISION = {**_NEUTRAL_COMMON, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                   "pool_type": "tok", "timm_model_name": None}
_IGNORED_VISION = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
                   "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"}
_NEUTRAL_TEXT = {**_NEUTRAL_COMMON, "embed_cls": False, "no_causal_mask": False, "proj_bias": False,
                 "proj_type": "linear", "hf_model_name": None}
_IGNORED_TEXT = {"hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs", "pad_id", "output_tokens",
                 "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "use_pad_mask", "correct_cls_mask"}
_TOP_LEVEL = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
              "custom_text", "nonscalar_logit_scale", "cast_dtype", "output_dict"}


def _unsupported(d: dict, used: set[str], neutral: dict, ignored: set[str], where: str) -> list[str]:
    bad = []
    for k, value in d.items():
        if k in used or k in ignored:
            continue
        if k == "norm_kwargs" and (value in (None, {}) or value == {"eps": 1e-5}):
            continue
        allowed = neutral.get(k, ...)
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if k not in neutral or value not in allowed:
            bad.append(f"{where}.{k}={value!r}")
    return bad


def _square(x: Any, what: str, source: str) -> Any:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise CheckpointError(f"{source}: non-square {what} {x} is not supported")
        return x[0]
    return x   # its type and range are checked by VisionConfig


def _real(x: Any) -> Any:
    """A float for a JSON number; anything else unchanged, for the config's own check to name."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def config_from_openclip(model_cfg: Mapping[str, Any], source: str = "open_clip config") -> CLIPConfig:
    """Our CLIPConfig for an open_clip ``model_cfg``; options we cannot represent are a CheckpointError."""
    if not isinstance(model_cfg, Mapping):
        raise CheckpointError(f"{source}: model_cfg is a {type(model_cfg).__name__}, expected a mapping of settings")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(key, {}), Mapping):
            raise CheckpointError(f"{source}: model_cfg.{key} is a {type(model_cfg[key]).__name__}, expected a mapping")
    vc, tc = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    bad = [f"{k}={model_cfg[k]!r}" for k in model_cfg if k not in _TOP_LEVEL]
    bad += _unsupported(vc, {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
                        _NEUTRAL_VISION, _IGNORED_VISION, "vision_cfg")
    bad += _unsupported(tc, {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pool_type", "eos_id"},
                        _NEUTRAL_TEXT, _IGNORED_TEXT, "text_cfg")
    if tc.get("pool_type", "argmax") not in ("argmax", "eos"):
        bad.append(f"text_cfg.pool_type={tc['pool_type']!r}")
    if bad:
        raise CheckpointError(f"{source}: open_clip options mmfm's CLIP cannot represent: {', '.join(bad)}")
    layers = vc.get("layers", 12)
    resnet = isinstance(layers, (list, tuple))
    pool = "eot" if tc.get("pool_type", "argmax") == "eos" else "argmax"
    kw: dict[str, Any] = {}
    if model_cfg.get("init_logit_scale") is not None:
        kw["init_logit_scale"] = _real(model_cfg["init_logit_scale"])
    if model_cfg.get("init_logit_bias") is not None:
        kw["init_logit_bias"] = _real(model_cfg["init_logit_bias"])
    try:   # the dataclasses check every value (type and range) and name the field
        vision = VisionConfig(kind="modified_resnet" if resnet else "vit",
                              image_size=_square(vc.get("image_size", 224), "image_size", source),
                              width=vc.get("width", 768), layers=tuple(layers) if resnet else layers,
                              patch_size=32 if resnet else _square(vc.get("patch_size", 16), "patch_size", source),
                              head_width=vc.get("head_width", 64), mlp_ratio=_real(vc.get("mlp_ratio", 4.0)))
        text = TextConfig(context_length=tc.get("context_length", 77), vocab_size=tc.get("vocab_size", 49408),
                          width=tc.get("width", 512), heads=tc.get("heads", 8), layers=tc.get("layers", 12),
                          mlp_ratio=_real(tc.get("mlp_ratio", 4.0)), pool=pool,
                          eot_token_id=tc.get("eos_id", 2) if pool == "eot" else TextConfig.eot_token_id)
        return CLIPConfig(embed_dim=model_cfg.get("embed_dim", 512), vision=vision, text=text,
                          quick_gelu=bool(model_cfg.get("quick_gelu", False)), **kw)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e} (open_clip's vision_cfg/text_cfg)") from e


# ------------------------------------------------------------------------------------------
# Architecture inference from shapes (the rules of OpenAI's ``build_model``)
OPENAI_HEAD_WIDTH = 64


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    if idx and idx != set(range(len(idx))):
        raise CheckpointError(f"blocks under {prefix} are not numbered 0..{len(idx) - 1}: {sorted(idx)[:10]}")
    return len(idx)


def _need(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: cannot infer the architecture, key {key!r} is missing "
                              "(pass a model name or config to create_model)")
    return sd[key]


def mlp_ratio_for(hidden: int, width: int) -> float:
    """A ratio with ``int(width * ratio) == hidden`` (how our blocks size their MLP)."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _mlp_ratio(sd: Mapping[str, torch.Tensor], prefix: str, width: int) -> float:
    key = f"{prefix}blocks.0.mlp.fc1.weight"
    return mlp_ratio_for(sd[key].shape[0], width) if key in sd else 4.0


def _heads_for(width: int, what: str, source: str) -> int:
    if width % OPENAI_HEAD_WIDTH:
        raise CheckpointError(f"{source}: cannot infer the attention heads of the {what} (width {width} is not a multiple "
                              f"of OpenAI's head width {OPENAI_HEAD_WIDTH}); pass a model name or config to create_model")
    return width // OPENAI_HEAD_WIDTH


def infer_config(sd: Mapping[str, torch.Tensor], quick_gelu: bool = True, source: str = "checkpoint") -> CLIPConfig:
    """A CLIPConfig from the tensor shapes of an mmfm-named CLIP state dict.

    Shapes do not record everything, so the rules of OpenAI's ``build_model`` fill the gaps: attention
    heads are 64 wide (ViT tower, ResNet attention pool and text tower alike), text pooling is
    ``argmax``, and the activation is QuickGELU unless ``quick_gelu=False``.
    """
    if "visual.attnpool.positional_embedding" in sd:
        counts = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in range(1, 5))
        width = _need(sd, "visual.layer1.0.conv1.weight", source).shape[0]
        n = sd["visual.attnpool.positional_embedding"].shape[0]
        grid = math.isqrt(n - 1)
        if grid * grid + 1 != n:
            raise CheckpointError(f"{source}: attention-pool positional embedding has {n} rows, not 1 + a square")
        _heads_for(width * 32, "ResNet attention pool", source)
        vision = VisionConfig(kind="modified_resnet", image_size=grid * 32, width=width, layers=counts,
                              head_width=OPENAI_HEAD_WIDTH)
    else:
        conv = _need(sd, "visual.conv1.weight", source)
        width, patch = conv.shape[0], conv.shape[-1]
        n = _need(sd, "visual.positional_embedding", source).shape[0]
        grid = math.isqrt(n - 1)
        if grid * grid + 1 != n:
            raise CheckpointError(f"{source}: vision positional embedding has {n} rows, not 1 + a square")
        _heads_for(width, "vision transformer", source)
        vision = VisionConfig(kind="vit", image_size=grid * patch, width=width, patch_size=patch,
                              layers=_count_blocks(sd, "visual.transformer.blocks."), head_width=OPENAI_HEAD_WIDTH,
                              mlp_ratio=_mlp_ratio(sd, "visual.transformer.", width))
    tok = _need(sd, "text.token_embedding.weight", source)
    twidth = tok.shape[1]
    text = TextConfig(context_length=_need(sd, "text.positional_embedding", source).shape[0], vocab_size=tok.shape[0],
                      width=twidth, heads=_heads_for(twidth, "text transformer", source),
                      layers=_count_blocks(sd, "text.transformer.blocks."), mlp_ratio=_mlp_ratio(sd, "text.transformer.", twidth))
    embed_dim = _need(sd, "text.text_projection", source).shape[1]
    bias = sd.get("logit_bias")
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, quick_gelu=quick_gelu,
                      init_logit_bias=float(bias.float().reshape(-1)[0]) if bias is not None else None)
