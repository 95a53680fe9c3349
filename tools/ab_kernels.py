"""Two builds of rnnkit's C++ kernels timed side by side in one process.

    python tools/ab_kernels.py OLD.so NEW.so CASES [--threads N] [--rounds R] [--T T]

OLD.so and NEW.so are two builds of the kernels (``python -m rnnkit build`` prints the path of
the current source's build; build the other from a git worktree of the commit to compare, with
PYTHONPATH pointing at it).  CASES is a comma-separated list of cell:B:H[:train], e.g.
``LSTM:1:64,GRU:8:128:train``: the layer's forward under no_grad, or with ``train`` its forward
and backward.  Each round times back-to-back calls of one build for about 10 ms, then of the other
(the order alternating by round), through the same module: the builds differ only in the
extension ``rnnkit.backends.cpu`` calls.  Prints per case the median ms of each build and the median
of the rounds' ratios old/new (above 1: the new build is faster) with its quartiles.

Why in one process: the shared 2-core machine has slow spells (a vCPU descheduled for seconds, every
thread 1.3-2.5x slower), and builds timed in alternating processes differed by 5-20% between
rounds of the same code; calls interleaved within one process see the same spells.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict

import torch


def load_build(path: str):
    """The extension module of one build (its file name is its module name, rnnkit_cpu_<hash>)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ab_kernels: build: expected a built extension file, got {path!r}")
    name = p.name.split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, str(p))
    spec = importlib.util.spec_from_file_location(name, str(p), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _call(case: str, T: int) -> Callable[[], None]:
    """One call of the case's layer (cpu backend) on fixed weights and input."""
    import rnnkit
    parts = case.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "train"):
        raise ValueError(f"ab_kernels: cases: expected cell:B:H or cell:B:H:train, got {case!r}")
    cell, B, H = parts[0], int(parts[1]), int(parts[2])
    train = len(parts) == 4
    torch.manual_seed(0)
    model = getattr(rnnkit, cell)(H, H, backend="cpu")
    x = torch.randn(T, B, H, requires_grad=train)
    if train:
        return lambda: model(x)[0].sum().backward()

    def run():
        with torch.no_grad():
            model(x)
    return run


def compare(old, new, case: str, rounds: int = 21, T: int = 128, sample_ms: float = 10.0) -> Dict[str, float]:
    """{"old": ms, "new": ms, "ratio": median of old/new per round, "q1", "q3"} for one case, timed
    by rnnkit.bench.interleaved_samples (each round's samples back-to-back calls for sample_ms, the
    builds' order alternating by round)."""
    from rnnkit.backends import cpu
    from rnnkit.bench import interleaved_samples
    run = _call(case, T)
    builds = {"old": old, "new": new}

    def with_build(name: str) -> Callable[[], None]:
        def f():
            cpu.extension = lambda: builds[name]
            run()
        return f

    current = cpu.extension
    try:
        ms = interleaved_samples({k: with_build(k) for k in builds}, rounds, warmup=1, min_ms=sample_ms)
    finally:
        cpu.extension = current
    ratios = sorted(o / w for o, w in zip(ms["old"], ms["new"]))
    return {"old": statistics.median(ms["old"]), "new": statistics.median(ms["new"]),
            "ratio": statistics.median(ratios), "q1": ratios[len(ratios) // 4], "q3": ratios[3 * len(ratios) // 4]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("cases")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--T", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    old, new = load_build(args.old), load_build(args.new)
    for case in args.cases.split(","):
        r = compare(old, new, case, args.rounds, args.T)
        print(f"{case:18s} old {r['old']:.4f} ms  new {r['new']:.4f} ms  old/new {r['ratio']:.3f} "
              f"(quartiles {r['q1']:.3f}-{r['q3']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
