"""Argument checks that run before any computation.

Every message names the argument, what was expected and what was received.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


class MismatchError(ValueError, RuntimeError):
    """A value of the wrong shape, size or device: a ValueError, and a RuntimeError as torch.nn
    raises for the same input (so a caller's ``except RuntimeError`` keeps working)."""


class DTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: a TypeError, and a ValueError as torch.nn raises it."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (e.g. a float size): torch.nn raises TypeError."""


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: expected a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def choice(name: str, value, options: Sequence) -> None:
    if value not in options:
        raise ValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")


def dropout(value) -> float:
    """Inter-layer dropout probability in [0, 1], as torch.nn accepts it (1 zeroes every input of
    layers 1..L-1 in training)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"dropout: expected a number in [0, 1], got {value!r}")
    return float(value)


def no_projection(who: str, proj_size) -> None:
    """Projections are an LSTM option (torch.nn's ValueError for RNN and GRU)."""
    if proj_size != 0:
        raise ValueError(f"{who}: proj_size: only LSTM supports projections, got proj_size={proj_size!r}")


def input_tensor(who: str, x, input_size: int, dtype: torch.dtype) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input: expected a Tensor or PackedSequence, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{who}: input: expected 2-D (unbatched) or 3-D (batched) input, "
                         f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise MismatchError(f"{who}: input: expected last dimension input_size={input_size}, "
                            f"got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise DTypeError(f"{who}: input: expected dtype {dtype} (the parameters' dtype), got {x.dtype}")


def state_tensor(who: str, name: str, h, shape, dtype, device) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{who}: {name}: expected a Tensor, got {type(h).__name__}")
    if tuple(h.shape) != tuple(shape):
        raise MismatchError(f"{who}: {name}: expected shape {tuple(shape)}, got {tuple(h.shape)}")
    if h.dtype != dtype:
        raise DTypeError(f"{who}: {name}: expected dtype {dtype}, got {h.dtype}")
    if h.device != device:
        raise MismatchError(f"{who}: {name}: expected device {device}, got {h.device}")


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
    if lengths.device.type == "meta":
        raise MismatchError(f"{who}: lengths: expected a tensor with values (CPU or accelerator), "
                            "got a meta tensor")
    if lengths.numel() != B:
        raise ValueError(f"{who}: lengths: expected {B} entries (the batch size), got {lengths.numel()}")
    lengths = lengths.to("cpu", torch.long)
    if B:
        lo, hi = (int(v) for v in torch.aminmax(lengths))
        if lo < 1 or hi > T:
            raise ValueError(f"{who}: lengths: expected every length in [1, {T}] (T={T}), got min {lo}, max {hi}")
    return lengths


def no_conflict(who: str, lengths: Optional[Tensor]) -> None:
    if lengths is not None:
        raise ValueError(f"{who}: lengths: must be None when input is a PackedSequence "
                         f"(it carries its own lengths)")
