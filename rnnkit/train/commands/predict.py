"""``rnnkit predict CKPT --csv FILE``: forecasts or class predictions as CSV."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import predict
from ..checkpoint import atomic_write
from ..errors import UserError
from ..runfolder import check_folder


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="run folder or checkpoint.safetensors")
    p.add_argument("--csv", required=True, metavar="FILE",
                   help="forecasting: a series column; classification: one sequence per row")
    p.add_argument("--target", metavar="COLUMN", help="forecasting: the column (default: the trained one)")
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)      # the old name of --out


def run(args) -> int:
    target = Path(args.out) if args.out else None
    if target is not None:                      # before the work: where it goes can be written
        if target.is_dir():
            raise UserError(f"--out {target}: is a folder, expected a file name")
        check_folder(target.parent, "--out", target)
    text = predict(args.checkpoint, args.csv, args.target)
    if target is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write(target, text.encode("utf-8"))
    except OSError as e:
        raise UserError(f"--out {target}: cannot write ({e.strerror or e})") from None
    return 0
