"""Tasks: one small class per kind of problem, each owning its data splits, loss and metrics.

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import data
from .config import Config
from .errors import UserError

LN2 = math.log(2.0)


@dataclass
class Split:
    x: Tensor
    y: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx) -> "Split":
        return Split(self.x[idx], self.y[idx], self.lengths[idx])


def step_mask(lengths: Tensor, T: int) -> Tensor:
    """(B, T) bool, True on valid steps."""
    return torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_step_ce(out: Tensor, y: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
    """Cross-entropy summed over valid steps only: out (B, T, K), y (B, T) -> (sum, count)."""
    mask = step_mask(lengths, y.shape[1])
    ce = F.cross_entropy(out.transpose(1, 2), y, reduction="none")     # (B, T)
    return ce.masked_fill(~mask, 0.0).sum(), mask.sum().to(out.dtype)


def _split_indices(n: int, frac: float, seed: int) -> Tuple[Tensor, Tensor]:
    """A seeded random (train, held-out) partition of range(n); held-out gets round(frac*n)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(frac * n))
    return perm[k:], perm[:k]


class Task:
    """Base: subclasses set the attributes and implement loss and metrics (a stream task's
    loss is computed by the training loop's truncated BPTT instead)."""

    name = ""
    readout = "last"        # 'last': one output per sequence; 'all': one per step
    tokens = 0              # > 0: inputs are symbol ids, one-hot encoded into this many features
    n_in = 1
    n_out = 1
    metric = "loss"         # headline metric, reported for validation and test
    stream = False          # True: one long stream trained with truncated BPTT (Text)
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

    def describe(self) -> str:
        return self.name

    def _hold_out_val(self, split: Split, frac: float, seed: int) -> None:
        """Random validation part of the training split (none when frac is 0)."""
        keep, held = _split_indices(len(split), frac, seed)
        if frac > 0 and (len(held) == 0 or len(keep) == 0):
            raise UserError(f"val_fraction {frac}: leaves an empty training or validation part "
                            f"of {len(split)} sequences")
        self.train = split.take(keep)
        self.val = split.take(held) if frac > 0 else None

    def _generate_splits(self, cfg: Config, make: Callable[[int, int], Split]) -> None:
        """Synthetic tasks: ``make(n, seed)`` draws n sequences; validation and test get a quarter."""
        n_eval = max(cfg.n_samples // 4, 1)
        self.train = make(cfg.n_samples, cfg.seed)
        self.val = make(n_eval, cfg.seed + 1) if cfg.val_fraction > 0 else None
        self.tests = {"test": make(n_eval, cfg.seed + 2)}


# -- forecasting -------------------------------------------------------------------------------
class Forecast(Task):
    """One-step-ahead forecasting of a univariate series from the previous ``window`` values.

    The network reads standardised values (train-period mean and std) and predicts the next
    standardised value; loss MSE; metrics RMSE and MAE in the series' own units.  Baselines:
    persistence (the last value) and a least-squares AR(p) with intercept fitted on the
    training period.  Validation is the chronologically last part of the training targets.
    """

    metric = "rmse"

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


# -- classification ---------------------------------------------------------------------------
class Classify(Task):
    """Sequence classification from the last valid step (first step for the reverse direction).

    Multiclass: cross-entropy over K logits; binary: one logit and binary cross-entropy (BCE).
    Inputs are standardised per channel with training statistics over valid steps.
    """

    metric = "accuracy"

    def __init__(self, cfg: Config, name: str, train: Tuple[List[np.ndarray], List[int]],
                 test: Tuple[List[np.ndarray], List[int]], classes: Sequence[str]):
        self.name, self.classes = name, list(classes)
        self.binary = len(self.classes) == 2
        self.n_out = 1 if self.binary else len(self.classes)
        self.n_in = train[0][0].shape[1]
        T = max(len(c) for c in train[0] + test[0])
        full = _pad(train[0], train[1], T)
        mask = step_mask(full.lengths, T).unsqueeze(-1)                 # (N, T, 1)
        n = mask.sum()
        mean = (full.x * mask).sum((0, 1)) / n
        std = (((full.x - mean) * mask) ** 2).sum((0, 1)).div(n).sqrt().clamp_min(1e-6)
        self.mean, self.std = mean, std
        self._hold_out_val(self._norm(full), cfg.val_fraction, cfg.seed)
        self.tests = {"test": self._norm(_pad(test[0], test[1], T))}

    def _norm(self, s: Split) -> Split:
        mask = step_mask(s.lengths, s.x.shape[1]).unsqueeze(-1)
        return Split(((s.x - self.mean) / self.std) * mask, s.y, s.lengths)

    def loss(self, out, batch):
        if self.binary:
            return (F.binary_cross_entropy_with_logits(out.squeeze(-1), batch.y.float(), reduction="sum"),
                    out.new_tensor(len(batch)))
        return F.cross_entropy(out, batch.y, reduction="sum"), out.new_tensor(len(batch))

    def predicted(self, out: Tensor) -> Tensor:
        """Class index per sequence (N,)."""
        return (out.squeeze(-1) > 0).long() if self.binary else out.argmax(-1)

    def metrics(self, out, split):
        total, n = self.loss(out, split)
        acc = (self.predicted(out) == split.y).double().mean().item()
        return {"accuracy": acc, "loss": (total / n).item()}

    def stats(self):
        return {"classes": self.classes, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "length": int(self.train.x.shape[1])}

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


def uea_task(cfg: Config, name: str, title: str) -> Classify:
    """A UEA/UCR set bundled with sktime, with its own train/test split."""
    tr_x, tr_y, classes = data.uea(name, "TRAIN")
    te_x, te_y, _ = data.uea(name, "TEST")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(tr_y + te_y) - set(index))
    if unknown:
        raise UserError(f"task {title}: labels {unknown} are not among the declared classes {classes}")
    return Classify(cfg, title, (tr_x, [index[c] for c in tr_y]), (te_x, [index[c] for c in te_y]),
                    classes)


def digits_task(cfg: Config) -> Classify:
    """scikit-learn's 8x8 digits read row by row (8 steps of 8 pixels); seeded 75/25 split."""
    images, labels = data.digits()
    train_idx, test_idx = _split_indices(len(images), 0.25, 12345)
    pick = lambda idx: ([images[i] for i in idx.tolist()], [int(labels[i]) for i in idx.tolist()])
    return Classify(cfg, "digits", pick(train_idx), pick(test_idx), [str(d) for d in range(10)])


# -- synthetic long-range tasks ---------------------------------------------------------------
class Adding(Task):
    """Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015 form).

    Input (T, 2): a random value in [0, 1) and a marker that is 1 at two steps, one in each half.
    Target: the sum of the two marked values.  Predicting 1 always gives MSE ~0.167.
    """

    name, n_in, metric = "adding", 2, "mse"

    def __init__(self, cfg: Config):
        T = cfg.seq_len
        if T < 2:
            raise UserError("seq_len: the adding problem needs at least 2 steps")
        self._generate_splits(cfg, lambda n, seed: self._make(n, T, seed))

    @staticmethod
    def _make(n: int, T: int, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        values = torch.rand(n, T, generator=g)
        half = T // 2
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, T, (n,), generator=g)
        marks = torch.zeros(n, T)
        marks[torch.arange(n), first] = 1.0
        marks[torch.arange(n), second] = 1.0
        y = (values * marks).sum(1)
        return Split(torch.stack([values, marks], -1), y, torch.full((n,), T, dtype=torch.long))

    def loss(self, out, batch):
        return F.mse_loss(out.squeeze(-1), batch.y, reduction="sum"), out.new_tensor(len(batch))

    def metrics(self, out, split):
        return {"mse": F.mse_loss(out.squeeze(-1), split.y).item(), "baseline_mse": 1 / 6}

    def describe(self):
        return f"adding problem: length {self.train.x.shape[1]}, {len(self.train)} training sequences"


class Copy(Task):
    """Copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 form).

    Input: 10 symbols from {1..8}, ``seq_len`` - 1 blanks (0), a delimiter (9), 10 blanks;
    target: blanks until the delimiter's last 10 steps, which repeat the 10 symbols.
    Loss: cross-entropy at every step; metric: accuracy on the 10 recalled symbols
    (chance 1/8; the memoryless loss is 10 ln 8 / (seq_len + 20)).
    """

    name, readout, tokens, n_out, metric = "copy", "all", 10, 9, "accuracy"
    n_symbols = 10

    def __init__(self, cfg: Config):
        self._generate_splits(cfg, lambda n, seed: self._make(n, cfg.seq_len, seed))

    def _make(self, n: int, delay: int, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        S = self.n_symbols
        T = delay + 2 * S
        symbols = torch.randint(1, 9, (n, S), generator=g)
        x = torch.zeros(n, T, dtype=torch.long)
        x[:, :S] = symbols
        x[:, S + delay - 1] = 9
        y = torch.zeros(n, T, dtype=torch.long)
        y[:, -S:] = symbols
        return Split(x, y, torch.full((n,), T, dtype=torch.long))

    def loss(self, out, batch):
        return masked_step_ce(out, batch.y, batch.lengths)

    def metrics(self, out, split):
        total, n = masked_step_ce(out, split.y, split.lengths)
        S = self.n_symbols
        acc = (out[:, -S:].argmax(-1) == split.y[:, -S:]).double().mean().item()
        return {"accuracy": acc, "loss": (total / n).item()}

    def describe(self):
        T = self.train.x.shape[1]
        return f"copy task: delay {T - 2 * self.n_symbols}, {len(self.train)} training sequences"


class Echo(Task):
    """Delayed echo: the input is white noise x_t ~ N(0, 1); the target at step t is x_(t-delay).

    delay > 0 asks for memory of the past; delay < 0 for an input that has not arrived yet,
    which only a bidirectional network can know.  Loss and metric: MSE over the steps where the
    target exists (predicting 0 scores 1).
    """

    name, readout, metric = "echo", "all", "mse"

    def __init__(self, cfg: Config):
        T, d = cfg.seq_len, cfg.delay
        if abs(d) >= T:
            raise UserError(f"delay {d}: needs |delay| < seq_len ({T})")
        self.delay = d
        self.first, self.stop = max(0, d), T + min(0, d)        # steps that have a target
        self._generate_splits(cfg, lambda n, seed: self._make(n, T, d, seed))

    @staticmethod
    def _make(n: int, T: int, d: int, seed: int) -> Split:
        x = torch.randn(n, T, generator=torch.Generator().manual_seed(seed))
        y = torch.roll(x, shifts=d, dims=1)                    # y[t] = x[t - d] where it exists
        return Split(x.unsqueeze(-1), y, torch.full((n,), T, dtype=torch.long))

    def loss(self, out, batch):
        a, b = self.first, self.stop
        err = out.squeeze(-1)[:, a:b] - batch.y[:, a:b]
        return (err * err).sum(), out.new_tensor(float(err.numel()))

    def metrics(self, out, split):
        total, n = self.loss(out, split)
        return {"mse": (total / n).item()}

    def describe(self):
        shift = f"t-{self.delay}" if self.delay >= 0 else f"t+{-self.delay}"
        return f"echo: target x_({shift}) over {self.train.x.shape[1]} steps, {len(self.train)} training sequences"


# -- character language model ----------------------------------------------------------------
class Text(Task):
    """Character-level language model on a text file: predict each next character.

    The text is cut into 90% train, 5% validation, 5% test (in that order).  Training reads
    the train part as ``batch_size`` parallel streams and uses truncated BPTT with the state
    carried across chunks.  Loss: cross-entropy; metric: bits per character (loss / ln 2).
    """

    name, readout, metric, stream = "text", "all", "bpc", True

    def __init__(self, cfg: Config):
        text = data.read_text(cfg.text)
        self.vocab = sorted(set(text))
        self.tokens = self.n_out = len(self.vocab)
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
        n = len(ids)
        a, b = int(n * 0.9), int(n * 0.95)
        need = cfg.batch_size * (cfg.k1 + 1)
        if a < need or b - a < 2 or n - b < 2:
            raise UserError(f"--text {cfg.text}: {n} characters are too few for batch_size "
                            f"{cfg.batch_size} streams of k1={cfg.k1} steps (the 90% training part "
                            f"needs at least {need}; validation and test at least 2 each)")
        self.train_ids, self.val_ids, self.test_ids = ids[:a], ids[a:b], ids[b:]
        self.val = None
        self.tests = {}

    def streams(self, ids: Tensor, n_streams: int) -> Tuple[Tensor, Tensor]:
        """Cut ids into n_streams rows: inputs (S, L), next-character targets (S, L)."""
        L = (len(ids) - 1) // n_streams
        x = ids[:n_streams * L].view(n_streams, L)
        y = ids[1:n_streams * L + 1].view(n_streams, L)
        return x, y

    def stats(self):
        return {"vocab": "".join(self.vocab)}

    def describe(self):
        return (f"text: {len(self.train_ids) + len(self.val_ids) + len(self.test_ids)} characters, "
                f"{len(self.vocab)} symbols")


def build(cfg: Config) -> Task:
    """The task a config names, with its data loaded and checked."""
    makers = {
        "sunspots": sunspots_task,
        "csv": csv_task,
        "japanese_vowels": lambda c: uea_task(c, "JapaneseVowels", "japanese_vowels"),
        "italy_power": lambda c: uea_task(c, "ItalyPowerDemand", "italy_power"),
        "gunpoint": lambda c: uea_task(c, "GunPoint", "gunpoint"),
        "digits": digits_task,
        "adding": Adding,
        "copy": Copy,
        "echo": Echo,
        "text": Text,
    }
    return makers[cfg.task](cfg)
