"""Using a trained checkpoint: evaluate on its task, predict from a CSV, generate text.

The network is rebuilt from the config saved in the checkpoint and given its best-validation
weights (the last weights when the run had no validation).  ``evaluate`` loads the task's data
again; ``predict`` and ``generate`` need only the task as the checkpoint saved it
(``tasks.restore``), which also says whether it can read a CSV or sample text.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Tuple

import torch

from . import checkpoint, config as cfgmod, distributed, resources, tasks
from .errors import UserError
from .loop import Trainer
from .model import Net, check_fits

MAX_LENGTH = 1_000_000          # characters ``generate`` samples at most


def _load(path: str, device: str = "cpu") -> Tuple[checkpoint.Checkpoint, cfgmod.Config]:
    """The checkpoint and its config (checked), to run on ``device``."""
    ck = checkpoint.load(path)
    cfg = dataclasses.replace(ck.config(f"checkpoint {path}"), resume=None, device=device)
    try:
        cfgmod.validate(cfg)
    except UserError as e:
        raise UserError(f"checkpoint {path}: incompatible config ({e})") from None
    return ck, cfg


def _task(ck: checkpoint.Checkpoint, cfg: cfgmod.Config, path: str) -> tasks.Task:
    """The task as the checkpoint saved it (its stats checked), and the network checked to fit."""
    try:
        task = tasks.restore(cfg.task, ck.stats())
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    check_fits(cfg, task, torch.device("cpu"))
    return task


def _load_weights(net: torch.nn.Module, ck: checkpoint.Checkpoint, path: str) -> None:
    try:
        net.load_state_dict(ck.weights())
    except RuntimeError as e:
        raise UserError(f"checkpoint {path}: weights do not fit its config "
                        f"({str(e).splitlines()[0]})") from None


def evaluate(path: str, device: str = "cpu") -> dict:
    """Test metrics (and baselines) of a checkpoint on its own task's test data."""
    cfgmod.check_device(device, "--device")
    ck, cfg = _load(path, device)
    _task(ck, cfg, path)                                  # stats and size checked before the data
    dev = distributed.torch_device(cfg.device)
    try:
        trainer = Trainer(cfg, distributed.Dist(device=dev), stats=ck.stats())
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    _load_weights(trainer.net, ck, path)
    result = trainer.describe()
    with resources.threads(trainer.threads):
        trainer.test(result)
    result["out"] = None
    return result


def _net(ck: checkpoint.Checkpoint, cfg: cfgmod.Config, task: tasks.Task, path: str) -> Net:
    """The network alone, without loading the task's data, in eval mode."""
    net = Net.for_task(cfg, task)
    _load_weights(net, ck, path)
    return net.eval()


class Loaded(NamedTuple):
    """A checkpoint restored without its task's data (see ``load``)."""

    config: cfgmod.Config
    task: tasks.Task
    net: Net


def load(path: str) -> Loaded:
    """The checkpoint's config (checked, to run on the CPU), its task as saved (stats checked)
    and its network in eval mode with the weights eval/predict use; UserError when it cannot be."""
    ck, cfg = _load(path)
    task = _task(ck, cfg, path)
    return Loaded(cfg, task, _net(ck, cfg, task, path))


def load_net(path: str) -> Net:
    """The checkpoint's network in eval mode with the weights eval/predict use (see ``load``)."""
    return load(path).net


@torch.no_grad()
def predict(path: str, csv_path: str, target: Optional[str] = None) -> str:
    """Predictions as CSV text.

    Forecasting checkpoints: one-step-ahead forecasts of a column (``target``, default the
    trained column) — ``index,actual,forecast`` per row from the window-th on, then ``next``.
    Classification checkpoints: one sequence per CSV row (step-major, channels interleaved;
    a non-numeric first row is a header) — ``row,class,probability``.
    """
    ck, cfg = _load(path)
    task = _task(ck, cfg, path)
    if task.predict_hint:
        raise UserError(f"checkpoint {path}: a {cfg.task} model; {task.predict_hint}")
    return task.predict_csv(_net(ck, cfg, task, path), csv_path, target or cfg.target)


@torch.no_grad()
def generate(path: str, prime: str, length: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
    """Sample ``length`` characters from a text checkpoint after reading ``prime``."""
    ck, cfg = _load(path)
    task = _task(ck, cfg, path)
    if task.vocab is None:
        raise UserError(f"checkpoint {path}: a {cfg.task} model, not a character model (task text)")
    if not 0 <= length <= MAX_LENGTH:
        raise UserError(f"--length: expected 0 to {MAX_LENGTH:,}, got {length}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"--temperature: expected a positive number, got {temperature}")
    if not 0 <= seed <= cfgmod.MAX_SEED:
        raise UserError(f"--seed: expected an integer from 0 to {cfgmod.MAX_SEED}, got {seed}")
    vocab = task.vocab
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in prime if ch not in index})
    if unknown:
        raise UserError(f"--prime: characters {''.join(unknown)!r} are not in the model's vocabulary")
    net = _net(ck, cfg, task, path)
    g = torch.Generator().manual_seed(seed)
    ids = [index[ch] for ch in prime] or [int(torch.randint(len(vocab), (1,), generator=g))]
    out, state = net(torch.tensor([ids]))
    chars = []
    for _ in range(length):
        logits = out[0, -1].double()
        probs = torch.softmax((logits - logits.max()) / temperature, -1)     # finite at any temperature
        nxt = int(torch.multinomial(probs, 1, generator=g))
        chars.append(vocab[nxt])
        out, state = net(torch.tensor([[nxt]]), state=state)
    return prime + "".join(chars)
