"""The evaluation kinds: one table that ``mmfm eval``, ``mmfm run`` and the reports all read.

Each :class:`EvalKind` names its function, its result type, its CLI spellings and whether it is fitted
on a training split. :func:`evaluate` is the one place an evaluation is called from a name, so the same
evaluation gives the same numbers whichever command asked for it (the two used to drift: ``mmfm eval``
used the official Flowers-102/DTD validation split for the linear probe, ``mmfm run`` carved one from
train). A *protocol* (:data:`PROTOCOLS`) is the set of choices that make numbers comparable with a
published table, applied here too so that both commands apply it alike. :func:`headline` is the one definition of the numbers that go into comparison tables: the
result type's own ``headline()``.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .results import (EvalResult, FewShotResult, LinearProbeResult, RetrievalResult, ZeroShotResult,
                      result_to_dict)


@dataclass(frozen=True)
class EvalKind:
    name: str                       # canonical name: results' ``kind`` and configs' ``kind``
    module: str                     # mmfm.eval.<module>.<module>: imported lazily (no cycles)
    result_type: type[EvalResult]
    cli_names: tuple[str, ...]      # spellings `mmfm eval` accepts; the first is shown in --help
    needs_train: bool               # fitted on a training split (linear probe, few-shot)

    @property
    def function(self) -> Callable[..., EvalResult]:
        return getattr(importlib.import_module(f"mmfm.eval.{self.module}"), self.module)


KINDS: dict[str, EvalKind] = {k.name: k for k in (
    EvalKind("zeroshot", "zero_shot", ZeroShotResult, ("zeroshot", "zero-shot", "zero_shot"), False),
    EvalKind("linear_probe", "linear_probe", LinearProbeResult, ("linear-probe", "linear_probe", "linearprobe"), True),
    EvalKind("fewshot", "few_shot", FewShotResult, ("fewshot", "few-shot", "few_shot"), True),
    EvalKind("retrieval", "retrieval", RetrievalResult, ("retrieval",), False),
)}

#: every accepted spelling -> canonical kind name
ALIASES: dict[str, str] = {s: k.name for k in KINDS.values() for s in (k.name,) + k.cli_names}

#: Datasets whose official validation split the linear probe uses for its C sweep (as the CLIP paper).
OFFICIAL_VAL_SPLITS = frozenset({"flowers102", "dtd"})


@dataclass(frozen=True)
class Protocol:
    """What a published table's numbers depend on besides the weights, chosen together."""
    name: str
    probe_method: str               # mmfm.eval.linear_probe method
    gpu_precision: str              # default precision on CUDA (fp32 everywhere on CPU)
    summary: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("clip_paper", "clip_paper", "fp32",
             "the CLIP paper's: its class names and prompt ensembles; linear probe = L-BFGS logistic regression on "
             "pre-projection features with a C sweep; fp32"),
    Protocol("clip_benchmark", "clip_benchmark", "fp16",
             "clip_benchmark's (open_clip's published tables): torchvision's raw CIFAR-100 names, the same "
             "prompt ensembles; linear probe = a linear layer trained with AdamW on L2-normalised embeddings with "
             "a weight-decay sweep; fp16 on CUDA (clip_benchmark: fp16 autocast), fp32 on CPU; its wds/ data"),
)}

#: Datasets whose images under mmfm's name are not the ones clip_benchmark's published numbers use, and
#: the clip_benchmark dataset that holds those (EuroSAT: mmfm splits the folder 60/20/20 by a seed; the
#: published numbers use VTAB's fixed slice of the TFDS record order).
PUBLISHED_DATA: dict[str, str] = {"eurosat": "wds/vtab/eurosat"}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


def protocol_precision(protocol: str, device) -> str:
    """The precision a protocol runs a model at by default on ``device``."""
    on_gpu = str(device).startswith("cuda")
    return get_protocol(protocol).gpu_precision if on_gpu else "fp32"


def protocol_data_note(protocol: str, dataset_name: str) -> str | None:
    """Why this dataset's numbers cannot match the protocol's published ones, and what to run instead."""
    wds = PUBLISHED_DATA.get(str(dataset_name).lower())
    if protocol != "clip_benchmark" or wds is None:
        return None
    return (f"{dataset_name}: mmfm's split of the folder is not the images clip_benchmark's published numbers use; "
            f"for those evaluate --dataset {wds} (clip_benchmark's data, --download or a local --data-root)")


def _protocol_args(p: Protocol, kind: EvalKind, dataset_name: str, task, args: dict, device) -> dict:
    """The evaluation arguments a protocol sets (an explicit argument wins)."""
    out = {}
    if kind.name == "linear_probe":
        out["method"] = p.probe_method
        if p.probe_method == "clip_benchmark" and str(device).startswith("cuda"):
            out["amp"] = True                      # clip_benchmark trains its probe under fp16 autocast on GPU
    if kind.name == "zeroshot" and task is None:
        from ..data.templates import CLIP_BENCHMARK_CLASSNAMES
        if p.name == "clip_benchmark" and str(dataset_name).lower() in CLIP_BENCHMARK_CLASSNAMES:
            out["classnames"] = list(CLIP_BENCHMARK_CLASSNAMES[str(dataset_name).lower()])
    return {k: v for k, v in out.items() if k not in args}


def get_kind(name: str) -> EvalKind:
    try:
        return KINDS[ALIASES[name.lower()]]
    except KeyError:
        raise ValueError(f"unknown evaluation {name!r}; choose one of {sorted(KINDS)}") from None


def cli_choices() -> list[str]:
    return [k.cli_names[0] for k in KINDS.values()]


def official_val_split(dataset_name: str, val_split: str | None = "auto") -> str | None:
    """The split the linear probe sweeps C on: ``"auto"`` = the official ``"val"`` split of the datasets
    that have one (:data:`OFFICIAL_VAL_SPLITS`), None (carve from train) otherwise; anything else as given."""
    if val_split != "auto":
        return val_split
    return "val" if dataset_name.lower() in OFFICIAL_VAL_SPLITS else None


def headline(result: EvalResult | Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of a result (its type's ``headline()``), without the missing ones."""
    return {k: v for k, v in result_to_dict(result).get("headline", {}).items() if isinstance(v, (int, float))}


def warn_random_weights(result: EvalResult, label: str) -> None:
    """Record in the result, and say loudly, that the model was never trained nor loaded."""
    result.config["random_weights"] = True       # the result's markdown then opens with a warning
    warnings.warn(f"{label} has random weights (no --pretrained / `pretrained:` and no training): its numbers "
                  f"describe an untrained model", stacklevel=3)


def evaluate(kind: str | EvalKind, model, test, train=None, val=None, *, label: str | None = None,
             out_dir: str | Path | None = None, device=None, num_workers: int = 0, progress: bool = True,
             task: str | None = None, random_weights: bool = False, protocol: str = "clip_paper",
             **args) -> EvalResult:
    """Run one evaluation of ``model``: the one call behind ``mmfm eval`` and every ``mmfm run`` evaluation.

    test / train / val: datasets (train for the kinds fitted on one; val for the linear probe's C
        sweep, None = carve from train). ``args`` go to the evaluation function; unknown ones are an error
        naming the allowed ones. With ``out_dir`` the kind's PNG plots are written there.
    random_weights: the model is untrained: warn and record it in the result.
    protocol: ``clip_paper`` (default) or ``clip_benchmark`` (:data:`PROTOCOLS`): the class names, the
        linear-probe method (and its autocast on CUDA) it implies, unless ``args`` name them; recorded in
        ``result.config["protocol"]``, with a note when the dataset's images are not the published ones.
    """
    k = kind if isinstance(kind, EvalKind) else get_kind(kind)
    p = get_protocol(protocol)
    dataset_name = getattr(test, "name", "")
    args = {**_protocol_args(p, k, dataset_name, task, args, device), **args}
    fn = k.function
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"evaluation {k.name}: unknown argument(s) {unknown}; allowed: "
                         f"{sorted(a for a in accepted if a not in ('model', 'dataset', 'train_dataset', 'test_dataset'))}")
    call = {n: v for n, v in dict(device=device, model_name=label, out_dir=out_dir, num_workers=num_workers,
                                  progress=progress, task=task).items() if n in accepted}
    call.update(args)
    if call.get("method") == "lora":
        import mmfm.adapt  # noqa: F401  registers the LoRA few-shot method
    if not k.needs_train:
        result = fn(model, test, **call)
    else:
        if train is None:
            raise ValueError(f"evaluation {k.name} needs a training dataset")
        if k.name == "linear_probe":
            call.setdefault("val_dataset", val)
        result = fn(model, train, test, **call)
    result.config["protocol"] = p.name
    note = protocol_data_note(p.name, dataset_name)
    if note:
        result.config["protocol_note"] = note
        warnings.warn(note, stacklevel=2)
    if random_weights:
        warn_random_weights(result, result.model)
    return result
