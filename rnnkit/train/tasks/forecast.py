"""Forecasting a univariate series one step ahead: the yearly sunspots and a user's CSV column."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import data, plots
from ..config import Config
from ..errors import UserError
from .base import Split, Task


class Forecast(Task):
    """One-step-ahead forecasting of a univariate series from the previous ``window`` values.

    The network reads standardised values (train-period mean and std) and predicts the next
    standardised value; loss MSE; metrics RMSE and MAE in the series' own units.  Baselines:
    persistence (the last value) and a least-squares AR(p) with intercept fitted on the
    training period.  Validation is the chronologically last part of the training targets.
    """

    metric = "rmse"
    predict_hint = None

    def __init__(self, cfg: Config, name: str, series: np.ndarray, labels: Sequence[str],
                 train_end: int, tests: Dict[str, Tuple[int, int]]):
        self.name, self.series, self.labels = name, series, list(labels)
        self.window, self.ar_order, self.train_end = cfg.window, cfg.ar_order, train_end
        w = cfg.window
        if len(series) <= w:
            raise UserError(f"{name}: the series has {len(series)} values, fewer than window+1 "
                            f"= {w + 1}; lower --window")
        n_train = train_end - w
        n_val = int(round(cfg.val_fraction * n_train))
        if n_train - n_val < 2:
            raise UserError(f"{name}: the training part ({train_end} values) leaves "
                            f"{max(n_train - n_val, 0)} windows of {w}; need at least 2 "
                            f"(lower --window or --test-fraction)")
        if cfg.val_fraction > 0 and n_val == 0:
            raise UserError(f"val_fraction {cfg.val_fraction}: leaves no validation window")
        self.mean = float(series[:train_end].mean())
        self.std = float(series[:train_end].std()) or 1.0
        self.train = self._windows(w, train_end - n_val)
        self.val = self._windows(train_end - n_val, train_end) if n_val else None
        self.test_ranges = tests
        self.tests = {k: self._windows(a, b) for k, (a, b) in tests.items()}

    def _windows(self, start: int, stop: int) -> Split:
        """Targets t in [start, stop), each with inputs series[t-window:t]: x (N, window, 1), y (N,)."""
        z = torch.tensor((self.series - self.mean) / self.std, dtype=torch.float32)
        t = torch.arange(start, stop)
        x = torch.stack([z[i - self.window:i] for i in t.tolist()]).unsqueeze(-1)
        return Split(x, z[t], torch.full((len(t),), self.window, dtype=torch.long))

    def loss(self, out, batch):
        return F.mse_loss(out.squeeze(-1), batch.y, reduction="sum"), out.new_tensor(len(batch))

    def unscale(self, z: Tensor) -> np.ndarray:
        return z.detach().double().cpu().numpy().reshape(-1) * self.std + self.mean

    def metrics(self, out, split):
        return _errors(self.unscale(out), self.unscale(split.y))

    def baselines(self):
        result: Dict[str, Dict[str, Dict[str, float]]] = {}
        for name, (a, b) in self.test_ranges.items():
            for base, pred in self.baseline_predictions(a, b).items():
                result.setdefault(base, {})[name] = _errors(pred, self.series[a:b])
        return result

    def baseline_predictions(self, a: int, b: int) -> Dict[str, np.ndarray]:
        """Persistence and (when the training part allows a fit) AR(p) forecasts of targets [a, b)."""
        preds = {"persistence": self.series[a - 1:b - 1]}
        coef = self._ar_fit()
        if coef is not None:
            preds[f"AR({self.ar_order})"] = self._ar_design(a, b) @ coef
        return preds

    def _ar_design(self, a: int, b: int) -> np.ndarray:
        """Rows [1, y_{t-1}, ..., y_{t-p}] for t in [a, b)."""
        p = self.ar_order
        return np.stack([np.r_[1.0, self.series[t - p:t][::-1]] for t in range(a, b)])

    def _ar_fit(self) -> Optional[np.ndarray]:
        """Least-squares AR(p) coefficients on the training targets; None if too few of them."""
        p = self.ar_order
        if self.train_end - p < 2 * (p + 1):
            return None
        X = self._ar_design(p, self.train_end)
        coef, *_ = np.linalg.lstsq(X, self.series[p:self.train_end], rcond=None)
        return coef

    def stats(self):
        return {"mean": self.mean, "std": self.std, "window": self.window}

    def load_stats(self, stats):
        self.mean, self.std, self.window = stats["mean"], stats["std"], stats["window"]

    def predict_csv(self, net, csv_path, target):
        """``index,actual,forecast`` for every row from the window-th on, then ``next``."""
        values, labels = data.read_csv_column(csv_path, target)
        w = self.window
        if len(values) < w:
            raise UserError(f"--csv {csv_path}: the series has {len(values)} values, fewer than the "
                            f"model's window of {w}")
        z = torch.tensor((values - self.mean) / self.std, dtype=torch.float32)
        x = z.unfold(0, w, 1).unsqueeze(-1)                     # (N - w + 1, w, 1): every window
        pred = net(x)[0].squeeze(-1).double().numpy() * self.std + self.mean
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["index", "actual", "forecast"])
        for t in range(w, len(values)):
            out.writerow([labels[t], repr(float(values[t])), f"{pred[t - w]:.6g}"])
        out.writerow(["next", "", f"{pred[-1]:.6g}"])
        return buf.getvalue()

    def figures(self, folder: Path, outputs, label):
        """forecast.png: the network and the baselines over the longest test period."""
        name, (a, b) = max(self.test_ranges.items(), key=lambda kv: kv[1][1] - kv[1][0])
        preds = {label: self.unscale(outputs[name]), **self.baseline_predictions(a, b)}
        plots.forecast(self.labels[a:b], self.series[a:b], preds,
                       f"{self.name}: one step ahead, {name}", folder / "forecast.png")

    def describe(self):
        spans = ", ".join(f"{k}" for k in self.tests)
        return (f"{self.name}: {len(self.series)} values, window {self.window}, "
                f"{len(self.train)} train / {len(self.val) if self.val else 0} val windows, test {spans}")


def _errors(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def sunspots_task(cfg: Config) -> Forecast:
    """Yearly sunspots, train 1700-1920, one-step-ahead test 1921-1955 and 1921-1987."""
    years, values = data.sunspots()
    at = {int(y): i for i, y in enumerate(years)}
    tests = {"1921-1955": (at[1921], at[1955] + 1), "1921-1987": (at[1921], at[1987] + 1)}
    if cfg.window > at[1921] - 2 or cfg.ar_order > at[1921] - 2:
        raise UserError(f"window/ar_order: at most {at[1921] - 2} for sunspots")
    return Forecast(cfg, "sunspots", values, [str(y) for y in years], at[1921], tests)


def csv_task(cfg: Config) -> Forecast:
    """A user's CSV column; the last ``test_fraction`` of the series is the test period."""
    values, labels = data.read_csv_column(cfg.csv, cfg.target)
    n = len(values)
    if n <= cfg.window + 1:
        raise UserError(f"--csv {cfg.csv}: the series has {n} values, too short for window "
                        f"{cfg.window} (need at least {cfg.window + 2}); lower --window")
    train_end = max(cfg.window + 1, n - int(round(cfg.test_fraction * n)))
    if train_end >= n:
        raise UserError(f"--csv {cfg.csv}: test_fraction {cfg.test_fraction} of {n} values leaves "
                        f"no test period")
    return Forecast(cfg, f"csv {cfg.target or 'series'}", values, labels, train_end,
                    {"test": (train_end, n)})
