"""Every task trains at tiny size through the library function the CLI calls."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rnnkit.train import train
from rnnkit.train.config import TASKS
from rnnkit.train.model import Net
from rnnkit.train.tasks import Echo, masked_step_ce

from train_helpers import files_under, weights

METRIC = {"sunspots": "rmse", "csv": "rmse", "digits": "accuracy", "japanese_vowels": "accuracy",
          "italy_power": "accuracy", "gunpoint": "accuracy", "text": "bpc", "adding": "mse",
          "copy": "accuracy", "echo": "mse"}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_and_reports_its_metric(task, tiny, tmp_path):
    result = train(tiny(task))
    assert result["metric"] == METRIC[task]
    for metrics in result["test"].values():
        assert math.isfinite(metrics[METRIC[task]])
    out = tmp_path / "run"
    assert {"checkpoint.safetensors", "config.toml", "metrics.jsonl", "summary.json"} <= set(files_under(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, result["epochs"] + 1))
    assert records[-1]["kind"] == "test"


def test_sunspots_baselines_reproduce_the_published_anchors(tiny):
    base = train(tiny("sunspots", epochs=1))["baselines"]
    got = {(b, t): round(v["rmse"], 2) for b, per in base.items() for t, v in per.items()
           if t != "validation"}
    assert got == {("persistence", "1921-1955"): 25.26, ("persistence", "1921-1987"): 30.34,
                   ("AR(9)", "1921-1955"): 13.75, ("AR(9)", "1921-1987"): 17.47,
                   ("seasonal(11)", "1921-1955"): 25.11, ("seasonal(11)", "1921-1987"): 34.18}


def test_sunspots_lstm_beats_persistence_with_a_short_budget(tiny):
    result = train(tiny("sunspots", hidden=16, epochs=40, patience=0))
    for period, metrics in result["test"].items():
        assert metrics["rmse"] < result["baselines"]["persistence"][period]["rmse"]


def test_digits_learns_well_above_chance(tiny):
    result = train(tiny("digits", epochs=3, batch_size=64, hidden=32, lr=1e-2))
    assert result["test"]["test"]["accuracy"] > 0.5


def test_figures_are_written_where_they_fit(tiny, tmp_path):
    train(tiny("sunspots", plots=True, out="f1"))
    train(tiny("italy_power", plots=True, out="f2"))
    assert {"loss.png", "forecast.png"} <= set(files_under(tmp_path / "f1"))
    assert {"loss.png", "confusion.png"} <= set(files_under(tmp_path / "f2"))
    assert (tmp_path / "f1" / "forecast.png").read_bytes()[:4] == b"\x89PNG"


def test_padded_steps_never_reach_the_loss():
    torch.manual_seed(0)
    out = torch.randn(3, 5, 4, requires_grad=True)
    y = torch.randint(0, 4, (3, 5))
    lengths = torch.tensor([5, 2, 3])
    total, count = masked_step_ce(out, y, lengths)
    total.backward()
    pad = torch.arange(5)[None, :] >= lengths[:, None]                     # (B, T) padded steps
    assert count.item() == 10
    assert torch.all(out.grad[pad] == 0) and torch.all(out.grad[~pad].abs().sum(-1) > 0)
    y2 = y.masked_fill(pad, 3)
    assert torch.equal(masked_step_ce(out.detach(), y2, lengths)[0], total.detach())


@pytest.mark.parametrize("cell", ["elman", "jordan", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_readout_of_a_padded_batch_matches_each_sequence_alone(cell, bidirectional, tiny):
    cfg = tiny("japanese_vowels", cell=cell, bidirectional=bidirectional, layers=2)
    torch.manual_seed(0)
    net = Net(cfg, 3, 2, "last").eval()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 3)
    x = x * (torch.arange(6)[None, :, None] < lengths[:, None, None])      # zero padding
    batched = net(x, lengths)[0]
    alone = torch.cat([net(x[i:i + 1, :n])[0] for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_same_seed_same_run_and_another_seed_differs(tiny):
    a = train(tiny("sunspots", out="a"))["test"]
    b = train(tiny("sunspots", out="b"))["test"]
    c = train(tiny("sunspots", out="c", seed=1))["test"]
    assert a == b and a != c


def test_every_network_option_reaches_the_layer(tiny):
    cfg = tiny("sunspots", cell="gru", layers=2, bidirectional=True, dropout=0.25, reset_after=False,
               bias=False)
    rnn = Net(cfg, 1, 1, "last").rnn
    assert (rnn.num_layers, rnn.bidirectional, rnn.dropout, rnn.reset_after, rnn.bias) == \
        (2, True, 0.25, False, False)
    jordan = Net(tiny("sunspots", cell="jordan", jordan_output=3, output_activation="tanh",
                      nonlinearity="relu"), 1, 1, "last").rnn
    assert (jordan.output_size, jordan.output_activation, jordan.nonlinearity) == (3, "tanh", "relu")
    lstm = Net(tiny("sunspots", forget_bias=1.0), 1, 1, "last").rnn
    assert torch.all(lstm.bias_ih_l0[8:16] == 1.0)


@pytest.mark.parametrize("delay", [3, 0, -2])
def test_echo_targets_the_shifted_input_and_scores_only_steps_that_have_one(delay, tiny):
    task = Echo(tiny("echo", seq_len=8, n_samples=16, delay=delay))
    split = task.train
    x, T = split.x.squeeze(-1), split.x.shape[1]
    valid = range(max(0, delay), T + min(0, delay))
    for t in valid:
        assert torch.equal(split.y[:, t], x[:, t - delay])
    out = split.y.clone()
    out[:, [t for t in range(T) if t not in valid]] = 100.0      # wrong only where no target exists
    total, count = task.loss(out.unsqueeze(-1), split)
    assert total.item() == 0 and count.item() == len(split) * len(valid)
    assert task.metrics(torch.zeros_like(split.x), split)["mse"] > 0


def test_results_do_not_change_with_the_thread_count(tiny, tmp_path):
    """One thread or two: the same weights, bit for bit (GEMMs split rows and columns among
    threads, never the sum over the inner dimension)."""
    train(tiny("sunspots", out="one", threads=1, hidden=64, batch_size=64))
    train(tiny("sunspots", out="two", threads=2, hidden=64, batch_size=64))
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "best.", "optim.")))


def test_threads_are_chosen_from_the_work_per_step(monkeypatch):
    from rnnkit.train import resources
    monkeypatch.setattr(resources, "busy", lambda cores: False)
    assert resources.auto_threads(4_513 * 32, cores=2) == 1                  # the sunspots default
    assert resources.auto_threads(resources.MIN_WORK_FOR_THREADS, cores=2) == 2
    monkeypatch.setattr(resources, "busy", lambda cores: True)
    assert resources.auto_threads(10 ** 9, cores=2) == 1


def test_a_runs_config_toml_repeats_it_into_a_new_folder(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = train(tiny("sunspots"))
    from train_helpers import run_cli
    code, out, _ = run_cli(["train", "--config", str(tmp_path / "run" / "config.toml")], capsys)
    (second,) = (tmp_path / "runs").iterdir()
    assert code == 0 and json.loads((second / "summary.json").read_text())["test"] == first["test"]


def test_figures_title_the_loss_mark_the_best_epoch_and_fit_many_classes(tmp_path):
    import numpy as np
    from rnnkit.train import plots
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e + (e == 3)} for e in range(1, 6)]
    plots.loss_curves(history, tmp_path / "loss.png", "text: lstm loss per epoch", "bits per character",
                      1 / math.log(2), best_epoch=5)
    k = 120
    m = np.random.default_rng(0).integers(0, 5, (k, k))
    plots.confusion(m, [f"class {i}" for i in range(k)], "many", tmp_path / "confusion.png")
    for name in ("loss.png", "confusion.png"):
        head = (tmp_path / name).read_bytes()[:24]
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and width <= 13 * 110 and height <= 12 * 110


def test_loss_figure_speaks_the_tasks_unit(tiny):
    from rnnkit.train import tasks
    assert tasks.build(tiny("text")).loss_label() == ("bits per character", 1 / math.log(2))
    assert "cross-entropy" in tasks.build(tiny("italy_power")).loss_label()[0]
