"""PNG figures of a run (matplotlib, no display needed): losses, forecasts, confusion matrices."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")                     # files only; never open a window
    import matplotlib.pyplot as plt
    return plt


def loss_curves(history: List[dict], path: Path, title: str = "loss per epoch", ylabel: str = "loss",
                factor: float = 1.0, best_epoch: int = 0) -> None:
    """Training and validation loss per epoch, in the task's unit (``factor`` times the loss),
    with the best validation epoch (the weights kept) marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] * factor for h in history], label="train")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss", np.nan) * factor for h in history], label="validation")
    best = [h for h in history if h["epoch"] == best_epoch and "val_loss" in h]
    if best:
        ax.axvline(best_epoch, color="gray", ls="--", lw=1)
        ax.plot([best_epoch], [best[0]["val_loss"] * factor], "o", color="tab:red",
                label=f"best epoch {best_epoch} (weights kept)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if all(h["train_loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def forecast(labels: Sequence[str], truth: np.ndarray, preds: Dict[str, np.ndarray], title: str,
             path: Path) -> None:
    """One-step-ahead forecasts against the truth over a test period."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(truth))
    ax.plot(x, truth, "k-", lw=2, label="truth")
    for name, p in preds.items():
        ax.plot(x, p, lw=1.2, label=name)
    step = max(1, len(labels) // 10)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([labels[i] for i in x[::step]], rotation=45, ha="right")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(matrix: np.ndarray, classes: Sequence[str], title: str, path: Path) -> None:
    """Counts of (true class, predicted class), shaded by the share of each true class so that
    rare classes read as clearly as common ones.  The figure stays within 12 inches: up to 25
    classes every cell shows its count, beyond that a colour bar gives the shares and the tick
    labels are thinned to at most 30 per axis."""
    plt = _pyplot()
    k = len(classes)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = min(12.0, 2.0 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side + (1.0 if k > 25 else 0.0), side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:
        size = 9 if k <= 10 else 7
        for i in range(k):
            for j in range(k):
                if matrix[i, j] or i == j:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if share[i, j] > 0.5 else "black")
    else:
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    step = max(1, -(-k // 30))
    ticks = list(range(0, k, step))
    labels = [str(classes[i])[:12] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 else 0, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
