"""Using a trained checkpoint: evaluate on its task, predict from a CSV, generate text.

The network is rebuilt from the config saved in the checkpoint and given its best-validation
weights (the last weights when the run had no validation).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import checkpoint, config as cfgmod, data, distributed
from .errors import UserError
from .loop import Trainer
from .model import Net


def _load(path: str, device: str = "cpu") -> Tuple[checkpoint.Checkpoint, cfgmod.Config]:
    ck = checkpoint.load(path)
    cfg = cfgmod.from_dict(ck.meta["config"], f"checkpoint {path}")
    cfg = dataclasses.replace(cfg, resume=None, device=device)
    try:
        cfgmod.validate(cfg)
    except UserError as e:
        raise UserError(f"checkpoint {path}: incompatible config ({e})") from None
    return ck, cfg


def _weights(ck: checkpoint.Checkpoint) -> Dict[str, torch.Tensor]:
    return ck.group("best") or ck.group("model")


def _load_weights(net: torch.nn.Module, ck: checkpoint.Checkpoint, path: str) -> None:
    try:
        net.load_state_dict(_weights(ck))
    except RuntimeError as e:
        raise UserError(f"checkpoint {path}: weights do not fit its config "
                        f"({str(e).splitlines()[0]})") from None


def evaluate(path: str, device: str = "cpu") -> dict:
    """Test metrics (and baselines) of a checkpoint on its own task's test data."""
    ck, cfg = _load(path, device)
    trainer = Trainer(cfg, distributed.Dist(device=torch.device(device)))
    _load_weights(trainer.net, ck, path)
    result = trainer.describe()
    trainer.test(result)
    result["out"] = None
    return result


def _net(ck: checkpoint.Checkpoint, cfg: cfgmod.Config, path: str) -> Net:
    """The network alone, without loading the task's data."""
    stats = ck.meta["stats"] or {}
    if cfg.task == "text":
        net = Net(cfg, 0, len(stats["vocab"]), "all", tokens=len(stats["vocab"]))
    elif "classes" in stats:
        k = len(stats["classes"])
        net = Net(cfg, len(stats["mean"]), 1 if k == 2 else k, "last")
    else:
        net = Net(cfg, 1, 1, "last")
    _load_weights(net, ck, path)
    return net.eval()


@torch.no_grad()
def predict(path: str, csv_path: str, target: Optional[str] = None) -> str:
    """Predictions as CSV text.

    Forecasting checkpoints: one-step-ahead forecasts of a column (``target``, default the
    trained column) — ``index,actual,forecast`` per row from the window-th on, then ``next``.
    Classification checkpoints: one sequence per CSV row (step-major, channels interleaved;
    a non-numeric first row is a header) — ``row,class,probability``.
    """
    ck, cfg = _load(path)
    stats = ck.meta["stats"] or {}
    if cfg.task == "text":
        raise UserError(f"checkpoint {path}: a text model; use rnnkit generate")
    if "classes" not in stats and "window" not in stats:
        raise UserError(f"checkpoint {path}: a {cfg.task} model; predict reads forecasting and "
                        f"classification checkpoints (try rnnkit eval)")
    if "classes" in stats:
        return _classify_csv(_net(ck, cfg, path), stats, csv_path)
    return _forecast_csv(_net(ck, cfg, path), stats, csv_path, target or cfg.target)


def _forecast_csv(net: Net, stats: dict, csv_path: str, target: Optional[str]) -> str:
    values, labels = data.read_csv_column(csv_path, target)
    w = stats["window"]
    if len(values) < w:
        raise UserError(f"--csv {csv_path}: the series has {len(values)} values, fewer than the "
                        f"model's window of {w}")
    z = torch.tensor((values - stats["mean"]) / stats["std"], dtype=torch.float32)
    x = z.unfold(0, w, 1).unsqueeze(-1)                     # (N - w + 1, w, 1): every window
    pred = net(x)[0].squeeze(-1).double().numpy() * stats["std"] + stats["mean"]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["index", "actual", "forecast"])
    for t in range(w, len(values)):
        out.writerow([labels[t], repr(float(values[t])), f"{pred[t - w]:.6g}"])
    out.writerow(["next", "", f"{pred[-1]:.6g}"])
    return buf.getvalue()


def _read_rows(csv_path: str, channels: int) -> List[np.ndarray]:
    """Numeric CSV rows as (T_i, channels) arrays; a non-numeric first row is skipped as a header."""
    text = data.open_text(csv_path, "--csv")
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    try:
        [float(c) for c in rows[0] if c.strip()]
    except ValueError:
        rows = rows[1:]
    if not rows:
        raise UserError(f"--csv {csv_path}: no data rows")
    cases = []
    for n, row in enumerate(rows, start=1):
        vals = [data.number(c, f"--csv {csv_path}: row {n}") for c in row if c.strip()]
        if not vals or len(vals) % channels:
            raise UserError(f"--csv {csv_path}: row {n} has {len(vals)} values; the model reads "
                            f"{channels} channel(s) per step, so a row needs a positive multiple of {channels}")
        cases.append(np.asarray(vals, dtype=np.float32).reshape(-1, channels))
    return cases


def _classify_csv(net: Net, stats: dict, csv_path: str) -> str:
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    cases = _read_rows(csv_path, len(mean))
    T = max(len(c) for c in cases)
    x = torch.zeros(len(cases), T, len(mean))
    for i, c in enumerate(cases):
        x[i, :len(c)] = (torch.from_numpy(c) - mean) / std
    lengths = torch.tensor([len(c) for c in cases])
    out = net(x, lengths)[0]
    classes = stats["classes"]
    if len(classes) == 2:
        p1 = torch.sigmoid(out.squeeze(-1))
        probs = torch.stack([1 - p1, p1], -1)
    else:
        probs = torch.softmax(out, -1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "class", "probability"])
    for i, p in enumerate(probs):
        k = int(p.argmax())
        w.writerow([i + 1, classes[k], f"{float(p[k]):.4f}"])
    return buf.getvalue()


@torch.no_grad()
def generate(path: str, prime: str, length: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
    """Sample ``length`` characters from a text checkpoint after reading ``prime``."""
    ck, cfg = _load(path)
    if cfg.task != "text":
        raise UserError(f"checkpoint {path}: a {cfg.task} model, not a character model (task text)")
    if length < 0:
        raise UserError(f"--length: expected 0 or more, got {length}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"--temperature: expected a positive number, got {temperature}")
    vocab = ck.meta["stats"]["vocab"]
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in prime if ch not in index})
    if unknown:
        raise UserError(f"--prime: characters {''.join(unknown)!r} are not in the model's vocabulary")
    net = _net(ck, cfg, path)
    g = torch.Generator().manual_seed(seed)
    ids = [index[ch] for ch in prime] or [int(torch.randint(len(vocab), (1,), generator=g))]
    out, state = net(torch.tensor([ids]))
    chars = []
    for _ in range(length):
        probs = torch.softmax(out[0, -1] / temperature, -1)
        nxt = int(torch.multinomial(probs, 1, generator=g))
        chars.append(vocab[nxt])
        out, state = net(torch.tensor([[nxt]]), state=state)
    return prime + "".join(chars)
