"""The CLI: bad input is one line on stderr, exit 2, no traceback, nothing written; and the
eval / predict / generate commands on trained checkpoints."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.train import train

from train_helpers import files_under, run_cli, sine_csv, small_text


def _csv(tmp: Path, name: str, text: str) -> str:
    (tmp / name).write_text(text, encoding="utf-8")
    return name


BAD_TRAIN = {
    "missing csv": lambda t: ["--csv", "nope.csv", "--target", "x"],
    "empty csv": lambda t: ["--csv", _csv(t, "e.csv", ""), "--target", "x"],
    "header only": lambda t: ["--csv", _csv(t, "h.csv", "x,y\n"), "--target", "x"],
    "ragged csv": lambda t: ["--csv", _csv(t, "r.csv", "x,y\n1,2\n3\n"), "--target", "x"],
    "non-numeric": lambda t: ["--csv", _csv(t, "n.csv", "x\n1\nabc\n2\n"), "--target", "x"],
    "nan": lambda t: ["--csv", _csv(t, "nan.csv", "x\n1\nnan\n2\n"), "--target", "x"],
    "shorter than window": lambda t: ["--csv", _csv(t, "s.csv", "x\n1\n2\n3\n"), "--target", "x"],
    "unknown column": lambda t: ["--csv", str(sine_csv(t / "ok.csv")), "--target", "nope"],
    "two columns, no target": lambda t: ["--csv", _csv(t, "two.csv", "a,b\n1,2\n")],
    "unknown cell": lambda t: ["--cell", "transformer"],
    "unknown task": lambda t: ["--task", "imagenet"],
    "unknown option": lambda t: ["--hiden", "3"],
    "not an integer": lambda t: ["--hidden", "many"],
    "conflicting options": lambda t: ["--task", "digits", "--csv", "x.csv"],
    "dropout on one layer": lambda t: ["--dropout", "0.3"],
    "missing text": lambda t: ["--text", "nope.txt"],
    "empty text": lambda t: ["--text", _csv(t, "empty.txt", "  \n")],
    "binary text": lambda t: ["--text", (t / "b.txt").write_bytes(b"\xff\xfe\x00abc") and "b.txt"],
    "text too short": lambda t: ["--text", _csv(t, "short.txt", "hello world")],
    "missing config": lambda t: ["--config", "nope.toml"],
    "bad config": lambda t: ["--config", _csv(t, "c.toml", "cell = 'rnn'\n")],
    "resume nothing": lambda t: ["--resume", "nowhere"],
    # where the run writes: checked before any work, nothing half-written
    "out under a file": lambda t: ["--out", _csv(t, "afile", "x") + "/run"],
    "out is a file": lambda t: ["--out", _csv(t, "bfile", "x")],
    "out not writable": lambda t: ["--out", "/proc/rnnkit-test/run"],
    "out on a read-only tree": lambda t: ["--out", "/sys/rnnkit-test-run"],
    # options out of range or unknown to this machine
    "unknown backend": lambda t: ["--backend", "bogus"],
    "seed beyond 64 bits": lambda t: ["--seed", "9223372036854775807"],
    "negative seed": lambda t: ["--seed", "-1"],
    "network too large for memory": lambda t: ["--hidden", "100000"],
    "data too large for memory": lambda t: ["--task", "adding", "--n-samples", "2000000000", "--seq-len", "1000"],
    "window beyond any integer option": lambda t: ["--window", str(2 ** 40)],
    "unknown device": lambda t: ["--device", "gpu"],
    "momentum of 1 or more": lambda t: ["--optimizer", "sgd", "--momentum", "1.5"],
    "forget bias beyond float32's tanh": lambda t: ["--forget-bias", "1e300"],
    "negative threads": lambda t: ["--threads", "-1"],
    "unknown forecast": lambda t: ["--forecast", "levels"],
    "season of 1": lambda t: ["--season", "1"],
    # data the network's float32 arithmetic cannot hold
    "values near 1e308": lambda t: ["--csv", _csv(t, "huge.csv", "x\n" + "1.7e308\n-1.7e308\n" * 20),
                                    "--target", "x"],
    # a run that diverges before its first checkpoint
    "learning rate 1e30": lambda t: ["--lr", "1e30", "--forecast", "level"],
}


def _assert_one_clean_line(code, out, err):
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("rnnkit")
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_training_input_is_one_line_and_writes_nothing(case, in_tmp, capsys):
    args = BAD_TRAIN[case](in_tmp)
    before = files_under(in_tmp)
    _assert_one_clean_line(*run_cli(["train", "--no-plots", "--no-progress", "--epochs", "3", *args], capsys))
    assert files_under(in_tmp) == before                     # no run folder, nothing half-written


def test_backend_named_in_the_environment_is_checked_first(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "bogus")
    code, out, err = run_cli(["train", "--no-plots", "--epochs", "1"], capsys)
    _assert_one_clean_line(code, out, err)
    assert "RNNKIT_BACKEND" in err and files_under(in_tmp) == []


def test_diverging_run_names_the_problem(in_tmp, capsys):
    code, out, err = run_cli(["train", "--no-plots", "--no-progress", "--lr", "1e30", "--forecast",
                              "level", "--epochs", "5"], capsys)
    _assert_one_clean_line(code, out, err)
    assert "diverged" in err and "--lr" in err and "nothing was kept" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A forecasting, a classification, a text and a synthetic-task checkpoint (tiny)."""
    root = tmp_path_factory.mktemp("trained")
    common = {"hidden": 8, "epochs": 2, "plots": False, "progress": False, "tensorboard": False}
    from rnnkit.train import resolve
    runs = {
        "csv": {"csv": str(sine_csv(root / "series.csv")), "target": "level", "window": 5},
        "italy_power": {"task": "italy_power", "epochs": 1},
        "text": {"text": str(small_text(root / "corpus.txt")), "k1": 8, "batch_size": 4},
        "echo": {"task": "echo", "seq_len": 6, "n_samples": 64},
    }
    results = {}
    for name, options in runs.items():
        results[name] = train(resolve({**common, **options, "out": str(root / name)}))
    return root, results


BAD_USE = {
    "eval missing": ["eval", "{root}/nowhere.safetensors"],
    "eval garbage": ["eval", "{root}/garbage.bin"],
    "eval pickle": ["eval", "{root}/evil.pt"],
    "eval truncated": ["eval", "{root}/truncated.safetensors"],
    "predict text model": ["predict", "{root}/text", "--csv", "{root}/series.csv"],
    "predict synthetic model": ["predict", "{root}/echo", "--csv", "{root}/series.csv"],
    "predict bad column": ["predict", "{root}/csv", "--csv", "{root}/series.csv", "--target", "zzz"],
    "predict ragged rows": ["predict", "{root}/italy_power", "--csv", "{root}/series.csv"],
    "generate forecaster": ["generate", "{root}/csv", "--prime", "a"],
    "generate unknown chars": ["generate", "{root}/text", "--prime", "QZ#"],
    "resume incompatible": ["train", "--resume", "{root}/csv", "--hidden", "64"],
    "out holds a run": ["train", "--out", "{root}/csv"],
    "predict missing csv option": ["predict", "{root}/csv"],
    "predict out under a file": ["predict", "{root}/csv", "--csv", "{root}/series.csv",
                                 "--out", "{root}/series.csv/pred.csv"],
    "predict out not writable": ["predict", "{root}/csv", "--csv", "{root}/series.csv",
                                 "--out", "/proc/rnnkit-test/pred.csv"],
    "predict out is a folder": ["predict", "{root}/csv", "--csv", "{root}/series.csv", "--out", "{root}"],
    "eval unknown device": ["eval", "{root}/csv", "--device", "gpu"],
    "generate seed beyond 64 bits": ["generate", "{root}/text", "--seed", "99999999999999999999"],
    "generate too long": ["generate", "{root}/text", "--length", "10000000000"],
    "eval a folder without checkpoint": ["eval", "{root}"],
}


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(_Evil.target), "pwned"))


@pytest.mark.parametrize("case", list(BAD_USE))
def test_bad_checkpoint_use_is_one_line(case, trained, capsys):
    root, _ = trained
    (root / "garbage.bin").write_bytes(b"\x00\x01 not a checkpoint")
    good = (root / "csv" / "checkpoint.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    _Evil.target = str(root / "pwned.txt")
    torch.save({"weights": _Evil()}, root / "evil.pt")
    before = files_under(root)
    args = [a.format(root=root) for a in BAD_USE[case]]
    _assert_one_clean_line(*run_cli(args, capsys))
    assert files_under(root) == before and not (root / "pwned.txt").exists()


def test_eval_reproduces_the_training_metrics(trained, capsys):
    root, results = trained
    code, out, err = run_cli(["eval", str(root / "italy_power")], capsys)
    assert code == 0 and err == ""
    acc = results["italy_power"]["test"]["test"]["accuracy"]
    assert f"test accuracy    {acc:.4f}" in out


def test_predict_forecasts_every_step_and_the_next(trained, capsys, tmp_path):
    root, _ = trained
    code, out, _ = run_cli(["predict", str(root / "csv"), "--csv", str(root / "series.csv")], capsys)
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["index", "actual", "forecast"]
    assert len(rows) == 1 + (60 - 5) + 1 and rows[1][0] == "d5" and rows[-1][0] == "next"
    target = tmp_path / "pred.csv"
    run_cli(["predict", str(root / "csv"), "--csv", str(root / "series.csv"), "--out", str(target)], capsys)
    assert target.read_text() == out
    target.unlink()                     # the old name of --out still works
    run_cli(["predict", str(root / "csv"), "--csv", str(root / "series.csv"), "--output", str(target)], capsys)
    assert target.read_text() == out


def test_predict_classifies_one_sequence_per_row(trained, capsys, tmp_path):
    root, _ = trained
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(",".join(str((i * j) % 7 - 3) for j in range(24)) for i in range(3)) + "\n")
    code, out, _ = run_cli(["predict", str(root / "italy_power"), "--csv", str(rows)], capsys)
    lines = list(csv.reader(io.StringIO(out)))
    assert code == 0 and lines[0] == ["row", "class", "probability"] and len(lines) == 4
    assert all(r[1] in ("1", "2") and 0.5 <= float(r[2]) <= 1 for r in lines[1:])


def test_generate_at_a_tiny_temperature_takes_the_likeliest_character(trained, capsys):
    root, _ = trained
    code, out, err = run_cli(["generate", str(root / "text"), "--prime", "the ", "--length", "20",
                              "--temperature", "1e-300"], capsys)
    assert code == 0 and err == "" and len(out) == 4 + 20 + 1


def test_generate_starts_from_the_prime_and_repeats_with_a_seed(trained, capsys):
    root, _ = trained
    args = ["generate", str(root / "text"), "--prime", "the ", "--length", "30", "--seed", "3"]
    code, first, _ = run_cli(args, capsys)
    _, second, _ = run_cli(args, capsys)
    assert code == 0 and first == second and first.startswith("the ") and len(first) == 4 + 30 + 1
    assert set(first.strip()) <= set("the quick brown fox jumps over the lazy dog. ")


def test_train_prints_a_summary_table(in_tmp, capsys):
    code, out, _ = run_cli(["train", "--epochs", "2", "--hidden", "4", "--no-plots"], capsys)
    assert code == 0
    assert "persistence" in out and "AR(9)" in out and "1921-1987 rmse" in out
    assert len(list((in_tmp / "runs").iterdir())) == 1


def test_real_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--csv", "missing.csv"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
    assert files_under(tmp_path) == []


def test_version_and_bare_command_list(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("rnnkit 0.") and "torch" in out
    code, out, _ = run_cli([], capsys)
    assert code == 0 and all(name in out for name in ("train", "eval", "predict", "generate", "experiments"))


def test_help_shows_each_default_and_the_task_presets(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0
    assert "--hidden HIDDEN hidden units per layer and direction (default: 32; task presets: japanese_vowels 64" in flat
    assert "--lr LR learning rate (default: 0.003;" in flat and "--plots, --no-plots" in flat
    assert "(default: on)" in flat and "--threads THREADS" in flat
    code, out, _ = run_cli(["eval", "--help"], capsys)
    assert "(default: auto" in " ".join(out.split())
