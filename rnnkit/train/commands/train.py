"""``rnnkit train``: train a network on a task (sunspots by default) and print a summary table."""
from __future__ import annotations

from .. import config_for, train
from ..logs import summary_table
from . import add_config_flags, overrides


def add_arguments(p) -> None:
    add_config_flags(p)


def run(args) -> int:
    result = train(config_for(overrides(args), args.config))
    if result["main"]:                       # under torchrun, one process reports
        print(summary_table(result))
    return 0
