"""Tasks: one small class per kind of problem, each owning its data splits, loss and metrics,
the figures it draws and how it comes back from a checkpoint (``base.Task``).

    base       Split, the masked per-step loss, Task
    forecast   Forecast: sunspots, a CSV column
    classify   Classify: the UEA/UCR sets, digits
    synthetic  Adding, Copy, Echo
    text       Text: the character model (a stream, truncated BPTT)
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple, Type

from ..config import Config
from .base import LN2, Split, Task, masked_step_ce, step_mask
from .classify import Classify, digits_task, uea_task
from .forecast import Forecast, csv_task, sunspots_task
from .synthetic import Adding, Copy, Echo
from .text import Text

# Task name -> (its class, how a config loads its data).  The class alone restores a checkpoint.
TASKS: Dict[str, Tuple[Type[Task], Callable[[Config], Task]]] = {
    "sunspots": (Forecast, sunspots_task),
    "csv": (Forecast, csv_task),
    "japanese_vowels": (Classify, lambda c: uea_task(c, "JapaneseVowels", "japanese_vowels")),
    "italy_power": (Classify, lambda c: uea_task(c, "ItalyPowerDemand", "italy_power")),
    "gunpoint": (Classify, lambda c: uea_task(c, "GunPoint", "gunpoint")),
    "digits": (Classify, digits_task),
    "adding": (Adding, Adding),
    "copy": (Copy, Copy),
    "echo": (Echo, Echo),
    "text": (Text, Text),
}


def build(cfg: Config) -> Task:
    """The task a config names, with its data loaded and checked."""
    return TASKS[cfg.task][1](cfg)


def restore(name: str, stats: dict) -> Task:
    """Task ``name`` as a checkpoint's ``stats`` saved it, without its data."""
    return TASKS[name][0].restore(stats)


__all__ = ["LN2", "Split", "Task", "masked_step_ce", "step_mask", "Forecast", "Classify",
           "Adding", "Copy", "Echo", "Text", "TASKS", "build", "restore"]
