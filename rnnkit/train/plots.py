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


def loss_curves(history: List[dict], path: Path) -> None:
    """Training and validation loss per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss", np.nan) for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
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
    """Counts of (true class, predicted class)."""
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * k, 1.0 + 0.5 * k))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
