"""``rnnkit bench``: the CPU table (rnnkit/bench.py) or, with ``--device cuda``, the GPU one (bench_cuda.py)."""
from __future__ import annotations

from . import bench, bench_cuda

add_arguments = bench.add_arguments


def run(args) -> int:
    if args.device == "cuda" and getattr(args, "sweep", False):
        raise SystemExit("rnnkit bench: --sweep: expected the CPU table (--device cpu), got --device cuda")
    return bench_cuda.run(args) if args.device == "cuda" else bench.run(args)
