"""Checkpoints: one safetensors file holding every tensor, with JSON in its metadata.

Layout of ``checkpoint.safetensors``:
    tensors   ``model.<name>``   current weights          ``best.<name>`` best-validation weights
              ``optim.<param>.<key>`` optimiser tensors (Adam moments, step counts, ...)
              ``rng.torch`` (``rng.cuda.<i>``) generator states   ``carry.<i>`` carried TBPTT state
    metadata  ``format``/``version``; JSON strings ``config``, ``optimizer`` (param groups and
              non-tensor state), ``scheduler``, ``progress`` (step, epoch, early stopping,
              history), ``stats`` (what predict/generate need to rebuild inputs)

Loading uses safetensors and json only, so a checkpoint never executes code (no pickle).
Writing is atomic: a temporary file in the same folder is written, fsync'd and renamed over
the old checkpoint, then the folder is fsync'd; a crash at any moment (kill -9 included)
leaves either the old or the new checkpoint, both complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from .errors import UserError

FORMAT = "rnnkit-checkpoint"
VERSION = 1
NAME = "checkpoint.safetensors"
JSON_KEYS = ("config", "optimizer", "scheduler", "progress", "stats")


@dataclass
class Checkpoint:
    tensors: Dict[str, Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)        # the JSON_KEYS, parsed

    def group(self, prefix: str) -> Dict[str, Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


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
    metadata.update({k: json.dumps(ckpt.meta.get(k)) for k in JSON_KEYS})
    atomic_write(path, st_save(tensors, metadata=metadata))


def resolve_path(path: str) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / NAME if p.is_dir() else p


def load(path: str) -> Checkpoint:
    """Read a checkpoint; any problem becomes one UserError line."""
    p = resolve_path(path)
    if not p.exists():
        raise UserError(f"checkpoint {p}: no such file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {p}: unreadable, not a safetensors file or damaged "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {p}: not an rnnkit checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise UserError(f"checkpoint {p}: format version {meta.get('version')!r}, this rnnkit "
                        f"reads version {VERSION}")
    try:
        parsed = {k: json.loads(meta[k]) for k in JSON_KEYS}
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {p}: damaged metadata ({e})") from None
    return Checkpoint(tensors, parsed)
