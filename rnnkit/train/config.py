"""The run configuration: one dataclass of defaults, task presets, TOML files and flag overrides.

Resolution order (later wins): the defaults below < the task's preset < the TOML file
(``--config``) < command-line flags.  When resuming, the checkpoint's saved config takes the
place of defaults and preset, and only the run-control fields (``RESUMABLE``) may change.
The resolved config is written to ``<out>/config.toml`` and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .. import backends, registry
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:                                                   # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass
class Config:
    # -- task and data --------------------------------------------------------------------
    task: str = _f("sunspots", "sunspots | csv | japanese_vowels | digits | italy_power | gunpoint "
                               "| text | adding | copy | echo")
    csv: Optional[str] = _f(None, "csv task: a CSV file with a header row")
    target: Optional[str] = _f(None, "csv task: the column to forecast")
    text: Optional[str] = _f(None, "text task: a UTF-8 text file")
    window: int = _f(12, "forecasting: past values the network reads to predict the next one")
    test_fraction: float = _f(0.2, "csv task: trailing part of the series held out for test")
    val_fraction: float = _f(0.1, "part of the training data held out for validation (0: none)")
    ar_order: int = _f(9, "forecasting: order of the least-squares AR baseline")
    forecast: str = _f("auto", "forecasting: what the network reads and predicts: level (the series "
                               "standardised) | change (the step from the last value) | window (each "
                               "window in its own scale, the step predicted) | auto (train change and "
                               "window, keep the better on validation)")
    season: int = _f(0, "forecasting: period of the seasonal-naive baseline (0: the training part's "
                        "strongest autocorrelation peak, if any)")
    seq_len: int = _f(50, "adding/echo: sequence length; copy: blank steps between symbols and recall")
    n_samples: int = _f(2000, "adding/copy/echo: training sequences (validation and test get a quarter)")
    delay: int = _f(3, "echo: the target at step t is the input at t - delay (negative: ahead)")
    # -- network (every option of rnnkit's layers) -----------------------------------------
    cell: str = _f("lstm", "elman | jordan | lstm | gru")
    hidden: int = _f(32, "hidden units per layer and direction")
    layers: int = _f(1, "stacked layers")
    bidirectional: bool = _f(False, "run a reverse direction too")
    dropout: float = _f(0.0, "dropout between stacked layers (needs layers >= 2)")
    nonlinearity: str = _f("tanh", "elman/jordan: tanh | relu")
    forget_bias: Optional[float] = _f(None, "lstm: initial forget-gate bias (e.g. 1.0)")
    reset_after: bool = _f(True, "gru: torch's form; --no-reset-after is Cho et al. 2014")
    jordan_output: int = _f(0, "jordan: size of the fed-back output (0: same as hidden)")
    output_activation: str = _f("identity", "jordan: identity | tanh | sigmoid | softmax")
    proj_size: int = _f(0, "lstm: project h to this many features, below hidden (torch's proj_size; 0: none)")
    peephole: bool = _f(False, "lstm: peephole connections, c into the gates (Gers & Schmidhuber 2000)")
    recurrent_dropout: float = _f(0.0, "dropout on h where it enters the recurrence, one mask per sequence "
                                       "(Gal & Ghahramani 2016)")
    zoneout: float = _f(0.0, "elman/lstm/gru: in training each unit keeps its previous state with this "
                             "probability (Krueger et al. 2017)")
    clip_recurrent: Optional[float] = _f(None, "clamp every state's gradient to [-x, x] at every BPTT step "
                                               "(a biased gradient; --clip still bounds the update)")
    layer_norm: bool = _f(False, "lstm/gru: layer normalisation of the gate pre-activations (and the lstm "
                                 "cell) at every step (Ba et al. 2016)")
    bias: bool = _f(True, "bias terms in the recurrent layers")
    backend: Optional[str] = _f(None, "time-loop backend (default: RNNKIT_BACKEND or auto)")
    # -- optimisation -----------------------------------------------------------------------
    optimizer: str = _f("adam", "sgd | adam | adamw | rmsprop | adagrad (torch.optim)")
    lr: float = _f(3e-3, "learning rate")
    momentum: float = _f(0.0, "sgd / rmsprop momentum")
    weight_decay: float = _f(0.0, "L2 penalty (decoupled for adamw)")
    scheduler: str = _f("none", "none | step | exponential | cosine | plateau (torch.optim.lr_scheduler)")
    step_size: int = _f(30, "step scheduler: epochs between decays")
    gamma: float = _f(0.5, "step / exponential / plateau: decay factor")
    clip: str = _f("norm", "gradient clipping: norm | value | none")
    clip_at: float = _f(1.0, "clipping threshold (max norm or max absolute value)")
    epochs: int = _f(300, "passes over the training data")
    batch_size: int = _f(32, "sequences per update (global, across all processes)")
    k1: int = _f(0, "truncated BPTT (text task): steps between updates (0: full BPTT)")
    k2: int = _f(0, "truncated BPTT: steps gradients flow back, k2 >= k1 (0: same as k1)")
    patience: int = _f(50, "early stopping: epochs without validation improvement (0: off)")
    seed: int = _f(0, "seed for initialisation, data order and dropout (0 to 4294967295)")
    threads: int = _f(0, "CPU threads (0: chosen from the work per step; see README, Threads)")
    # -- run ----------------------------------------------------------------------------------
    out: Optional[str] = _f(None, "run folder (default: runs/<task>-<date>-<time>)")
    resume: Optional[str] = _f(None, "continue the run in this folder (or from this checkpoint)")
    checkpoint_every: int = _f(0, "steps between checkpoints (0: at the end of each epoch only)")
    log_every: int = _f(10, "steps between JSONL step records")
    progress: Optional[bool] = _f(None, "progress on stderr: a live bar on a terminal, else a plain "
                                        "line every few seconds (--no-progress: none)")
    plots: bool = _f(True, "write PNG figures at the end")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when there is one)")
    precision: str = _f("fp32", "fp32 | bf16 | fp16: autocast dtype of the training forward; weights, "
                                "optimiser, checkpoints and evaluation stay float32 (fp16 on CUDA: "
                                "with a GradScaler)")


# Per-task starting points, applied over the defaults above and under the TOML file and flags.
PRESETS: Dict[str, Dict[str, Any]] = {
    # forecasting: a validation period of 20% (sunspots: 1877-1920, four solar cycles) picks the
    # epoch far more reliably than 10% did (6 seeds below AR(9) on both test periods, not 4)
    "sunspots": {"val_fraction": 0.2},
    "csv": {"val_fraction": 0.2},
    "japanese_vowels": {"hidden": 64, "epochs": 40, "lr": 5e-3, "patience": 10, "val_fraction": 0.15},
    "digits": {"hidden": 64, "epochs": 30, "lr": 5e-3, "patience": 8},
    "italy_power": {"hidden": 32, "epochs": 60, "lr": 5e-3, "batch_size": 16, "patience": 20,
                    "val_fraction": 0.15},
    "gunpoint": {"hidden": 32, "epochs": 60, "lr": 5e-3, "batch_size": 10, "patience": 20,
                 "val_fraction": 0.2},
    "text": {"hidden": 128, "epochs": 10, "lr": 3e-3, "k1": 64, "batch_size": 32, "patience": 3,
             "clip_at": 5.0},
    "adding": {"hidden": 64, "n_samples": 10000, "epochs": 20, "lr": 2e-3, "patience": 10},
    "copy": {"hidden": 64, "seq_len": 10, "n_samples": 10000, "epochs": 30, "lr": 5e-3, "patience": 10},
    "echo": {"hidden": 32, "seq_len": 40, "epochs": 15, "lr": 5e-3, "patience": 5},
}
TASKS = tuple(PRESETS)
CELLS = registry.names()
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULERS = ("none", "step", "exponential", "cosine", "plateau")
CLIPS = ("norm", "value", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
# Fields a resumed run may change; every other field must match the checkpoint's.
RESUMABLE = frozenset({"epochs", "patience", "checkpoint_every", "log_every", "progress", "plots",
                       "tensorboard", "device", "backend", "out", "resume", "threads",
                       "precision"})      # weights are float32 whatever the precision: a run may switch
FORECASTS = ("auto", "level", "change", "window")
MAX_SEED = 2 ** 32 - 1
MAX_INT = 2 ** 31 - 1          # any integer option; what fits in memory is checked later (model.py)
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def base_type(name: str) -> type:
    """int / float / str / bool for a field, Optional unwrapped."""
    t = _TYPES[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def coerce(name: str, value, where: str) -> Any:
    """Check one value's type (ints are accepted for floats); ``where`` names its source."""
    if name not in FIELDS:
        raise UserError(f"{where}: unknown option {name!r}")
    t = base_type(name)
    optional = type(None) in typing.get_args(_TYPES[name])
    if value is None and optional:
        return None
    ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: {name}: expected {t.__name__}, got {value!r}")
    return value


def load_toml(path: str) -> Dict[str, Any]:
    """Flat ``key = value`` pairs of a TOML file; tables are read as if flat (``[model] cell = ..``)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path}: not valid TOML ({e})") from None
    flat: Dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            flat[k] = coerce(k, v, f"--config {path}")
    return flat


def infer_task(values: Dict[str, Any]) -> str:
    """The task named, else the one a data flag implies (--csv, --text), else sunspots."""
    if "task" in values:
        return values["task"]
    for implied in ("csv", "text"):
        if values.get(implied) is not None:
            return implied
    return "sunspots"


def resolve(overrides: Dict[str, Any], toml_path: Optional[str] = None,
            base: Optional[Config] = None) -> Config:
    """Build and validate a Config; ``overrides`` holds only the flags the user gave."""
    values = load_toml(toml_path) if toml_path else {}
    values.update({k: coerce(k, v, "option") for k, v in overrides.items()})
    if base is None:
        task = infer_task(values)
        if task not in PRESETS:
            raise UserError(f"task: expected one of {', '.join(TASKS)}; got {task!r}")
        merged = {**dataclasses.asdict(Config()), **PRESETS[task], "task": task, **values}
    else:
        merged = {**dataclasses.asdict(base), **values}
    for name in ("csv", "text"):           # absolute, so eval/predict work from any folder
        if merged[name] is not None:
            merged[name] = str(Path(merged[name]).absolute())
    cfg = Config(**merged)
    validate(cfg)
    return cfg


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


def _one_of(name: str, value, options) -> None:
    _need(value in options, f"{name}: expected one of {', '.join(options)}; got {value!r}")


def validate(c: Config) -> None:
    """Ranges, choices and conflicts between options; raises UserError naming the option."""
    _one_of("task", c.task, TASKS)
    _one_of("cell", c.cell, CELLS)
    _one_of("optimizer", c.optimizer, OPTIMIZERS)
    _one_of("scheduler", c.scheduler, SCHEDULERS)
    _one_of("clip", c.clip, CLIPS)
    _one_of("nonlinearity", c.nonlinearity, ("tanh", "relu"))
    _one_of("output_activation", c.output_activation, ("identity", "tanh", "sigmoid", "softmax"))
    _one_of("forecast", c.forecast, FORECASTS)
    _one_of("precision", c.precision, PRECISIONS)
    for name in ("window", "ar_order", "seq_len", "n_samples", "hidden", "layers", "step_size",
                 "epochs", "batch_size", "log_every"):
        _need(0 < getattr(c, name) <= MAX_INT,
              f"{name}: expected a positive integer up to {MAX_INT}; got {getattr(c, name)}")
    for name in ("jordan_output", "k1", "k2", "patience", "checkpoint_every", "season", "threads"):
        _need(0 <= getattr(c, name) <= MAX_INT,
              f"{name}: expected an integer from 0 to {MAX_INT}; got {getattr(c, name)}")
    _need(abs(c.delay) <= MAX_INT, f"delay: expected an integer from -{MAX_INT} to {MAX_INT}; got {c.delay}")
    _need(0 <= c.seed <= MAX_SEED, f"seed: expected an integer from 0 to {MAX_SEED}; got {c.seed}")
    _need(c.season != 1, "season: 1 would be persistence; give the period (2 or more) or 0 to detect it")
    for name in ("lr", "clip_at", "gamma"):
        v = getattr(c, name)
        _need(math.isfinite(v) and v > 0, f"{name}: expected a positive number; got {v}")
    _need(math.isfinite(c.weight_decay) and c.weight_decay >= 0,
          f"weight_decay: expected 0 or more; got {c.weight_decay}")
    _need(0 <= c.momentum < 1, f"momentum: expected a number in [0, 1); got {c.momentum}")
    _need(0 <= c.dropout < 1, f"dropout: expected a number in [0, 1); got {c.dropout}")
    for name in ("recurrent_dropout", "zoneout"):
        _need(0 <= getattr(c, name) < 1, f"{name}: expected a number in [0, 1); got {getattr(c, name)}")
    _need(c.clip_recurrent is None or (math.isfinite(c.clip_recurrent) and c.clip_recurrent > 0),
          f"clip_recurrent: expected a positive number; got {c.clip_recurrent}")
    _need(0 <= c.proj_size < c.hidden,
          f"proj_size: expected 0 (none) or an integer below hidden ({c.hidden}); got {c.proj_size}")
    _need(not (c.layer_norm and c.cell == "gru" and not c.reset_after),
          "layer_norm: normalises torch's GRU form; not with --no-reset-after")
    _need(c.forget_bias is None or abs(c.forget_bias) <= 100,
          f"forget_bias: expected a number from -100 to 100; got {c.forget_bias}")
    _need(0 < c.test_fraction < 1, f"test_fraction: expected a number in (0, 1); got {c.test_fraction}")
    _need(0 <= c.val_fraction < 1, f"val_fraction: expected a number in [0, 1); got {c.val_fraction}")
    check_device(c.device)
    _check_backend(c.backend)
    _conflicts(c)


def check_device(name: str, flag: str = "device") -> None:
    """auto, cpu, cuda or cuda:N (whether it is there is checked when the run starts)."""
    _need(isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", name) is not None,
          f"{flag}: expected auto, cpu, cuda or cuda:N; got {name!r}")


def _check_backend(name: Optional[str]) -> None:
    """The backend named (or RNNKIT_BACKEND's) is known and, unless 'auto', runs here."""
    try:
        backends.check_name(name)
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e).splitlines()[0]) from None


def _cell_options(c: Config) -> None:
    """A cell's own options (the registry's ``options``) keep their defaults under other cells."""
    mine = registry.get(c.cell).options
    for name in sorted({o for e in registry.CELLS.values() for o in e.options} - set(mine)):
        owners = "/".join(e.name for e in registry.CELLS.values() if name in e.options)
        _need(getattr(c, name) == FIELDS[name].default,
              f"{name}: an option of the {owners} cell only (cell is {c.cell!r})")


def _conflicts(c: Config) -> None:
    """Options that make no sense together."""
    _need((c.csv is not None) == (c.task == "csv"),
          f"--csv: goes with the csv task (task is {c.task!r})" if c.csv is not None
          else "task csv: needs --csv FILE")
    _need((c.text is not None) == (c.task == "text"),
          f"--text: goes with the text task (task is {c.task!r})" if c.text is not None
          else "task text: needs --text FILE")
    _need(c.target is None or c.task == "csv", f"--target: goes with --csv (task is {c.task!r})")
    _need(c.dropout == 0 or c.layers > 1,
          f"dropout: acts between stacked layers, so it needs layers >= 2 (layers is {c.layers})")
    _cell_options(c)
    _need(c.forget_bias is None or c.bias, "forget_bias: needs bias terms (--no-bias given)")
    _need(c.momentum == 0 or c.optimizer in ("sgd", "rmsprop"),
          f"momentum: an sgd/rmsprop option (optimizer is {c.optimizer!r})")
    if c.task == "text":
        _need(c.k1 > 0, "k1: the text task is one long stream and needs truncated BPTT (k1 > 0)")
        _need(not c.bidirectional, "bidirectional: a language model cannot read ahead of the "
                                   "character it predicts")
    else:
        _need(c.k1 == 0 and c.k2 == 0, f"k1/k2: truncated BPTT applies to the text task (a stream); "
                                       f"task {c.task!r} trains each sequence with full BPTT")
    _need(c.k2 == 0 or c.k2 >= c.k1, f"k2: expected k2 >= k1 (k1={c.k1}, k2={c.k2})")


def check_resumable(saved: Config, new: Config) -> None:
    """A resumed run must keep everything that shaped the model, data and optimiser."""
    for name in FIELDS:
        if name not in RESUMABLE and getattr(saved, name) != getattr(new, name):
            raise UserError(f"--resume: {name} is {getattr(new, name)!r} here but "
                            f"{getattr(saved, name)!r} in the checkpoint")


def to_dict(c: Config) -> Dict[str, Any]:
    return dataclasses.asdict(c)


# The fields every checkpoint of format version 2 holds: one of them missing means a damaged
# checkpoint; a field added to Config since takes its default (the behaviour from before it).
SAVED_FIELDS_V2 = frozenset((
    "task", "csv", "target", "text", "window", "test_fraction", "val_fraction", "ar_order", "forecast",
    "season", "seq_len", "n_samples", "delay", "cell", "hidden", "layers", "bidirectional", "dropout",
    "nonlinearity", "forget_bias", "reset_after", "jordan_output", "output_activation", "proj_size",
    "peephole", "recurrent_dropout", "zoneout", "clip_recurrent", "bias", "backend", "optimizer", "lr",
    "momentum", "weight_decay", "scheduler", "step_size", "gamma", "clip", "clip_at", "epochs",
    "batch_size", "k1", "k2", "patience", "seed", "threads", "out", "resume", "checkpoint_every",
    "log_every", "progress", "plots", "tensorboard", "device"))


def from_dict(d: Dict[str, Any], where: str) -> Config:
    """Rebuild a saved config (from a checkpoint); unknown or mistyped keys, or a missing key
    that every version-2 checkpoint holds, are an error."""
    missing = sorted(SAVED_FIELDS_V2 - set(d))
    if missing:
        raise UserError(f"{where}: incomplete config (missing {', '.join(missing[:5])})")
    values = {k: coerce(k, v, where) for k, v in d.items()}
    try:
        return Config(**values)
    except TypeError as e:
        raise UserError(f"{where}: incomplete config ({e})") from None


def to_toml(c: Config, note: str = "") -> str:
    """The resolved config as flat TOML that ``--config`` reads back; unset options, and the
    run's own folder (so that ``--config`` repeats the run into a new one), are comments."""
    lines = ["# rnnkit resolved run configuration (rnnkit train --config this-file)"]
    lines += [f"# {line}" for line in note.splitlines()]
    for name, value in dataclasses.asdict(c).items():
        if value is None:
            lines.append(f"# {name} = (not set)")
        elif name == "out":
            lines.append(f"# out = {json.dumps(value)} (this run's folder; --out to choose one)")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f"{name} = {json.dumps(value)}")
        else:
            lines.append(f"{name} = {value!r}")
    return "\n".join(lines) + "\n"


def write_toml(c: Config, path: Path, note: str = "") -> None:
    path.write_text(to_toml(c, note), encoding="utf-8")
