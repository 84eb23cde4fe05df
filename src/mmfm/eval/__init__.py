"""Evaluation suite: zero-shot classification, linear probe, few-shot, image-text retrieval.

Python API (each returns a result object with ``to_dict()`` / ``to_markdown()``)::

    from mmfm.eval import zero_shot, linear_probe, few_shot, retrieval, write_report
    r1 = zero_shot(model, get_dataset("shapes", split="test"), task="color")
    r2 = linear_probe(model, train_ds, test_ds)
    r3 = few_shot(model, train_ds, test_ds, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2))
    r4 = retrieval(model, get_dataset("flickr30k", root="~/data/flickr30k", split="test"))
    write_report([r1, r2, r3, r4], "out/")      # results.json + results.md, models side by side

Note: the functions ``zero_shot``, ``linear_probe``, ``few_shot`` and ``retrieval`` share their names
with the modules that define them, and the package attribute is the *function*. Import helpers
from the modules with ``from mmfm.eval.zero_shot import build_zero_shot_classifier`` (which works);
``import mmfm.eval.zero_shot as m`` gives the function, not the module.

``run_eval`` is what the ``mmfm eval`` command calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .features import (FeatureCache, FeatureSet, PerfMeter, encode_texts, extract_image_features,
                       model_fingerprint)
from .few_shot import FEW_SHOT_METHODS, FewShotEpisode, few_shot, register_few_shot_method, sample_k_shot
from .linear_probe import fit_linear_probe, linear_probe, sweep_c
from .registry import (ALIASES, KINDS, OFFICIAL_VAL_SPLITS, PROTOCOLS, EvalKind, Protocol, evaluate, get_kind,
                       get_protocol, headline, official_val_split, protocol_precision)
from .results import (ClassificationMetrics, EvalResult, FewShotResult, LinearProbeResult, PerfStats,
                      RetrievalResult, ZeroShotResult, comparison_table, load_results, write_report)
from .retrieval import retrieval, retrieval_metrics, retrieval_ranks
from .zero_shot import build_zero_shot_classifier, zero_shot

__all__ = [
    "ClassificationMetrics", "EvalResult", "FEW_SHOT_METHODS", "FeatureCache", "FeatureSet", "FewShotEpisode",
    "FewShotResult", "LinearProbeResult", "PerfMeter", "PerfStats", "RetrievalResult", "ZeroShotResult",
    "build_zero_shot_classifier", "comparison_table", "encode_texts", "extract_image_features", "few_shot",
    "fit_linear_probe", "linear_probe", "load_results", "model_fingerprint", "register_few_shot_method",
    "retrieval", "retrieval_metrics", "retrieval_ranks", "run_eval", "sample_k_shot", "sweep_c", "write_report",
    "zero_shot", "EVAL_KINDS", "EvalKind", "KINDS", "evaluate", "get_kind", "headline", "official_val_split",
    "PROTOCOLS", "Protocol", "get_protocol", "protocol_precision",
]

#: CLI spellings -> evaluation kind (kept for callers of the old name; the registry is the source).
EVAL_KINDS = dict(ALIASES)


def _load_dataset(name: str, data_root: str | Path | None, split: str, dataset_kwargs: dict[str, Any]):
    from ..data import get_dataset
    kw = dict(dataset_kwargs)
    if data_root is not None:
        kw["root"] = data_root
    return get_dataset(name, split=split, **kw)


def published_comparison(result, model_name: str | None, pretrained: str | None, dataset: str, **settings):
    """open_clip's published value beside ``result`` when the weights are a pretrained tag it has results
    for (``MODEL`` + ``TAG``, or ``TAG/MODEL`` / ``MODEL/TAG``); never for a local checkpoint."""
    from .published import compare_with_published
    if not pretrained or Path(str(pretrained)).expanduser().exists():
        return None
    pretrained = str(pretrained)
    pairs = [(model_name, pretrained)] if model_name and "/" not in pretrained else []
    if pretrained.count("/") == 1:
        a, b = pretrained.split("/")
        pairs += [(b, a), (a, b)]
    for model, tag in pairs:
        comp = compare_with_published(result, model, tag, dataset, **settings)
        if comp:
            return comp
    return None


def run_eval(kind: str, model_name: str | None, pretrained: str | None, dataset: str,
             data_root: str | Path | None = None, out_dir: str | Path | None = None, *,
             device: str | None = None, precision: str | None = None, task: str | None = None,
             train_split: str = "train", test_split: str = "test", val_split: str | None = "auto",
             dataset_kwargs: dict[str, Any] | None = None, batch_size: int = 64, num_workers: int = 0,
             cache_dir: str | Path | None = None, progress: bool = True, adapter: str | Path | None = None,
             protocol: str = "clip_paper", **kw) -> EvalResult:
    """Build the model and dataset(s) by name, run one evaluation, write its report.

    kind: ``zeroshot`` | ``linear-probe`` | ``fewshot`` | ``retrieval`` (``registry.ALIASES`` lists spellings).
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
        linear-probe method and default precision together (``registry.PROTOCOLS``); for its data, name
        clip_benchmark's ``wds/...`` dataset. precision: default the protocol's on ``device``.
    Weights open_clip publishes results for (e.g. ``ViT-B-32`` + ``openai``), evaluated on the test split
    of a dataset in that table, get ``result.config["published"]``: published, reproduced and the
    difference, with the source and the protocol caveat (``mmfm.eval.published``).
    Other keyword arguments go to the evaluation function (e.g. ``shots``, ``seeds``, ``method`` for
    few-shot; ``c_values``, ``features`` for the linear probe; ``templates`` for zero-shot).
    """
    import torch
    from ..api import create_model
    k = get_kind(kind)
    get_protocol(protocol)                  # a misspelt protocol fails before the model is built
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision is None:
        precision = protocol_precision(protocol, device)
    model = create_model(model_name, pretrained=pretrained, device=device, precision=precision)
    if adapter is not None:
        from ..adapt.lora import load_lora
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
