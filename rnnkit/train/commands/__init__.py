"""Thin sub-commands: parse flags, call the library in ``rnnkit.train``, print the result."""
from __future__ import annotations

import argparse

from ..config import FIELDS, PRESETS, base_type

DEVICE_HELP = "auto | cpu | cuda | cuda:N (default: auto, CUDA when there is one)"


def flag_help(name: str) -> str:
    """A field's help with its default and the task presets that change it (%% for argparse)."""
    f = FIELDS[name]
    default = f.default
    text = f"{f.metadata['help']} (default: {'not set' if default is None else _show(default)}"
    presets = [f"{task} {_show(p[name])}" for task, p in PRESETS.items() if name in p]
    if presets:
        text += "; task presets: " + ", ".join(presets)
    return (text + ")").replace("%", "%%")


def _show(v) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Config field (``--clip-at`` for clip_at); only flags given reach the config."""
    p.add_argument("--config", metavar="FILE.toml",
                   help="TOML file of options, e.g. a run's config.toml to repeat it (flags override it)")
    for name in FIELDS:
        t = base_type(name)
        flag = "--" + name.replace("_", "-")
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=flag_help(name))
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            p.add_argument(flag, type=t, metavar=name.upper(), **kwargs)


def overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in FIELDS}
