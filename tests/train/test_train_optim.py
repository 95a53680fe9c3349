"""Optimisers and learning-rate schedules: every step of a run uses the learning rate that the
configured schedule gives for its epoch, by torch's own definition of that schedule."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rnnkit.train import train

LR, GAMMA, STEP_SIZE, EPOCHS = 0.01, 0.5, 2, 6

# The learning rate during epoch e (from 0): torch.optim.lr_scheduler's closed forms, with the
# trainer's settings (gamma, step_size; cosine anneals to 0 over all the epochs).
CLOSED_FORM = {
    "none": lambda e: LR,
    "step": lambda e: LR * GAMMA ** (e // STEP_SIZE),
    "exponential": lambda e: LR * GAMMA ** e,
    "cosine": lambda e: LR * (1 + math.cos(math.pi * e / EPOCHS)) / 2,
}


def _records(tiny, tmp_path, **options):
    """The epoch and step records of a sunspots run with the schedule's settings."""
    options = {"lr": LR, "gamma": GAMMA, "step_size": STEP_SIZE, "epochs": EPOCHS, "patience": 0,
               "log_every": 1, **options}
    train(tiny("sunspots", **options))
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    return epochs, [r for r in records if r["kind"] == "step"]


def _assert_rates(epochs, steps, want):
    """Each epoch record and each step record carries the optimiser's rate during that epoch."""
    assert [r["lr"] for r in epochs] == pytest.approx(want, rel=1e-9, abs=0)
    assert steps and all(r["lr"] == pytest.approx(want[r["epoch"] - 1], rel=1e-9, abs=0) for r in steps)


@pytest.mark.parametrize("scheduler", list(CLOSED_FORM))
def test_each_step_uses_the_rate_of_the_configured_schedule(scheduler, tiny, tmp_path):
    epochs, steps = _records(tiny, tmp_path, scheduler=scheduler)
    want = [CLOSED_FORM[scheduler](e) for e in range(EPOCHS)]
    assert (len(set(want)) == 1) == (scheduler == "none")         # the schedule has to show
    _assert_rates(epochs, steps, want)


def test_plateau_lowers_the_rate_when_the_validation_loss_stops_improving(tiny, tmp_path):
    """A rate too small to move the loss: torch's ReduceLROnPlateau, fed the validation losses
    the run logged, says where the rate falls (patience max(1, patience // 3) = 1 here)."""
    lr0 = 1e-6
    epochs, steps = _records(tiny, tmp_path, scheduler="plateau", optimizer="sgd", lr=lr0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    oracle = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=GAMMA, patience=1)
    want = []
    for r in epochs:
        want.append(opt.param_groups[0]["lr"])
        oracle.step(r["val_loss"])
    assert want[-1] < lr0                                          # it did fall
    _assert_rates(epochs, steps, want)


@pytest.mark.parametrize("optimizer,clip", [("sgd", "norm"), ("adam", "value"), ("adamw", "none"),
                                            ("rmsprop", "norm"), ("adagrad", "value")])
def test_optimizers_and_clipping_train(optimizer, clip, tiny):
    result = train(tiny("sunspots", optimizer=optimizer, clip=clip))
    assert np.isfinite(result["test"]["1921-1955"]["rmse"])
