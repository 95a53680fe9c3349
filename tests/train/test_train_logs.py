"""What a run reports while it trains: the progress bar, JSONL records, TensorBoard scalars."""
from __future__ import annotations

import json

from rnnkit.train import logs, train


def test_progress_bar_shows_loss_validation_metric_and_throughput(tiny, capsys):
    train(tiny("sunspots", progress=True))
    err = capsys.readouterr().err
    assert "loss=" in err and "val_rmse=" in err and "seq/s" in err and "epoch 2/2" in err


def test_jsonl_has_step_and_epoch_records(tiny, tmp_path):
    train(tiny("sunspots", log_every=1))
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert {"loss", "lr", "grad_norm", "items_per_s", "epoch"} <= set(steps[0])
    assert {"train_loss", "val_loss", "val_rmse", "val_mae"} <= set(records[-2])


def test_tensorboard_gets_the_same_scalars_when_installed(tiny, monkeypatch):
    scalars = []

    class Writer:
        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            scalars.append(("closed", 0))

    monkeypatch.setattr(logs, "_tensorboard", lambda folder: Writer())
    train(tiny("sunspots", tensorboard=True, log_every=2))
    assert ("step/loss", 2) in scalars and ("epoch/val_rmse", 12) in scalars
    assert scalars[-1] == ("closed", 0)
