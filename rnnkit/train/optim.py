"""The optimiser and the learning-rate schedule a config asks for (torch.optim).

The schedule is epoch-wise: ``Schedule.step(loss)`` once after every epoch, where ``loss`` is
the epoch's validation loss (the training loss when there is no validation); only
``plateau`` reads it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.optim import lr_scheduler

from .config import Config


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o, lr, wd = cfg.optimizer, cfg.lr, cfg.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad}
    return kinds[o](params, lr=lr, weight_decay=wd)


# scheduler name -> (torch's scheduler for (config, optimiser), whether its step reads the loss)
SCHEDULES: Dict[str, Tuple[Callable[[Config, Any], Any], bool]] = {
    "step": (lambda c, opt: lr_scheduler.StepLR(opt, c.step_size, c.gamma), False),
    "exponential": (lambda c, opt: lr_scheduler.ExponentialLR(opt, c.gamma), False),
    "cosine": (lambda c, opt: lr_scheduler.CosineAnnealingLR(opt, c.epochs), False),
    "plateau": (lambda c, opt: lr_scheduler.ReduceLROnPlateau(
        opt, factor=c.gamma, patience=max(1, c.patience // 3)), True),
}


class Schedule:
    """The configured epoch-wise schedule, or none (``scheduler = "none"``: every call is a no-op)."""

    def __init__(self, cfg: Config, opt: torch.optim.Optimizer):
        make, self.reads_loss = SCHEDULES.get(cfg.scheduler, (None, False))
        self.torch = make(cfg, opt) if make else None

    def step(self, loss: float) -> None:
        """After an epoch: move the learning rate on (``plateau``: by the epoch's loss)."""
        if self.torch is None:
            return
        if self.reads_loss:
            self.torch.step(loss)
        else:
            self.torch.step()

    def state_dict(self) -> Optional[dict]:
        return self.torch.state_dict() if self.torch else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.torch is not None:
            self.torch.load_state_dict(state)

