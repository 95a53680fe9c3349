"""``rnnkit demo``: build every network type and train it briefly on a toy memory task.

Task (delayed echo): the input is white noise x_t; the target at step t is x_{t-delay}.
A network can only solve it by remembering the last ``delay`` inputs in its state.
A linear read-out on top of each layer maps (T, B, D*S) to one value per step.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .layers import GRU, LSTM, Elman, Jordan


class _Model(nn.Module):
    """A recurrent layer followed by a per-step linear read-out."""

    def __init__(self, rnn: nn.Module, features: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(features, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])                      # (B, T, 1)


def _networks(hidden: int):
    return {
        "Elman (tanh)": _Model(Elman(1, hidden, batch_first=True), hidden),
        "Jordan (output fed back)": _Model(Jordan(1, hidden, hidden, batch_first=True), hidden),
        "LSTM": _Model(LSTM(1, hidden, batch_first=True, forget_bias=1.0), hidden),
        "GRU": _Model(GRU(1, hidden, batch_first=True), hidden),
        "GRU (Cho 2014 form)": _Model(GRU(1, hidden, batch_first=True, reset_after=False), hidden),
        "LSTM 2-layer bidirectional": _Model(LSTM(1, hidden, num_layers=2, bidirectional=True,
                                                  batch_first=True), 2 * hidden),
    }


def echo_batch(gen: torch.Generator, batch: int, steps: int, delay: int):
    """x (B, T, 1) noise, y (B, T, 1) = x shifted by ``delay`` (zeros before the start)."""
    x = torch.randn(batch, steps, 1, generator=gen)
    y = torch.zeros_like(x)
    y[:, delay:] = x[:, :-delay]
    return x, y


def train_one(model: nn.Module, seed: int, iters: int, delay: int, steps: int = 30, batch: int = 32):
    """Train with Adam; returns (initial test MSE, final test MSE)."""
    gen = torch.Generator().manual_seed(seed)
    x_test, y_test = echo_batch(gen, 256, steps, delay)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.MSELoss()
    with torch.no_grad():
        before = loss_fn(model(x_test), y_test).item()
    for _ in range(iters):
        x, y = echo_batch(gen, batch, steps, delay)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        after = loss_fn(model(x_test), y_test).item()
    return before, after


def add_arguments(p) -> None:
    p.add_argument("--iters", type=int, default=150, help="training steps per network (default 150)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units (default 32)")
    p.add_argument("--delay", type=int, default=3, help="steps to remember (default 3)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    for name, value in (("--iters", args.iters), ("--hidden", args.hidden), ("--delay", args.delay)):
        if value < 1:
            raise SystemExit(f"rnnkit demo: {name}: expected a positive integer, got {value}")
    print(f"Delayed echo: target y_t = x_(t-{args.delay}); test MSE of predicting 0 is about 1.0")
    print(f"{'network':28s} {'params':>7s} {'MSE before':>11s} {'MSE after':>10s} {'seconds':>8s}")
    for name, model in _networks(args.hidden).items():
        torch.manual_seed(args.seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        start = time.perf_counter()
        before, after = train_one(model, args.seed, args.iters, args.delay)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:28s} {n:7d} {before:11.4f} {after:10.4f} {time.perf_counter() - start:8.1f}")
    return 0
