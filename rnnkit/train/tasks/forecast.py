"""Forecasting a univariate series one step ahead: the yearly sunspots and a user's CSV column."""
from __future__ import annotations

import csv
import io
from statistics import NormalDist
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import data, plots
from ..config import MAX_INT, Config
from ..errors import UserError
from .base import Split, Task, stat

# What the network reads and predicts (``--forecast``).  For a window X = y[t-w:t] with last
# value X[-1], the network reads ``(X - offset) / scale`` -- or the globally standardised X --
# and predicts z with y_t = offset + scale * z:
#     level   offset = mean,  scale = std                 (the series standardised; reads the same)
#     change  offset = X[-1], scale = std of the changes  (reads the standardised series)
#     window  offset = X[-1], scale = std(X) + 0.1 std    (reads the window relative to its last
#                                                          value, in the window's own spread)
# mean, std and the changes' std come from the training period.
REPRESENTATIONS = ("level", "change", "window")
# What ``--forecast auto`` chooses among by validation: the representations that forecast from
# the last value.  Validation lies inside the training period, so it cannot show how a level
# model fails on values beyond the range it was trained on (a random walk's test period: RMSE
# 2.67 against persistence's 1.09 in one measured case, while its validation RMSE was the best).
AUTO = ("change", "window")
WINDOW_FLOOR = 0.1          # window scale's floor, as a fraction of the training std
_READS = {"level": "the network reads and predicts the standardised series (--forecast level)",
          "change": "the network reads the standardised series and predicts the change (--forecast change)",
          "window": "the network reads each window in its own scale and predicts the change "
                    "(--forecast window)"}


class Forecast(Task):
    """One-step-ahead forecasting of a univariate series from the previous ``window`` values.

    The network reads and predicts in one of ``REPRESENTATIONS`` (above); loss MSE in that
    scale; metrics RMSE and MAE in the series' own units.  Baselines: persistence (the last
    value), seasonal-naive (the value one period back; the period from ``--season``, else the
    strongest autocorrelation peak of the training period's changes when it is significant)
    and a least-squares AR(p) with intercept fitted on the training period.  Validation is the
    chronologically last part of the training targets; the baselines are scored on it too.
    """

    metric = "rmse"
    predict_hint = None
    variants = ("forecast", AUTO)

    def __init__(self, cfg: Config, name: str, series: np.ndarray, labels: Sequence[str],
                 train_end: int, tests: Dict[str, Tuple[int, int]], stats: Optional[dict] = None):
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
        if stats is not None:                          # the normalisation a checkpoint was trained with
            self.load_stats(stats)
        else:
            part = series[:train_end]
            self.representation = cfg.forecast if cfg.forecast != "auto" else "window"
            self.mean, self.std = float(part.mean()), float(part.std()) or 1.0
            self.change_std = float(np.diff(part).std()) or 1.0
        self.season = cfg.season or detect_season(series[:train_end])
        self.val_range = (train_end - n_val, train_end) if n_val else None
        self.train = self._windows(w, train_end - n_val)
        self.val = self._windows(*self.val_range) if n_val else None
        self.test_ranges = tests
        self.tests = {k: self._windows(a, b) for k, (a, b) in tests.items()}

    # -- the representation ---------------------------------------------------------------------
    def encode(self, windows: np.ndarray) -> Tuple[Tensor, np.ndarray, np.ndarray]:
        """Windows (N, w) in the series' units -> (network input (N, w, 1), offset (N,), scale (N,))."""
        last = windows[:, -1]
        if self.representation == "window":
            scale = windows.std(axis=1) + WINDOW_FLOOR * self.std
            x, offset = (windows - last[:, None]) / scale[:, None], last
        else:
            x = (windows - self.mean) / self.std
            offset = last if self.representation == "change" else np.full(len(windows), self.mean)
            scale = np.full(len(windows), self.change_std if self.representation == "change" else self.std)
        return torch.tensor(x, dtype=torch.float32).unsqueeze(-1), offset, scale

    def _windows(self, start: int, stop: int) -> Split:
        """Targets t in [start, stop), each with inputs series[t-window:t]: x (N, window, 1),
        y (N,) in the network's scale; aux (N, 3): offset, scale and the target in the series' units."""
        t = np.arange(start, stop)
        windows = np.stack([self.series[i - self.window:i] for i in t])
        x, offset, scale = self.encode(windows)
        truth = self.series[t]
        y = torch.tensor((truth - offset) / scale, dtype=torch.float32)
        aux = torch.tensor(np.stack([offset, scale, truth], 1), dtype=torch.float64)
        return Split(x, y, torch.full((len(t),), self.window, dtype=torch.long), aux)

    def decode(self, out: Tensor, split: Split) -> np.ndarray:
        """The network's outputs for ``split`` in the series' units."""
        aux = split.aux.numpy()
        return aux[:, 0] + aux[:, 1] * out.detach().double().cpu().numpy().reshape(-1)

    def loss(self, out, batch):
        return F.mse_loss(out.squeeze(-1), batch.y, reduction="sum"), out.new_tensor(len(batch))

    def loss_label(self):
        return f"MSE ({self.representation} scale)", 1.0

    def metrics(self, out, split):
        return _errors(self.decode(out, split), split.aux[:, 2].numpy())

    # -- baselines --------------------------------------------------------------------------------
    def baselines(self):
        result: Dict[str, Dict[str, Dict[str, float]]] = {}
        ranges = dict(self.test_ranges)
        if self.val_range:
            ranges = {"validation": self.val_range, **ranges}
        for name, (a, b) in ranges.items():
            for base, pred in self.baseline_predictions(a, b).items():
                result.setdefault(base, {})[name] = _errors(pred, self.series[a:b])
        return result

    def baseline_predictions(self, a: int, b: int) -> Dict[str, np.ndarray]:
        """Persistence, seasonal-naive (when there is a season) and AR(p) (when the training part
        allows a fit) forecasts of targets [a, b)."""
        preds = {"persistence": self.series[a - 1:b - 1]}
        m = self.season
        if m and a >= m:
            preds[f"seasonal({m})"] = self.series[a - m:b - m]
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

    # -- checkpoints and new data -----------------------------------------------------------------
    def stats(self):
        return {"forecast": self.representation, "mean": self.mean, "std": self.std,
                "change_std": self.change_std, "window": self.window}

    def load_stats(self, stats):
        forecast = stat(stats, "forecast", str)
        if forecast not in REPRESENTATIONS:
            raise UserError(f"stats: forecast: expected one of {', '.join(REPRESENTATIONS)}; got {forecast!r}")
        self.representation = forecast
        self.mean = stat(stats, "mean", float)
        self.std = stat(stats, "std", float, lo=1e-300)
        self.change_std = stat(stats, "change_std", float, lo=1e-300)
        self.window = stat(stats, "window", int, 1, MAX_INT)

    def predict_csv(self, net, csv_path, target):
        """``index,actual,forecast`` for every row from the window-th on, then ``next``."""
        values, labels = data.read_csv_column(csv_path, target)
        w = self.window
        if len(values) < w:
            raise UserError(f"--csv {csv_path}: the series has {len(values)} values, fewer than the "
                            f"model's window of {w}")
        windows = np.lib.stride_tricks.sliding_window_view(values, w)       # every window
        x, offset, scale = self.encode(windows)
        pred = offset + scale * net(x)[0].squeeze(-1).double().numpy()
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
        preds = {label: self.decode(outputs[name], self.tests[name]), **self.baseline_predictions(a, b)}
        plots.forecast(self.labels[a:b], self.series[a:b], preds,
                       f"{self.name}: one step ahead, {name}", folder / "forecast.png")

    def describe(self):
        spans = ", ".join(f"{self.labels[a]} to {self.labels[b - 1]}" if k == "test" else k
                          for k, (a, b) in self.test_ranges.items())
        return (f"{self.name}: {len(self.series)} values, window {self.window}, "
                f"{len(self.train)} train / {len(self.val) if self.val else 0} val windows, test {spans}; "
                f"{_READS[self.representation]}")


def _errors(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def detect_season(train: np.ndarray) -> int:
    """The period of the strongest local peak of the autocorrelation of the training part's
    changes over lags 2 .. K (K = min(n/3, 400)), when it clears what the largest of K white-noise
    autocorrelations stays below with probability 0.95 (Bonferroni: z_(1 - 0.025/K) / sqrt(n));
    0 when there is none."""
    d = np.diff(train)
    d = d - d.mean()
    n, denom = len(d), float((d * d).sum())
    top = min(n // 3, 400)
    if denom == 0 or top < 3:
        return 0
    acf = np.array([float((d[:-k] * d[k:]).sum()) / denom for k in range(1, top + 2)])   # acf[k-1]: lag k
    peaks = [k for k in range(2, top + 1) if acf[k - 1] > acf[k - 2] and acf[k - 1] >= acf[k]]
    best = max(peaks, key=lambda k: acf[k - 1], default=0)
    bound = NormalDist().inv_cdf(1 - 0.025 / (top - 1)) / np.sqrt(n)
    return best if best and acf[best - 1] > bound else 0


def sunspots_task(cfg: Config, stats: Optional[dict] = None) -> Forecast:
    """Yearly sunspots, train 1700-1920, one-step-ahead test 1921-1955 and 1921-1987."""
    years, values = data.sunspots()
    at = {int(y): i for i, y in enumerate(years)}
    tests = {"1921-1955": (at[1921], at[1955] + 1), "1921-1987": (at[1921], at[1987] + 1)}
    if cfg.window > at[1921] - 2 or cfg.ar_order > at[1921] - 2:
        raise UserError(f"window/ar_order: at most {at[1921] - 2} for sunspots")
    return Forecast(cfg, "sunspots", values, [str(y) for y in years], at[1921], tests, stats)


def csv_task(cfg: Config, stats: Optional[dict] = None) -> Forecast:
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
                    {"test": (train_end, n)}, stats)
