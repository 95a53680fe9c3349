"""Fused CPU backend: the C++ kernels of rnnkit/csrc behind the reference backend's contract.

``forward`` and ``backward`` take and return exactly what ``reference.forward`` and
``reference.backward`` do (same shapes, same saved tensors in the cell's ``saved_names``
format, so ``cell.trace`` works unchanged).  Each call runs the whole sequence of one layer
and direction in C++: per step one BLAS call for the recurrent term and one fused pass over
the gates; in backward the recurrent weight gradients are single GEMMs after the loop.
float32 and float64 only.
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple

from torch import Tensor

from ..cells.base import Cell
from . import _build

name = "cpu"

# Must match the enums in rnnkit/csrc/rnn.h.
_KIND = {"elman": 0, "jordan": 1, "lstm": 2, "gru": 3}
_ACT = {"tanh": 0, "relu": 1, "identity": 2, "sigmoid": 3, "softmax": 4}


def extension():
    """The compiled kernels (built on first use), or None when they cannot be built here."""
    return _build.load()


_specs: "weakref.WeakKeyDictionary[Cell, list]" = weakref.WeakKeyDictionary()


def _spec(cell: Cell) -> list:
    """(kind, hidden activation, output activation, reset_after) of a cell, as the kernels read it.

    Memoised per cell (a cell's settings never change after construction): ``step`` runs it per step.
    """
    spec = _specs.get(cell)
    if spec is None:
        spec = _specs[cell] = _make_spec(cell)
    return spec


def _make_spec(cell: Cell) -> list:
    return [_KIND[cell.name], _ACT[getattr(cell, "nonlinearity", "tanh")],
            _ACT[getattr(cell, "output_activation", "identity")], int(getattr(cell, "reset_after", True))]


def forward(cell: Cell, xp: Tensor, mask: Optional[Tensor], state0: Tuple[Tensor, ...],
            params: Tuple[Optional[Tensor], ...], save: bool = True):
    """Run the cell over T steps; returns (states, saved) stacked over time."""
    states, saved = _build.load().forward(_spec(cell), xp, mask, list(state0), list(params), save)
    return tuple(states), tuple(saved)


def backward(cell: Cell, d_out: Optional[Tensor], d_final: Tuple[Optional[Tensor], ...],
             mask: Optional[Tensor], state0, states, saved, params):
    """Backpropagation through time: (d_xp (T, B, G*H), d_state0 tuple, d_params tuple)."""
    d_xp, d_state0, d_params = _build.load().backward(
        _spec(cell), d_out, list(d_final), mask, list(state0), list(states), list(saved), list(params))
    return d_xp, tuple(d_state0), tuple(d_params)


def step(cell: Cell, x: Tensor, state0: Tuple[Tensor, ...], layers) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """One streaming step of a stack of layers, without autograd.

    x (B, I); state0 tuple of (L, B, S_k); layers: per layer [w_ih, b_ih, *rec_params].
    Returns the last layer's output (B, S_0) and the new states, tuple of (L, B, S_k).
    """
    out, h_n = _build.load().step(_spec(cell), x, list(state0), layers)   # out: a view of h_n[0][-1]
    return out, tuple(h_n)
