"""The few-shot evaluation: k labelled examples per class, several random draws, mean ± std.

An *episode* is one (k, seed) pair: draw k training examples per class with that seed
(:func:`mmfm.eval.few_shot.sample_k_shot`), adapt a classifier on them with a *method* from the registry
(:mod:`.registry`) or any callable ``method(episode) -> predictions``, measure accuracy on the whole test
set. A method that needs the images, not the features (a LoRA fine-tune), reads
``episode.train_dataset`` / ``episode.train_indices``; the features are then never computed.

Features are extracted once per dataset and cached, so 5 shot counts x 3 seeds cost one pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...eval.cache import FeatureCache
from ...eval.features import FeatureKind, FeatureSet, extract_image_features, model_device
from ...eval.few_shot import FewShotEpisode, FewShotMethod, dataset_labels, sample_k_shot
from ...eval.linear_probe import task_labels
from ...eval.plots import plot_few_shot
from ...eval.results import FewShotResult, PerfStats, file_slug, skipped_names
from ...eval.zero_shot import model_label
from .registry import FEATURE_METHODS, get_few_shot_method


def few_shot(model: nn.Module, train_dataset, test_dataset, shots: Sequence[int] = (1, 2, 4, 8, 16),
             seeds: Sequence[int] = (0, 1, 2), method: str | FewShotMethod = "linear_probe", *,
             features: FeatureKind = "pre_projection", task: str | None = None, model_name: str | None = None,
             method_options: dict[str, Any] | None = None, batch_size: int = 64, num_workers: int = 0,
             device: str | torch.device | None = None, transform: Callable | None = None,
             cache: FeatureCache | str | Path | None = None, out_dir: str | Path | None = None,
             progress: bool = True) -> FewShotResult:
    """Few-shot accuracy for every k in ``shots``: mean ± std over ``seeds``.

    method: a registered name (:data:`FEW_SHOT_METHODS`: ``"linear_probe"``, ``"nearest_centroid"``,
        ``"zero_shot"``, ``"lora"``, ``"coop"``, ``"clip_adapter"``, ``"tip_adapter"``, ``"tip_adapter_f"``, or
        one added with :func:`register_few_shot_method`) or a callable ``method(episode)`` (see
        :class:`mmfm.eval.few_shot.FewShotEpisode`).
    method_options: passed to the method as ``episode.options`` (e.g. ``{"C": 0.5}``,
        ``{"c_values": [...]}`` for the linear probe; learning rate, steps... for a LoRA method).
    Accuracy counts every labelled test sample; ``std`` uses ddof=1 (0 for one seed).
    """
    fn = get_few_shot_method(method) if isinstance(method, str) else method
    method_name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
    attribute, classnames, task_name = task_labels(train_dataset, task)
    tasks = train_dataset.zero_shot_tasks() if hasattr(train_dataset, "zero_shot_tasks") else {}
    templates = next((list(t.templates) for t in tasks.values() if t.attribute == attribute), [])
    run_device = torch.device(device) if device is not None else model_device(model)

    # Features are extracted lazily (once per split, cached) so that methods that never read them
    # (a fine-tune on raw images) do not pay for a feature pass.
    computed: dict[str, FeatureSet] = {}

    def get_features(split: str) -> FeatureSet:
        if split not in computed:
            ds = train_dataset if split == "train" else test_dataset
            computed[split] = extract_image_features(
                model, ds, kind=features, attribute=attribute, batch_size=batch_size, num_workers=num_workers,
                device=device, transform=transform, cache=cache, progress=progress,
                desc=f"{getattr(ds, 'name', '')} {split} features")
        return computed[split]

    # The built-in methods read the features anyway: take the labels from that pass, where an unreadable
    # image is unlabelled (-1), so it is neither drawn as a shot nor counted in the test accuracy.
    feature_based = isinstance(method, str) and method in FEATURE_METHODS
    train_labels = None if feature_based else dataset_labels(train_dataset, attribute)
    if train_labels is None:
        train_labels = get_features("train").labels.numpy()
    test_labels = None if feature_based else dataset_labels(test_dataset, attribute)
    if test_labels is None:
        test_labels = get_features("test").labels.numpy()
    if classnames is None:
        classnames = [str(i) for i in range(int(max(train_labels.max(), test_labels.max())) + 1)]
    labelled = test_labels >= 0

    per_shot: dict[int, dict[str, Any]] = {}
    for k in shots:
        accs, extras = [], []
        for seed in seeds:
            idx = sample_k_shot(train_labels, k, seed)
            episode = FewShotEpisode(model=model, train_dataset=train_dataset, test_dataset=test_dataset,
                                     train_indices=idx, train_labels=train_labels[idx], test_labels=test_labels,
                                     classnames=list(classnames), shots=k, seed=seed, attribute=attribute,
                                     templates=templates, options=dict(method_options or {}), device=run_device,
                                     transform=transform, batch_size=batch_size, num_workers=num_workers,
                                     _features=get_features)
            out = fn(episode)
            extra = {}
            if isinstance(out, dict):
                extra = dict(out.get("extra", {}))
                out = out["predictions"]
            preds = np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out)
            if preds.ndim == 2:   # scores -> predictions
                preds = preds.argmax(axis=1)
            if preds.shape != test_labels.shape:
                raise ValueError(f"few-shot method {method_name!r} returned {preds.shape[0]} predictions for "
                                 f"{test_labels.shape[0]} test samples")
            accs.append(float((preds[labelled] == test_labels[labelled]).mean()))
            extras.append({"seed": seed, "num_train": int(len(idx)), **extra})
        per_shot[int(k)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                            "accuracies": accs, "seeds": list(seeds), "episodes": extras}

    result = FewShotResult(
        model=model_label(model, model_name), dataset=getattr(train_dataset, "name", type(train_dataset).__name__),
        task=task_name, perf=PerfStats.combine([fs.perf for fs in computed.values()]), method=method_name,
        per_shot=per_shot,
        config={"features": features, "shots": list(shots), "seeds": list(seeds), "num_test": int(labelled.sum()),
                "num_classes": len(classnames), "method_options": method_options or {},
                "skipped_images": skipped_names(*computed.values())})
    if out_dir is not None:
        stem = file_slug(f"{result.model}_{result.dataset}_{method_name}")
        result.plots["few_shot"] = str(plot_few_shot(per_shot, Path(out_dir) / f"few_shot_{stem}.png",
                                                     title=result.title))
    return result
