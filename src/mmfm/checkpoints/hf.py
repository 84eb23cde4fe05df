"""Hugging Face ``CLIPModel`` directories: import (config + weights) and export.

Naming (ours <- HF): ``visual.conv1`` <- ``vision_model.embeddings.patch_embedding``,
``visual.class_embedding``/``positional_embedding`` <- ``embeddings.class_embedding``/``position_embedding.weight``,
``visual.ln_pre``/``ln_post`` <- ``pre_layrnorm`` (sic)/``post_layernorm``,
``*.transformer.blocks.{i}.{ln_1,attn,ln_2,mlp}`` <- ``*.encoder.layers.{i}.{layer_norm1,self_attn,layer_norm2,mlp}``,
``text.ln_final`` <- ``text_model.final_layer_norm``. HF's projections are bias-free ``nn.Linear``s,
so their weights are the transposes of our ``visual.proj`` / ``text.text_projection`` matrices.

Pooling: HF's text model takes the first ``eos_token_id`` token, except when ``eos_token_id == 2``
(configs written before transformers PR #24773) where it takes the argmax of the ids, as OpenAI
does. So our ``pool="argmax"`` exports as ``eos_token_id: 2`` and ``pool="eot"`` as the real id.

transformers is not needed for any of this: configs are read and written as JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..models.config import CLIPConfig, ConfigError, TextConfig, VisionConfig
from .io import atomic_save_safetensors, atomic_write_json, load_state_dict_file
from .openclip import mlp_ratio_for
from .validate import CheckpointError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
LEGACY_ARGMAX_EOS = 2   # HF's marker for "pool at the argmax of the ids"
LAYER_NORM_EPS = 1e-5   # our LayerNorms' epsilon (torch's default)

# Values transformers uses when a key is absent from config.json (configuration_clip.py).
_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                  "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-5, "eos_token_id": 49407}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-5}
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}   # HF name -> our quick_gelu flag

_PREFIXES = [  # (HF prefix, our prefix), longest first where they overlap
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.blocks."),
    ("text_model.embeddings.token_embedding.weight", "text.token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "text.positional_embedding"),
    ("text_model.final_layer_norm.", "text.ln_final."),
    ("text_model.encoder.layers.", "text.transformer.blocks."),
]
_BLOCK_PARTS = [(".self_attn.", ".attn."), (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2.")]
_PROJECTIONS = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text.text_projection"}


# ------------------------------------------------------------------------------------------
# State dicts
def _rename(key: str, table: list[tuple[str, str]], parts: list[tuple[str, str]]) -> str:
    for src, dst in table:
        if key.startswith(src):
            key = dst + key[len(src):]
            if ".transformer.blocks." in dst or ".encoder.layers." in dst:
                for a, b in parts:
                    key = key.replace(a, b)
            return key
    return key


def hf_to_mmfm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF ``CLIPModel`` state dict in mmfm naming. Unknown keys pass through (validation reports them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):   # an index buffer, not a weight
            continue
        if key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.t().contiguous()
        else:
            out[_rename(key, _PREFIXES, _BLOCK_PARTS)] = value
    return out


def mmfm_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmfm ViT CLIP state dict in HF ``CLIPModel`` naming."""
    back = [(dst, src) for src, dst in _PREFIXES]
    parts = [(b, a) for a, b in _BLOCK_PARTS]
    theirs = {v: k for k, v in _PROJECTIONS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in theirs:
            out[theirs[key]] = value.t().contiguous()
        else:
            out[_rename(key, back, parts)] = value
    return out


# ------------------------------------------------------------------------------------------
# LoRA adapters (PEFT files): same parameter names as the state dicts, one restriction
# PEFT names adapter tensors after the module they wrap (``<module>.lora_A.weight``), and the modules
# of a transformer layer have the same names in both (q/k/v/out_proj, mlp.fc1/fc2) once the layer
# prefix is renamed. mmfm's q/k/v are separate nn.Linear parameters like HF's (they are fused at
# inference only, as a cache), so an adapter maps one to one. HF's visual/text_projection are
# Linear layers, ours are Parameters: a LoRA on them has no mmfm equivalent and is refused by name.
_BLOCK_ROOTS = ("visual.transformer.blocks.", "text.transformer.blocks.")
_HF_ROOTS = ("vision_model.", "text_model.", "visual_projection.", "text_projection.")


def is_hf_adapter_state(state: Mapping[str, Any]) -> bool:
    """Whether PEFT adapter keys (without ``base_model.model.``) name an HF ``CLIPModel``'s modules."""
    return any(k.startswith(_HF_ROOTS) for k in state)


def hf_module_to_mmfm(name: str) -> str:
    """The mmfm name of an HF ``CLIPModel`` module or parameter (unknown names pass through)."""
    return _rename(name, _PREFIXES, _BLOCK_PARTS)


def mmfm_module_to_hf(name: str) -> str:
    """The HF ``CLIPModel`` name of an mmfm module or parameter (unknown names pass through)."""
    return _rename(name, [(dst, src) for src, dst in _PREFIXES], [(b, a) for a, b in _BLOCK_PARTS])


def _adapter_keys(state: Mapping[str, torch.Tensor], rename, inside, source: str, fix: str) -> dict[str, torch.Tensor]:
    out, bad = {}, []
    for key, value in state.items():
        new = rename(key)
        if "lora_" in key and not new.startswith(inside):
            bad.append(key.split(".lora_")[0])
        out[new] = value
    if bad:
        bad = sorted(set(bad))
        raise CheckpointError(f"{source}: LoRA on {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} has no "
                              f"counterpart in the other model (only the transformer layers' linear layers map); {fix}")
    return out


def hf_adapter_to_mmfm(state: Mapping[str, torch.Tensor], source: str = "adapter") -> dict[str, torch.Tensor]:
    """PEFT adapter tensors of an HF ``CLIPModel`` in mmfm naming (raises for modules mmfm has no layer for)."""
    return _adapter_keys(state, hf_module_to_mmfm, _BLOCK_ROOTS, source,
                         "merge that adapter into the HF model (PeftModel.merge_and_unload) and load the merged model "
                         "instead, or train it without those target modules")


def mmfm_adapter_to_hf(state: Mapping[str, torch.Tensor], source: str = "adapter") -> dict[str, torch.Tensor]:
    """PEFT adapter tensors of an mmfm ViT CLIP in HF ``CLIPModel`` naming."""
    return _adapter_keys(state, mmfm_module_to_hf, ("vision_model.encoder.layers.", "text_model.encoder.layers."),
                         source, "save it in mmfm's format (save_lora(..., format='mmfm')) or export the merged model "
                         "(export_merged(..., format='hf'))")


# ------------------------------------------------------------------------------------------
# Configs
def _int_square(x: Any, what: str, source: str) -> int:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise CheckpointError(f"{source}: non-square {what} {x} is not supported")
        x = x[0]
    return x   # checked to be a positive int by _checked_section


# The fields config_from_hf reads: sizes (positive integers) and numbers, per tower.
_SIZES = {"text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "max_position_embeddings"),
          "vision_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "num_channels", "image_size", "patch_size")}


def _is_size(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _checked_section(hf: Mapping[str, Any], name: str, defaults: dict[str, Any], source: str) -> dict[str, Any]:
    """One tower's settings (transformers' defaults, then ``name``, then the legacy ``name_dict``), with
    every field we use checked, so a bad file is one error naming the field, not a ZeroDivisionError."""
    out = dict(defaults)
    for key in (name, f"{name}_dict"):   # old configs carry *_config_dict copies, which transformers lets win
        sub = hf.get(key)
        if sub is None:
            continue
        if not isinstance(sub, Mapping):
            raise CheckpointError(f"{source}: {key} is a {type(sub).__name__}, expected a mapping of settings")
        out.update(sub)
    for field in _SIZES[name]:
        value = out[field]
        square = field in ("image_size", "patch_size") and isinstance(value, (list, tuple)) and value
        if not (all(_is_size(v) for v in value) if square else _is_size(value)):
            raise CheckpointError(f"{source}: {name}.{field}={value!r} is not a positive integer")
    if not _is_number(out["layer_norm_eps"]):
        raise CheckpointError(f"{source}: {name}.layer_norm_eps={out['layer_norm_eps']!r} is not a number")
    return out


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> CLIPConfig:
    """Our CLIPConfig for an HF ``CLIPConfig`` dict (as stored in config.json)."""
    if not isinstance(hf, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type") not in (None, "clip"):
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not 'clip' (only CLIPModel is supported)")
    t = _checked_section(hf, "text_config", _TEXT_DEFAULTS, source)
    v = _checked_section(hf, "vision_config", _VISION_DEFAULTS, source)
    projection_dim, scale = hf.get("projection_dim", 512), hf.get("logit_scale_init_value", 2.6592)
    if not _is_size(projection_dim):
        raise CheckpointError(f"{source}: projection_dim={projection_dim!r} is not a positive integer")
    if not _is_number(scale):
        raise CheckpointError(f"{source}: logit_scale_init_value={scale!r} is not a number")
    problems = []
    for name, sub in (("text_config", t), ("vision_config", v)):
        if not isinstance(sub["hidden_act"], str) or sub["hidden_act"] not in _ACTIVATIONS:
            problems.append(f"{name}.hidden_act={sub['hidden_act']!r} (supported: {sorted(_ACTIVATIONS)})")
        if not abs(float(sub["layer_norm_eps"]) - LAYER_NORM_EPS) <= 1e-12:
            problems.append(f"{name}.layer_norm_eps={sub['layer_norm_eps']} (mmfm uses {LAYER_NORM_EPS})")
        if sub["hidden_size"] % sub["num_attention_heads"]:
            problems.append(f"{name}: hidden_size {sub['hidden_size']} not divisible by {sub['num_attention_heads']} "
                            "num_attention_heads")
    if v["num_channels"] != 3:
        problems.append(f"vision_config.num_channels={v['num_channels']} (mmfm expects RGB)")
    if t["hidden_act"] in _ACTIVATIONS and v["hidden_act"] in _ACTIVATIONS and t["hidden_act"] != v["hidden_act"]:
        problems.append(f"different activations per tower ({v['hidden_act']!r} vs {t['hidden_act']!r})")
    eos = t["eos_token_id"]
    if isinstance(eos, bool) or not isinstance(eos, int) or eos < 0:
        problems.append(f"text_config.eos_token_id={eos!r} (a single integer is needed for pooling)")
    if problems:
        raise CheckpointError(f"{source}: HF CLIP config options mmfm cannot represent: " + "; ".join(problems))
    pool = "argmax" if eos == LEGACY_ARGMAX_EOS else "eot"
    try:
        vision = VisionConfig(kind="vit", image_size=_int_square(v["image_size"], "image_size", source),
                              patch_size=_int_square(v["patch_size"], "patch_size", source), width=v["hidden_size"],
                              layers=v["num_hidden_layers"], head_width=v["hidden_size"] // v["num_attention_heads"],
                              mlp_ratio=mlp_ratio_for(v["intermediate_size"], v["hidden_size"]))
        text = TextConfig(context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], width=t["hidden_size"],
                          heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
                          mlp_ratio=mlp_ratio_for(t["intermediate_size"], t["hidden_size"]), pool=pool,
                          eot_token_id=eos if pool == "eot" else TextConfig.eot_token_id)
        return CLIPConfig(embed_dim=projection_dim, vision=vision, text=text, quick_gelu=_ACTIVATIONS[t["hidden_act"]],
                          init_logit_scale=float(scale))
    except ConfigError as e:   # e.g. image_size not a multiple of patch_size
        raise CheckpointError(f"{source}: {e}") from e


def config_to_hf(cfg: CLIPConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """An HF ``CLIPConfig`` dict for one of our ViT CLIP configs (raises for what HF cannot express)."""
    if cfg.vision.kind != "vit":
        raise CheckpointError(f"HF CLIPModel has no {cfg.vision.kind!r} image tower (only ViT); save this model with "
                              "mmfm.checkpoints.save_pretrained, or convert it with to_openclip_state_dict")
    if cfg.init_logit_bias is not None:
        raise CheckpointError("HF CLIPModel has no logit bias; a model trained with one (SigLIP-style) cannot be exported")
    t, v = cfg.text, cfg.vision
    if t.pool == "eot" and t.eot_token_id == LEGACY_ARGMAX_EOS:
        raise CheckpointError(f"text.eot_token_id={LEGACY_ARGMAX_EOS} cannot be exported: HF reads eos_token_id=2 as "
                              "'pool at the argmax of the ids'")
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    eos = LEGACY_ARGMAX_EOS if t.pool == "argmax" else t.eot_token_id
    bos = 49406 if t.vocab_size > 49406 else None   # CLIP's <start_of_text>; unused by the model itself
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": str(dtype).removeprefix("torch."),
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size, "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "max_position_embeddings": t.context_length, "hidden_act": act,
            "layer_norm_eps": LAYER_NORM_EPS, "projection_dim": cfg.embed_dim, "attention_dropout": 0.0,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
            "num_hidden_layers": v.layers, "num_attention_heads": v.heads, "num_channels": 3,
            "image_size": v.image_size, "patch_size": v.patch_size, "hidden_act": act,
            "layer_norm_eps": LAYER_NORM_EPS, "projection_dim": cfg.embed_dim, "attention_dropout": 0.0,
        },
    }


# ------------------------------------------------------------------------------------------
# Directories
def is_hf_clip_dir(directory: Path) -> bool:
    cfg = directory / "config.json"
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and (d.get("model_type") == "clip" or "CLIPModel" in (d.get("architectures") or []))


def hf_weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:   # safetensors first
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no HF weights file found (looked for {', '.join(WEIGHT_FILES)})")


def read_hf_config(directory: Path) -> CLIPConfig:
    """Our config for an HF ``CLIPModel`` directory's config.json."""
    cfg_path = directory / "config.json"
    try:
        hf_cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {cfg_path}: {e}") from e
    return config_from_hf(hf_cfg, str(cfg_path))


def read_hf_dir(directory: Path) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(our config, mmfm-named state dict) of an HF ``CLIPModel`` directory (config first: it is checked
    before any weight is read)."""
    cfg = read_hf_config(directory)
    return cfg, hf_to_mmfm(load_state_dict_file(hf_weights_file(directory)))


def export_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as an HF ``CLIPModel`` directory (config.json + model.safetensors).

    ``transformers.CLIPModel.from_pretrained(directory)`` then computes the same embeddings and
    logits. Only ViT image towers can be exported (HF has no ModifiedResNet).
    """
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, CLIPConfig):
        raise CheckpointError(f"export_hf needs an mmfm CLIP model (with a CLIPConfig), got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    hf_cfg = config_to_hf(cfg, dtype)   # raises for ResNet towers before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(directory / "model.safetensors", mmfm_to_hf(model.state_dict()), metadata={"format": "pt"})
    atomic_write_json(directory / "config.json", hf_cfg)   # last: a directory with a config is complete
    return directory
