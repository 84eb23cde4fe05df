"""``mmfm run CONFIG.yaml``: a validated experiment config turned into the API calls that train and
evaluate one or several models, with one comparison table (markdown + JSON) at the end.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, ValidationError

from .train.config import Strict, TrainConfig


class DatasetSpec(Strict):
    name: str = Field(description="a registered dataset: shapes, digits, custom, cifar10, flickr30k, ...")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the dataset")
    templates: list[str] | None = Field(None, description="caption templates replacing the dataset's own ('{}' = class)")


class AugmentSpec(Strict):
    random_resized_crop: tuple[float, float] | None = Field((0.8, 1.0), description="area scale range, or null")
    hflip: bool = False
    pad_crop: int = Field(0, ge=0, description="CIFAR-style random crop with this padding (replaces resized crop)")


class EvalSpec(Strict):
    kind: Literal["zeroshot", "retrieval", "linear_probe", "fewshot"]
    dataset: str = Field("test", description="key of `data` to evaluate on")
    train_dataset: str = Field("train", description="key of `data` the probe is fitted on (linear_probe, fewshot)")
    task: str | None = Field(None, description="zero-shot task, e.g. shape / color for shapes")
    args: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(Strict):
    label: str
    model: str | None = Field(None, description="registered model config (`mmfm models`)")
    pretrained: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    lora: str | dict[str, Any] | None = Field(None, description="LoRA preset name, or apply_lora options {preset, r, alpha, ...}")
    train: TrainConfig | None = None
    evals: list[EvalSpec] | None = Field(None, description="evaluations for this model (default: the experiment's)")


class ExperimentConfig(Strict):
    name: str
    seed: int = 0
    device: str | None = None
    num_workers: int = Field(0, ge=0, description="data loader workers for evaluation")
    data: dict[str, DatasetSpec]
    train_data: str = "train"
    val_data: str | None = "val"
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    models: list[ModelSpec] = Field(min_length=1)
    evals: list[EvalSpec] = Field(default_factory=list)
    eval_during_training: list[EvalSpec] = Field(default_factory=list,
                                                 description="cheap evaluations run at every validation")


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


def _apply_override(d: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not KEY=VALUE")
    key, value = assignment.split("=", 1)
    node: Any = d
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    parsed = yaml.safe_load(value)
    if isinstance(node, list):
        node[int(last)] = parsed
    else:
        node[last] = parsed


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} does not exist (bundled configs are in the repository's configs/)")
    raw = yaml.safe_load(path.read_text()) or {}
    for o in overrides or []:
        _apply_override(raw, o)
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


def _views(cfg, model, datasets, train: TrainConfig):
    from .data import ImageTextView
    from .data.transforms import image_transform
    from .tokenizer import get_tokenizer
    size = model.config.vision.image_size
    tok = model.get_tokenizer() if hasattr(model, "get_tokenizer") else get_tokenizer(model.context_length)
    a = cfg.augment
    train_tf = image_transform(size, train=True, scale=a.random_resized_crop or (1.0, 1.0), hflip=a.hflip,
                               pad_crop=a.pad_crop)
    if cfg.train_data not in datasets:
        raise ValueError(f"train_data {cfg.train_data!r} is not a key of data ({sorted(datasets)})")
    train_view = ImageTextView(datasets[cfg.train_data], train_tf, tok, caption_mode="random", seed=train.seed)
    val_view = None
    if cfg.val_data and cfg.val_data in datasets:
        val_view = ImageTextView(datasets[cfg.val_data], image_transform(size), tok, caption_mode="first")
    return train_view, val_view


def run_eval_spec(spec: EvalSpec, model, datasets: dict, label: str, out_dir: Path, device, num_workers: int = 0,
                  progress: bool = True):
    import inspect

    from . import eval as ev
    for key in (spec.dataset,) + ((spec.train_dataset,) if spec.kind in ("linear_probe", "fewshot") else ()):
        if key not in datasets:
            raise ValueError(f"evaluation {spec.kind}: dataset {key!r} is not a key of data ({sorted(datasets)})")
    ds = datasets[spec.dataset]
    fn = {"zeroshot": ev.zero_shot, "retrieval": ev.retrieval, "linear_probe": ev.linear_probe,
          "fewshot": ev.few_shot}[spec.kind]
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(spec.args) - set(accepted))
    if unknown:
        raise ValueError(f"evaluation {spec.kind}: unknown argument(s) {unknown}; allowed: "
                         f"{sorted(k for k in accepted if k not in ('model', 'dataset'))}")
    common = {k: v for k, v in dict(device=device, model_name=label, out_dir=out_dir, num_workers=num_workers,
                                     progress=progress, task=spec.task).items() if k in accepted}
    common.update(spec.args)
    if common.get("method") == "lora":
        import mmfm.adapt  # noqa: F401  registers the LoRA few-shot method
    if spec.kind in ("zeroshot", "retrieval"):
        return fn(model, ds, **common)
    return fn(model, datasets[spec.train_dataset], ds, **common)


def _headline(result) -> dict[str, float]:
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    m = d.get("metrics", d)
    keys = ("top1", "accuracy", "image_to_text_R@1", "text_to_image_R@1", "i2t_R@1", "t2i_R@1")
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and (k in keys or "R@" in k or "top" in k)}


def run_experiment(config: str | Path | ExperimentConfig, out_dir: str | Path | None = None,
                   overrides: list[str] | None = None) -> dict[str, Any]:
    from .eval import write_report
    from .measure import count_parameters, timer
    from .models import create_model
    from .report.run_report import model_row, write_experiment_report
    from .train import Trainer, dist_info

    cfg = config if isinstance(config, ExperimentConfig) else load_experiment(config, overrides)
    out = Path(out_dir or Path("runs") / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(cfg.seed)
    datasets = _build_datasets(cfg)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows, all_results = [], []
    for spec in cfg.models:
        mdir = out / spec.label
        print(f"\n=== {spec.label}: {spec.model or ''} {('(' + spec.pretrained + ')') if spec.pretrained else ''}")
        model = create_model(spec.model, pretrained=spec.pretrained, precision=spec.precision)
        if spec.lora is not None:
            from .adapt import apply_lora
            opts = {"preset": spec.lora} if isinstance(spec.lora, str) else dict(spec.lora)
            model = apply_lora(model, **opts)
        train_result = None
        if spec.train is not None:
            tcfg = spec.train.model_copy(update={"device": spec.train.device or cfg.device})
            train_view, val_view = _views(cfg, model, datasets, tcfg)
            during = [e for e in cfg.eval_during_training]
            eval_fn = None
            if during:
                def eval_fn(m, during=during):
                    metrics = {}
                    for e in during:
                        r = run_eval_spec(e, m, datasets, spec.label, mdir / "during", device, progress=False)
                        for k, v in _headline(r).items():
                            metrics[f"{e.kind}{'_' + e.task if e.task else ''}_{k}"] = v
                    return metrics
            train_result = Trainer(model, train_view, tcfg, mdir, val_data=val_view, eval_fn=eval_fn).fit()
            if not dist_info().is_main:
                continue   # under torchrun, rank 0 alone evaluates and writes the reports
            from .adapt import export_merged, is_lora_model, save_lora
            from .checkpoints import save_pretrained
            if is_lora_model(model):   # the adapter alone (PEFT format) and the merged model
                save_lora(model, mdir / "adapter")
                export_merged(model, mdir / "model")
            else:
                save_pretrained(model, mdir / "model")
        model.eval().to(device)
        results, tags = [], []
        with timer() as eval_time:
            for e in (spec.evals if spec.evals is not None else cfg.evals):
                results.append(run_eval_spec(e, model, datasets, spec.label, mdir / "eval", device, cfg.num_workers))
                tags.append(e.kind + (f"[{e.task}]" if e.task else "") + (f"@{e.dataset}" if e.dataset != "test" else ""))
        all_results += results
        rows.append(model_row(spec.label, spec.model, count_parameters(model), train_result, results, eval_time(), tags))
    if not dist_info().is_main:
        return {}
    write_report(all_results, out)
    summary = write_experiment_report(cfg.name, rows, out)
    print("\n" + summary["markdown"])
    print(f"\nresults in {out}/ (report.md, report.json, results.md, curves and plots per model)")
    return summary
