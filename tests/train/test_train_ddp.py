"""``torchrun`` with two CPU processes (gloo) trains to the weights of a single process given the
same global batch; only one process writes and reports."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rnnkit.train import train

from train_helpers import files_under, small_text, weights

CASES = {
    # 188 windows in batches of 31: shards of 16/15 and a last batch of 2 split 1/1
    "sunspots, uneven shards": ("sunspots", ["--batch-size", "31", "--layers", "2"]),
    "text, TBPTT with carried state": ("text", ["--k1", "4", "--k2", "6", "--batch-size", "4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(case, tiny, tmp_path):
    task, flags = CASES[case]
    extra = (["--text", str(small_text(tmp_path / "corpus.txt"))] if task == "text"
             else ["--forecast", "window"])                                # as tiny() has it
    args = ["--task", task, "--hidden", "8", "--epochs", "2", "--no-plots", "--no-progress",
            "--no-tensorboard", "--out", str(tmp_path / "ddp"), *flags, *extra]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "rnnkit", "train", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("run folder:") == 1                       # one process reports
    options = {flags[i].lstrip("-").replace("-", "_"): int(flags[i + 1]) for i in range(0, len(flags), 2)}
    train(tiny(task, out="single", **options))
    assert files_under(tmp_path / "ddp") == files_under(tmp_path / "single")
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for k in (k for k in a if k.startswith(("model.", "best."))):
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
