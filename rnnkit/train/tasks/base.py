"""What every task shares: the Split of (inputs, targets, lengths), the masked per-step loss and
the Task base class.

Shapes: N sequences, T steps, I input features, K outputs.  ``Split.x`` is (N, T, I) floats or
(N, T) symbol ids (one-hot encoded by the model), ``Split.y`` is (N,) for one target per
sequence (``readout='last'``) or (N, T) for one per step (``readout='all'``), and
``Split.lengths`` (N,) counts the valid steps; steps past a length are padding and never
reach a loss.  Losses return (sum, count) so that the training loop can divide by the count
of the *global* batch, which keeps gradients identical when the batch is spread over processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

LN2 = math.log(2.0)


@dataclass
class Split:
    x: Tensor
    y: Tensor
    lengths: Tensor
    aux: Optional[Tensor] = None      # (N, ...) per-sequence facts a task keeps beside its data

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx) -> "Split":
        return Split(self.x[idx], self.y[idx], self.lengths[idx],
                     None if self.aux is None else self.aux[idx])


def step_mask(lengths: Tensor, T: int) -> Tensor:
    """(B, T) bool, True on valid steps."""
    return torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_step_ce(out: Tensor, y: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """Cross-entropy summed over valid steps only: out (B, T, K), y (B, T) -> (sum, count)."""
    mask = step_mask(lengths, y.shape[1])
    ce = F.cross_entropy(out.transpose(1, 2), y, reduction="none")     # (B, T)
    return ce.masked_fill(~mask, 0.0).sum(), mask.sum().to(out.dtype)


def split_indices(n: int, frac: float, seed: int) -> Tuple[Tensor, Tensor]:
    """A seeded random (train, held-out) partition of range(n); held-out gets round(frac*n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(frac * n))
    return perm[k:], perm[:k]


MAX_STAT_ITEMS = 1_000_000        # longest list (classes, channels, vocabulary) a checkpoint may hold


def stat(stats: dict, key: str, kind: type, lo: float = -math.inf, hi: float = math.inf):
    """``stats[key]`` checked: a bool-free int or finite float (``kind``) in [lo, hi], or a str."""
    if not isinstance(stats, dict) or key not in stats:
        raise UserError(f"stats: missing {key!r}")
    v = stats[key]
    if kind is str:
        if not isinstance(v, str) or len(v) > MAX_STAT_ITEMS:
            raise UserError(f"stats: {key}: expected a string of at most {MAX_STAT_ITEMS:,} characters")
        return v
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok or not math.isfinite(v) or not lo <= v <= hi:
        raise UserError(f"stats: {key}: expected {'an integer' if kind is int else 'a finite number'} "
                        f"from {lo:g} to {hi:g}; got {v!r}"[:200])
    return kind(v)


def stat_list(stats: dict, key: str, kind: type, n: Optional[int] = None, lo: float = -math.inf,
              hi: float = math.inf) -> list:
    """``stats[key]``: a list of at most MAX_STAT_ITEMS items (exactly ``n`` when given), each as ``stat`` checks."""
    v = stats.get(key) if isinstance(stats, dict) else None
    if not isinstance(v, list) or not 0 < len(v) <= MAX_STAT_ITEMS or (n is not None and len(v) != n):
        size = f"{n}" if n is not None else f"1 to {MAX_STAT_ITEMS:,}"
        raise UserError(f"stats: {key}: expected a list of {size} items")
    return [stat({key: item}, key, kind, lo, hi) for item in v]


class Task:
    """Base: subclasses set the attributes and implement loss and metrics (a stream task's
    loss is computed by the truncated BPTT in ``step.py`` instead).

    A task also says what it draws after training (``figures``) and how it comes back from a
    checkpoint's ``stats`` without its data (``restore``), so that nothing outside the task
    needs to know which kind of task it is.
    """

    name = ""
    readout = "last"        # 'last': one output per sequence; 'all': one per step
    tokens = 0              # > 0: inputs are symbol ids, one-hot encoded into this many features
    n_in = 1
    n_out = 1
    metric = "loss"         # headline metric, reported for validation and test
    stream = False          # True: one long stream trained with truncated BPTT (Text)
    vocab: Optional[List[str]] = None   # a character model's symbols (what ``generate`` samples)
    # (config field, its options): variants the trainer trains one by one when the field is
    # "auto", keeping the one with the lowest validation ``metric`` (None: the task has none).
    variants: Optional[Tuple[str, Tuple[str, ...]]] = None
    # Why ``rnnkit predict`` cannot read a CSV for this task (None: it can, see predict_csv).
    predict_hint: Optional[str] = ("predict reads forecasting and classification checkpoints "
                                   "(try rnnkit eval)")
    train: Split
    val: Optional[Split]
    tests: Dict[str, Split]

    def loss(self, out: Tensor, batch: Split) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def metrics(self, out: Tensor, split: Split) -> Dict[str, float]:
        raise NotImplementedError

    def baselines(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """{baseline name: {test name: {metric: value}}}; empty when the task has none."""
        return {}

    def stats(self) -> dict:
        """JSON-able facts that ``predict``/``generate`` need to rebuild inputs (saved in checkpoints)."""
        return {}

    def load_stats(self, stats: dict) -> None:
        """The inverse of ``stats``: set what a restored task needs (nothing by default)."""

    @classmethod
    def restore(cls, stats: dict) -> "Task":
        """The task as a checkpoint's ``stats`` describe it, without loading its data: enough to
        rebuild the network (n_in, n_out, readout, tokens) and to read new inputs."""
        task = cls.__new__(cls)             # not __init__: that loads and splits the data
        task.load_stats(stats)
        return task

    def predict_csv(self, net, csv_path: str, target: Optional[str]) -> str:
        """Predictions of ``net`` for the inputs in a CSV file, as CSV text (tasks whose
        ``predict_hint`` is None)."""
        raise NotImplementedError

    def figures(self, folder: Path, outputs: Dict[str, Tensor], label: str) -> None:
        """Write this task's PNGs into ``folder`` from the test outputs (by test name);
        ``label`` names the network's curve.  None by default."""

    def steps(self) -> int:
        """Steps of one training sequence (what one batch's activations scale with)."""
        return int(self.train.x.shape[1])

    def loss_label(self) -> Tuple[str, float]:
        """(y-axis label of the loss figure, factor from the loss to that unit)."""
        return "loss", 1.0

    def describe(self) -> str:
        return self.name
