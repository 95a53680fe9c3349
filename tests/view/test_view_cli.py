"""``rnnkit view RUN``: a page for every kind of task, the numbers it shows against ``rnnkit
predict``, and bad input as one line with exit code 2 and nothing written."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rnnkit import cli
from rnnkit.train import predict, resolve, train

from view_helpers import page_data

TINY = {"hidden": 6, "epochs": 1, "plots": False, "progress": False, "tensorboard": False}
TEXT = 'the quick "brown" fox (jumps) over the lazy dog. ' * 30
RUNS = {
    "text": {"task": "text", "k1": 8, "batch_size": 4, "layers": 2},
    "csv": {"task": "csv", "window": 5, "cell": "gru", "target": "level"},
    "digits": {"task": "digits", "batch_size": 512, "cell": "elman", "bidirectional": True},
    "adding": {"task": "adding", "seq_len": 6, "n_samples": 32, "cell": "jordan", "jordan_output": 3},
    "copy": {"task": "copy", "seq_len": 3, "n_samples": 32},
}
KINDS = {"text": "text", "csv": "series", "digits": "classes", "adding": "series", "copy": "text"}


def sine_csv(path: Path, n: int = 60) -> Path:
    rows = ["date,level,other"] + [f"d{i},{math.sin(i / 3.0):.5f},{i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: run folder} of tiny trained runs, one per kind of task."""
    root = tmp_path_factory.mktemp("runs")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    files = {"text": {"text": str(root / "corpus.txt")}, "csv": {"csv": str(sine_csv(root / "series.csv"))}}
    for name, options in RUNS.items():
        train(resolve({**TINY, **options, **files.get(name, {}), "out": str(root / name)}))
    return {name: root / name for name in RUNS}


def view(args, capsys):
    """(exit code, stdout, stderr) of ``rnnkit view ARGS`` in this process."""
    capsys.readouterr()
    try:
        code = cli.main(["view", *map(str, args)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_page_for_every_kind_of_task(runs, name, capsys):
    code, out, err = view([runs[name]], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {runs[name] / 'view.html'}")
    data = page_data((runs[name] / "view.html").read_text(encoding="utf-8"))
    assert data["kind"] == KINDS[name]
    assert data["flow"] is not None and data["flow"]["loss"] > 0
    assert data["trace"]["bits"] == 8


def test_text_input_and_out(runs, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("the lazy fox", encoding="utf-8")
    code, _, err = view([runs["text"], "--input", source, "--out", tmp_path / "page.html"], capsys)
    assert code == 0, err
    data = page_data((tmp_path / "page.html").read_text(encoding="utf-8"))
    assert data["text"] == "the lazy fox" and data["steps"] == 12
    assert "p(next character)" in data["signals"] and data["model"]["layers"] == 2


def test_series_forecasts_are_rnnkit_predicts(runs, tmp_path, capsys):
    """The page's forecast at step t (from the last window) is predict's forecast of t + 1."""
    csv = sine_csv(tmp_path / "other.csv", 40)
    code, _, err = view([runs["csv"], "--input", csv, "--out", tmp_path / "s.html"], capsys)
    assert code == 0, err
    series = page_data((tmp_path / "s.html").read_text(encoding="utf-8"))["series"]
    rows = [line.split(",") for line in predict(str(runs["csv"]), str(csv)).splitlines()[1:-1]]
    want = {int(r[0][1:]): float(r[2]) for r in rows}                      # index d<t> -> forecast
    start = 40 - 1 - len(series["input"])           # the whole series, or the last window traced
    assert series["input"] == [pytest.approx(math.sin(i / 3.0), abs=1e-5) for i in range(start, 39)]
    for k, value in enumerate(series["forecast"]):
        if start + k + 1 in want:
            assert value == pytest.approx(want[start + k + 1], rel=1e-4, abs=1e-5)
        else:
            assert value is None
    assert value is not None and series["truth"][:-1] == series["input"][1:]


def test_class_probabilities_end_at_predicts(runs, tmp_path, capsys):
    rows = tmp_path / "cases.csv"
    rng = np.random.default_rng(0)
    rows.write_text("\n".join(",".join(f"{v:.3f}" for v in rng.uniform(0, 16, 64)) for _ in range(3)))
    code, _, err = view([runs["digits"], "--input", rows, "--row", 2, "--out", tmp_path / "c.html"], capsys)
    assert code == 0, err
    classes = page_data((tmp_path / "c.html").read_text(encoding="utf-8"))["classes"]
    _, label, p = predict(str(runs["digits"]), str(rows)).splitlines()[2].split(",")
    last = classes["probs"][-1]
    assert classes["names"][int(np.argmax(last))] == label and max(last) == pytest.approx(float(p), abs=1e-4)
    assert len(classes["probs"]) == 8 and classes["label"] is None


@pytest.mark.parametrize("case, message", [
    ("no_checkpoint", "no such file"),
    ("unknown_characters", "not in the model's vocabulary"),
    ("past_the_cap", "more than the page's cap of 5 steps"),
    ("bad_csv", "is not a number"),
    ("missing_column", "--target nope: no such column"),
    ("row_out_of_range", "--row 9: "),
    ("synthetic_input", "run without --input"),
    ("missing_out_folder", "no such folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, case, message):
    text, csv = tmp_path / "in.txt", tmp_path / "in.csv"
    text.write_text("the lazy fox " * 2 + "Ω", encoding="utf-8")
    csv.write_text("date,level\nd0,1.0\nd1,x\n", encoding="utf-8")
    out = tmp_path / "page.html"
    args = {
        "no_checkpoint": [tmp_path],
        "unknown_characters": [runs["text"], "--input", text],
        "past_the_cap": [runs["text"], "--input", tmp_path / "ok.txt", "--max-steps", 5],
        "bad_csv": [runs["csv"], "--input", csv],
        "missing_column": [runs["csv"], "--input", csv, "--target", "nope"],
        "row_out_of_range": [runs["digits"], "--input", tmp_path / "rows.csv", "--row", 9],
        "synthetic_input": [runs["adding"], "--input", csv],
        "missing_out_folder": [runs["text"], "--out", tmp_path / "nowhere" / "page.html"],
    }[case]
    (tmp_path / "ok.txt").write_text("the lazy fox", encoding="utf-8")
    (tmp_path / "rows.csv").write_text(("1," * 63 + "1\n") * 2, encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = view(args + (["--out", out] if "--out" not in args else []), capsys)
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before           # nothing written
