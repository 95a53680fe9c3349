"""Synthetic long-range tasks: the adding problem, the copy task and the delayed echo.

Each draws its sequences from a seed: training ``n_samples``, validation and test a quarter.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import resources
from ..config import Config
from ..errors import UserError
from .base import Split, Task, masked_step_ce


class Synthetic(Task):
    """Base of the generated tasks; no baselines, no figures, and ``predict`` refuses them."""

    def _generate_splits(self, cfg: Config, T: int, make: Callable[[int, int], Split]) -> None:
        """``make(n, seed)`` draws n sequences of T steps; validation and test get a quarter."""
        n_eval = max(cfg.n_samples // 4, 1)
        resources.require(16.0 * (cfg.n_samples + 2 * n_eval) * T * (self.n_in + 1),
                          f"{self.name}: {cfg.n_samples + 2 * n_eval:,} sequences of {T:,} steps",
                          "lower --n-samples or --seq-len")
        self.train = make(cfg.n_samples, cfg.seed)
        self.val = make(n_eval, cfg.seed + 1) if cfg.val_fraction > 0 else None
        self.tests = {"test": make(n_eval, cfg.seed + 2)}


class Adding(Synthetic):
    """Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015 form).

    Input (T, 2): a random value in [0, 1) and a marker that is 1 at two steps, one in each half.
    Target: the sum of the two marked values.  Predicting 1 always gives MSE ~0.167.
    """

    name, n_in, metric = "adding", 2, "mse"

    def __init__(self, cfg: Config):
        T = cfg.seq_len
        if T < 2:
            raise UserError("seq_len: the adding problem needs at least 2 steps")
        self._generate_splits(cfg, T, lambda n, seed: self._make(n, T, seed))

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


class Copy(Synthetic):
    """Copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 form).

    Input: 10 symbols from {1..8}, ``seq_len`` - 1 blanks (0), a delimiter (9), 10 blanks;
    target: blanks until the delimiter's last 10 steps, which repeat the 10 symbols.
    Loss: cross-entropy at every step; metric: accuracy on the 10 recalled symbols
    (chance 1/8; the memoryless loss is 10 ln 8 / (seq_len + 20)).
    """

    name, readout, tokens, n_out, metric = "copy", "all", 10, 9, "accuracy"
    n_symbols = 10

    def __init__(self, cfg: Config):
        self._generate_splits(cfg, cfg.seq_len + 2 * self.n_symbols,
                              lambda n, seed: self._make(n, cfg.seq_len, seed))

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


class Echo(Synthetic):
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
        self._generate_splits(cfg, T, lambda n, seed: self._make(n, T, d, seed))

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
