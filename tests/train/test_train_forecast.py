"""Forecasting: the representations the network reads and predicts, the choice among them by
validation, the seasonal-naive baseline, and the two claims the trainer makes -- yearly sunspots
below AR(9), a random walk no worse than persistence beyond noise (and saying so)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.train import train
from rnnkit.train.logs import summary_table
from rnnkit.train.tasks import REPRESENTATIONS
from rnnkit.train.tasks.forecast import detect_season


def random_walk_csv(path, n=500, seed=1):
    values = 100 + np.cumsum(np.random.default_rng(seed).normal(0, 1, n))
    path.write_text("day,close\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(values)))
    return str(path)


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_targets_decode_back_to_the_series(representation, tiny):
    """Every representation maps its targets back to the series exactly: offset + scale * z."""
    trainer_task = __import__("rnnkit.train.tasks", fromlist=["build"]).build(
        tiny("sunspots", forecast=representation))
    for split in [trainer_task.train, trainer_task.val, *trainer_task.tests.values()]:
        back = trainer_task.decode(split.y.unsqueeze(-1), split)
        np.testing.assert_allclose(back, split.aux[:, 2].numpy(), rtol=1e-6, atol=1e-4)
    x, offset, scale = trainer_task.encode(np.stack([np.arange(12.0), np.full(12, 7.0)]))
    if representation == "window":          # relative to the last value, in the window's own spread
        assert torch.all(x[:, -1] == 0) and np.all(offset == [11.0, 7.0]) and np.all(scale > 0)


def test_auto_trains_each_candidate_and_keeps_the_best_on_validation(tiny):
    result = train(tiny("sunspots", forecast="auto", epochs=3))
    assert result["note"].startswith("forecast: ") and "change" in result["note"] and "window" in result["note"]
    chosen = result["note"].split(",")[0].split()[-1]
    scores = {k: float(v) for k, v in (p.split() for p in result["note"].split("(")[1].rstrip(")").split(", "))}
    assert chosen == min(scores, key=scores.get)
    assert result["val"]["rmse"] == pytest.approx(scores[chosen], rel=1e-3)
    saved = (__import__("pathlib").Path(result["out"]) / "config.toml").read_text()
    assert f'forecast = "{chosen}"' in saved and "chosen by validation" in saved


def test_season_is_found_in_a_seasonal_series_and_not_in_a_random_walk():
    rng = np.random.default_rng(0)
    t = np.arange(400)
    assert detect_season(10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, 400)) == 12
    walks = [np.cumsum(np.random.default_rng(s).normal(size=600)) for s in range(20)]
    assert sum(detect_season(w) != 0 for w in walks) <= 2          # the bound is for 5% of them


def test_random_walk_is_no_worse_than_persistence_beyond_noise_and_says_so(tiny, tmp_path):
    result = train(tiny("csv", csv=random_walk_csv(tmp_path / "walk.csv"), target="close", window=12,
                        forecast="auto", epochs=15, hidden=16))
    ours, persistence = result["test"]["test"]["rmse"], result["baselines"]["persistence"]["test"]["rmse"]
    assert ours <= 1.1 * persistence
    table = summary_table(result)
    assert ("does not beat persistence" in table) == (ours >= persistence or
                                                      result["val"]["rmse"] >= result["baselines"]["persistence"]["validation"]["rmse"])


def test_default_sunspots_beats_ar9_on_both_test_periods(in_tmp):
    """The default run (seed 0): below the least-squares AR(9) on 1921-1955 and 1921-1987, and far
    below persistence."""
    from rnnkit.train import resolve
    result = train(resolve({"plots": False, "progress": False, "tensorboard": False}))
    for period in ("1921-1955", "1921-1987"):
        ours = result["test"][period]["rmse"]
        assert ours < result["baselines"]["AR(9)"][period]["rmse"], (period, ours)
        assert ours < 0.7 * result["baselines"]["persistence"][period]["rmse"]
