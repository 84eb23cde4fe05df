"""The classic few-shot baselines on the frozen model's features: a linear probe and nearest centroids.

* ``linear_probe``: logistic regression on frozen features, C picked by stratified cross-validation on
  the k-shot set when every class has at least 2 examples, a fixed C otherwise (with one example per
  class there is nothing to validate on);
* ``nearest_centroid``: cosine similarity to per-class mean features (a prototype classifier).

Both read ``episode.train_features`` / ``episode.test_features`` (pre-projection by default), which
the few-shot evaluation extracts once per dataset and caches.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ...eval.few_shot import FewShotEpisode
from ...eval.linear_probe import blas_threads


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
