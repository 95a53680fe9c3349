"""Helpers for the trainer tests (the fixtures that use them live in conftest.py).

    TINY, TASK_TINY             options that make each task train in well under a second
    sine_csv, small_text        small data files;  data_options(task, folder) points a task at them
    run_cli(args, capsys)       (exit code, stdout, stderr) of ``rnnkit ARGS`` run in-process
    weights(path)               the tensors of a checkpoint file, by name
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file

from rnnkit import cli
from rnnkit.train.checkpoint import NAME

TINY = {"hidden": 8, "epochs": 2, "plots": False, "progress": False, "tensorboard": False}
# Per task: options that keep it to a few steps.
TASK_TINY = {
    "sunspots": {"forecast": "window"},         # one network (auto trains one per representation)
    "csv": {"window": 5, "forecast": "window"},
    "digits": {"epochs": 1, "batch_size": 256},
    "japanese_vowels": {"epochs": 1, "batch_size": 128},
    "italy_power": {"epochs": 1},
    "gunpoint": {"epochs": 1, "batch_size": 20},
    "text": {"k1": 8, "batch_size": 4},
    "adding": {"seq_len": 6, "n_samples": 64},
    "copy": {"seq_len": 3, "n_samples": 64},
    "echo": {"seq_len": 6, "n_samples": 64},
}


def sine_csv(path: Path, n: int = 60) -> Path:
    rows = ["date,level,other"] + [f"d{i},{math.sin(i / 3.0):.5f},{i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def small_text(path: Path) -> Path:
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


def data_options(task: str, tmp_path: Path) -> dict:
    if task == "csv":
        return {"csv": str(sine_csv(tmp_path / "series.csv")), "target": "level"}
    if task == "text":
        return {"text": str(small_text(tmp_path / "corpus.txt"))}
    return {}


def run_cli(args: List[str], capsys) -> Tuple[int, str, str]:
    """Run ``rnnkit ARGS`` in this process; argparse's SystemExit becomes an exit code."""
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def weights(path: Path) -> Dict[str, torch.Tensor]:
    return load_file(str(path / NAME if path.is_dir() else path))


def files_under(path: Path) -> List[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []
