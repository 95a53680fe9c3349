"""``rnnkit eval CKPT``: test metrics of a trained checkpoint (a run folder or its file)."""
from __future__ import annotations

from .. import evaluate
from ..logs import summary_table
from . import DEVICE_HELP


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="run folder or checkpoint.safetensors")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def run(args) -> int:
    print(summary_table(evaluate(args.checkpoint, args.device)))
    return 0
