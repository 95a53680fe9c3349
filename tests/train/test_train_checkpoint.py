"""Checkpoints: atomic writes that survive kill -9, no code execution on load, exact resume."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rnnkit.train import Interrupted, UserError, config_for, train
from rnnkit.train import checkpoint as ck
from rnnkit.train.optim import Schedule, make_optimizer

from train_helpers import weights

META = {"config": {}, "optimizer": {}, "scheduler": None, "progress": {}, "stats": {}}   # well-formed, empty

# A child that saves checkpoint v1, then starts saving v2 and blocks half-way through the bytes
# ("mid-write") or after writing and fsync'ing them but before the rename ("before-rename").
CHILD = textwrap.dedent("""
    import builtins, os, sys, time
    from pathlib import Path
    import torch
    from rnnkit.train import checkpoint as ck
    path, where = Path(sys.argv[1]), sys.argv[2]
    meta = {"config": {}, "optimizer": {}, "scheduler": None, "progress": {}, "stats": {}}
    version = lambda v: ck.Checkpoint({"model.w": torch.full((200_000,), float(v))}, meta)
    ck.save(path, version(1))

    class Stall:
        def __init__(self, fh): self.fh = fh
        def __enter__(self): return self
        def __exit__(self, *a): self.fh.close()
        def fileno(self): return self.fh.fileno()
        def flush(self): self.fh.flush()
        def write(self, data):
            self.fh.write(data[: len(data) // 2]); self.fh.flush()
            print("stalled", flush=True); time.sleep(120)

    def stall_fsync(fd):
        print("stalled", flush=True); time.sleep(120)

    if where == "mid-write":
        ck.open = lambda p, mode: Stall(builtins.open(p, mode))
    else:
        ck.os.fsync = stall_fsync
    ck.save(path, version(2))
""")


def _kill_when_stalled(args, cwd) -> None:
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_kill_9_during_a_write_leaves_the_previous_checkpoint(where, tmp_path):
    path = tmp_path / ck.NAME
    (tmp_path / "child.py").write_text(CHILD)
    _kill_when_stalled(["child.py", str(path), where], tmp_path)
    assert (tmp_path / f".{ck.NAME}.tmp").exists()              # the interrupted write
    assert torch.all(ck.load(str(path)).tensors["model.w"] == 1.0)
    ck.save(path, ck.Checkpoint({"model.w": torch.zeros(3)}, META))   # and the next write succeeds
    assert torch.equal(ck.load(str(path)).tensors["model.w"], torch.zeros(3))


def test_training_killed_during_a_checkpoint_write_resumes_to_the_same_weights(tiny, tmp_path):
    full = tiny("sunspots", out="full", epochs=3, checkpoint_every=2)
    train(full)
    part = tiny("sunspots", out="part", epochs=3, checkpoint_every=2)
    (tmp_path / "part.json").write_text(json.dumps(dataclasses.asdict(part)))
    script = textwrap.dedent("""
        import builtins, json, time
        from rnnkit.train import checkpoint as ck, resolve, train
        calls = [0]
        def slow_open(p, mode):
            calls[0] += 1
            if calls[0] == 5:                      # the fifth checkpoint: stall in the middle
                fh = builtins.open(p, mode)
                fh.write(b"half a checkpoint"); fh.flush()
                print("stalled", flush=True); time.sleep(120)
            return builtins.open(p, mode)
        ck.open = slow_open
        train(resolve(json.load(open("part.json"))))
    """)
    (tmp_path / "child.py").write_text(script)
    _kill_when_stalled(["child.py"], tmp_path)
    survivor = ck.load(str(tmp_path / "part"))
    assert survivor.meta["progress"]["step"] == 8                   # the fourth checkpoint
    train(config_for({"resume": str(tmp_path / "part")}))
    assert _same(weights(tmp_path / "full"), weights(tmp_path / "part"))


def _same(a, b, prefixes=("model.", "best.", "optim.")) -> bool:
    keys = [k for k in a if k.startswith(prefixes)]
    return keys == [k for k in b if k.startswith(prefixes)] and all(torch.equal(a[k], b[k]) for k in keys)


RESUME_CASES = {
    "sunspots 2-layer dropout, step schedule": ("sunspots", {"layers": 2, "dropout": 0.3,
                                                            "scheduler": "step", "step_size": 1}, 8),
    "text, TBPTT k1=4 k2=6, carried state": ("text", {"k1": 4, "k2": 6, "cell": "lstm"}, 150),
    "japanese vowels, variable lengths, gru": ("japanese_vowels", {"cell": "gru", "batch_size": 64,
                                                                  "epochs": 2}, 3),
    "copy task, jordan, plateau": ("copy", {"cell": "jordan", "scheduler": "plateau",
                                            "optimizer": "sgd", "momentum": 0.9}, 3),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(case, tiny, tmp_path):
    task, options, stop_at = RESUME_CASES[case]
    options = {"epochs": 3, **options}
    done = train(tiny(task, out="full", **options))
    with pytest.raises(Interrupted, match=f"interrupted at step {stop_at}"):
        train(tiny(task, out="part", **options), interrupt=lambda step: step == stop_at)
    assert ck.load(str(tmp_path / "part")).meta["progress"]["step"] == stop_at
    resumed = train(config_for({"resume": str(tmp_path / "part")}))
    assert _same(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert resumed["test"] == done["test"] and resumed["steps"] == done["steps"]
    epochs = lambda run: [json.loads(l)["train_loss"] for l in (tmp_path / run / "metrics.jsonl")
                          .read_text().splitlines() if '"epoch"' in l and '"kind": "epoch"' in l]
    assert epochs("part") == epochs("full")                 # the log has no duplicate records


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tiny, tmp_path):
    args = ["-m", "rnnkit", "train", "--out", "sig", "--epochs", "400", "--patience", "0", "--forecast", "window",
            "--hidden", "8", "--no-plots", "--no-progress", "--no-tensorboard"]
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "sig" / ck.NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)                      # the first checkpoint: training is under way
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.count("\n") == 1 and "interrupted at step" in err and "Traceback" not in err
    progress = ck.load(str(tmp_path / "sig")).meta["progress"]
    assert f"step {progress['step']};" in err
    epochs = progress["epoch"] + 1                 # finish the epoch it was in, then compare
    train(config_for({"resume": str(tmp_path / "sig"), "epochs": epochs}))
    train(tiny("sunspots", out="full", epochs=epochs, patience=0))
    assert _same(weights(tmp_path / "full"), weights(tmp_path / "sig"))


def test_loading_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))
    torch.save(Boom(), tmp_path / "evil.safetensors")
    with pytest.raises(UserError, match="unreadable"):
        ck.load(str(tmp_path / "evil.safetensors"))
    assert not (tmp_path / "ran").exists()


def test_foreign_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not an rnnkit checkpoint"):
        ck.load(str(tmp_path / "other.safetensors"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
@pytest.mark.parametrize("scheduler", ["step", "exponential", "cosine", "plateau"])
def test_optimizer_and_scheduler_state_round_trip_without_pickle(optimizer, scheduler, tiny, tmp_path):
    cfg = tiny("sunspots", optimizer=optimizer, scheduler=scheduler,
               momentum=0.5 if optimizer in ("sgd", "rmsprop") else 0.0)
    p = torch.nn.Parameter(torch.randn(3))
    opt = make_optimizer(cfg, [p])
    sched = Schedule(cfg, opt)
    for _ in range(2):
        p.grad = torch.randn(3)
        opt.step()
        sched.step(1.0)
    tensors, rest = ck.flatten_optimizer(opt.state_dict())
    path = tmp_path / ck.NAME
    ck.save(path, ck.Checkpoint({f"optim.{k}": v for k, v in tensors.items()},
                                {**META, "optimizer": rest, "scheduler": sched.state_dict()}))
    back = ck.load(str(path))
    state = ck.unflatten_optimizer(back.group("optim"), back.meta["optimizer"])
    opt2 = make_optimizer(cfg, [p])
    opt2.load_state_dict(state)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))
    assert back.meta["scheduler"] == json.loads(json.dumps(sched.state_dict()))
