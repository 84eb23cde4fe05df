"""Few-shot classification: k labelled examples per class, several random draws, mean ± std.

An *episode* is one (k, seed) pair: draw k training examples per class with that seed, adapt a
classifier on them, measure accuracy on the whole test set. The adaptation is a pluggable *method*:

* ``"linear_probe"`` (default): logistic regression on frozen features, C picked by stratified
  cross-validation on the k-shot set when every class has at least 2 examples, a fixed C otherwise
  (with one example per class there is nothing to validate on);
* ``"nearest_centroid"``: cosine similarity to per-class mean features (a prototype classifier);
* any callable ``method(episode) -> predictions`` (e.g. a LoRA fine-tune that needs the images, not
  the features: it reads ``episode.train_dataset`` / ``episode.train_indices`` and ignores the
  features, which are then never computed).

Features are extracted once per dataset and cached, so 5 shot counts x 3 seeds cost one pass.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .features import FeatureCache, FeatureKind, FeatureSet, extract_image_features, model_device
from .results import FewShotResult, PerfStats, _slug, skipped_names


# ---------------------------------------------------------------------------------------------
# Episodes
@dataclass
class FewShotEpisode:
    """Everything a few-shot method may use. Feature attributes are computed on first access."""

    model: nn.Module
    train_dataset: Any
    test_dataset: Any
    train_indices: np.ndarray          # dataset indices of the k-shot training examples
    train_labels: np.ndarray           # their labels (same order)
    test_labels: np.ndarray            # labels of the whole test set (-1 = unlabelled, ignored)
    classnames: list[str]
    shots: int
    seed: int
    attribute: str | None = None
    templates: list[str] = field(default_factory=list)   # the task's prompt templates (zero-shot init)
    options: dict[str, Any] = field(default_factory=dict)
    # How the evaluation loads images, for methods that run the model themselves.
    device: torch.device | None = None
    transform: Callable | None = None
    batch_size: int = 64
    num_workers: int = 0
    _features: Callable[[str], FeatureSet] | None = None

    @property
    def train_features(self) -> np.ndarray:
        """Features of the k-shot training examples, ``[len(train_indices), D]``."""
        return self._features("train").features.numpy()[self.train_indices]

    @property
    def test_features(self) -> np.ndarray:
        return self._features("test").features.numpy()


FewShotMethod = Callable[[FewShotEpisode], Any]
"""``method(episode)`` returns test predictions ``[N_test]`` (class indices), or class scores
``[N_test, C]``, or a dict with ``"predictions"`` and optionally ``"extra"`` (recorded per episode)."""

FEW_SHOT_METHODS: dict[str, FewShotMethod] = {}


def register_few_shot_method(name: str, method: FewShotMethod, overwrite: bool = False) -> None:
    """Make ``method`` available as ``few_shot(..., method=name)`` (and on the CLI)."""
    if name in FEW_SHOT_METHODS and not overwrite:
        raise ValueError(f"few-shot method {name!r} is already registered")
    FEW_SHOT_METHODS[name] = method


def sample_k_shot(labels: np.ndarray, k: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of ``k`` examples of every class present in ``labels``, drawn without replacement.

    Deterministic given ``(labels, k, seed)``; a class with fewer than k examples contributes all of
    them. Unlabelled entries (-1) are never drawn. Indices come back sorted per class, classes in order.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[labels >= 0]) if num_classes is None else np.arange(num_classes)
    chosen = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) == 0:
            continue
        chosen.append(np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False)))
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Built-in methods
def linear_probe_method(episode: FewShotEpisode) -> dict[str, Any]:
    """Logistic regression (L-BFGS, max 1000 iterations) on the k-shot features.

    C: with >= 2 examples per class, chosen from ``options["c_values"]`` (default 1e-3..1e3, one per
    decade) by stratified ``min(k, 4)``-fold cross-validation on the k-shot set; with 1 example per
    class the fixed ``options["C"]`` (default 1.0).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    x, y = episode.train_features, episode.train_labels
    max_iter = episode.options.get("max_iter", 1000)
    _, counts = np.unique(y, return_counts=True)
    from .linear_probe import blas_threads
    with warnings.catch_warnings(), blas_threads(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(counts) > 1 and counts.min() >= 2:
            folds = StratifiedKFold(n_splits=int(min(counts.min(), 4)), shuffle=True, random_state=episode.seed)
            c_values = episode.options.get("c_values", np.logspace(-3, 3, 7))
            search = GridSearchCV(LogisticRegression(max_iter=max_iter), {"C": list(c_values)}, cv=folds,
                                  n_jobs=episode.options.get("n_jobs"))
            search.fit(x, y)
            clf, c = search.best_estimator_, float(search.best_params_["C"])
        else:
            c = float(episode.options.get("C", 1.0))
            clf = LogisticRegression(C=c, max_iter=max_iter).fit(x, y) if len(counts) > 1 else None
    if clf is None:  # a single class: nothing to learn
        return {"predictions": np.full(len(episode.test_labels), int(y[0])), "extra": {"C": c}}
    return {"predictions": clf.predict(episode.test_features), "extra": {"C": c}}


def nearest_centroid_method(episode: FewShotEpisode) -> np.ndarray:
    """Cosine similarity to each class's mean normalised feature (a prototype classifier)."""
    x = torch.from_numpy(episode.train_features).float()
    y = torch.from_numpy(episode.train_labels).long()
    x = x / x.norm(dim=1, keepdim=True)
    classes = torch.unique(y)
    centroids = torch.stack([x[y == c].mean(0) for c in classes])
    centroids = centroids / centroids.norm(dim=1, keepdim=True)
    t = torch.from_numpy(episode.test_features).float()
    t = t / t.norm(dim=1, keepdim=True)
    return classes[(t @ centroids.T).argmax(dim=1)].numpy()


register_few_shot_method("linear_probe", linear_probe_method)
register_few_shot_method("nearest_centroid", nearest_centroid_method)
#: Methods that classify from the feature pass (their labels come from it too).
FEATURE_METHODS = frozenset({"linear_probe", "nearest_centroid"})


# ---------------------------------------------------------------------------------------------
def dataset_labels(dataset, attribute: str | None = None) -> np.ndarray | None:
    """Labels without decoding images, when the dataset can give them cheaply (it overrides
    ``get_label``); None when only a full pass could (then the feature pass provides them)."""
    from ..data.base import MultimodalDataset
    get_label = getattr(type(dataset), "get_label", None)
    if attribute is None and get_label is not None and get_label is not MultimodalDataset.get_label:
        return np.array([(-1 if (lab := dataset.get_label(i)) is None else int(lab)) for i in range(len(dataset))],
                        dtype=np.int64)
    return None


def few_shot(model: nn.Module, train_dataset, test_dataset, shots: Sequence[int] = (1, 2, 4, 8, 16),
             seeds: Sequence[int] = (0, 1, 2), method: str | FewShotMethod = "linear_probe", *,
             features: FeatureKind = "pre_projection", task: str | None = None, model_name: str | None = None,
             method_options: dict[str, Any] | None = None, batch_size: int = 64, num_workers: int = 0,
             device: str | torch.device | None = None, transform: Callable | None = None,
             cache: FeatureCache | str | Path | None = None, out_dir: str | Path | None = None,
             progress: bool = True) -> FewShotResult:
    """Few-shot accuracy for every k in ``shots``: mean ± std over ``seeds``.

    method: a registered name (``"linear_probe"``, ``"nearest_centroid"``, or one added with
        :func:`register_few_shot_method`) or a callable ``method(episode)`` (see :class:`FewShotEpisode`).
    method_options: passed to the method as ``episode.options`` (e.g. ``{"C": 0.5}``,
        ``{"c_values": [...]}`` for the linear probe; learning rate, steps... for a LoRA method).
    Accuracy counts every labelled test sample; ``std`` uses ddof=1 (0 for one seed).
    """
    from .linear_probe import _task_labels
    from .zero_shot import model_label
    if isinstance(method, str) and method not in FEW_SHOT_METHODS:
        import mmfm.adapt  # noqa: F401  registers the adaptation methods (lora, coop, tip_adapter, ...)
    if isinstance(method, str) and method not in FEW_SHOT_METHODS:
        raise KeyError(f"unknown few-shot method {method!r}; registered: {sorted(FEW_SHOT_METHODS)}")
    fn = FEW_SHOT_METHODS[method] if isinstance(method, str) else method
    method_name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
    attribute, classnames, task_name = _task_labels(train_dataset, task)
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
        from .plots import plot_few_shot
        stem = _slug(f"{result.model}_{result.dataset}_{method_name}")
        result.plots["few_shot"] = str(plot_few_shot(per_shot, Path(out_dir) / f"few_shot_{stem}.png",
                                                     title=result.title))
    return result
