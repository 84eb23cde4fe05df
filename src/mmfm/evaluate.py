"""The evaluation kinds: one table that ``mmfm eval``, ``mmfm run`` and the reports all read.

Each :class:`EvalKind` names its function, its result type, its CLI spellings and whether it is fitted
on a training split. :func:`evaluate` is the one place an evaluation is called from a name, so the same
evaluation gives the same numbers whichever command asked for it (the two used to drift: ``mmfm eval``
used the official Flowers-102/DTD validation split for the linear probe, ``mmfm run`` carved one from
train); it applies the evaluation *protocol* (:mod:`mmfm.eval.protocol`) alike for both. :func:`run_eval`
is ``mmfm eval``: it builds the model (with its LoRA adapter) and the datasets by name, then calls
:func:`evaluate`.

This module sits above both :mod:`mmfm.eval` (zero-shot, linear probe, retrieval) and :mod:`mmfm.adapt`
(the few-shot evaluation, whose methods are adaptations, and the adapter loading), which is why the table
lives here and not in either. The numbers that go into comparison tables are each result type's own
``headline()`` (:func:`mmfm.eval.headline`), so reports need nothing from here. Each kind names the model
family it evaluates: the embedding kinds CLIP-family models, ``captioning`` / ``vqa`` / ``binding``
(:mod:`mmfm.frozen.evals`) Frozen models; :func:`evaluate` refuses the wrong one by name.

    from mmfm.evaluate import evaluate, run_eval
    r = evaluate("zeroshot", model, get_dataset("shapes", split="test"), task="color")
    r = run_eval("fewshot", "ViT-B-32", "openai", "cifar10", data_root="~/data", method="coop", shots=(1, 4))
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import api
from .adapt.fewshot import few_shot
from .adapt.lora_io import load_lora
from .data import is_text_corpus
from .data.templates import CLIP_BENCHMARK_CLASSNAMES
from .eval.generation_results import CaptioningResult, VQAResult
from .eval.linear_probe import linear_probe
from .eval.protocol import (Protocol, get_protocol, official_val_split, protocol_data_note,
                            protocol_precision)
from .eval.published import published_comparison
from .eval.report import write_report
from .eval.results import EvalResult, FewShotResult, LinearProbeResult, RetrievalResult, ZeroShotResult
from .eval.retrieval import retrieval
from .eval.zero_shot import zero_shot
from .frozen.evals import BindingResult, binding, captioning, vqa


@dataclass(frozen=True)
class EvalKind:
    name: str                       # canonical name: results' ``kind`` and configs' ``kind``
    function: Callable[..., EvalResult]
    result_type: type[EvalResult]
    cli_names: tuple[str, ...]      # spellings `mmfm eval` accepts; the first is shown in --help
    needs_train: bool               # fitted on a training split (linear probe, few-shot)
    family: str = "clip"            # the models it evaluates: "clip" (embeddings: CLIP, LoRA, hybrids) or "frozen" (text)
    uses_train: bool = False        # takes the training split when there is one (for a baseline), without being fitted
    run_seed: bool = False          # draws (episodes) from `mmfm run`'s seed unless its args name a seed


KINDS: dict[str, EvalKind] = {k.name: k for k in (
    EvalKind("zeroshot", zero_shot, ZeroShotResult, ("zeroshot", "zero-shot", "zero_shot"), False),
    EvalKind("linear_probe", linear_probe, LinearProbeResult, ("linear-probe", "linear_probe", "linearprobe"), True),
    EvalKind("fewshot", few_shot, FewShotResult, ("fewshot", "few-shot", "few_shot"), True),
    EvalKind("retrieval", retrieval, RetrievalResult, ("retrieval",), False),
    EvalKind("captioning", captioning, CaptioningResult, ("captioning", "caption"), False, family="frozen",
             uses_train=True),
    EvalKind("vqa", vqa, VQAResult, ("vqa",), False, family="frozen", uses_train=True),
    EvalKind("binding", binding, BindingResult, ("binding",), False, family="frozen", run_seed=True),
)}

#: every accepted spelling -> canonical kind name
ALIASES: dict[str, str] = {s: k.name for k in KINDS.values() for s in (k.name,) + k.cli_names}


def get_kind(name: str) -> EvalKind:
    try:
        return KINDS[ALIASES[name.lower()]]
    except KeyError:
        raise ValueError(f"unknown evaluation {name!r}; choose one of {sorted(KINDS)}") from None


def cli_choices() -> list[str]:
    """The kinds `mmfm eval` runs: the embedding ones (captioning / vqa run from `mmfm run` configs)."""
    return [k.cli_names[0] for k in KINDS.values() if k.family == "clip"]


def _protocol_args(p: Protocol, kind: EvalKind, dataset_name: str, task, args: dict, device) -> dict:
    """The evaluation arguments a protocol sets (an explicit argument wins)."""
    out = {}
    if kind.name == "linear_probe":
        out["method"] = p.probe_method
        if p.probe_method == "clip_benchmark" and str(device).startswith("cuda"):
            out["amp"] = True                      # clip_benchmark trains its probe under fp16 autocast on GPU
    if kind.name == "zeroshot" and task is None:
        if p.name == "clip_benchmark" and str(dataset_name).lower() in CLIP_BENCHMARK_CLASSNAMES:
            out["classnames"] = list(CLIP_BENCHMARK_CLASSNAMES[str(dataset_name).lower()])
    return {k: v for k, v in out.items() if k not in args}


def warn_random_weights(result: EvalResult, label: str) -> None:
    """Record in the result, and say loudly, that the model was never trained nor loaded."""
    result.config["random_weights"] = True       # the result's markdown then opens with a warning
    warnings.warn(f"{label} has random weights (no --pretrained / `pretrained:` and no training): its numbers "
                  f"describe an untrained model", stacklevel=3)


def _check_family(k: EvalKind, model) -> None:
    """Embedding evaluations need a CLIP-family model, text-generating ones a Frozen model: say so by name."""
    family = getattr(getattr(model, "config", None), "family", "clip")
    if (family == "frozen") != (k.family == "frozen"):
        need = "a Frozen model (it generates text)" if k.family == "frozen" else \
            "a CLIP-family model (it compares image and text embeddings)"
        raise ValueError(f"evaluation {k.name} needs {need}, not a {family!r} model; for Frozen use "
                         f"{sorted(n for n, x in KINDS.items() if x.family == 'frozen')}, for CLIP the others")


def evaluate(kind: str | EvalKind, model, test, train=None, val=None, *, label: str | None = None,
             out_dir: str | Path | None = None, device=None, num_workers: int = 0, progress: bool = True,
             task: str | None = None, random_weights: bool = False, protocol: str = "clip_paper",
             **args) -> EvalResult:
    """Run one evaluation of ``model``: the one call behind ``mmfm eval`` and every ``mmfm run`` evaluation.

    test / train / val: datasets (train for the kinds fitted on one; val for the linear probe's C
        sweep, None = carve from train). ``args`` go to the evaluation function; unknown ones are an error
        naming the allowed ones. With ``out_dir`` the kind's PNG plots are written there.
    random_weights: the model is untrained: warn and record it in the result.
    protocol: ``clip_paper`` (default) or ``clip_benchmark`` (:data:`mmfm.eval.protocol.PROTOCOLS`): the class
        names, the linear-probe method (and its autocast on CUDA) it implies, unless ``args`` name them; recorded
        in ``result.config["protocol"]``, with a note when the dataset's images are not the published ones.
    """
    k = kind if isinstance(kind, EvalKind) else get_kind(kind)
    _check_family(k, model)
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
    if not k.needs_train:
        if k.uses_train and train is not None:
            call["train_dataset"] = train
        result = fn(model, test, **call)
    else:
        if train is None:
            raise ValueError(f"evaluation {k.name} needs a training dataset")
        if k.name == "linear_probe":
            call.setdefault("val_dataset", val)
        result = fn(model, train, test, **call)
    if k.family == "clip":    # the protocols are the embedding evaluations' (class names, probe method)
        result.config["protocol"] = p.name
    note = protocol_data_note(p.name, dataset_name) if k.family == "clip" else None
    if note:
        result.config["protocol_note"] = note
        warnings.warn(note, stacklevel=2)
    if random_weights:
        warn_random_weights(result, result.model)
    return result


def _load_dataset(name: str, data_root: str | Path | None, split: str, dataset_kwargs: dict[str, Any]):
    from .data import get_dataset
    kw = dict(dataset_kwargs)
    if data_root is not None:
        kw["root"] = data_root
    return get_dataset(name, split=split, **kw)


def run_eval(kind: str, model_name: str | None, pretrained: str | None, dataset: str,
             data_root: str | Path | None = None, out_dir: str | Path | None = None, *,
             device: str | None = None, precision: str | None = None, task: str | None = None,
             train_split: str = "train", test_split: str = "test", val_split: str | None = "auto",
             dataset_kwargs: dict[str, Any] | None = None, batch_size: int = 64, num_workers: int = 0,
             cache_dir: str | Path | None = None, progress: bool = True, adapter: str | Path | None = None,
             protocol: str = "clip_paper", **kw) -> EvalResult:
    """Build the model and dataset(s) by name, run one evaluation, write its report.

    kind: ``zeroshot`` | ``linear-probe`` | ``fewshot`` | ``retrieval`` (:data:`ALIASES` lists spellings).
    model_name / pretrained: as ``mmfm.create_model`` (a config name and/or a checkpoint); without
        ``pretrained`` the model has random weights, which is warned about and recorded in the result.
    dataset / data_root: a registered dataset name (``mmfm.data.available_datasets()``) and the folder
        its files are in (omitted for the embedded ``shapes`` / ``digits``).
    val_split: linear probe only; ``"auto"`` uses the official validation split of Flowers-102 and DTD
        and carves one out of train otherwise; a split name forces it; None always carves.
    out_dir: if given, ``results.json`` / ``results.md`` and the PNG plots are written there.
    adapter: a LoRA adapter directory (``mmfm.adapt.save_lora``, or PEFT's on an mmfm model or on a
        transformers ``CLIPModel``) applied to the base model first; recorded in the result and its label.
    protocol: ``clip_paper`` (default) or ``clip_benchmark`` (open_clip's published tables): class names,
        linear-probe method and default precision together (:data:`mmfm.eval.protocol.PROTOCOLS`); for its data, name
        clip_benchmark's ``wds/...`` dataset. precision: default the protocol's on ``device``.
    Weights open_clip publishes results for (e.g. ``ViT-B-32`` + ``openai``), evaluated on the test split
    of a dataset in that table, get ``result.config["published"]``: published, reproduced and the
    difference, with the source and the protocol caveat (``mmfm.eval.published``).
    Other keyword arguments go to the evaluation function (e.g. ``shots``, ``seeds``, ``method`` for
    few-shot; ``c_values``, ``features`` for the linear probe; ``templates`` for zero-shot).
    """
    import torch
    k = get_kind(kind)
    get_protocol(protocol)                  # a misspelt protocol fails before the model is built
    if is_text_corpus(dataset):
        raise ValueError(f"{dataset} is a text corpus (documents, no images): {kind} evaluates on image-text data, "
                         f"so name an image dataset; a text corpus trains a causal LM (`family: causal_lm` in an "
                         f"`mmfm run` config)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision is None:
        precision = protocol_precision(protocol, device)
    model = api.create_model(model_name, pretrained=pretrained, device=device, precision=precision)
    if adapter is not None:
        model = load_lora(model, adapter).to(device)   # checked against the base before it touches it
    label = kw.pop("model_label", None) or (model_name or Path(str(pretrained)).name) + \
        (f" ({pretrained})" if pretrained and model_name else "") + \
        (f" + adapter {Path(str(adapter)).name}" if adapter is not None else "")
    dkw = dict(dataset_kwargs or {})
    test = _load_dataset(dataset, data_root, test_split, dkw)
    train = val = None
    if k.needs_train:
        train = _load_dataset(dataset, data_root, train_split, dkw)
        if k.name == "linear_probe":
            use_val = official_val_split(dataset, val_split)
            val = _load_dataset(dataset, data_root, use_val, dkw) if use_val else None
    result = evaluate(k, model, test, train, val, label=label, out_dir=out_dir, device=device,
                      num_workers=num_workers, progress=progress, task=task, random_weights=pretrained is None,
                      batch_size=batch_size, cache=cache_dir, protocol=protocol, **kw)
    if adapter is not None:
        result.config["adapter"] = str(adapter)
    elif test_split == "test":   # the published weights on the published data: show open_clip's number beside ours
        published = published_comparison(result, model_name, pretrained, dataset, protocol_used=protocol,
                                          precision=precision, device=str(device))
        if published:
            result.config["published"] = published
    if out_dir is not None:
        write_report([result], out_dir)
    return result
