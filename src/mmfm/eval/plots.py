"""PNG figures of evaluation results: confusion matrix, linear-probe C sweep, few-shot curve.

matplotlib's non-interactive Agg backend is used through an explicit ``Figure`` (no pyplot state), so
plotting works headless, in threads and in DataLoader workers without touching a global backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_confusion_matrix(confusion: np.ndarray, classnames: Sequence[str], path: str | Path,
                          normalize: bool = True, title: str = "Confusion matrix") -> Path:
    """Rows = true class, columns = predicted class; ``normalize`` divides each row by its support.

    Class names label the axes up to 40 classes; beyond that the ticks would be unreadable and are
    left as indices.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if normalize:
        support = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    n = cm.shape[0]
    side = min(4 + 0.3 * n, 30)
    fig = _figure((side, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 40:
        ax.set_xticks(range(n), [str(c) for c in classnames], rotation=90, fontsize=8)
        ax.set_yticks(range(n), [str(c) for c in classnames], fontsize=8)
        if n <= 15:  # annotate cells while they are large enough to read
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center", va="center",
                            fontsize=7, color="white" if cm[i, j] > 0.5 * (cm.max() or 1) else "black")
    return _save(fig, path)


def plot_c_sweep(sweep: Sequence[Mapping[str, float]], path: str | Path, best_c: float | None = None,
                 title: str = "Linear probe: validation accuracy vs C") -> Path:
    """Validation accuracy against the inverse regularisation strength C (log axis)."""
    pts = sorted((float(s["C"]), float(s["val_accuracy"])) for s in sweep)
    fig = _figure((6, 4))
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        c, acc = zip(*pts)
        ax.plot(c, [100 * a for a in acc], marker="o")
    if best_c is not None:
        ax.axvline(best_c, color="tab:red", linestyle="--", label=f"best C = {best_c:.3g}")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_few_shot(per_shot: Mapping[int, Mapping[str, float]], path: str | Path,
                  title: str = "Few-shot accuracy") -> Path:
    """Mean accuracy against shots per class, with ± one standard deviation over seeds."""
    return plot_few_shot_curves({"": per_shot}, path, title)


def plot_few_shot_curves(curves: Mapping[str, Mapping[int, Mapping[str, float]]], path: str | Path,
                         title: str = "Few-shot accuracy") -> Path:
    """One curve per method (``{label: per_shot}``, per_shot keys may be ints or strings), ± one std."""
    fig = _figure((7, 4.5) if len(curves) > 1 else (6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ks: list[int] = []
    for label, per_shot in curves.items():
        ks = sorted(int(k) for k in per_shot)
        by_k = {int(k): v for k, v in per_shot.items()}
        mean = np.array([by_k[k]["mean"] for k in ks]) * 100
        std = np.array([by_k[k]["std"] for k in ks]) * 100
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=label or None)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("examples per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


RIGHT_COLOUR, WRONG_COLOUR = "green", "darkred"


def plot_retrieval_examples(examples, path: str | Path, title: str = "") -> Path:
    """Images with their top retrieved captions and cosine similarities, one line per caption: green when
    the caption is one of the image's own (same text), dark red otherwise; a legend says so.

    examples: ``[(image, [(caption, similarity, is_right), ...]), ...]``.
    """
    from matplotlib.patches import Patch
    n = len(examples)
    cols = 4
    rows = max(1, (n + cols - 1) // cols)
    fig = _figure((4.2 * cols, 4.4 * rows))
    plt_axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax in plt_axes:
        ax.axis("off")
    for ax, (image, tops) in zip(plt_axes, examples):
        ax.imshow(image)
        for line, (cap, sim, right) in enumerate(reversed(tops)):   # best caption on top
            ax.text(0.0, 1.02 + 0.075 * line, f"{'✓' if right else '✗'} {sim:.3f}  {cap[:48]}", fontsize=7.5,
                    transform=ax.transAxes, color=RIGHT_COLOUR if right else WRONG_COLOUR, va="bottom")
    fig.legend(handles=[Patch(color=RIGHT_COLOUR, label="✓ one of the image's own captions"),
                        Patch(color=WRONG_COLOUR, label="✗ another image's caption")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)
