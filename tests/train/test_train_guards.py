"""What a run and a checkpoint are checked for: damaged or hand-edited checkpoints (metadata
types, ranges and sizes, tensor dtypes, optimiser / scheduler / progress / RNG / carried state)
are one line and exit 2 before anything is built; a run that diverges stops with its last good
checkpoint; the normalisation a model was trained with travels in its checkpoint."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rnnkit.train import Diverged, checkpoint as ck, evaluate, resolve, train
from rnnkit.train import data
from rnnkit.train.step import SequenceSteps, StepResult
from rnnkit.train.tasks.base import split_indices

from train_helpers import TINY, files_under, run_cli, sine_csv, small_text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny finished runs: a level forecaster with a step schedule, a binary classifier, a text model."""
    root = tmp_path_factory.mktemp("runs")
    options = {
        "csv": {"csv": str(sine_csv(root / "series.csv")), "target": "level", "window": 5,
                "forecast": "level", "scheduler": "step"},
        "italy_power": {"task": "italy_power", "epochs": 1},
        "text": {"text": str(small_text(root / "corpus.txt")), "k1": 8, "batch_size": 4},
    }
    results = {name: train(resolve({**TINY, **o, "out": str(root / name)})) for name, o in options.items()}
    return root, results


def tamper(src: Path, dst: Path, meta=None, tensors=None) -> Path:
    """A copy of run folder ``src`` whose checkpoint has ``meta(parsed metadata)`` and
    ``tensors(dict)`` applied (each edits in place)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    path = dst / ck.NAME
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
        ts = {k: f.get_tensor(k) for k in f.keys()}
    parsed = {k: json.loads(raw[k]) for k in ck.JSON_KEYS}
    if meta:
        meta(parsed)
    if tensors:
        tensors(ts)
    save_file(ts, str(path), metadata={**raw, **{k: json.dumps(v) for k, v in parsed.items()}})
    return dst


def _set(part, key, value):
    def edit(m):
        m[part][key] = value
    return edit


def _del(part, key):
    def edit(m):
        del m[part][key]
    return edit


# name -> (run, metadata edit, tensor edit, command after the folder: eval / predict / generate / resume)
TAMPERED = {
    "hidden of a billion": ("csv", _set("config", "hidden", 10 ** 9), None, "eval"),
    "hidden not a number": ("csv", _set("config", "hidden", "x"), None, "eval"),
    "negative window": ("csv", _set("config", "window", -3), None, "predict"),
    "unknown task": ("csv", _set("config", "task", "bogus"), None, "eval"),
    "unknown option": ("csv", _set("config", "evil", 1), None, "eval"),
    "option missing": ("csv", _del("config", "cell"), None, "eval"),
    "zero std": ("csv", _set("stats", "std", 0.0), None, "predict"),
    "std not a number": ("csv", _set("stats", "std", "a"), None, "predict"),
    "unknown representation": ("csv", _set("stats", "forecast", "bogus"), None, "predict"),
    "stats missing": ("csv", lambda m: m.update(stats={}), None, "predict"),
    "stats not an object": ("csv", lambda m: m.update(stats=[]), None, "eval"),
    "classes not a list": ("italy_power", _set("stats", "classes", 5), None, "predict"),
    "one class": ("italy_power", _set("stats", "classes", ["1"]), None, "predict"),
    "means and stds differ in length": ("italy_power", _set("stats", "std", [1.0, 1.0]), None, "predict"),
    "empty vocabulary": ("text", _set("stats", "vocab", ""), None, "generate"),
    "progress step a string": ("csv", _set("progress", "step", "x"), None, "resume"),
    "progress field missing": ("csv", _del("progress", "best"), None, "resume"),
    "optimizer lr a string": ("csv", lambda m: m["optimizer"]["param_groups"][0].update(lr="x"), None, "resume"),
    "optimizer groups doubled": ("csv", lambda m: m["optimizer"]["param_groups"].append(
        m["optimizer"]["param_groups"][0]), None, "resume"),
    "scheduler state replaced": ("csv", lambda m: m.update(scheduler={"evil": 1}), None, "resume"),
    "weights as float16": ("csv", None, lambda t: t.update({k: v.half() for k, v in t.items()
                                                            if k.startswith("model.")}), "eval"),
    "weights as integers": ("csv", None, lambda t: t.update({k: v.long() for k, v in t.items()
                                                             if k.startswith("best.")}), "predict"),
    "unexpected tensor": ("csv", None, lambda t: t.update({"evil.x": torch.zeros(2)}), "eval"),
    "random state cut short": ("csv", None, lambda t: t.update({"rng.torch.0": t["rng.torch.0"][:10]}), "resume"),
    "carried state of the wrong shape": ("text", None, lambda t: t.update({"carry.0": torch.zeros(1, 3, 8)}),
                                         "resume"),
}


def _command(kind: str, folder: Path, root: Path):
    return {"eval": ["eval", str(folder)],
            "predict": ["predict", str(folder), "--csv", str(root / "series.csv")],
            "generate": ["generate", str(folder), "--prime", "the"],
            "resume": ["train", "--resume", str(folder), "--epochs", "3"]}[kind]


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_checkpoint_is_one_line_and_builds_nothing(case, runs, tmp_path, capsys):
    root, _ = runs
    run, meta, tensors, kind = TAMPERED[case]
    folder = tamper(root / run, tmp_path / run, meta, tensors)
    before = files_under(tmp_path)
    code, out, err = run_cli(_command(kind, folder, root), capsys)
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and err.startswith("rnnkit") and "Traceback" not in err
    assert files_under(tmp_path) == before


def test_every_tensor_dtype_and_metadata_type_is_read_from_the_header_first(runs, tmp_path, monkeypatch):
    """A wrong dtype is refused before any tensor is read."""
    root, _ = runs
    folder = tamper(root / "csv", tmp_path / "f16", None,
                    lambda t: t.update({k: v.half() for k, v in t.items() if k.startswith("model.")}))
    read = []
    real = safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def __getattr__(self, name):
            if name == "get_tensor":
                read.append(name)
            return getattr(self.f, name)

    monkeypatch.setattr(ck, "safe_open", Spy)
    with pytest.raises(ck.UserError, match="F16"):
        ck.load(str(folder))
    assert read == []


def test_a_run_that_diverges_keeps_its_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real = SequenceSteps.update
    calls = [0]

    def update(self, batch):                    # the 10th update (epoch 2 of 6 batches) goes NaN
        r = real(self, batch)
        calls[0] += 1
        return StepResult(float("nan"), r.count, r.norm, r.items) if calls[0] == 10 else r

    monkeypatch.setattr(SequenceSteps, "update", update)
    with pytest.raises(Diverged, match="training loss became nan at step 10 .*last good checkpoint"):
        train(tiny("sunspots", epochs=3))
    saved = ck.load(str(tmp_path / "run"))
    assert saved.meta["progress"]["epoch"] == 1 and saved.meta["progress"]["step"] == 6
    assert all(torch.isfinite(t).all() for t in saved.last_weights().values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "step" and records[-1]["step"] == 10 and np.isnan(records[-1]["loss"])


def test_digits_predict_reads_raw_pixels_as_trained(tiny, tmp_path, capsys):
    """The checkpoint holds the standardisation of the raw 0-16 pixel values, and predict applies
    it: classifying the raw test images gives the run's own test accuracy."""
    result = train(tiny("digits", epochs=2, batch_size=64, hidden=16, lr=1e-2))
    images, labels = data.digits()
    _, test_idx = split_indices(len(images), 0.25, 12345)
    rows = tmp_path / "raw.csv"
    rows.write_text("\n".join(",".join(str(int(v)) for v in images[i].reshape(-1)) for i in test_idx.tolist()))
    assert images.max() == 16
    code, out, _ = run_cli(["predict", str(tmp_path / "run"), "--csv", str(rows)], capsys)
    predicted = [r[1] for r in list(csv.reader(io.StringIO(out)))[1:]]
    accuracy = np.mean([p == str(labels[i]) for p, i in zip(predicted, test_idx.tolist())])
    assert code == 0 and accuracy == pytest.approx(result["test"]["test"]["accuracy"], abs=1e-12)


def test_eval_applies_the_checkpoints_normalisation(runs, tmp_path):
    """eval reads the series again but standardises it with the statistics the model was trained
    with: the same metrics as training, and other ones when those statistics are changed."""
    root, results = runs
    trained = results["csv"]["test"]["test"]["rmse"]        # (the fixture ran before RNNKIT_BACKEND was set)
    assert evaluate(str(root / "csv"))["test"]["test"]["rmse"] == pytest.approx(trained, rel=1e-6)
    shifted = tamper(root / "csv", tmp_path / "shifted", lambda m: m["stats"].update(mean=m["stats"]["mean"] + 1))
    assert evaluate(str(shifted))["test"]["test"]["rmse"] != pytest.approx(trained, rel=1e-3)


def test_a_non_finite_loss_never_reaches_the_weights(tiny, monkeypatch):
    """The update whose loss is NaN takes no optimiser step: the network the trainer holds after
    Diverged is the one of the last good step (a library user may read it), not NaN."""
    from rnnkit.train import distributed
    from rnnkit.train.loop import Trainer

    real = SequenceSteps.loss_terms
    calls, before = [0], {}

    def loss_terms(self, batch):
        total, count, items = real(self, batch)
        calls[0] += 1
        if calls[0] == 4:
            before.update({k: v.detach().clone() for k, v in self.net.state_dict().items()})
            total = total * float("nan")
        return total, count, items

    monkeypatch.setattr(SequenceSteps, "loss_terms", loss_terms)
    trainer = Trainer(tiny("sunspots", epochs=3), distributed.Dist())
    trainer.open_outputs()
    with pytest.raises(Diverged, match="loss became nan at step 4"):
        trainer.run()
    for k, v in trainer.net.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0, msg=k)
