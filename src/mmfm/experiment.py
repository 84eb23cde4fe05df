"""``mmfm run CONFIG.yaml``: a validated experiment config turned into the API calls that train and
evaluate one or several models, with one comparison table (markdown + JSON) at the end.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import torch
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from .train.config import Strict, TrainConfig
from .util.overrides import apply_overrides


class DatasetSpec(Strict):
    name: str = Field(description="a registered dataset: shapes, digits, custom, cifar10, flickr30k, ...")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the dataset")
    templates: list[str] | None = Field(None, description="caption templates replacing the dataset's own ('{}' = class)")


class AugmentSpec(Strict):
    random_resized_crop: tuple[float, float] | None = Field((0.8, 1.0), description="area scale range, or null")
    hflip: bool = False
    pad_crop: int = Field(0, ge=0, description="CIFAR-style random crop with this padding (replaces resized crop)")


def _path_part(value: str, what: str) -> str:
    """A name used as one folder name under the run folder: nothing that could leave it or hit its root."""
    if not value or value != value.strip() or value in (".", "..") or any(c in value for c in "/\\\0") \
            or value.startswith("."):
        raise ValueError(f"{what} {value!r} must be a plain folder name (not empty, no '/', '\\', leading '.' "
                         f"or surrounding spaces), e.g. 'clip-rn-s'")
    return value


class EvalSpec(Strict):
    kind: str = Field(description="an evaluation kind of mmfm.evaluate.KINDS: zeroshot, retrieval, linear_probe, "
                                  "fewshot (CLIP-family models); captioning, vqa (Frozen; args: n, max_new_tokens, ...)")
    dataset: str = Field("test", description="key of `data` to evaluate on")
    train_dataset: str = Field("train", description="key of `data` the probe is fitted on (linear_probe, fewshot)")
    val_dataset: str | None = Field("auto", description="linear_probe: key of `data` its C is chosen on; 'auto' = "
                                    "the official val split of flowers102/dtd (as `mmfm eval`), else carved from "
                                    "train; null = always carve")
    task: str | None = Field(None, description="zero-shot task, e.g. shape / color for shapes")
    tag: str | None = Field(None, description="the evaluation's name in the report's columns (default kind[task]@dataset); "
                                              "needed to tell apart two evaluations of one kind, e.g. 'vqa text-only'")
    protocol: Literal["clip_paper", "clip_benchmark"] = Field(
        "clip_paper", description="clip_benchmark: open_clip's published protocol (raw CIFAR-100 names, AdamW "
                                  "linear probe on normalised embeddings), as `mmfm eval --protocol`")
    args: dict[str, Any] = Field(default_factory=dict)


    @field_validator("kind")
    @classmethod
    def _kind_is_registered(cls, v: str) -> str:
        """Any kind in the one table (mmfm.evaluate.KINDS), by its name or a CLI spelling; stored canonical."""
        from .evaluate import ALIASES, KINDS
        if v not in ALIASES:
            raise ValueError(f"unknown evaluation kind {v!r}; known: {', '.join(KINDS)}")
        return ALIASES[v]


#: the config families CLIP's evaluations and adaptations apply to
CLIP_FAMILIES = ("clip", "hybrid")


class ModelSpec(Strict):
    label: str = Field(description="the model's name in reports and its folder under the run folder")
    model: str | None = Field(None, description="registered model config (`mmfm models`)")
    config: dict[str, Any] | None = Field(None, description="an inline model config (its `family`: clip, hybrid, "
                                          "frozen, ...; e.g. Frozen's vision, pretrained_lm, prefix_length); with "
                                          "`model`, fields replacing the registered config's")
    tokenizer: str | None = Field(None, description="Frozen: the LM's tokenizer (directory or hub id); default the "
                                  "config's tokenizer, else its pretrained_lm. causal_lm: 'word-level' (trained on "
                                  "the training corpus) or a tokenizer directory / hub id")
    pretrained: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    lora: str | dict[str, Any] | None = Field(None, description="LoRA preset name, or apply_lora options {preset, r, "
                                              "alpha, ...}; sugar for `adapt: [{method: lora, ...}]`")
    adapt: list[dict[str, Any]] | None = Field(None, description="adaptation steps in order, each {method: NAME, "
                                               "...options}: lora, lock, freeze, wise_ft, ... (mmfm.adapt.ADAPTATIONS)")
    options: dict[str, Any] | None = Field(None, description="the family's own options (Frozen: vision_init, "
                                           "prefix_weight, prefix_targets, vqa_fraction: mmfm.frozen.family."
                                           "FrozenOptions); '@label' as a value names an earlier model's saved model")
    train_data: str | None = Field(None, description="key of `data` this model trains on (default: the experiment's "
                                   "train_data)")
    val_data: str | None = Field(None, description="key of `data` it is validated on (default: the experiment's "
                                 "val_data; 'none': no validation)")
    train: TrainConfig | None = None
    evals: list[EvalSpec] | None = Field(None, description="evaluations for this model (default: the experiment's)")

    @field_validator("label")
    @classmethod
    def _label_is_a_folder_name(cls, v: str) -> str:
        return _path_part(v, "label")

    @field_validator("adapt")
    @classmethod
    def _steps_are_registered(cls, v):
        from .adapt.registry import parse_step
        if v is None:
            return v
        out = []
        for i, step in enumerate(v):
            try:
                out.append(parse_step(step).to_dict())
            except ValueError as e:
                raise ValueError(f"adapt.{i}: {e}") from None
        return out

    @model_validator(mode="after")
    def _config_fits(self):
        # a wrong key or value, or an option the family does not take, fails here, naming it, before anything runs
        if self.lora is not None and self.adapt is not None:
            raise ValueError("lora: give LoRA either as `lora:` or as a step of `adapt:` ({method: lora, ...}), "
                             "not both")
        if self.config is None and self.tokenizer is None and self.lora is None and self.adapt is None \
                and self.options is None \
                and (self.train is None or (self.train.lock_image is None and self.train.lock_text is None)):
            return self
        cfg = model_config(self)
        family = getattr(cfg, "family", "clip")
        frozen = family not in CLIP_FAMILIES      # Frozen, causal_lm: text-generating models
        if self.lora is not None and frozen:
            raise ValueError(f"lora: LoRA applies to CLIP-family models, not {family!r} ones (remove `lora`)")
        if self.tokenizer is not None and cfg is not None and not frozen:
            raise ValueError("tokenizer: only Frozen and causal_lm models take a `tokenizer` (CLIP-family models "
                             "bring their own)")
        if family == "causal_lm" and self.tokenizer is None:
            raise ValueError("tokenizer: a causal_lm model needs one: 'word-level' (trained on the training corpus) "
                             "or a tokenizer directory / hub id")
        steps = adaptation_steps(self)           # `lora:` and train's lock/freeze, as the steps they stand for
        clip_only = [s.method for s in steps if s.adaptation.clip_only]
        if clip_only and frozen:
            raise ValueError(f"adapt: {', '.join(clip_only)} (from `adapt:` or train's lock_image/lock_text) applies "
                             f"to CLIP-family models, not {family!r} ones (remove it)")
        after = [s.method for s in steps if s.adaptation.when == "after_training"]
        if after and self.train is None:
            raise ValueError(f"adapt: {', '.join(after)} runs after training; add `train:` or remove it")
        family_options(self, cfg)
        return self


def family_options(spec: "ModelSpec", cfg=None):
    """The spec's ``options:`` validated by its family's ``Options`` (None when it gives none)."""
    if spec.options is None:
        return None
    cfg = cfg if cfg is not None else model_config(spec)
    family = model_family(cfg) if cfg is not None else None
    options_cls = getattr(family, "Options", None)
    if options_cls is None:
        raise ValueError(f"options: the {family_of_config(cfg)!r} family takes no options (remove `options`)")
    try:
        options = options_cls.model_validate(spec.options)
    except ValidationError as e:
        raise ValueError("options: " + "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(options)'}: "
                                                 f"{err['msg']}" for err in e.errors())) from None
    if hasattr(family, "check_options"):
        family.check_options(cfg, options)
    return options


def references(spec: "ModelSpec") -> list[tuple[str, str]]:
    """(where, label) of every '@label' value of the spec's config and options: an earlier model's output."""
    found = []
    for section in ("config", "options"):
        for key, value in (getattr(spec, section) or {}).items():
            if isinstance(value, str) and value.startswith("@"):
                found.append((f"{section}.{key}", value[1:]))
    return found


def resolve_references(spec: "ModelSpec", out: Path) -> "ModelSpec":
    """The spec with each '@label' replaced by that model's saved model folder (``out/label/model``)."""
    def resolve(d):
        if d is None:
            return None
        return {k: (str((out / v[1:] / "model").resolve()) if isinstance(v, str) and v.startswith("@") else v)
                for k, v in d.items()}
    return spec.model_copy(update={"config": resolve(spec.config), "options": resolve(spec.options)})


def adaptation_steps(spec: ModelSpec) -> list:
    """The model's adaptation steps in the order they run: ``lora:`` (sugar for a lora step), ``adapt:``, then
    the training config's ``lock_image`` / ``lock_text`` / ``freeze`` (which the Trainer applied at its start)."""
    from .adapt.registry import parse_step
    steps: list[dict[str, Any]] = []
    if spec.lora is not None:
        steps.append({"method": "lora", **({"preset": spec.lora} if isinstance(spec.lora, str) else spec.lora)})
    steps += spec.adapt or []
    t = spec.train
    if t is not None and (t.lock_image is not None or t.lock_text is not None):
        steps.append({"method": "lock", **({"image": t.lock_image} if t.lock_image is not None else {}),
                      **({"text": t.lock_text} if t.lock_text is not None else {})})
    if t is not None and t.freeze:
        steps.append({"method": "freeze", "prefixes": list(t.freeze)})
    out = []
    for step in steps:
        try:
            out.append(parse_step(step))
        except ValueError as e:
            raise ValueError(f"{'lora' if step is steps[0] and spec.lora is not None else 'train'}: {e}") from None
    return out


def model_config(spec: ModelSpec):
    """The model config a spec names: the registered ``model``, its inline ``config``, or the first with the
    second's fields replacing its own; None when only ``pretrained`` says what the model is."""
    from .models import get_model_config
    from .models.registry import config_from_dict
    try:
        base = get_model_config(spec.model) if spec.model else None
    except KeyError as e:
        raise ValueError(f"model: {e.args[0]}") from None
    if spec.config is None:
        return base
    d = {**base.to_dict(), **spec.config} if base is not None else dict(spec.config)
    try:
        return config_from_dict(d)
    except (ValueError, TypeError) as e:       # ConfigError is a ValueError
        raise ValueError(f"config: {e}") from None


class ExperimentConfig(Strict):
    name: str
    seed: int = 0
    device: str | None = None
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (torch.set_num_threads); default torch's")
    num_workers: int = Field(0, ge=0, description="data loader workers for evaluation")
    data: dict[str, DatasetSpec]
    train_data: str = "train"
    val_data: str | None = "val"
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    models: list[ModelSpec] = Field(min_length=1)
    evals: list[EvalSpec] = Field(default_factory=list)
    eval_during_training: list[EvalSpec] = Field(default_factory=list,
                                                 description="cheap evaluations run at every validation")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        return _path_part(v, "name")

    @model_validator(mode="after")
    def _labels_are_unique(self):
        labels = [m.label for m in self.models]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate model label(s) {dup}: each model needs its own label (its folder and row)")
        return self

    @model_validator(mode="after")
    def _references_and_data_keys_exist(self):
        for i, m in enumerate(self.models):
            trained = [e.label for e in self.models[:i] if e.train is not None]
            for where, label in references(m):
                if label not in trained:
                    raise ValueError(f"models.{i}.{where}: '@{label}' names no earlier trained model of this run "
                                     f"(earlier trained models: {trained}); a model can use only what was saved before it")
            for key in ("train_data", "val_data"):
                value = getattr(m, key)
                if value is not None and value not in self.data and not (key == "val_data" and value == "none"):
                    raise ValueError(f"models.{i}.{key}: {value!r} is not a key of data ({sorted(self.data)})")
        return self


def _explain(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            allowed = sorted(parent.model_fields) if parent is not None else []
            msg = f"unknown key {err['loc'][-1]!r}" + (f"; allowed keys: {allowed}" if allowed else "")
        lines.append(f"  {loc}: {msg}")
    return f"invalid experiment config {where}:\n" + "\n".join(lines)


def _model_at(loc) -> type | None:
    """The pydantic model class at a location of the config (to list allowed keys)."""
    cls: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return cls if isinstance(part, str) and part in ("data",) else None
        ann = field.annotation
        for candidate in (ModelSpec, EvalSpec, DatasetSpec, AugmentSpec, TrainConfig):
            if candidate is ann or candidate in getattr(ann, "__args__", ()) or \
                    any(candidate in getattr(a, "__args__", ()) for a in getattr(ann, "__args__", ())):
                cls = candidate
                break
        else:
            if part == "data":
                cls = DatasetSpec
    return cls


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} does not exist (bundled configs are in the repository's configs/)")
    raw = yaml.safe_load(path.read_text()) or {}
    apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(_explain(e, str(path))) from None


# ---------------------------------------------------------------------------------------------
def _build_datasets(cfg: ExperimentConfig):
    from .data import get_dataset
    out = {}
    for key, spec in cfg.data.items():
        try:
            out[key] = get_dataset(spec.name, **spec.args)
        except TypeError as e:
            raise ValueError(f"data.{key}: {e}") from None
        if spec.templates:
            out[key].templates = list(spec.templates)
    return out


class ModelFamily(Protocol):
    """What the runner asks of a model's family; the Trainer knows none of it. Families are registered by
    their config's ``family`` name (:func:`register_family`): CLIP-family models (CLIP, LoRA, hybrids, LiT)
    answer with :class:`ClipFamily`, Frozen with :class:`mmfm.frozen.family.FrozenFamily`."""

    name: str

    def prepare(self, model: nn.Module, tokenizer: str | None = None) -> Any: ...   # -> the tokenizer
    def image_size(self, model: nn.Module) -> int: ...
    def objective(self, tokenizer, train_cfg: TrainConfig, options: Any = None) -> Any: ...
    def train_view(self, dataset, transform, tokenizer, seed: int, options: Any = None, model: Any = None) -> Any: ...
    def val_view(self, dataset, transform, tokenizer) -> Any: ...
    def save(self, model: nn.Module, directory: Path, tokenizer) -> None: ...


class ClipFamily:
    """Contrastive image-text training: CLIP tokenizer, ``ContrastiveObjective``, ``ImageTextView``."""

    name = "clip"

    def prepare(self, model, tokenizer=None):
        from .tokenizer import get_tokenizer
        return model.get_tokenizer() if hasattr(model, "get_tokenizer") else get_tokenizer(model.context_length)

    def image_size(self, model) -> int:
        return model.config.vision.image_size

    def objective(self, tokenizer, train_cfg: TrainConfig, options=None):
        from .train.objectives import ContrastiveObjective
        return ContrastiveObjective.from_config(train_cfg)

    def train_view(self, dataset, transform, tokenizer, seed: int, options=None, model=None):
        from .data import ImageTextView
        return ImageTextView(dataset, transform, tokenizer, caption_mode="random", seed=seed)

    def val_view(self, dataset, transform, tokenizer):
        from .data import ImageTextView
        return ImageTextView(dataset, transform, tokenizer, caption_mode="first")

    def save(self, model, directory: Path, tokenizer) -> None:
        from .adapt import export_merged, is_lora_model, save_lora
        from .checkpoints import save_pretrained
        if is_lora_model(model):   # the adapter alone (PEFT format) and the merged model
            save_lora(model, directory / "adapter")
            export_merged(model, directory / "model")
        else:
            save_pretrained(model, directory / "model")


#: config ``family`` name -> the runner's family for it. A new family is one ``register_family`` call.
FAMILIES: dict[str, ModelFamily] = {}


def register_family(config_family: str, family: ModelFamily, *, overwrite: bool = False) -> None:
    """Make models whose config says ``family: config_family`` train and save through ``family``."""
    if config_family in FAMILIES and not overwrite and FAMILIES[config_family] is not family:
        raise ValueError(f"model family {config_family!r} is already registered (pass overwrite=True to replace it)")
    FAMILIES[config_family] = family


def _register_builtin_families() -> None:
    # the families above this module's layer register here (experiment may import them; they may not import it)
    from .frozen.family import FrozenFamily
    from .frozen.lm import CausalLMFamily
    for name, family in (("clip", ClipFamily()), ("hybrid", ClipFamily()), ("frozen", FrozenFamily()),
                         ("causal_lm", CausalLMFamily())):
        FAMILIES.setdefault(name, family)


def family_of_config(cfg: Any) -> str:
    """The family name a model config declares (CLIP configs predate the field: ``clip``)."""
    return str(getattr(cfg, "family", None) or "clip")


def model_family(model_or_config: Any) -> ModelFamily:
    """The registered family of a model (its ``config``) or of a model config."""
    _register_builtin_families()
    cfg = getattr(model_or_config, "config", model_or_config)
    name = family_of_config(cfg)
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} has no runner family; registered: {sorted(FAMILIES)} "
                         f"(mmfm.experiment.register_family)")
    return FAMILIES[name]


def data_keys(cfg: ExperimentConfig, spec: ModelSpec) -> tuple[str, str | None]:
    """(training data key, validation data key or None) of a model: its own, else the experiment's. The
    experiment's default is checked here, when a model trains on it (a run that trains nothing need not have it)."""
    val = spec.val_data if spec.val_data is not None else cfg.val_data
    train = spec.train_data or cfg.train_data
    if train not in cfg.data:
        raise ValueError(f"train_data {train!r} is not a key of data ({sorted(cfg.data)})")
    return train, (None if val == "none" else val)


def _views(cfg, family: ModelFamily, model, tok, datasets, train: TrainConfig, spec: ModelSpec, options=None):
    from .data.transforms import image_transform
    size = family.image_size(model)          # None: a text-only family, no image transforms
    a = cfg.augment
    train_tf = image_transform(size, train=True, scale=a.random_resized_crop or (1.0, 1.0), hflip=a.hflip,
                               pad_crop=a.pad_crop) if size else None
    train_key, val_key = data_keys(cfg, spec)
    train_view = family.train_view(datasets[train_key], train_tf, tok, seed=train.seed, options=options, model=model)
    val_view = None
    if val_key and val_key in datasets:
        val_view = family.val_view(datasets[val_key], image_transform(size) if size else None, tok)
    return train_view, val_view


def _check_evals(cfg: ExperimentConfig, datasets: dict) -> None:
    """Evaluations that cannot run on their model or data fail before anything trains (nothing is lost)."""
    from .evaluate import KINDS, get_kind
    from .frozen.evals import VQA_DATASETS, supports_vqa
    for i, spec in enumerate(cfg.models):
        family = getattr(model_config(spec), "family", None)      # None: only the checkpoint knows
        group = "clip" if family in CLIP_FAMILIES else family
        for e in list(spec.evals if spec.evals is not None else cfg.evals) + list(cfg.eval_during_training):
            kind = get_kind(e.kind)
            if family is not None and group != kind.family:
                frozen_kinds = sorted(n for n, k in KINDS.items() if k.family == "frozen")
                raise ValueError(f"models.{i} ({spec.label}): evaluation {e.kind} does not apply to a {family!r} "
                                 f"model; Frozen takes {', '.join(frozen_kinds)}, CLIP-family models the others")
            if kind.name in ("vqa", "binding") and e.dataset in datasets and not supports_vqa(datasets[e.dataset]):
                raise ValueError(f"evaluation {kind.name}: data {e.dataset!r} ({cfg.data[e.dataset].name}) provides no "
                                 f"scenes with questions and answers; datasets that do: {list(VQA_DATASETS)}")


def _val_dataset(spec: EvalSpec, datasets: dict, data_specs: dict[str, DatasetSpec] | None):
    """The linear probe's C-sweep set: the same rule as `mmfm eval` (:func:`mmfm.eval.official_val_split`)."""
    if spec.kind != "linear_probe" or spec.val_dataset is None:
        return None
    if spec.val_dataset != "auto":
        return datasets[spec.val_dataset]
    from .data import get_dataset
    from .eval import official_val_split
    train_spec = (data_specs or {}).get(spec.train_dataset)
    split = official_val_split(train_spec.name) if train_spec is not None else None
    return get_dataset(train_spec.name, **{**train_spec.args, "split": split}) if split else None


def run_eval_spec(spec: EvalSpec, model, datasets: dict, label: str, out_dir: Path, device, num_workers: int = 0,
                  progress: bool = True, data_specs: dict[str, DatasetSpec] | None = None,
                  random_weights: bool = False, seed: int | None = None):
    """One configured evaluation, through the same :func:`mmfm.evaluate.evaluate` as `mmfm eval`. Kinds that draw
    (binding episodes) draw from the run's ``seed`` unless their args name one."""
    from .evaluate import evaluate, get_kind
    kind = get_kind(spec.kind)
    args = dict(spec.args)
    if seed is not None and kind.run_seed and "seed" not in args:
        args["seed"] = seed
    uses_train = kind.needs_train or (kind.uses_train and spec.train_dataset in datasets)
    keys = (spec.dataset,) + ((spec.train_dataset,) if kind.needs_train else ()) + \
        ((spec.val_dataset,) if kind.name == "linear_probe" and spec.val_dataset not in (None, "auto") else ())
    for key in keys:
        if key not in datasets:
            raise ValueError(f"evaluation {spec.kind}: dataset {key!r} is not a key of data ({sorted(datasets)})")
    train = datasets[spec.train_dataset] if uses_train else None
    result = evaluate(kind, model, datasets[spec.dataset], train, _val_dataset(spec, datasets, data_specs),
                      label=label, out_dir=out_dir, device=device, num_workers=num_workers, progress=progress,
                      task=spec.task, random_weights=random_weights, protocol=spec.protocol, **args)
    result.config["tag"] = eval_tag(spec)
    return result


def _attach_published(result, spec: ModelSpec, data: DatasetSpec | None, e: EvalSpec, device) -> None:
    """open_clip's published value beside the result, as `mmfm eval` shows it: only for pretrained weights used
    as they are (no training, no LoRA) on a dataset's test split."""
    from .eval import published_comparison
    if spec.train is not None or adaptation_steps(spec) or data is None or data.args.get("split", "test") != "test" \
            or e.kind in ("captioning", "vqa", "binding"):
        return
    comp = published_comparison(result, spec.model, spec.pretrained, data.name, protocol_used=e.protocol,
                                precision=spec.precision, device=str(device))
    if comp:
        result.config["published"] = comp


def eval_tag(spec: EvalSpec) -> str:
    """How an evaluation is named in the report's columns, e.g. ``zeroshot[shape]`` or ``retrieval@val``."""
    if spec.tag:
        return spec.tag
    return spec.kind + (f"[{spec.task}]" if spec.task else "") + (f"@{spec.dataset}" if spec.dataset != "test" else "")


# ---------------------------------------------------------------------------------------------
# The run folder: one experiment per folder, one run at a time.
LOCK_NAME = ".mmfm-run.lock"
REPORT_FILES = ("report.md", "report.json", "results.json", "results.md", "config.resolved.yaml")
#: Settings that do not change what a run trains: evaluations and how fast/where it runs.
_NOT_IDENTITY = {"evals", "eval_during_training", "num_workers", "device", "threads"}
_NOT_IDENTITY_MODEL = {"evals"}
_NOT_IDENTITY_TRAIN = {"progress", "tensorboard", "num_workers", "device", "log_every"}


def _identity(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in _NOT_IDENTITY}
    models = []
    for m in d.get("models") or []:
        m = {k: v for k, v in m.items() if k not in _NOT_IDENTITY_MODEL} if isinstance(m, dict) else m
        if isinstance(m, dict) and isinstance(m.get("train"), dict):
            m["train"] = {k: v for k, v in m["train"].items() if k not in _NOT_IDENTITY_TRAIN}
        models.append(m)
    d["models"] = models
    return d


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{prefix}.{i}")]
    return [] if a == b else [prefix or "(config)"]


def check_run_folder(cfg: ExperimentConfig, out: Path, existing: str = "refuse") -> None:
    """Refuse to run into a folder that holds another experiment (its config differs in more than its
    evaluations), unless ``existing`` is ``"resume"`` (continue it with this config) or ``"overwrite"``."""
    if existing not in ("refuse", "resume", "overwrite"):
        raise ValueError(f"existing must be 'refuse', 'resume' or 'overwrite', got {existing!r}")
    previous = out / "config.resolved.yaml"
    if existing != "refuse" or not previous.is_file():
        return
    try:
        old = yaml.safe_load(previous.read_text())
    except yaml.YAMLError:
        old = None
    diff = _differences(_identity(old), _identity(cfg.model_dump(mode="json"))) if isinstance(old, dict) \
        else ["(unreadable config.resolved.yaml)"]
    if diff:
        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ValueError(f"{out} holds another experiment (config differs in {shown}); pass --resume to continue "
                         f"it with this config, --overwrite to replace it, or choose another --out")


def clear_run_folder(cfg: ExperimentConfig, out: Path) -> None:
    """``--overwrite``: remove the model folders of the old and the new config and the reports; other files stay."""
    labels = {m.label for m in cfg.models}
    try:
        old = yaml.safe_load((out / "config.resolved.yaml").read_text())
        labels |= {m["label"] for m in old.get("models", []) if isinstance(m, dict) and isinstance(m.get("label"), str)}
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    for label in sorted(labels):
        try:
            _path_part(label, "label")        # never follow a hand-edited '../x' out of the folder
        except ValueError:
            continue
        if (out / label).is_dir():
            shutil.rmtree(out / label)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.mmfm-run.lock`` (flock) for the run: a second run on the same folder stops at once. The
    kernel drops the lock when the process exits, however it exits."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ValueError(f"{out} is in use by another `mmfm run` (pid {holder}, lock {path}); wait for it to "
                             f"finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (before the trainer initialises the process group,
    torchrun's RANK variable is all there is)."""
    from .train import dist_info
    info = dist_info()
    return info.is_main if info.enabled else int(os.environ.get("RANK", "0")) == 0


def run_experiment(config: str | Path | ExperimentConfig, out_dir: str | Path | None = None,
                   overrides: list[str] | None = None, existing: str = "refuse") -> dict[str, Any]:
    """Train and evaluate every model of ``config`` into ``out_dir`` (default ``runs/<name>``).

    existing: what to do when ``out_dir`` holds an experiment with a different config (evaluation
        settings aside): ``"refuse"`` (a ValueError naming the differences), ``"resume"`` (continue its
        checkpoints with this config) or ``"overwrite"`` (remove its model folders and reports first).
        The same config always resumes.
    """
    from .util.atomic import atomic_write_text

    started = time.perf_counter()
    cfg = config if isinstance(config, ExperimentConfig) else load_experiment(config, overrides)
    out = Path(out_dir or Path("runs") / cfg.name)
    main = _is_main_process()
    with run_lock(out) if main else nullcontext():
        check_run_folder(cfg, out, existing)
        if main:
            if existing == "overwrite":
                clear_run_folder(cfg, out)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.resolved.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return _run(cfg, out, started)


def _run(cfg: ExperimentConfig, out: Path, started: float) -> dict[str, Any]:
    from .adapt.registry import AdaptContext, apply_adaptations, initial_copy, split_steps
    from .api import create_model
    from .eval import headline, write_report
    from .measure import count_parameters, timer
    from .report.run_report import model_row, write_experiment_report
    from .train import Trainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    datasets = _build_datasets(cfg)
    _check_evals(cfg, datasets)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows, all_results = [], []
    for spec in cfg.models:
        spec = resolve_references(spec, out)      # '@label' -> that earlier model's saved folder
        mdir = out / spec.label
        what = spec.model or (f"inline {spec.config.get('family', 'clip')} config" if spec.config else "")
        print(f"\n=== {spec.label}: {what} {('(' + spec.pretrained + ')') if spec.pretrained else ''}")
        config, tok = (model_config(spec) if spec.config is not None else spec.model), None
        if spec.config is not None and hasattr(model_family(config), "complete_config"):
            # the family fills in what the data decides (a causal LM's vocabulary size, from its tokenizer)
            train_key = data_keys(cfg, spec)[0]
            config, tok = model_family(config).complete_config(config, spec.tokenizer, datasets[train_key])
        model = create_model(config, pretrained=spec.pretrained, precision=spec.precision)
        steps = adaptation_steps(spec)
        before, after = split_steps(steps)
        context = AdaptContext(initial=initial_copy(model, steps))
        (model,) = apply_adaptations(model, before, context).values()
        family = model_family(model)
        tok = tok if tok is not None else family.prepare(model, spec.tokenizer)
        options = family_options(spec)
        if options is not None and hasattr(family, "initialize"):
            family.initialize(model, options)     # e.g. Frozen's vision encoder from a CLIP's image tower
        train_result = None
        if spec.train is not None:
            # lock / freeze were translated into adaptation steps and have run: the Trainer does not repeat them
            tcfg = spec.train.model_copy(update={"device": spec.train.device or cfg.device, "lock_image": None,
                                                 "lock_text": None, "freeze": []})
            train_view, val_view = _views(cfg, family, model, tok, datasets, tcfg, spec, options)
            during = [e for e in cfg.eval_during_training]
            eval_fn = None
            if during:
                def eval_fn(m, during=during):
                    metrics = {}
                    for e in during:
                        r = run_eval_spec(e, m, datasets, spec.label, mdir / "during", device, progress=False,
                                          data_specs=cfg.data, seed=cfg.seed)
                        for k, v in headline(r).items():
                            metrics[f"{e.kind}{'_' + e.task if e.task else ''}_{k}"] = v
                    return metrics
            collate = family.collate(tok) if hasattr(family, "collate") else None
            train_result = Trainer(model, train_view, tcfg, mdir, objective=family.objective(tok, tcfg, options),
                                   val_data=val_view, eval_fn=eval_fn, collate_fn=collate).fit()
            if not _is_main_process():
                continue   # under torchrun, rank 0 alone evaluates and writes the reports
            family.save(model, mdir, tok)
        elif not _is_main_process():
            continue       # nothing to train: rank 0 alone evaluates it (every rank would write the same files)
        random_weights = spec.pretrained is None and spec.train is None
        evals = spec.evals if spec.evals is not None else cfg.evals
        params = count_parameters(model)        # what trained, also for the models WiSE-FT derives from it
        # after-training steps (WiSE-FT) may make several models of the trained one: one row each
        for suffix, variant in apply_adaptations(model, after, context).items():
            label = spec.label + suffix
            variant.eval().to(device)
            results = []
            with timer() as eval_time:
                for e in evals:
                    results.append(run_eval_spec(e, variant, datasets, label, mdir / f"eval{suffix}", device,
                                                 cfg.num_workers, data_specs=cfg.data, random_weights=random_weights,
                                                 seed=cfg.seed))
                    _attach_published(results[-1], spec, cfg.data.get(e.dataset), e, device)
            all_results += results
            metrics = {f"{eval_tag(e)} {k}": v for e, r in zip(evals, results) for k, v in headline(r).items()}
            name = spec.model if spec.config is None else f"{spec.model or family.name} + inline config"
            row = model_row(label, name, params, train_result, [r.to_dict() for r in results], metrics, eval_time(),
                            random_weights=random_weights)
            if steps:
                row["adaptations"] = [s.to_dict() for s in steps]
            rows.append(row)
    if not _is_main_process():
        return {}
    write_report(all_results, out)
    summary = write_experiment_report(cfg.name, rows, out, wall_time_s=time.perf_counter() - started)
    print("\n" + summary["markdown"])
    print(f"\nresults in {out}/ (report.md, report.json, results.md, curves and plots per model)")
    return summary
