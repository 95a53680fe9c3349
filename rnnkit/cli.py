"""The ``rnnkit`` command: a thin dispatcher to one module per sub-command.

Each sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .train.errors import UserError

COMMANDS = {
    "bench": ("rnnkit.bench", "time rnnkit's fused CPU backend against torch.nn side by side"),
    "build": ("rnnkit.backends._build", "compile the C++ CPU kernels now (else done on first use)"),
    "train": ("rnnkit.train.commands.train", "train a network on a task (default: LSTM on yearly sunspots)"),
    "eval": ("rnnkit.train.commands.eval", "test metrics of a trained checkpoint"),
    "predict": ("rnnkit.train.commands.predict", "forecasts or classes for a CSV from a checkpoint"),
    "generate": ("rnnkit.train.commands.generate", "sample text from a character-level checkpoint"),
    "export": ("rnnkit.export_cli", "write a trained run's network as an ONNX model"),
    "view": ("rnnkit.view.command", "an HTML page of a run's gates, memory cells and gradient flow"),
    "experiments": ("rnnkit.experiments", "reproduce the lecture's claims; writes docs/experiments.md"),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are reported on one line (exit 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnkit", description="Recurrent networks with hand-derived BPTT")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args)
    except UserError as e:
        print(f"rnnkit {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"rnnkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
