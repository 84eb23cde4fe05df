"""The evaluation kinds: one table that ``mmfm eval``, ``mmfm run`` and the reports all read.

Each :class:`EvalKind` names its function, its result type, its CLI spellings and whether it is fitted
on a training split. :func:`evaluate` is the one place an evaluation is called from a name, so the same
evaluation gives the same numbers whichever command asked for it (the two used to drift: ``mmfm eval``
used the official Flowers-102/DTD validation split for the linear probe, ``mmfm run`` carved one from
train). :func:`headline` is the one definition of the numbers that go into comparison tables: the
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
             task: str | None = None, random_weights: bool = False, **args) -> EvalResult:
    """Run one evaluation of ``model``: the one call behind ``mmfm eval`` and every ``mmfm run`` evaluation.

    test / train / val: datasets (train for the kinds fitted on one; val for the linear probe's C
        sweep, None = carve from train). ``args`` go to the evaluation function; unknown ones are an error
        naming the allowed ones. With ``out_dir`` the kind's PNG plots are written there.
    random_weights: the model is untrained: warn and record it in the result.
    """
    k = kind if isinstance(kind, EvalKind) else get_kind(kind)
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
    if random_weights:
        warn_random_weights(result, result.model)
    return result
