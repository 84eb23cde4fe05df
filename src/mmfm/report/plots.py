"""PNG plots shared by reports: training curves (and, from mmfm.eval, confusion matrices)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_training_curves(history: list[dict], val_history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Loss (train and validation) and learning rate against optimizer steps."""
    if not history:
        return None
    plt = _pyplot()
    val_keys = sorted({k for r in val_history for k in r if k != "step" and isinstance(r[k], (int, float))} - {"val_loss"})
    n = 2 + (1 if val_keys else 0)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8))
    steps = [r["step"] for r in history]
    ax = axes[0]
    ax.plot(steps, [r["loss"] for r in history], label="train loss")
    vl = [(r["step"], r["val_loss"]) for r in val_history if "val_loss" in r]
    if vl:
        ax.plot(*zip(*vl), "o-", label="validation loss")
    ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.set_title("loss"); ax.legend(); ax.grid(alpha=0.3)
    axes[1].plot(steps, [r["lr"] for r in history], color="tab:green")
    axes[1].set_xlabel("step"); axes[1].set_title("learning rate"); axes[1].grid(alpha=0.3)
    if val_keys:
        for k in val_keys:
            pts = [(r["step"], r[k]) for r in val_history if k in r]
            axes[2].plot(*zip(*pts), "o-", label=k)
        axes[2].set_xlabel("step"); axes[2].set_title("validation metrics"); axes[2].legend(fontsize=7); axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
