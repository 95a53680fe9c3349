"""Sequence classification: the UEA/UCR sets bundled with sktime and scikit-learn's digits."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import data, plots
from ..config import Config
from ..errors import UserError
from .base import Split, Task, split_indices, stat_list, step_mask


class Classify(Task):
    """Sequence classification from the last valid step (first step for the reverse direction).

    Multiclass: cross-entropy over K logits; binary: one logit and binary cross-entropy (BCE).
    Inputs are standardised per channel with training statistics over valid steps.
    """

    metric = "accuracy"
    predict_hint = None

    def __init__(self, cfg: Config, name: str, train: Tuple[List[np.ndarray], List[int]],
                 test: Tuple[List[np.ndarray], List[int]], classes: Sequence[str],
                 stats: Optional[dict] = None):
        self.name = name
        self._set_classes(classes)
        self.n_in = train[0][0].shape[1]
        T = max(len(c) for c in train[0] + test[0])
        full = _pad(train[0], train[1], T)
        if stats is not None:                       # the normalisation a checkpoint was trained with
            self.load_stats(stats)
            if self.n_in != len(self.mean) or self.classes != list(classes):
                raise UserError(f"task {name}: the data has {self.n_in} channel(s) and classes "
                                f"{list(classes)}; the checkpoint {len(self.mean)} and {self.classes}")
        else:
            mask = step_mask(full.lengths, T).unsqueeze(-1)                 # (N, T, 1)
            n, x = mask.sum(), full.x.double()                              # float64: no overflow
            mean = (x * mask).sum((0, 1)) / n
            std = (((x - mean) * mask) ** 2).sum((0, 1)).div(n).sqrt().clamp_min(1e-6)
            self.mean, self.std = mean.float(), std.float()
        self._hold_out_val(self._norm(full), cfg.val_fraction, cfg.seed)
        self.tests = {"test": self._norm(_pad(test[0], test[1], T))}

    def _set_classes(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.binary = len(self.classes) == 2
        self.n_out = 1 if self.binary else len(self.classes)

    def _hold_out_val(self, split: Split, frac: float, seed: int) -> None:
        """Random validation part of the training split (none when frac is 0)."""
        keep, held = split_indices(len(split), frac, seed)
        if frac > 0 and (len(held) == 0 or len(keep) == 0):
            raise UserError(f"val_fraction {frac}: leaves an empty training or validation part "
                            f"of {len(split)} sequences")
        self.train = split.take(keep)
        self.val = split.take(held) if frac > 0 else None

    def _norm(self, s: Split) -> Split:
        mask = step_mask(s.lengths, s.x.shape[1]).unsqueeze(-1)
        z = ((s.x.double() - self.mean.double()) / self.std.double()) * mask
        return Split(z.float(), s.y, s.lengths)

    def loss(self, out, batch):
        if self.binary:
            return (F.binary_cross_entropy_with_logits(out.squeeze(-1), batch.y.float(), reduction="sum"),
                    out.new_tensor(len(batch)))
        return F.cross_entropy(out, batch.y, reduction="sum"), out.new_tensor(len(batch))

    def predicted(self, out: Tensor) -> Tensor:
        """Class index per sequence (N,)."""
        return (out.squeeze(-1) > 0).long() if self.binary else out.argmax(-1)

    def probabilities(self, out: Tensor) -> Tensor:
        """(N, classes): the binary logit becomes two columns."""
        if self.binary:
            p1 = torch.sigmoid(out.squeeze(-1))
            return torch.stack([1 - p1, p1], -1)
        return torch.softmax(out, -1)

    def metrics(self, out, split):
        total, n = self.loss(out, split)
        acc = (self.predicted(out) == split.y).double().mean().item()
        return {"accuracy": acc, "loss": (total / n).item()}

    def stats(self):
        return {"classes": self.classes, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "length": int(self.train.x.shape[1])}

    def load_stats(self, stats):
        classes = stat_list(stats, "classes", str)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise UserError(f"stats: classes: expected 2 or more distinct names; got {len(classes)}")
        self._set_classes(classes)
        mean = stat_list(stats, "mean", float)
        std = stat_list(stats, "std", float, n=len(mean), lo=1e-30)
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.n_in = len(mean)

    def loss_label(self):
        return ("binary cross-entropy" if self.binary else "cross-entropy") + " (nats)", 1.0

    def predict_csv(self, net, csv_path, target):
        """One sequence per CSV row (step-major, channels interleaved; a non-numeric first row
        is a header) -> ``row,class,probability``."""
        cases = read_rows(csv_path, self.n_in)
        T = max(len(c) for c in cases)
        x = self._norm(_pad(cases, [0] * len(cases), T))
        probs = self.probabilities(net(x.x, x.lengths)[0])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["row", "class", "probability"])
        for i, p in enumerate(probs):
            k = int(p.argmax())
            w.writerow([i + 1, self.classes[k], f"{float(p[k]):.4f}"])
        return buf.getvalue()

    def figures(self, folder: Path, outputs, label):
        """confusion.png: counts of (true, predicted) class on the test split."""
        split = self.tests["test"]
        k = len(self.classes)
        m = np.zeros((k, k), dtype=np.int64)
        np.add.at(m, (split.y.numpy(), self.predicted(outputs["test"]).numpy()), 1)
        plots.confusion(m, self.classes, f"{self.name}: test", folder / "confusion.png")

    def describe(self):
        nv = len(self.val) if self.val is not None else 0
        return (f"{self.name}: {len(self.classes)} classes, {self.n_in} channel(s), "
                f"{len(self.train)} train / {nv} val / {len(self.tests['test'])} test sequences")


def _pad(cases: List[np.ndarray], labels: List[int], T: int) -> Split:
    """Variable-length (T_i, C) cases to a zero-padded (N, T, C) split with lengths."""
    x = torch.zeros(len(cases), T, cases[0].shape[1])
    for i, c in enumerate(cases):
        x[i, :len(c)] = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
    lengths = torch.tensor([len(c) for c in cases], dtype=torch.long)
    return Split(x, torch.tensor(labels, dtype=torch.long), lengths)


def read_rows(csv_path: str, channels: int) -> List[np.ndarray]:
    """Numeric CSV rows as (T_i, channels) arrays; a non-numeric first row is skipped as a header.
    Fields are separated as ``data.csv_rows`` finds; empty rows are skipped (each row is a case)."""
    rows = data.csv_rows(data.open_text(csv_path, "--csv"), csv_path, gaps_are_errors=False)
    try:
        [float(c) for c in rows[0][1] if c.strip()]
    except ValueError:
        rows = rows[1:]
    if not rows:
        raise UserError(f"--csv {csv_path}: no data rows")
    cases = []
    for n, row in rows:
        vals = [data.number(c, f"--csv {csv_path}: row {n}") for c in row if c.strip()]
        if not vals or len(vals) % channels:
            raise UserError(f"--csv {csv_path}: row {n} has {len(vals)} values; the model reads "
                            f"{channels} channel(s) per step, so a row needs a positive multiple of {channels}")
        cases.append(np.asarray(vals, dtype=np.float32).reshape(-1, channels))
    return cases


def uea_task(cfg: Config, name: str, title: str, stats: Optional[dict] = None) -> Classify:
    """A UEA/UCR set bundled with sktime, with its own train/test split."""
    tr_x, tr_y, classes = data.uea(name, "TRAIN")
    te_x, te_y, _ = data.uea(name, "TEST")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(tr_y + te_y) - set(index))
    if unknown:
        raise UserError(f"task {title}: labels {unknown} are not among the declared classes {classes}")
    return Classify(cfg, title, (tr_x, [index[c] for c in tr_y]), (te_x, [index[c] for c in te_y]),
                    classes, stats)


def digits_task(cfg: Config, stats: Optional[dict] = None) -> Classify:
    """scikit-learn's 8x8 digits read row by row (8 steps of 8 raw pixel values 0-16, standardised
    per channel like every classification task); seeded 75/25 split."""
    images, labels = data.digits()
    train_idx, test_idx = split_indices(len(images), 0.25, 12345)
    pick = lambda idx: ([images[i] for i in idx.tolist()], [int(labels[i]) for i in idx.tolist()])
    return Classify(cfg, "digits", pick(train_idx), pick(test_idx), [str(d) for d in range(10)], stats)
