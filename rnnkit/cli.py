"""The ``rnnkit`` command: a thin dispatcher to one module per sub-command.

Each sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
``rnnkit`` alone lists the commands; ``rnnkit --version`` prints the versions.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ._version import __version__
from .train.errors import UserError

COMMANDS = {
    "bench": ("rnnkit.bench_command", "time rnnkit against torch.nn side by side (CPU, or --device cuda)"),
    "build": ("rnnkit.backends._build", "compile the C++ CPU kernels now (else done on first use)"),
    "train": ("rnnkit.train.commands.train", "train a network on a task (default: LSTM on yearly sunspots)"),
    "eval": ("rnnkit.train.commands.eval", "test metrics of a trained checkpoint"),
    "predict": ("rnnkit.train.commands.predict", "forecasts or classes for a CSV from a checkpoint"),
    "generate": ("rnnkit.train.commands.generate", "sample text from a character-level checkpoint"),
    "export": ("rnnkit.export_cli", "write a trained run's network as an ONNX model"),
    "view": ("rnnkit.view.command", "an HTML page of a run's gates, memory cells and gradient flow"),
    "experiments": ("rnnkit.experiments", "reproduce the lecture's claims as a report in a run folder "
                                          "(--out docs: the committed one)"),
}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are reported on one line (exit 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _version() -> str:
    import torch
    return f"rnnkit {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnkit", description="Recurrent networks with hand-derived BPTT",
                     epilog="rnnkit COMMAND --help: that command's options and their defaults")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


class _Formatter(argparse.HelpFormatter):
    """Help with room for the long option names."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-V"]):                # answered without importing the commands
        print(_version())
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:                           # bare `rnnkit`: what it can do
        parser.print_help()
        return 0
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
