"""Bernoulli masks for recurrent dropout and zoneout, from a counter-based hash.

A training forward draws a zoneout mask per carried state of shape (T, B, S_k); torch's
``bernoulli_`` takes about 6 ns per element on this project's CPU, which made a zoneout LSTM's
forward 1.4x the plain one's at (B, H) = (8, 128).  Here one draw from torch's generator gives two
32-bit keys, and every element is a hash of its index and the keys::

    k0, k1 = torch.randint(2**32, (2,))                    # torch's (CPU) generator: seeds hold
    x_i = mix(mix((i + k0) mod 2^32) xor k1)               # i: the element's flat index
    mask_i = value  if (x_i >> 8) < round(p * 2^24)  else 0

``mix`` is a 32-bit integer finaliser (xor-shift, multiply, xor-shift, multiply, xor-shift).  The
C++ kernels compute it (``bernoulli_hash``, csrc/noise.cpp; float32 and float64) once the process
has loaded them; torch ops give the same numbers elsewhere (CUDA tensors, 16-bit dtypes, a machine
without a compiler, torch.compile), so a seed gives the same masks on every backend and device.
p is resolved to 2^-24.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

_M1, _M2 = 0x7FEB352D, 0x846CA68B
_LOW32 = 0xFFFFFFFF
MAX_ELEMENTS = 1 << 32              # the index is 32 bits

# The C++ form, fill(out, threshold, k0, k1, value), set by rnnkit.backends when it loads the
# kernels (this module sits below the backends and never imports them).
_cpu_fill: Optional[Callable[[Tensor, int, int, int, float], None]] = None


def use_cpu_fill(fill: Optional[Callable[[Tensor, int, int, int, float], None]]) -> None:
    """Let ``bernoulli`` fill CPU tensors with ``fill`` (None: torch ops only)."""
    global _cpu_fill
    _cpu_fill = fill


def threshold(p: float) -> int:
    """The 24-bit threshold below which an element is drawn (probability p)."""
    return int(round(p * (1 << 24)))


def bernoulli(shape: Sequence[int], p: float, like: Tensor, value: float = 1.0) -> Tensor:
    """A new tensor of ``shape`` (dtype and device of ``like``): ``value`` with probability p, else 0."""
    shape = tuple(int(s) for s in shape)
    out = like.new_empty(shape)
    if out.numel() > MAX_ELEMENTS:
        raise ValueError(f"rnnkit.noise.bernoulli: shape: expected at most 2^32 elements, got {shape}")
    keys = torch.randint(1 << 32, (2,), dtype=torch.int64)
    if (_cpu_fill is not None and out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling()):
        k0, k1 = keys.tolist()
        _cpu_fill(out, threshold(p), k0, k1, value)
        return out
    return hashed(out.numel(), keys.to(out.device), out.device).lt(threshold(p)).to(out.dtype).mul_(value).view(shape)


def hashed(n: int, keys: Tensor, device) -> Tensor:
    """(x_i >> 8) for i < n as int64 (the module's definition, in torch ops)."""
    i = torch.arange(n, dtype=torch.int64, device=device)
    x = _mix((i + keys[0]) & _LOW32)
    return _mix(x ^ keys[1]) >> 8


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without overflowing int64: c in 16-bit halves."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _LOW32
