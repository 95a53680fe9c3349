"""One loader of a trained network (``rnnkit.train.infer.load``/``load_net``) behind predict,
``rnnkit export`` and ``rnnkit view``: the same weights, and the same checks of the checkpoint
(a damaged one is one UserError line that names it); the CSV row reader is public."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rnnkit import export_cli
from rnnkit.train import checkpoint, infer, predict, resolve, train
from rnnkit.train.tasks import classify
from rnnkit.view import command

from train_helpers import TASK_TINY, TINY, run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained classification run (one sequence of 8 steps of 8 channels per CSV row)."""
    root = tmp_path_factory.mktemp("load_net")
    train(resolve({"task": "digits", **TINY, **TASK_TINY["digits"], "out": str(root / "digits")}))
    return root / "digits"


def damaged(run, folder, **stats):
    """A copy of the run's checkpoint with entries of its stats replaced."""
    path = folder / checkpoint.NAME
    with safe_open(str(checkpoint.resolve_path(str(run))), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["stats"] = json.dumps({**json.loads(meta["stats"]), **stats})
    save_file(tensors, str(path), metadata=meta)
    return path


def test_load_net_is_the_network_predict_uses(run, tmp_path):
    net = infer.load_net(str(run))
    assert not net.training
    best = checkpoint.load(str(run)).weights()
    assert all(torch.equal(v, best[k]) for k, v in net.state_dict().items())
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(str(v % 17) for v in range(64)) + "\n", encoding="utf-8")
    cfg, task, same = infer.load(str(run))
    assert cfg.task == "digits" and task.n_in == 8
    x = ((torch.from_numpy(classify.read_rows(str(rows), task.n_in)[0]) - task.mean) / task.std)[None]
    with torch.no_grad():
        p = task.probabilities(same(x.float(), torch.tensor([8]))[0])[0]
    _, label, prob = predict(str(run), str(rows)).splitlines()[1].split(",")
    assert task.classes[int(p.argmax())] == label and float(p.max()) == pytest.approx(float(prob), abs=1e-4)


def test_export_and_view_load_through_it(run, monkeypatch):
    assert export_cli.load_net is infer.load_net
    calls = []
    load = infer.load
    monkeypatch.setattr(infer, "load", lambda path: calls.append(path) or load(path))
    restored = command.load_run(str(run))
    assert calls == [str(run)] and not restored.net.training and restored.cfg.task == "digits"


@pytest.mark.parametrize("command_line", [["export", "{ck}", "--onnx", "{out}"], ["view", "{ck}", "--out", "{out}"]])
def test_a_damaged_checkpoint_is_one_line_naming_it(run, tmp_path, capsys, command_line):
    ck = damaged(run, tmp_path, std=[-1.0] * 8)
    out = tmp_path / "out.file"
    code, stdout, err = run_cli([a.format(ck=ck, out=out) for a in command_line], capsys)
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert f"checkpoint {ck}: " in err and "std" in err, err
    assert not out.exists()


def test_read_rows_skips_a_header_and_shapes_steps_by_channels(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,d\n1,2,3,4\n\n5,6\n", encoding="utf-8")
    cases = classify.read_rows(str(rows), 2)
    assert [c.tolist() for c in cases] == [[[1, 2], [3, 4]], [[5, 6]]]
