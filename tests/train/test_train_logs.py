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


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tiny, capsys):
    """Without a terminal (a pipe, a log file) the task, the model and plain epoch lines are
    printed as the run goes: the first epoch, the last, and one every few seconds between."""
    train(tiny("sunspots", progress=None, epochs=3))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("sunspots: 309 values") and err[1].startswith("model: lstm")
    assert "thread(s)" in err[1] and "backend" in err[1]
    epochs = [line for line in err if line.startswith("epoch ")]
    assert epochs[0].startswith("epoch 1/3: train loss") and epochs[-1].startswith("epoch 3/3")
    assert all("val rmse" in line and "seq/s" in line for line in epochs)


def test_summary_separates_build_data_and_training_time(tiny):
    result = train(tiny("sunspots"))
    assert set(result["timing"]) == {"build", "data", "training"}
    assert all(v >= 0 for v in result["timing"].values()) and result["seconds"] == result["timing"]["training"]
    table = logs.summary_table(result)
    assert "time: training " in table and "C++ kernels ready in" in table and ", data " in table
