"""Thin sub-commands: parse flags, call the library in ``rnnkit.train``, print the result."""
from __future__ import annotations

import argparse

from ..config import FIELDS, base_type


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Config field (``--clip-at`` for clip_at); only flags given reach the config."""
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of options (flags override it)")
    for name, f in FIELDS.items():
        t = base_type(name)
        flag = "--" + name.replace("_", "-")
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=f.metadata["help"])
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            p.add_argument(flag, type=t, metavar=name.upper(), **kwargs)


def overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in FIELDS}
