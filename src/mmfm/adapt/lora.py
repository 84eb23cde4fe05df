"""CLIP + LoRA through the ``peft`` library: presets, injection, merging and unloading.

Adapter files (save/load, the Hugging Face translation) are :mod:`.lora_io`; the few-shot method ``"lora"``
is :mod:`mmfm.adapt.fewshot.lora`.

Why ``peft.inject_adapter_in_model`` rather than ``get_peft_model``: injection replaces the targeted
``nn.Linear`` projections *inside* our model and returns the model itself, so a LoRA'd CLIP is still
an ``mmfm.models.CLIP``. Every name stays as it was apart from the wrapped projections
(``visual.transformer.blocks.0.attn.q_proj.base_layer.weight`` / ``...q_proj.lora_A.default.weight``),
so ``TrainConfig.freeze`` prefixes such as ``"visual"``, ``lock_image_tower``, ``count_parameters``'
per-tower split, the trainer's checkpoints and the evaluation suite need nothing special.
``get_peft_model`` works too (its ``forward(image=..., text=...)`` forwards keyword arguments and
attribute access reaches the base model), but it prefixes every parameter with ``base_model.model.``,
which breaks the name-based freezing above. Adapter files are nevertheless written in PEFT's own
layout, so ``peft.PeftModel.from_pretrained(base, directory)`` reads them as well as ``load_lora``.

``peft`` is imported lazily: it imports ``transformers``, which takes seconds.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import nn

from ..util.weights import bump

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
    return rf"^(?:{regex_alternatives(tops)})\.(?:.*\.)?(?:{regex_alternatives(mods)})$"


def regex_alternatives(names: Iterable[str]) -> str:
    """``a|b|c`` of the names, regex-escaped, duplicates dropped, order kept."""
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
    model = peft_base_model(model)
    if not hasattr(model, "peft_config"):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def peft_base_model(model: nn.Module) -> nn.Module:
    """The model holding the injected LoRA layers: a PeftModel's base model, else the model itself."""
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
def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every injected LoRA layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [(n, m) for n, m in peft_base_model(model).named_modules() if isinstance(m, BaseTunerLayer)]


def merge_lora(model: nn.Module, safe: bool = True) -> nn.Module:
    """Add each adapter's ``scale * B @ A`` into its base weight (in place; the adapters are kept, inactive).

    Outputs are unchanged (up to float rounding) and the adapter matmuls are skipped; for the fused
    QKV path as well, use :func:`unload_lora` / :func:`merged_copy` (plain ``nn.Linear`` again). ``safe`` checks the merged weights for NaN/inf first. Undo with :func:`unmerge_lora`.
    """
    layers = lora_layers(model)
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
        for _, layer in lora_layers(model):
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
    model = peft_base_model(model)
    layers = lora_layers(model)
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
    return unload_lora(copy.deepcopy(peft_base_model(model)), merge=True)


def export_merged(model: nn.Module, directory: str | Path, format: str = "mmfm") -> Path:
    """Merge the adapters into a copy and save it: ``format="mmfm"`` (``mmfm.checkpoints.save_pretrained``,
    reloadable with ``create_model(pretrained=directory)``) or ``"hf"`` (an HF ``CLIPModel`` directory)."""
    from ..checkpoints import export_hf, save_pretrained
    writers = {"mmfm": save_pretrained, "hf": export_hf}
    if format not in writers:
        raise ValueError(f"format must be one of {sorted(writers)}, got {format!r}")
    plain = merged_copy(model) if is_lora_model(model) else model
    return Path(writers[format](plain, directory))
