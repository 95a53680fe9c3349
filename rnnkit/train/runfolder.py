"""The run folder: where a run writes, what it writes there, and the config of a run continued
from it.

    <out>/config.toml              the resolved config (``--config`` reads it back)
    <out>/checkpoint.safetensors   see checkpoint.py
    <out>/metrics.jsonl            step, epoch and test records (logs.py); tensorboard/ too
    <out>/summary.json             the final result
    <out>/loss.png, and the task's own figures (forecast.png, confusion.png)

Only rank 0 writes; the folder is created only once data and model are ready, so a run that
fails on bad input leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from torch import Tensor

from . import checkpoint, config as cfgmod, logs, plots
from .config import Config
from .errors import UserError
from .tasks import Task


def default_out(task: str) -> Path:
    """runs/<task>-<date>-<time>, with -2, -3, ... when that exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{task}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def choose(cfg: Config) -> Path:
    """The folder this run writes to; a fresh run never writes over another run's checkpoint."""
    if cfg.out:
        out = Path(cfg.out)
    elif cfg.resume:
        r = Path(cfg.resume)
        out = r if r.is_dir() else r.parent
    else:
        out = default_out(cfg.task)
    check_folder(out, "--out")
    if not cfg.resume and (out / checkpoint.NAME).exists():
        raise UserError(f"--out {out}: already holds a run; continue it with --resume {out} "
                        f"or choose another --out")
    return out


def check(cfg: Config) -> None:
    """Before any work: the run folder can be created and written (the default's ``runs/`` too)."""
    if cfg.out:
        choose(cfg)
    elif not cfg.resume:
        check_folder(Path("runs"), "--out")


def check_folder(folder: Path, flag: str, given: Optional[Path] = None) -> None:
    """UserError unless ``folder`` is (or can be created as) a folder this process can write
    in; tried by creating and removing a scratch folder, which also catches read-only mounts.
    ``given``: what the user named, when that is a file to go in ``folder``."""
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    name = given or folder
    if not parent.is_dir():
        what = "exists and is not a folder" if parent == name else f"{parent} is a file, not a folder"
        raise UserError(f"{flag} {name}: {what}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rnnkit-check-", dir=parent))
    except OSError as e:
        raise UserError(f"{flag} {name}: cannot write in {parent} ({e.strerror})") from None


def snapshot(out: Path):
    """What the folder holds before a run opens it: its entries, or (when it does not exist)
    the outermost folder that opening it will create."""
    if out.is_dir():
        return set(os.listdir(out))
    top = out
    while not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    return top


def undo(out: Path, before) -> None:
    """After a run failed: unless it wrote a checkpoint, remove what it wrote (every folder it
    created, ``runs/`` too), so that a failed run leaves nothing behind."""
    if not out.is_dir() or (out / checkpoint.NAME).exists():
        return
    if isinstance(before, Path):
        shutil.rmtree(before, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before:
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def open_run(out: Path, cfg: Config, step: int, note: str = "") -> logs.RunLog:
    """Create the folder, write config.toml and open the log; a resumed run (at ``step``) first
    drops the records its checkpoint does not cover.  ``note`` becomes a comment in config.toml."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            logs.truncate_after(out, step)
        cfgmod.write_toml(dataclasses.replace(cfg, resume=None), out / "config.toml", note)
        return logs.RunLog(out, cfg.tensorboard)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None


def write_result(out: Path, log: logs.RunLog, result: dict, step: int) -> None:
    """The test record (then the log is closed) and summary.json."""
    log.write({"kind": "test", "step": step, **_flat(result["test"])})
    log.close()
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def write_figures(out: Path, history: List[dict], task: Task, outputs: Dict[str, Tensor],
                  label: str, best_epoch: int = 0) -> None:
    """loss.png from the epoch history, then the task's own figures from its test outputs."""
    if history:
        ylabel, factor = task.loss_label()
        plots.loss_curves(history, out / "loss.png", f"{task.name}: {label} loss per epoch",
                          ylabel, factor, best_epoch)
    task.figures(out, outputs, label)


def _flat(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a/b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def config_for(overrides: Dict[str, object], toml_path: Optional[str] = None) -> Config:
    """The config of a run from the flags given and a TOML file; with ``resume`` the checkpoint's
    saved config is the base and only run-control options may differ from it."""
    resume = overrides.get("resume")
    if not resume:
        return cfgmod.resolve(overrides, toml_path)
    saved = checkpoint.load(str(resume)).config(f"--resume {resume}")
    folder = checkpoint.resolve_path(str(resume)).parent      # by default, keep writing there
    cfg = cfgmod.resolve({"out": str(folder), **overrides}, toml_path, base=saved)
    cfgmod.check_resumable(saved, cfg)
    return cfg
