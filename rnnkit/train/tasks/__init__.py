"""Tasks: one small class per kind of problem, each owning its data splits, loss and metrics,
the figures it draws and how it comes back from a checkpoint (``base.Task``).

    base       Split, the masked per-step loss, Task
    forecast   Forecast: sunspots, a CSV column
    classify   Classify: the UEA/UCR sets, digits
    synthetic  Adding, Copy, Echo
    text       Text: the character model (a stream, truncated BPTT)
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Type

from ..config import Config
from .base import LN2, Split, Task, masked_step_ce, step_mask
from .classify import Classify, digits_task, uea_task
from .forecast import REPRESENTATIONS, Forecast, csv_task, sunspots_task
from .synthetic import Adding, Copy, Echo
from .text import Text

# Task name -> (its class, how a config loads its data, given the normalisation statistics a
# checkpoint saved or None to compute them).  The class alone restores a checkpoint's task.
TASKS: Dict[str, Tuple[Type[Task], Callable[[Config, Optional[dict]], Task]]] = {
    "sunspots": (Forecast, sunspots_task),
    "csv": (Forecast, csv_task),
    "japanese_vowels": (Classify, lambda c, s: uea_task(c, "JapaneseVowels", "japanese_vowels", s)),
    "italy_power": (Classify, lambda c, s: uea_task(c, "ItalyPowerDemand", "italy_power", s)),
    "gunpoint": (Classify, lambda c, s: uea_task(c, "GunPoint", "gunpoint", s)),
    "digits": (Classify, digits_task),
    "adding": (Adding, lambda c, s: Adding(c)),
    "copy": (Copy, lambda c, s: Copy(c)),
    "echo": (Echo, lambda c, s: Echo(c)),
    "text": (Text, Text),
}


def build(cfg: Config, stats: Optional[dict] = None) -> Task:
    """The task a config names, with its data loaded and checked; ``stats`` (a checkpoint's)
    gives the normalisation the model was trained with instead of computing it from the data."""
    return TASKS[cfg.task][1](cfg, stats)


def restore(name: str, stats: dict) -> Task:
    """Task ``name`` as a checkpoint's ``stats`` saved it, without its data (stats are checked:
    a damaged or hand-edited one is a UserError)."""
    return TASKS[name][0].restore(stats)


__all__ = ["LN2", "Split", "Task", "masked_step_ce", "step_mask", "Forecast", "Classify",
           "Adding", "Copy", "Echo", "Text", "TASKS", "REPRESENTATIONS", "build", "restore"]
