"""Argument checks that run before any computation.

Every message names the argument, what was expected and what was received.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def choice(name: str, value, options: Sequence) -> None:
    if value not in options:
        raise ValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")


def dropout(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout: expected a number in [0, 1), got {value!r}")
    return float(value)


def input_tensor(who: str, x, input_size: int, dtype: torch.dtype) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input: expected a Tensor or PackedSequence, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{who}: input: expected 2-D (unbatched) or 3-D (batched) input, "
                         f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"{who}: input: expected last dimension input_size={input_size}, "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{who}: input: expected dtype {dtype} (the parameters' dtype), got {x.dtype}")


def state_tensor(who: str, name: str, h, shape, dtype, device) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{who}: {name}: expected a Tensor, got {type(h).__name__}")
    if tuple(h.shape) != tuple(shape):
        raise ValueError(f"{who}: {name}: expected shape {tuple(shape)}, got {tuple(h.shape)}")
    if h.dtype != dtype:
        raise TypeError(f"{who}: {name}: expected dtype {dtype}, got {h.dtype}")
    if h.device != device:
        raise ValueError(f"{who}: {name}: expected device {device}, got {h.device}")


def lengths_tensor(who: str, lengths, T: int, B: int) -> Tensor:
    """Lengths as a 1-D int64 CPU tensor, each in [1, T], one per sequence."""
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in lengths):
            raise TypeError(f"{who}: lengths: expected integers, got {lengths!r}")
        lengths = torch.tensor(lengths, dtype=torch.long)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{who}: lengths: expected a 1-D integer tensor or list, "
                        f"got {type(lengths).__name__}")
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype.is_complex \
            or lengths.dtype == torch.bool:
        raise TypeError(f"{who}: lengths: expected a 1-D integer tensor, got {lengths.dim()}-D "
                        f"{lengths.dtype}")
    if lengths.numel() != B:
        raise ValueError(f"{who}: lengths: expected {B} entries (the batch size), got {lengths.numel()}")
    lengths = lengths.to("cpu", torch.long)
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"{who}: lengths: expected every length in [1, {T}] (T={T}), "
                         f"got min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths


def no_conflict(who: str, lengths: Optional[Tensor]) -> None:
    if lengths is not None:
        raise ValueError(f"{who}: lengths: must be None when input is a PackedSequence "
                         f"(it carries its own lengths)")
