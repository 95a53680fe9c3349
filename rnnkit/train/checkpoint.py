"""Checkpoints: one safetensors file holding every tensor, with JSON in its metadata.

Layout of ``checkpoint.safetensors``:
    tensors   ``model.<name>``   current weights          ``best.<name>`` best-validation weights
              ``optim.<param>.<key>`` optimiser tensors (Adam moments, step counts, ...)
              ``rng.torch.<rank>`` (``rng.cuda.<i>``) generator states
              ``carry.<i>`` carried TBPTT state, (D*L, B, S) with the global batch
    metadata  ``format``/``version``; JSON strings ``config``, ``optimizer`` (param groups and
              non-tensor state), ``scheduler``, ``progress`` (step, epoch, early stopping,
              history), ``stats`` (what predict/generate need to rebuild inputs), ``scaler``
              (the GradScaler of an fp16 CUDA run, else null; absent from older checkpoints)

This module alone knows that layout: ``capture`` makes a checkpoint of a run, and the
``Checkpoint`` methods read each part back (the trainer to resume, ``infer`` to use it).

Loading uses safetensors and json only, so a checkpoint never executes code (no pickle), and
checks before anything is built from it: the metadata's JSON types, every tensor's name and
dtype (read from the header, before the tensor), the config's types and ranges (as a run's
options are checked, model size included, before a network is built), the stats' types, ranges
and sizes (``tasks.restore``), and, on resuming, the optimiser's and scheduler's state against
the structure of a fresh one (``conforms``).  Version 2: forecasting stats name the
representation and the digits task keeps raw-pixel statistics.
Tensors are read onto the CPU (safetensors' ``safe_open`` device), whatever device wrote them;
weights are float32 whatever ``--precision`` trained them (autocast keeps float32 weights), so a
checkpoint resumes on any device and at any precision.
Writing is atomic: a temporary file in the same folder is written, fsync'd and renamed over
the old checkpoint, then the folder is fsync'd; a crash at any moment (kill -9 included)
leaves either the old or the new checkpoint, both complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from . import config as cfgmod
from .errors import UserError

FORMAT = "rnnkit-checkpoint"
VERSION = 2
NAME = "checkpoint.safetensors"
JSON_KEYS = ("config", "optimizer", "scheduler", "progress", "stats")
OPTIONAL_JSON_KEYS = ("scaler",)         # added within version 2: null when absent
# JSON types of the metadata entries (None: may be null).
_META_TYPES = {"config": (dict,), "optimizer": (dict,), "scheduler": (dict, type(None)),
               "progress": (dict,), "stats": (dict,), "scaler": (dict, type(None))}
# Tensor name prefix -> the dtypes it may have in the file.
_DTYPES = {"model.": ("F32",), "best.": ("F32",), "optim.": ("F32", "F64", "I64"), "carry.": ("F32",),
           "rng.torch.": ("U8",), "rng.cuda.": ("U8",)}
MAX_LIST = 1_000_000            # the longest list ``conforms`` accepts in saved optimiser/scheduler state


@dataclass
class Checkpoint:
    tensors: Dict[str, Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)        # the JSON_KEYS, parsed

    def group(self, prefix: str) -> Dict[str, Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    # -- the parts of a run, read back ---------------------------------------------------------
    def config(self, where: str) -> cfgmod.Config:
        """The run's config, its types and ranges checked; ``where`` names the checkpoint in errors."""
        cfg = cfgmod.from_dict(self.meta["config"], where)
        try:
            cfgmod.validate(cfg)
        except UserError as e:
            raise UserError(f"{where}: invalid config ({e})") from None
        return cfg

    def last_weights(self) -> Dict[str, Tensor]:
        return self.group("model")

    def best_weights(self) -> Optional[Dict[str, Tensor]]:
        """The best-validation weights; None when the run had no validation yet."""
        return self.group("best") or None

    def weights(self) -> Dict[str, Tensor]:
        """What eval/predict/generate use: the best-validation weights, else the last."""
        return self.best_weights() or self.last_weights()

    def optimizer_state(self) -> Dict[str, Any]:
        """A torch.optim state_dict."""
        return unflatten_optimizer(self.group("optim"), self.meta["optimizer"])

    def scheduler_state(self) -> Optional[dict]:
        return self.meta["scheduler"]

    def scaler_state(self) -> Optional[dict]:
        """The GradScaler's state_dict; None when the run used none (or predates --precision)."""
        return self.meta.get("scaler")

    def progress(self) -> dict:
        return self.meta["progress"]

    def stats(self) -> dict:
        return self.meta["stats"] or {}

    def carry(self) -> List[Tensor]:
        """The carried state tensors, in the order the layer's ``pack_state`` takes them."""
        return [self.tensors[f"carry.{i}"] for i in range(len(self.group("carry")))]

    def restore_rng(self, rank: int) -> None:
        """Set the generators as they were: process ``rank``'s torch state (rank 0's when the
        run had fewer processes) and the CUDA states when there is a GPU."""
        rng = self.group("rng.torch")
        state = rng.get(str(rank), rng.get("0"))
        if state is None or state.shape != torch.get_rng_state().shape:
            raise UserError("checkpoint: the random generator state is missing or of the wrong size")
        torch.set_rng_state(state)
        cuda = self.group("rng.cuda")
        if cuda and torch.cuda.is_available():     # the GPUs both machines have (none: CPU resume)
            for i in range(min(len(cuda), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda[str(i)], i)


def capture(*, config: cfgmod.Config, weights: Dict[str, Tensor], best: Optional[Dict[str, Tensor]],
            optimizer: Dict[str, Any], scheduler: Optional[dict], progress: dict, stats: dict,
            carry: List[Tensor], rng: Tensor, scaler: Optional[dict] = None) -> Checkpoint:
    """A run as a Checkpoint.  ``optimizer``/``scheduler``/``scaler``: torch state_dicts (scaler:
    None when unused); ``carry``: the layer's ``unpack_state`` of the carried state, global
    batch on dim 1; ``rng``: (P, n) the torch generator state of every process, in rank order."""
    opt_tensors, opt_rest = flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    tensors.update({f"carry.{i}": t for i, t in enumerate(carry)})
    tensors.update({f"rng.torch.{r}": t for r, t in enumerate(rng)})
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"config": cfgmod.to_dict(dataclasses.replace(config, resume=None)), "optimizer": opt_rest,
            "scheduler": scheduler, "progress": progress, "stats": stats, "scaler": scaler}
    return Checkpoint(tensors, meta)


def flatten_optimizer(sd: Dict[str, Any]):
    """torch.optim state_dict -> (tensors {'<param>.<key>': t}, JSON-able rest)."""
    tensors, rest = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                rest.setdefault(str(pid), {})[k] = v
    return tensors, {"state": rest, "param_groups": sd["param_groups"]}


def unflatten_optimizer(tensors: Dict[str, Tensor], rest: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for name, t in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = t
    for pid, d in rest["state"].items():
        state.setdefault(int(pid), {}).update(d)
    return {"state": state, "param_groups": rest["param_groups"]}


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that readers only ever see a whole file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)                        # make the rename itself durable
    finally:
        os.close(fd)


def save(path: Path, ckpt: Checkpoint) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt.tensors.items()}
    metadata = {"format": FORMAT, "version": str(VERSION)}
    metadata.update({k: json.dumps(ckpt.meta.get(k)) for k in JSON_KEYS + OPTIONAL_JSON_KEYS})
    atomic_write(path, st_save(tensors, metadata=metadata))


def resolve_path(path: str) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / NAME if p.is_dir() else p


def load(path: str) -> Checkpoint:
    """Read a checkpoint; any problem becomes one UserError line.  The metadata and every
    tensor's dtype are checked from the file's header before any tensor is read."""
    p = resolve_path(path)
    if not p.exists():
        raise UserError(f"checkpoint {p}: no such file")
    if p.is_dir():
        raise UserError(f"checkpoint {p}: is a folder without a {NAME}")
    try:
        with safe_open(str(p), framework="pt") as f:
            parsed = _metadata(f.metadata() or {}, p)
            for k in f.keys():
                _check_tensor(k, f.get_slice(k).get_dtype(), p)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {p}: unreadable, not a safetensors file or damaged "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return Checkpoint(tensors, parsed)


def _metadata(meta: Dict[str, str], p: Path) -> Dict[str, Any]:
    """The format, version and JSON entries of a checkpoint's header, their types checked."""
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {p}: not an rnnkit checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise UserError(f"checkpoint {p}: format version {meta.get('version')!r}, this rnnkit "
                        f"reads version {VERSION} (train the model again)")
    try:
        parsed = {k: json.loads(meta[k]) for k in JSON_KEYS}
        parsed.update({k: json.loads(meta.get(k, "null")) for k in OPTIONAL_JSON_KEYS})
    except (KeyError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"checkpoint {p}: damaged metadata ({str(e)[:200]})") from None
    for k, types in _META_TYPES.items():
        if not isinstance(parsed[k], types):
            raise UserError(f"checkpoint {p}: damaged metadata ({k}: expected "
                            f"{' or '.join('null' if t is type(None) else 'an object' for t in types)})")
    return parsed


def _check_tensor(name: str, dtype: str, p: Path) -> None:
    for prefix, allowed in _DTYPES.items():
        if name.startswith(prefix):
            if dtype not in allowed:
                raise UserError(f"checkpoint {p}: tensor {name[:100]!r} is {dtype}, expected "
                                f"{' or '.join(allowed)}")
            return
    raise UserError(f"checkpoint {p}: unexpected tensor {name[:100]!r}")


def conforms(saved: Any, fresh: Any, where: str) -> None:
    """UserError unless ``saved`` (JSON read from a checkpoint) has the structure of ``fresh``
    (the state_dict of a newly built optimiser or scheduler): the same keys, list lengths for
    lists of dicts, and leaf types (numbers for numbers, bools for bools, strings for strings)."""
    def bad(what: str):
        raise UserError(f"{where}: damaged state ({what})")

    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(map(str, saved)) != set(map(str, fresh)):
            bad(f"keys {sorted(map(str, saved))[:10] if isinstance(saved, dict) else type(saved).__name__}")
        by_name = {str(k): v for k, v in saved.items()}
        for k, v in fresh.items():
            conforms(by_name[str(k)], v, f"{where}.{k}")
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) > MAX_LIST:
            bad("expected a list")
        if fresh and isinstance(fresh[0], dict) and len(saved) != len(fresh):
            bad(f"{len(saved)} entries, expected {len(fresh)}")
        for i, v in enumerate(saved):
            conforms(v, fresh[min(i, len(fresh) - 1)] if fresh else v, f"{where}[{i}]")
    elif isinstance(fresh, bool):
        if not isinstance(saved, bool):
            bad(f"expected true or false, got {saved!r}"[:120])
    elif isinstance(fresh, (int, float)) or fresh is None:
        if not (saved is None or (isinstance(saved, (int, float)) and not isinstance(saved, bool))):
            bad(f"expected a number, got {saved!r}"[:120])
    elif isinstance(fresh, str) and not isinstance(saved, str):
        bad(f"expected a string, got {saved!r}"[:120])
