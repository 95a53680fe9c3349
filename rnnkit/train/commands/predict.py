"""``rnnkit predict CKPT --csv FILE``: forecasts or class predictions as CSV."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import predict
from ..checkpoint import atomic_write


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="run folder or checkpoint.safetensors")
    p.add_argument("--csv", required=True, metavar="FILE",
                   help="forecasting: a series column; classification: one sequence per row")
    p.add_argument("--target", metavar="COLUMN", help="forecasting: the column (default: the trained one)")
    p.add_argument("--output", metavar="FILE", help="write here (atomically) instead of stdout")


def run(args) -> int:
    text = predict(args.checkpoint, args.csv, args.target)
    if args.output:
        atomic_write(Path(args.output), text.encode("utf-8"))
    else:
        sys.stdout.write(text)
    return 0
