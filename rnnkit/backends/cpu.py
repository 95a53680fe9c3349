"""Fused CPU backend: the C++ kernels of rnnkit/csrc behind the backend contract (base.py).

``forward`` and ``backward`` take and return exactly what the reference backend's do (same
shapes, same saved tensors in the cell's ``saved_names`` format, so ``cell.trace`` works
unchanged).  Each call runs the whole sequence of one layer and direction in C++: per step one
BLAS call for the recurrent term and one fused pass over the gates; in backward the recurrent
weight gradients are single GEMMs after the loop.  CPU float32 and float64 only.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell
from . import _build
from .base import YES, Backend, Support

DTYPES = (torch.float32, torch.float64)

# Must match the enums in rnnkit/csrc/rnn.h.
_KIND = {"elman": 0, "jordan": 1, "lstm": 2, "gru": 3}
_ACT = {"tanh": 0, "relu": 1, "identity": 2, "sigmoid": 3, "softmax": 4}


def extension():
    """The compiled kernels (built on first use), or None when they cannot be built here."""
    return _build.load()


def _make_spec(key) -> List[int]:
    """The kernels' encoding of a cell (its ``key``: name and options)."""
    name, options = key
    opts = dict(options)
    return [_KIND[name], _ACT[opts.get("nonlinearity", "tanh")], _ACT[opts.get("output_activation", "identity")],
            int(opts.get("reset_after", "1") == "1")]


class CPU(Backend):
    name = "cpu"

    def __init__(self):
        self._specs: Dict[tuple, List[int]] = {}

    def available(self) -> Support:
        if extension() is None:
            return Support(False, f"the C++ kernels could not be built ({_build.error()}); "
                                  "run `rnnkit build --verbose` to see why")
        return YES

    def supports(self, cell: Cell, device, dtype) -> Support:
        if torch.device(device).type != "cpu":
            return Support(False, f"runs on CPU tensors only, got device {device}")
        if dtype not in DTYPES:
            return Support(False, f"runs float32 and float64 only, got {dtype}")
        if cell.name not in _KIND:
            return Support(False, f"has no kernel for the {cell.name!r} cell")
        return self.available()

    def _spec(self, cell: Cell) -> List[int]:
        """The kernels' encoding of a cell, memoised (``step`` needs it per call)."""
        spec = self._specs.get(cell.key)
        if spec is None:
            spec = self._specs[cell.key] = _make_spec(cell.key)
        return spec

    def forward(self, cell, xp, mask, state0, params, save=True):
        states, saved = extension().forward(self._spec(cell), xp, mask, list(state0), list(params), save)
        return tuple(states), tuple(saved)

    def backward(self, cell, d_out, d_final, mask, state0, states, saved, params):
        d_xp, d_state0, d_params = extension().backward(
            self._spec(cell), d_out, list(d_final), mask, list(state0), list(states), list(saved), list(params))
        return d_xp, tuple(d_state0), tuple(d_params)

    def step(self, cell: Cell, x: Tensor, state0, layers) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        out, h_n = extension().step(self._spec(cell), x, list(state0), layers)   # out: a view of h_n[0][-1]
        return out, tuple(h_n)

    def stepper(self, cell, layers, batch_size, who):
        return extension().Stepper(who, self._spec(cell), layers, batch_size)


BACKEND = CPU()
