"""LoRA adapter files: ``save_lora`` / ``load_lora`` in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``), with the base model's config recorded and checked, and the translation
of adapters to and from Hugging Face ``CLIPModel`` naming.

Everything in a file is validated before the model is touched; ``peft`` is imported lazily.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..util.weights import bump, meta_copy
from .lora import (DEFAULT_ADAPTER, is_lora_model, lora_layers, lora_parameters, peft_base_model, regex_alternatives,
                   unload_lora)

ADAPTER_CONFIG = "adapter_config.json"      # PEFT's file names: PeftModel.from_pretrained reads these
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."            # how PeftModel names adapter weights in its files


def config_fingerprint(cfg: Any) -> str:
    """A short hash of a model config (its ``to_dict()``): equal configs, equal fingerprints."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


# Adapters for Hugging Face CLIPModel. Tensors are renamed (checkpoints.hf); the LoraConfig's targets
# are rewritten as the exact set of modules the file holds tensors for, in the other naming: a list of
# suffixes, a regex, layers_to_transform or rank/alpha patterns all select modules by name, and the
# names differ. Per-module ranks and alphas become exact-name patterns for the same reason.
def _linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers an adapter can target, LoRA-wrapped ones included (not their parts)."""
    out = []
    for n, m in model.named_modules():
        if ".lora_" in n or n.endswith(".base_layer"):
            continue
        base = m.get_base_layer() if hasattr(m, "get_base_layer") else m
        if isinstance(base, nn.Linear):
            out.append(n)
    return out


def _adapted_modules(state: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".lora_")[0] for k in state if ".lora_A." in k})


def _targets_regex(chosen: Sequence[str], candidates: Sequence[str]) -> str:
    """A PEFT target regex (full match) selecting exactly ``chosen`` among ``candidates``: the short
    ``^(tower|tower)\.(.*\.)?(suffix|suffix)$`` when that selects exactly them, else every name spelled out."""
    towers = [n.split(".", 1)[0] for n in chosen]
    suffixes = [".".join(n.split(".")[-2:]) for n in chosen]
    short = rf"^(?:{regex_alternatives(towers)})\.(?:.*\.)?(?:{regex_alternatives(suffixes)})$"
    if sorted(n for n in candidates if re.fullmatch(short, n)) == sorted(chosen):
        return short
    return rf"^(?:{regex_alternatives(chosen)})$"


def _translated_config(config: Any, modules: Sequence[str], rename, candidates: Sequence[str]) -> Any:
    """``config`` (a LoraConfig) targeting ``modules`` (source naming) under their ``rename``d names."""
    from peft.utils.other import get_pattern_key
    out = copy.deepcopy(config)
    ranks, alphas = dict(config.rank_pattern or {}), dict(config.alpha_pattern or {})
    out.rank_pattern, out.alpha_pattern = {}, {}
    for name in modules:   # PEFT's own lookup of a module's rank and alpha, kept per module by exact name
        r = ranks.get(get_pattern_key(list(ranks), name), config.r)
        alpha = alphas.get(get_pattern_key(list(alphas), name), config.lora_alpha)
        if r != config.r:
            out.rank_pattern[re.escape(rename(name))] = r
        if alpha != config.lora_alpha:
            out.alpha_pattern[re.escape(rename(name))] = alpha
    out.target_modules = _targets_regex([rename(n) for n in modules], candidates)
    out.layers_to_transform = out.layers_pattern = out.exclude_modules = None
    out.base_model_name_or_path = None
    return out


def _from_hf_adapter(model: nn.Module, config: Any, state: dict[str, torch.Tensor], source: str):
    """(config, state) of an adapter PEFT saved on a transformers ``CLIPModel``, for the mmfm model."""
    from ..checkpoints.hf import hf_adapter_to_mmfm, hf_module_to_mmfm
    mapped = hf_adapter_to_mmfm(state, f"LoRA adapter {source}")
    return _translated_config(config, _adapted_modules(state), hf_module_to_mmfm, _linear_names(model)), mapped


def _to_hf_adapter(model: nn.Module, config: Any, state: dict[str, torch.Tensor], source: str):
    """(config, state) of an mmfm adapter for the ``CLIPModel`` that ``export_hf`` writes of ``model``."""
    from ..checkpoints.hf import config_to_hf, mmfm_adapter_to_hf, mmfm_module_to_hf
    config_to_hf(model.config)   # raises for what HF cannot express (ResNet towers, logit bias)
    mapped = mmfm_adapter_to_hf(state, f"LoRA adapter {source}")
    candidates = [mmfm_module_to_hf(n) for n in _linear_names(model)]
    return _translated_config(config, _adapted_modules(state), mmfm_module_to_hf, candidates), mapped


SAVE_FORMATS = ("mmfm", "hf")


def save_lora(model: nn.Module, directory: str | Path, adapter_name: str = DEFAULT_ADAPTER,
              format: str = "mmfm") -> Path:
    """Save only the adapter, in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

    format: ``"mmfm"`` names the tensors after this model's modules (``PeftModel.from_pretrained`` reads
        it onto an mmfm model); ``"hf"`` after the ``transformers.CLIPModel`` that
        ``mmfm.checkpoints.export_hf`` writes of the base model, so ``PeftModel.from_pretrained(
        CLIPModel.from_pretrained(exported), directory)`` computes what this model does (ViT CLIPs
        only). :func:`load_lora` reads both.
    The safetensors metadata also records the base model's config and its fingerprint (so
    :func:`load_lora` can refuse a different base) and, if it was trained, the logit scale (which
    PEFT does not apply: an HF user sets ``logit_scale`` themselves).
    """
    from peft import get_peft_model_state_dict
    from ..checkpoints.io import atomic_save_safetensors
    if format not in SAVE_FORMATS:
        raise ValueError(f"save_lora: format must be one of {list(SAVE_FORMATS)}, got {format!r}")
    model = peft_base_model(model)
    if not is_lora_model(model) or adapter_name not in model.peft_config:
        raise ValueError(f"the model has no LoRA adapter named {adapter_name!r} to save")
    directory = Path(directory)
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    config = model.peft_config[adapter_name]
    if format == "hf":   # before mkdir: a refused model leaves no half-made folder
        config, state = _to_hf_adapter(model, config, state, str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    cfg = _config_dict(model)
    if cfg is not None:
        metadata.update(mmfm_base_config=json.dumps(cfg, sort_keys=True, default=str),
                        mmfm_base_fingerprint=config_fingerprint(cfg),
                        mmfm_base_family=str(cfg.get("family", "clip")))
    info = getattr(model, "_mmfm_lora", {})
    if info.get("preset"):
        metadata["mmfm_lora_preset"] = str(info["preset"])
    if info.get("train_logit_scale") and hasattr(model, "logit_scale"):
        metadata["mmfm_logit_scale"] = repr(float(model.logit_scale.detach()))
    # Weights first, config last: a directory with an adapter_config.json is complete.
    atomic_save_safetensors(directory / ADAPTER_WEIGHTS, {PEFT_PREFIX + k: v for k, v in state.items()}, metadata)
    config.save_pretrained(str(directory))
    return directory


def _read_adapter(directory: Path) -> tuple[Any, dict[str, torch.Tensor], dict[str, str]]:
    from peft import LoraConfig
    from safetensors import safe_open
    from ..checkpoints import CheckpointError
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{directory} is not a LoRA adapter directory: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        config = LoraConfig.from_pretrained(str(directory))
        with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k.removeprefix(PEFT_PREFIX): f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # a corrupt or foreign file: say which one
        raise CheckpointError(f"cannot read the LoRA adapter in {directory}: {type(e).__name__}: {e}") from e
    return config, state, metadata


def _check_adapter_contents(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], source: str) -> float | None:
    """Validate what the adapter file holds besides shapes; return its logit scale (None if it has none).

    Runs before anything touches the model, so a bad file raises here and the model stays as it was.
    """
    from ..checkpoints import CheckpointError
    for k, t in state.items():
        if not t.is_floating_point():
            raise CheckpointError(f"LoRA adapter {source}: tensor {k} has dtype {t.dtype}, not a floating-point type; "
                                  f"the file is corrupt or not a LoRA adapter, re-save it with save_lora")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"LoRA adapter {source}: tensor {k} holds NaN or inf values; the adapter diverged "
                                  f"in training: re-train it or use an earlier checkpoint")
    if "mmfm_base_config" in metadata:
        try:
            if not isinstance(json.loads(metadata["mmfm_base_config"]), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise CheckpointError(f"LoRA adapter {source}: its recorded base config (metadata mmfm_base_config) is "
                                  f"not a JSON object ({e}); re-save the adapter with save_lora") from None
    if "mmfm_logit_scale" not in metadata:
        return None
    raw = metadata["mmfm_logit_scale"]
    try:
        scale = float(raw)
    except ValueError:
        scale = None
    if scale is None or not math.isfinite(scale):
        raise CheckpointError(f"LoRA adapter {source}: its logit scale (metadata mmfm_logit_scale) is {raw!r}, not a "
                              f"finite number; fix or remove that metadata entry, or re-save the adapter with save_lora")
    return scale


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def _check_base_config(model: nn.Module, metadata: Mapping[str, str], source: str, strict: bool) -> None:
    from ..checkpoints import CheckpointError
    ours = _config_dict(model)
    if ours is None or "mmfm_base_fingerprint" not in metadata:
        return   # a foreign adapter (no record) or a base without an mmfm config: shapes are still checked
    if config_fingerprint(ours) == metadata["mmfm_base_fingerprint"]:
        return
    theirs = json.loads(metadata.get("mmfm_base_config", "{}"))
    a, b = _flat(json.loads(json.dumps(ours, default=str))), _flat(theirs)
    diffs = [f"{k}: {b.get(k)!r} (adapter's base) vs {a.get(k)!r} (given model)" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    msg = (f"LoRA adapter {source} was trained on a different base model (config fingerprint "
           f"{metadata['mmfm_base_fingerprint']} vs {config_fingerprint(ours)}): " + "; ".join(diffs[:8])
           + (f"; ... and {len(diffs) - 8} more" if len(diffs) > 8 else ""))
    if strict:
        raise CheckpointError(msg + " (pass strict=False to load it anyway if the shapes fit)")
    warnings.warn(msg, stacklevel=3)


def _listing(kind: str, keys: list[str], show: int = 5) -> str:
    more = f", ... and {len(keys) - show} more" if len(keys) > show else ""
    return f"  {len(keys)} {kind}: {', '.join(keys[:show])}{more}"


def _expected_adapter_shapes(model: nn.Module, config: Any, adapter_name: str) -> dict[str, torch.Size]:
    """Shapes of the adapter tensors ``config`` would create in ``model``, keyed as PEFT saves them.

    Computed by injecting into a meta-device copy of the model, so nothing is allocated and a failed
    check leaves ``model`` untouched.
    """
    from peft import get_peft_model_state_dict, inject_adapter_in_model
    probe = meta_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inject_adapter_in_model(copy.deepcopy(config), probe, adapter_name=adapter_name)
    return {k: v.shape for k, v in get_peft_model_state_dict(probe, adapter_name=adapter_name).items()}


def load_lora(model: nn.Module, directory: str | Path, adapter_name: str = DEFAULT_ADAPTER, strict: bool = True,
              trainable: bool = False) -> nn.Module:
    """Load an adapter saved by :func:`save_lora` (either format) or by ``PeftModel.save_pretrained`` (on an mmfm
    model, or on a transformers ``CLIPModel``: its tensors and targets are renamed) onto a base model.

    Everything is checked before the model is touched: every adapter tensor is floating-point and finite
    and the recorded metadata (base config, logit scale) is well-formed and finite; the base model's config
    against the one the adapter recorded (``strict=False`` turns a difference into a warning); every
    adapter tensor's presence and shape against the base model's modules (always an error, naming the
    keys). A bad file raises ``CheckpointError`` (a ValueError) and leaves the model as it was.
    trainable: leave the adapter trainable (to continue training) instead of frozen (inference).
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from ..checkpoints import CheckpointError
    from ..checkpoints.validate import compare_shapes
    directory = Path(directory)
    model = peft_base_model(model)
    if is_lora_model(model):
        raise ValueError("the model already has LoRA adapters; load onto a plain base model")
    config, state, metadata = _read_adapter(directory)
    logit_scale = _check_adapter_contents(state, metadata, str(directory))
    from ..checkpoints.hf import is_hf_adapter_state
    if is_hf_adapter_state(state):   # saved by PEFT on a transformers CLIPModel (or save_lora(format="hf"))
        config, state = _from_hf_adapter(model, config, state, str(directory))
    _check_base_config(model, metadata, str(directory), strict)
    try:
        expected = _expected_adapter_shapes(model, config, adapter_name)
    except ValueError as e:   # PEFT: "Target modules ... not found in the base model"
        raise CheckpointError(f"LoRA adapter {directory} does not fit the model: {e}") from None
    missing, unexpected, mismatched = compare_shapes(expected, state)
    if missing or unexpected or mismatched:
        problems = [_listing(kind, keys) for kind, keys in (("shape mismatch(es)", mismatched),
                    ("adapter tensor(s) the model expects but the file lacks", missing),
                    ("adapter tensor(s) for modules the model does not have", unexpected)) if keys]
        raise CheckpointError(f"LoRA adapter {directory} does not fit the model; nothing was loaded:\n" + "\n".join(problems))
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    model._mmfm_lora = {"preset": metadata.get("mmfm_lora_preset"), "train_logit_scale": False, "frozen_before": frozen}
    try:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
        missing_adapter = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing_adapter:   # cannot happen after the checks above, but never return half-loaded adapters silently
            raise CheckpointError(f"LoRA adapter {directory}: {_listing('tensor(s) not loaded', missing_adapter)}")
    except BaseException:
        # Not expected after the checks above; if it happens anyway, take the half-injected layers out again.
        if lora_layers(model):
            unload_lora(model, merge=False)
        model.__dict__.pop("_mmfm_lora", None)
        model.__dict__.pop("peft_config", None)
        raise
    for n, p in lora_parameters(model).items():
        p.requires_grad_(trainable)
    model.train(model.training)   # the new layers' dropout starts in training mode: follow the model's mode
    if logit_scale is not None and hasattr(model, "logit_scale"):
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    bump()
    return model
