"""Linear probe: a linear classifier on frozen image features, by one of two protocols.

``method="clip_paper"`` (the default) is described first; ``method="clip_benchmark"`` is
clip_benchmark's (and so open_clip's published tables'): see :func:`fit_linear_probe_adamw`.

Protocol (CLIP paper, appendix A.3): scikit-learn's L-BFGS logistic regression with at most 1,000
iterations; the L2 strength is chosen by a sweep over C in [1e-6, 1e6] (C = 1/lambda) on a
validation split, then the classifier is refit on train+val with the chosen C and evaluated once on
the test set. The paper used 96 log-spaced values; we search coarse-to-fine instead (one value per
decade, then ``fine_per_decade`` values per decade around the best), which finds the same optimum
to within a fraction of a decade with a fifth of the fits.

Features (``model.image_features``, the tower output *before* the projection, by default) are
extracted once and cached, so re-running with other sweep settings costs only the fits.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .cache import FeatureCache
from .features import FeatureKind, extract_image_features
from .results import ClassificationMetrics, LinearProbeResult, PerfStats, file_slug, skipped_names

C_RANGE = (1e-6, 1e6)


def blas_threads(n: int | None = 1):
    """Limit BLAS threads during scikit-learn fits.

    With torch loaded, OpenBLAS's worker threads compete with torch's OpenMP pool; measured on a
    2-core machine, one BLAS thread made L-BFGS fits 3-15x *faster* (small and 20k x 768 problems
    alike). Parallelism across C values (``n_jobs``) uses the cores better than threaded BLAS.
    """
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n, user_api="blas")


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int):
    """One L-BFGS fit; returns (classifier, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs", random_state=seed)
    with warnings.catch_warnings(record=True) as caught, blas_threads(1):
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return clf, converged


def _val_accuracy(args) -> dict[str, float]:
    x_tr, y_tr, x_val, y_val, c, max_iter, seed = args
    clf, converged = _fit(x_tr, y_tr, c, max_iter, seed)
    return {"C": float(c), "val_accuracy": float((clf.predict(x_val) == y_val).mean()), "converged": converged}


def _run_all(jobs: list[tuple], n_jobs: int | None) -> list[dict[str, float]]:
    if n_jobs is None or n_jobs == 1 or len(jobs) == 1:
        return [_val_accuracy(j) for j in jobs]
    from joblib import Parallel, delayed
    return Parallel(n_jobs=n_jobs)(delayed(_val_accuracy)(j) for j in jobs)


def sweep_c(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
            c_values: Sequence[float] | None = None, coarse_to_fine: bool = True, fine_per_decade: int = 4,
            max_iter: int = 1000, n_jobs: int | None = None, seed: int = 0) -> tuple[float, list[dict[str, float]]]:
    """Pick C by validation accuracy. Returns ``(best_c, sweep)`` with the sweep sorted by C.

    ``c_values`` default: one per decade over [1e-6, 1e6]. With ``coarse_to_fine``, the decade on each
    side of the best coarse value is then searched at ``fine_per_decade`` points per decade.
    Among equally accurate values the smallest C (the strongest regularisation) wins: with small
    validation sets ties are common, and the simpler model is the safer choice.
    """
    coarse = list(c_values) if c_values is not None else list(np.logspace(-6, 6, 13))
    jobs = lambda cs: [(x_train, y_train, x_val, y_val, float(c), max_iter, seed) for c in cs]
    sweep = _run_all(jobs(coarse), n_jobs)
    if coarse_to_fine and fine_per_decade > 1 and len(coarse) > 1:
        best = _best(sweep)
        centre = np.log10(best)
        fine = np.logspace(centre - 1, centre + 1, 2 * fine_per_decade + 1)
        lo, hi = np.log10(min(coarse)), np.log10(max(coarse))
        seen = {round(np.log10(s["C"]), 6) for s in sweep}
        fine = [c for c in fine if lo - 1e-9 <= np.log10(c) <= hi + 1e-9 and round(np.log10(c), 6) not in seen]
        sweep += _run_all(jobs(fine), n_jobs)
    sweep.sort(key=lambda s: s["C"])
    return _best(sweep), sweep


def _best(sweep: list[dict[str, float]]) -> float:
    top = max(s["val_accuracy"] for s in sweep)
    return min(s["C"] for s in sweep if s["val_accuracy"] == top)


def split_train_val(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a (stratified when possible) train/val split of the training set."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    _, counts = np.unique(y, return_counts=True)
    n_val = int(round(val_fraction * len(y)))
    stratify = y if counts.min() >= 2 and n_val >= len(counts) else None
    tr, val = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(val)


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     classnames: Sequence[str] | None = None, *, x_val: np.ndarray | None = None,
                     y_val: np.ndarray | None = None, val_fraction: float = 0.2, c_values: Sequence[float] | None = None,
                     coarse_to_fine: bool = True, fine_per_decade: int = 4, max_iter: int = 1000,
                     n_jobs: int | None = None, seed: int = 0):
    """The probe on feature arrays. Returns ``(metrics, best_c, sweep, classifier, n_train, n_val)``.

    Without ``x_val`` a ``val_fraction`` of the training set is held out for the sweep. The final
    classifier is refit on train + val with the best C.
    """
    x_train, x_test = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if x_val is None:
        tr, val = split_train_val(y_train, val_fraction, seed)
        x_tr, y_tr, x_v, y_v = x_train[tr], y_train[tr], x_train[val], y_train[val]
    else:
        x_tr, y_tr, x_v, y_v = x_train, y_train, np.asarray(x_val, dtype=np.float64), np.asarray(y_val)
    best_c, sweep = sweep_c(x_tr, y_tr, x_v, y_v, c_values=c_values, coarse_to_fine=coarse_to_fine,
                            fine_per_decade=fine_per_decade, max_iter=max_iter, n_jobs=n_jobs, seed=seed)
    x_all, y_all = np.concatenate([x_tr, x_v]), np.concatenate([y_tr, y_v])
    clf, converged = _fit(x_all, y_all, best_c, max_iter, seed)
    n_classes = int(max(y_all.max(), y_test.max() if len(y_test) else 0)) + 1
    classnames = list(classnames) if classnames is not None else [str(i) for i in range(n_classes)]
    # predict_proba columns follow clf.classes_ (the labels seen in training), which may be a subset
    # of all classes; scatter them into the full label space so top-5 and the confusion matrix line up.
    proba = clf.predict_proba(x_test)
    scores = np.full((len(x_test), len(classnames)), -np.inf)
    scores[:, clf.classes_.astype(int)] = proba
    metrics = ClassificationMetrics.from_scores(torch.from_numpy(scores), y_test, classnames)
    return metrics, best_c, sweep, clf, len(y_tr), len(y_v)


# clip_benchmark's weight-decay grid: 97 log-spaced values over [1e-6, 1e2], first searched at the 7
# that are also in logspace(-6, 2, 7) (compared exactly, as it does), then refined by halving spans.
WD_GRID = np.logspace(-6, 2, num=97).tolist()
WD_INIT = [i for i, v in enumerate(WD_GRID) if v in np.logspace(-6, 2, num=7).tolist()]
PROBE_METHODS = ("clip_paper", "clip_benchmark")


def _cosine_lr(base_lr: float, step: int, steps: int) -> float:
    """clip_benchmark's schedule: cosine from ``base_lr`` to 0 over all steps, no warm-up."""
    return 0.5 * (1 + np.cos(np.pi * step / steps)) * base_lr


def _train_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, *, lr: float,
                  epochs: int, batch_size: int, seed: int, device, amp: bool) -> nn.Linear:
    """One AdamW fit of a linear layer, step for step as clip_benchmark's ``train``: the torch RNG
    seeded with ``seed`` draws the layer's init and then each epoch's shuffle. The caller forks the
    RNG, so the process's random state is left as it was."""
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(seed)
    layer = nn.Linear(x.shape[1], n_classes).to(device)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    steps = epochs * len(loader)
    for epoch in range(epochs):
        for i, (xb, yb) in enumerate(loader):
            for g in opt.param_groups:
                g["lr"] = _cosine_lr(lr, i + epoch * len(loader), steps)
            opt.zero_grad()
            with torch.autocast(torch.device(device).type, enabled=amp):
                loss = nn.functional.cross_entropy(layer(xb.to(device)), yb.to(device))
            loss.backward()
            opt.step()
    return layer


@torch.no_grad()
def _logits(layer: nn.Linear, x: torch.Tensor, device, amp: bool, batch_size: int = 4096) -> torch.Tensor:
    with torch.autocast(torch.device(device).type, enabled=amp):
        return torch.cat([layer(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.topk(1, dim=1)[1][:, 0] == y).float().mean())   # topk, as its accuracy(): same ties


def fit_linear_probe_adamw(x_train, y_train, x_test, y_test, classnames: Sequence[str] | None = None, *,
                           x_val=None, y_val=None, lr: float = 0.1, epochs: int = 10, batch_size: int = 64,
                           seed: int = 0, device: str | torch.device = "cpu", amp: bool = False):
    """clip_benchmark's linear probe on feature arrays (its ``metrics/linear_probe.py``, our code).

    Features are L2-normalised here (clip_benchmark probes normalised *embeddings*). The training rows
    are put in the order of a permutation seeded with ``seed`` (clip_benchmark draws it from the
    process's RNG state). With a validation set, the weight decay is chosen on it from :data:`WD_GRID`
    (7 coarse values, then spans of 8, 4, 2, 1 grid steps around the peak; the first strictly better
    value wins, and if none scores above 0 the first grid value does, as there), then the layer is
    retrained on train + val; without one the weight decay is 0 and there is no sweep, as there.
    ``amp``: fp16 autocast (clip_benchmark's default on CUDA). Returns
    ``(metrics, best_wd, sweep, n_train, n_val)``; the sweep lists each weight decay tried once.
    """
    norm = lambda a: nn.functional.normalize(torch.as_tensor(np.asarray(a), dtype=torch.float32), dim=-1)
    x_tr, x_te = norm(x_train), norm(x_test)
    y_tr, y_te = torch.as_tensor(np.asarray(y_train)).long(), torch.as_tensor(np.asarray(y_test)).long()
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(seed))
    x_tr, y_tr = x_tr[perm], y_tr[perm]
    n_out = int(y_tr.max()) + 1             # the layer's width as there (its init draws depend on it)
    fit = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, device=device, amp=amp)
    tried: dict[int, float] = {}
    with torch.random.fork_rng(devices=[]):
        if x_val is not None:
            x_v, y_v = norm(x_val), torch.as_tensor(np.asarray(y_val)).long()

            def peak(idxs: list[int]) -> int:
                best, best_acc = 0, 0.0
                for i in idxs:
                    if i not in tried:
                        layer = _train_linear(x_tr, y_tr, n_out, WD_GRID[i], **fit)
                        tried[i] = _top1(_logits(layer, x_v, device, amp), y_v)
                    if best_acc < tried[i]:
                        best, best_acc = i, tried[i]
                return best

            idx, span = peak(WD_INIT), 8
            while span > 0:
                idx = peak([max(idx - span, 0), idx, min(idx + span, len(WD_GRID) - 1)])
                span //= 2
            best_wd = WD_GRID[idx]
            x_fit, y_fit, n_val = torch.cat([x_tr, x_v]), torch.cat([y_tr, y_v]), len(y_v)
        else:
            best_wd, x_fit, y_fit, n_val = 0.0, x_tr, y_tr, 0
        layer = _train_linear(x_fit, y_fit, n_out, best_wd, **fit)
        logits = _logits(layer, x_te, device, amp)
    n_classes = max(n_out, int(y_te.max()) + 1 if len(y_te) else 0, len(classnames or ()))
    classnames = list(classnames) if classnames is not None else [str(i) for i in range(n_classes)]
    scores = torch.full((len(logits), len(classnames)), -torch.inf)
    scores[:, :n_out] = logits              # classes never seen in training are never predicted
    metrics = ClassificationMetrics.from_scores(scores, y_te.numpy(), classnames)
    sweep = [{"weight_decay": WD_GRID[i], "val_accuracy": a} for i, a in sorted(tried.items())]
    return metrics, best_wd, sweep, len(y_tr), n_val


def linear_probe(model: nn.Module, train_dataset, test_dataset, *, val_dataset=None, method: str = "clip_paper",
                 features: FeatureKind | None = None, task: str | None = None,
                 model_name: str | None = None, val_fraction: float = 0.2, c_values: Sequence[float] | None = None,
                 coarse_to_fine: bool = True, fine_per_decade: int = 4, max_iter: int = 1000,
                 n_jobs: int | None = None, seed: int = 0, batch_size: int = 64, num_workers: int = 0,
                 device: str | torch.device | None = None, transform: Callable | None = None,
                 cache: FeatureCache | str | Path | None = None, out_dir: str | Path | None = None,
                 progress: bool = True, lr: float = 0.1, epochs: int = 10, amp: bool = False) -> LinearProbeResult:
    """Linear-probe accuracy of ``model``'s frozen image features.

    method: ``"clip_paper"`` (L-BFGS logistic regression, C sweep: :func:`fit_linear_probe`) or
        ``"clip_benchmark"`` (AdamW on L2-normalised embeddings, weight-decay sweep, ``lr`` / ``epochs`` /
        ``amp``: :func:`fit_linear_probe_adamw`); the two give different numbers on the same model.
    features: ``"pre_projection"`` or ``"embedding"`` (after the projection); default the method's own:
        pre-projection for the CLIP paper's, embeddings for clip_benchmark's.
    task: which label to probe (a name from ``dataset.zero_shot_tasks()``, e.g. ``"color"``); default
        the primary label.
    val_dataset: an official validation split (Flowers-102, DTD have one); otherwise ``val_fraction``
        of the training set is held out for the C sweep.
    With ``out_dir`` the C sweep and the confusion matrix are also saved as PNGs.
    """
    if method not in PROBE_METHODS:
        raise ValueError(f"linear-probe method {method!r} is not one of {PROBE_METHODS}")
    features = features or ("embedding" if method == "clip_benchmark" else "pre_projection")
    attribute, classnames, task_name = task_labels(train_dataset, task)
    kw = dict(kind=features, attribute=attribute, batch_size=batch_size, num_workers=num_workers, device=device,
              transform=transform, cache=cache, progress=progress)
    name = getattr(train_dataset, "name", type(train_dataset).__name__)
    tr = extract_image_features(model, train_dataset, desc=f"{name} train features", **kw)
    te = extract_image_features(model, test_dataset, desc=f"{name} test features", **kw)
    va = extract_image_features(model, val_dataset, desc=f"{name} val features", **kw) if val_dataset is not None else None

    def arrays(fs):
        keep = fs.labels >= 0
        return fs.features[keep].numpy(), fs.labels[keep].numpy()

    x_tr, y_tr = arrays(tr)
    x_te, y_te = arrays(te)
    x_va, y_va = arrays(va) if va is not None else (None, None)
    if classnames is None:
        classnames = [str(i) for i in range(int(max(y_tr.max(), y_te.max())) + 1)]
    if method == "clip_benchmark":
        if x_va is None and val_fraction:      # as its --val_proportion (our stratified split, not its random_split)
            tr_i, va_i = split_train_val(y_tr, val_fraction, seed)
            x_tr, y_tr, x_va, y_va = x_tr[tr_i], y_tr[tr_i], x_tr[va_i], y_tr[va_i]
        metrics, best_wd, sweep, n_tr, n_val = fit_linear_probe_adamw(
            x_tr, y_tr, x_te, y_te, classnames, x_val=x_va, y_val=y_va, lr=lr, epochs=epochs, batch_size=batch_size,
            seed=seed, device=device or "cpu", amp=amp)
        best_c, fit_config = float("nan"), {"weight_decay": best_wd, "lr": lr, "epochs": epochs, "amp": amp,
                                            "normalized": True}
    else:
        metrics, best_c, sweep, _, n_tr, n_val = fit_linear_probe(
            x_tr, y_tr, x_te, y_te, classnames, x_val=x_va, y_val=y_va, val_fraction=val_fraction, c_values=c_values,
            coarse_to_fine=coarse_to_fine, fine_per_decade=fine_per_decade, max_iter=max_iter, n_jobs=n_jobs, seed=seed)
        fit_config = {"coarse_to_fine": coarse_to_fine, "fine_per_decade": fine_per_decade, "max_iter": max_iter}

    from .zero_shot import model_label
    result = LinearProbeResult(
        model=model_label(model, model_name), dataset=name, task=task_name,
        perf=PerfStats.combine([tr.perf, te.perf] + ([va.perf] if va is not None else [])),
        metrics=metrics, best_c=best_c, sweep=sweep, num_train=n_tr, num_val=n_val,
        config={"method": method, "features": features, "feature_dim": int(x_tr.shape[1]),
                "val_fraction": val_fraction, **fit_config, "seed": seed, "num_test": len(y_te), "official_val_split": val_dataset is not None,
                "skipped_images": skipped_names(tr, te, va)})
    if out_dir is not None:
        from .plots import plot_c_sweep, plot_confusion_matrix
        stem = file_slug(f"{result.model}_{result.dataset}" + (f"_{task_name}" if task_name else ""))
        if method == "clip_paper":
            result.plots["c_sweep"] = str(plot_c_sweep(sweep, Path(out_dir) / f"c_sweep_{stem}.png", best_c))
        result.plots["confusion_matrix"] = str(plot_confusion_matrix(
            metrics.confusion, metrics.classnames, Path(out_dir) / f"confusion_linear_probe_{stem}.png",
            title=result.title))
    return result


def task_labels(dataset, task: str | None) -> tuple[str | None, list[str] | None, str | None]:
    """(attribute, classnames, task name) for the label a probe should predict; the task name is
    None for the primary label (results name only attribute tasks, like zero-shot)."""
    if task is None:
        return None, (list(dataset.classes) if getattr(dataset, "classes", None) else None), None
    tasks = dataset.zero_shot_tasks()
    if task not in tasks:
        raise KeyError(f"{getattr(dataset, 'name', 'dataset')} has no label {task!r}; available: {sorted(tasks)}")
    t = tasks[task]
    return t.attribute, list(t.classnames), t.name if t.attribute is not None else None
