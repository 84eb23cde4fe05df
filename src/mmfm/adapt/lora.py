"""CLIP + LoRA through the ``peft`` library: presets, injection, adapter files, merging, few-shot.

Why ``peft.inject_adapter_in_model`` rather than ``get_peft_model``: injection replaces the targeted
``nn.Linear`` projections *inside* our model and returns the model itself, so a LoRA'd CLIP is still
an ``mmfm.models.CLIP``. Every name stays as it was apart from the wrapped projections
(``visual.transformer.blocks.0.attn.q_proj.base_layer.weight`` / ``...q_proj.lora_A.default.weight``),
so ``TrainConfig.freeze`` prefixes such as ``"visual"``, ``lock_image_tower``, ``count_parameters``'
per-tower split, the trainer's checkpoints and the evaluation suite need nothing special.
``get_peft_model`` works too (its ``forward(image=..., text=...)`` forwards keyword arguments and
attribute access reaches the base model), but it prefixes every parameter with ``base_model.model.``,
which breaks the name-based freezing above. Adapter files are nevertheless written in PEFT's own
layout, so ``peft.PeftModel.from_pretrained(base, directory)`` reads them as well as :func:`load_lora`.

``peft`` is imported lazily: it imports ``transformers``, which takes seconds.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..train.objectives import Objective
from ..util.weights import bump, meta_copy

ADAPTER_CONFIG = "adapter_config.json"      # PEFT's file names: PeftModel.from_pretrained reads these
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."            # how PeftModel names adapter weights in its files
DEFAULT_ADAPTER = "default"

#: Tower aliases: the image tower is the module ``visual``, the text tower ``text``.
TOWERS = {"image": "visual", "visual": "visual", "vision": "visual", "text": "text"}

#: Short names of the projections a preset targets -> module-name suffixes in our towers.
MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


@dataclass(frozen=True)
class LoraPreset:
    r: int
    alpha: float
    dropout: float
    modules: tuple[str, ...]          # keys of MODULES (or module-name suffixes)
    description: str = ""


#: Named setups. Trainable counts (both towers): ``attn-mlp-r16`` on ViT-B-32 = 4,423,680 of 155.7M
#: (2.84%); ``qkv-r64`` on ViT-B-16 = 5,898,240 (3.8%). ``mmfm info MODEL --lora PRESET`` prints them.
LORA_PRESETS: dict[str, LoraPreset] = {
    "qv-r16": LoraPreset(16, 32, 0.05, ("q", "v"), "query + value projections, r=16 (the LoRA paper's choice)"),
    "qkv-r64": LoraPreset(64, 128, 0.05, ("q", "k", "v"), "query, key, value projections, r=64"),
    "attn-mlp-r16": LoraPreset(16, 32, 0.1, ("q", "k", "v", "out", "fc1", "fc2"),
                               "every attention projection and both MLP layers, r=16"),
    "fewshot-r2": LoraPreset(2, 1, 0.25, ("q", "k", "v"), "tiny, heavily regularised adapter for k-shot data"),
}
DEFAULT_PRESET = "qv-r16"


# ---------------------------------------------------------------------------------------------
# Injection
def target_regex(modules: Iterable[str], towers: Iterable[str]) -> str:
    """The full-match regex PEFT uses to pick target modules: ``^(visual|text)\\.(.*\\.)?(q_proj|mlp\\.fc1)$``.

    A module is targeted when it lies in one of ``towers`` and its name ends with one of ``modules``
    (``"q"``/``"q_proj"``/``"attn.q_proj"`` and ``"fc1"``/``"mlp.fc1"`` all work).
    """
    mods = [MODULES.get(m, m) for m in modules]
    tops = [TOWERS.get(t, t) for t in towers]
    if not mods or not tops:
        raise ValueError("LoRA needs at least one target module and one tower")
    return rf"^(?:{_alternatives(tops)})\.(?:.*\.)?(?:{_alternatives(mods)})$"


def _alternatives(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in dict.fromkeys(names))   # dict: de-duplicate, keep order


def resolve_lora_options(preset: str | None = None, *, r: int | None = None, alpha: float | None = None,
                         dropout: float | None = None, target_modules: Sequence[str] | str | None = None,
                         towers: Sequence[str] = ("image", "text"), bias: str = "none") -> dict[str, Any]:
    """A preset with explicit arguments overriding it, as ``peft.LoraConfig`` keyword arguments."""
    if preset is not None and preset not in LORA_PRESETS:
        raise KeyError(f"unknown LoRA preset {preset!r}; presets: {sorted(LORA_PRESETS)}")
    base = LORA_PRESETS[preset or DEFAULT_PRESET]
    r = base.r if r is None else int(r)
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    if isinstance(towers, str):
        towers = (towers,)
    # A string is taken as a ready-made regex (full match over module names), a sequence as suffixes.
    regex = target_modules if isinstance(target_modules, str) else target_regex(target_modules or base.modules, towers)
    return {"r": r, "lora_alpha": float(base.alpha if alpha is None else alpha),
            "lora_dropout": float(base.dropout if dropout is None else dropout), "target_modules": regex, "bias": bias}


def _matching_modules(model: nn.Module, regex: str) -> list[str]:
    pattern = re.compile(regex)
    return [n for n, m in model.named_modules() if n and pattern.fullmatch(n) and isinstance(m, nn.Linear)]


def _check_targets(model: nn.Module, regex: str, towers: Sequence[str]) -> None:
    """Fail before PEFT does, with a message that names the tower and what it contains."""
    children = dict(model.named_children())
    for tower in ([towers] if isinstance(towers, str) else towers):
        name = TOWERS.get(tower, tower)
        if name not in children:
            raise ValueError(f"{type(model).__name__} has no tower {tower!r} (module {name!r}); "
                             f"its top-level modules are {sorted(children)}")
        if not any(n.startswith(name + ".") for n in _matching_modules(model, regex)):
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in children[name].named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(f"the LoRA targets ({regex}) match no nn.Linear in the {tower!r} tower "
                             f"({type(children[name]).__name__}); its linear layers are named {linears or 'nothing'}")


def is_lora_model(model: nn.Module) -> bool:
    """Whether LoRA layers have been injected into ``model`` (or the model a ``PeftModel`` wraps)."""
    model = _unwrap_peft(model)
    if not hasattr(model, "peft_config"):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _unwrap_peft(model: nn.Module) -> nn.Module:
    get_base = getattr(type(model), "get_base_model", None)   # PeftModel: the model with the injected layers
    return model.get_base_model() if callable(get_base) else model


def apply_lora(model: nn.Module, preset: str | None = None, *, r: int | None = None, alpha: float | None = None,
               dropout: float | None = None, target_modules: Sequence[str] | str | None = None,
               towers: Sequence[str] = ("image", "text"), bias: str = "none", train_logit_scale: bool = False,
               adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Inject LoRA adapters into ``model`` (in place) and return it; only the adapters stay trainable.

    preset: a name from :data:`LORA_PRESETS` (default ``qv-r16``); ``r``, ``alpha``, ``dropout``,
        ``target_modules`` override it. ``target_modules``: module-name suffixes (``["q_proj", "mlp.fc1"]``
        or the short names ``q k v out fc1 fc2``), or one regex matched against full module names.
    towers: which towers get adapters: ``"image"`` (``visual.``) and/or ``"text"`` (``text.``).
    bias: PEFT's ``"none"`` | ``"all"`` | ``"lora_only"`` (which biases train and are saved with the adapter).
    train_logit_scale: also train the temperature (saved with the adapter, restored by :func:`load_lora`).

    Works on models built on the meta device (adapters are created there too), which is how
    ``mmfm info MODEL --lora PRESET`` counts parameters without allocating any memory.
    """
    from peft import LoraConfig, inject_adapter_in_model
    if is_lora_model(model):
        raise ValueError("the model already has LoRA adapters; merge or unload them first (merge_lora / unload_lora)")
    opts = resolve_lora_options(preset, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                                towers=towers, bias=bias)
    if not isinstance(target_modules, str):
        _check_targets(model, opts["target_modules"], towers)
    # Which base parameters were frozen before: unload_lora restores exactly this state.
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    config = LoraConfig(**opts)
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    model.train(model.training)   # the new layers' dropout starts in training mode: follow the model's mode
    if hasattr(model, "logit_scale") and isinstance(model.logit_scale, nn.Parameter):
        model.logit_scale.requires_grad_(train_logit_scale)
    model._mmfm_lora = {"preset": preset, "train_logit_scale": train_logit_scale, "frozen_before": frozen}
    bump()   # new layers compute something else: every weights-derived cache re-checks
    return model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters (names containing ``lora_``)."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


# ---------------------------------------------------------------------------------------------
# Merging
def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [(n, m) for n, m in _unwrap_peft(model).named_modules() if isinstance(m, BaseTunerLayer)]


def merge_lora(model: nn.Module, safe: bool = True) -> nn.Module:
    """Add each adapter's ``scale * B @ A`` into its base weight (in place; the adapters are kept, inactive).

    Outputs are unchanged (up to float rounding) and the adapter matmuls are skipped; for the fused
    QKV path as well, use :func:`unload_lora` / :func:`merged_copy` (plain ``nn.Linear`` again). ``safe`` checks the merged weights for NaN/inf first. Undo with :func:`unmerge_lora`.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to merge")
    try:
        for _, layer in layers:
            if not layer.merged:
                layer.merge(safe_merge=safe)
    finally:
        bump()   # PEFT writes through ``.data``: no tensor version changes, so say it here
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract merged adapters from the base weights again (in place), re-activating them."""
    try:
        for _, layer in _lora_layers(model):
            while layer.merged:
                layer.unmerge()
    finally:
        bump()   # PEFT writes through ``.data``: no tensor version changes, so say it here
    return model


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Turn a LoRA'd model back into a plain one, in place: each wrapped projection is replaced by its
    base ``nn.Linear`` (with the adapter merged into it when ``merge``, discarded otherwise).

    The trainable/frozen state of the base parameters is restored to what it was before
    :func:`apply_lora`. The result saves and exports like any model of its family.
    """
    model = _unwrap_peft(model)
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to unload")
    try:
        for name, layer in layers:
            if merge and not layer.merged:
                layer.merge(safe_merge=True)
            elif not merge:
                while layer.merged:
                    layer.unmerge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    finally:
        bump()   # PEFT writes through ``.data``: no tensor version changes, so say it here
    info = model.__dict__.pop("_mmfm_lora", {})
    model.__dict__.pop("peft_config", None)
    frozen = set(info.get("frozen_before", []))
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain (un-LoRA'd) copy of ``model`` with the adapters merged; ``model`` is left untouched."""
    return unload_lora(copy.deepcopy(_unwrap_peft(model)), merge=True)


def export_merged(model: nn.Module, directory: str | Path, format: str = "mmfm") -> Path:
    """Merge the adapters into a copy and save it: ``format="mmfm"`` (``mmfm.checkpoints.save_pretrained``,
    reloadable with ``create_model(pretrained=directory)``) or ``"hf"`` (an HF ``CLIPModel`` directory)."""
    from ..checkpoints import export_hf, save_pretrained
    writers = {"mmfm": save_pretrained, "hf": export_hf}
    if format not in writers:
        raise ValueError(f"format must be one of {sorted(writers)}, got {format!r}")
    plain = merged_copy(model) if is_lora_model(model) else model
    return Path(writers[format](plain, directory))


# ---------------------------------------------------------------------------------------------
# Adapter files
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
    short = rf"^(?:{_alternatives(towers)})\.(?:.*\.)?(?:{_alternatives(suffixes)})$"
    if sorted(n for n in candidates if re.fullmatch(short, n)) == sorted(chosen):
        return short
    return rf"^(?:{_alternatives(chosen)})$"


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
    model = _unwrap_peft(model)
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
    model = _unwrap_peft(model)
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
        if _lora_layers(model):
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


# ---------------------------------------------------------------------------------------------
# Few-shot classification with LoRA (the "lora" method of mmfm.adapt.fewshot)
def _task_templates(dataset, attribute: str | None) -> list[str]:
    tasks = dataset.zero_shot_tasks() if hasattr(dataset, "zero_shot_tasks") else {}
    for task in tasks.values():
        if task.attribute == attribute:
            return list(task.templates)
    return list(getattr(dataset, "templates", None) or ["a photo of a {}."])


def _class_text_features(model: nn.Module, tokens: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised prompt-ensemble class embeddings ``[C, D]``, differentiable through the text tower."""
    emb = F.normalize(model.encode_text(tokens), dim=-1)
    emb = emb.reshape(num_classes, -1, emb.shape[-1]).mean(dim=1)   # tokens are class-major: [C * T]
    return F.normalize(emb, dim=-1)


class _ShotStream(torch.utils.data.IterableDataset):
    """The k-shot examples, ``steps`` batches of them: each step's ``torch.randperm(n, generator)[:batch_size]``
    from one generator seeded with ``seed`` (the draw of the loop this replaced, so the numbers are its own)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int):
        self.images, self.labels, self.steps, self.batch_size, self.seed = images, labels, steps, batch_size, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            for i in torch.randperm(len(self.labels), generator=gen)[:self.batch_size]:
                yield {"image": self.images[i], "label": self.labels[i]}


class FewShotLoraObjective(Objective):
    """The two few-shot losses on a batch of k-shot images and their labels.

    ``"ce"``: cross-entropy of the images against every class's prompt-ensemble embedding (the zero-shot
    classifier, differentiable through the text tower); ``"contrastive"``: CLIP's loss on (image, its class's
    first prompt) pairs."""

    def __init__(self, kind: str, class_tokens: torch.Tensor, prompt_tokens: torch.Tensor, num_classes: int):
        self.kind, self.class_tokens, self.prompt_tokens = kind, class_tokens, prompt_tokens
        self.num_classes = num_classes

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        from ..train.losses import clip_loss
        img = F.normalize(model.encode_image(batch["image"]), dim=-1)
        scale = model.scale() if hasattr(model, "scale") else torch.tensor(100.0)
        if self.kind == "ce":
            classes = _class_text_features(model, self.class_tokens, self.num_classes)
            return {"loss": F.cross_entropy(scale * img @ classes.T, batch["label"])}
        txt = F.normalize(model.encode_text(self.prompt_tokens[batch["label"]]), dim=-1)
        return {"loss": clip_loss(img, txt, scale)}


def lora_few_shot(episode) -> dict[str, Any]:
    """Few-shot method ``"lora"`` of ``mmfm.adapt.few_shot(..., method="lora")`` (:mod:`mmfm.adapt.fewshot`).

    Fine-tunes a LoRA'd copy of ``episode.model`` on the k-shot images with the class prompts
    ("a photo of a {class}"), then classifies the test set zero-shot with the adapted model.
    ``episode.options`` (``few_shot(method_options=...)``): ``preset`` (``fewshot-r2``), any
    :func:`apply_lora` option (``r``, ``alpha``, ...), ``objective`` (``"ce"``: cross-entropy over the
    zero-shot classifier built from every class's prompts, the default; ``"contrastive"``: CLIP's loss
    on (image, its class prompt) pairs), ``steps`` (50), ``lr`` (1e-3), ``weight_decay`` (0.0),
    ``batch_size`` (32), ``templates`` (the task's), ``transform`` (the model's eval transform),
    ``device`` (the model's), ``seed`` (the episode's).

    Training is the Trainer's, without an output folder: AdamW (betas 0.9/0.999, eps 1e-8) at a constant
    lr, no clipping, a fresh random batch of the shots each step. The Trainer exempts 1-D parameters
    (biases, the temperature) from weight decay, which the presets' adapters do not have.
    """
    from ..eval.features import default_transform, extract_image_features, model_device
    from ..eval.zero_shot import build_zero_shot_classifier
    from ..tokenizer import get_tokenizer
    from ..train import TrainConfig, Trainer
    opts = dict(episode.options)
    objective = opts.pop("objective", "ce")
    if objective not in ("ce", "contrastive"):
        raise ValueError(f"lora_few_shot: objective must be 'ce' or 'contrastive', got {objective!r}")
    steps, lr = int(opts.pop("steps", 50)), float(opts.pop("lr", 1e-3))
    weight_decay, batch_size = float(opts.pop("weight_decay", 0.0)), int(opts.pop("batch_size", 32))
    templates = list(opts.pop("templates", None) or _task_templates(episode.train_dataset, episode.attribute))
    device = torch.device(opts.pop("device", None) or model_device(episode.model))
    seed = int(opts.pop("seed", episode.seed))
    transform = opts.pop("transform", None) or default_transform(episode.model)
    lora_kw = {k: opts.pop(k) for k in ("r", "alpha", "dropout", "target_modules", "towers", "bias") if k in opts}
    preset = opts.pop("preset", "fewshot-r2")
    if opts:
        raise ValueError(f"lora_few_shot: unknown option(s) {sorted(opts)}")

    t0 = time.perf_counter()
    torch.manual_seed(seed)   # the adapters' initialisation, then the dropout masks: the Trainer leaves it to us
    # Each episode adapts a fresh copy: the caller's model (and the next episode) never see the adapter.
    model = apply_lora(copy.deepcopy(episode.model), preset, **lora_kw).to(device)
    images = torch.stack([transform(episode.train_dataset[int(i)].image) for i in episode.train_indices])
    labels = torch.as_tensor(episode.train_labels, dtype=torch.long)
    tok = get_tokenizer(model.context_length)
    classnames = episode.classnames
    loss_fn = FewShotLoraObjective(objective, tok([t.format(c) for c in classnames for t in templates]).to(device),
                                   tok([templates[0].format(c) for c in classnames]).to(device), len(classnames))
    final_loss = float("nan")
    if steps > 0:
        batch = min(batch_size, len(labels))
        cfg = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999),
                          eps=1e-8, schedule="constant", grad_clip=None, seed=seed, device=str(device), log_every=steps)
        stream = _ShotStream(images, labels, steps, batch, seed)
        final_loss = Trainer(model, stream, cfg, None, objective=loss_fn,
                             collate_fn=torch.utils.data.default_collate).fit().final_loss
    train_s = time.perf_counter() - t0

    model.eval()
    weights = build_zero_shot_classifier(model, classnames, templates, device=device, use_cache=False)
    feats = extract_image_features(model, episode.test_dataset, kind="embedding", attribute=episode.attribute,
                                   device=device, transform=transform, use_cache=False, progress=False)
    scores = F.normalize(feats.features, dim=-1) @ weights
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"predictions": scores.argmax(dim=1).numpy().astype(np.int64),
            "extra": {"final_loss": final_loss, "train_s": train_s, "objective": objective, "preset": preset,
                      "trainable_params": int(trainable)}}
