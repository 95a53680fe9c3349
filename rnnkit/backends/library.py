"""The backends' sequence forward and backward as torch custom operators (torch.library).

``torch.compile`` and ``torch.export`` cannot look inside a C++ extension or treat a Python
object as an argument; as the operators ``rnnkit::sequence_forward`` and
``rnnkit::sequence_backward`` -- with the backend by name, the cell by its ``spec`` string, and
fake implementations that give every output's shape -- the time loop is one node of the graph.
In eager mode ``forward``/``backward`` below call the backend directly (no dispatcher
overhead); under compilation they emit the operators.

Shapes as in base.py: xp (T, B, G*H), mask (T, B, 1) bool, state0 (B, S_k), states (T, B, S_k),
saved (T, B, .) per ``cell.saved_sizes()``, d_xp like xp, noise (T, B, N_k) per
``cell.noise_sizes()`` -- an empty list for None (an operator's list argument has no None).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell


def _backend(name: str):
    from . import get                   # the registry sits in the package that imports this module
    return get(name)


def _noise(noise: List[Tensor]) -> Optional[Tuple[Tensor, ...]]:
    return tuple(noise) if noise else None


@torch.library.custom_op("rnnkit::sequence_forward", mutates_args=())
def _forward_op(backend: str, cell: str, xp: Tensor, mask: Optional[Tensor], state0: List[Tensor],
                params: List[Optional[Tensor]], save: bool, noise: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    states, saved = _backend(backend).forward(Cell.from_spec(cell), xp, mask, tuple(state0), tuple(params), save,
                                              _noise(noise))
    return list(states), list(saved)


@_forward_op.register_fake
def _(backend, cell, xp, mask, state0, params, save, noise):
    c = Cell.from_spec(cell)
    T, B = xp.shape[0], xp.shape[1]
    states = [xp.new_empty(T, B, s) for s in c.state_sizes()]
    saved = [xp.new_empty(T, B, s) for s in c.saved_sizes()] if save else []
    return states, saved


@torch.library.custom_op("rnnkit::sequence_backward", mutates_args=())
def _backward_op(backend: str, cell: str, d_out: Optional[Tensor], d_final: List[Optional[Tensor]],
                 mask: Optional[Tensor], state0: List[Tensor], states: List[Tensor], saved: List[Tensor],
                 params: List[Optional[Tensor]], noise: List[Tensor]) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    d_xp, d_state0, d_params = _backend(backend).backward(
        Cell.from_spec(cell), d_out, tuple(d_final), mask, tuple(state0), tuple(states), tuple(saved), tuple(params),
        _noise(noise))
    present = [g if g is not None else torch.zeros_like(p) for g, p in zip(d_params, params) if p is not None]
    return d_xp, list(d_state0), present


@_backward_op.register_fake
def _(backend, cell, d_out, d_final, mask, state0, states, saved, params, noise):
    c = Cell.from_spec(cell)
    T, B = states[0].shape[0], states[0].shape[1]
    d_xp = states[0].new_empty(T, B, c.n_gates * c.hidden_size)
    return d_xp, [s.new_empty(s.shape) for s in state0], [p.new_empty(p.shape) for p in params if p is not None]


def forward(backend, cell: Cell, xp: Tensor, mask: Optional[Tensor], state0: Sequence[Tensor],
            params: Sequence[Optional[Tensor]], save: bool, noise: Optional[Sequence[Tensor]] = None):
    """``backend.forward``, as one graph node when compiled: (states, saved)."""
    if not torch.compiler.is_compiling():
        return backend.forward(cell, xp, mask, tuple(state0), tuple(params), save, noise)
    states, saved = _forward_op(backend.name, cell.spec, xp, mask, list(state0), list(params), save,
                                list(noise or ()))
    return tuple(states), tuple(saved)


def backward(backend, cell: Cell, d_out: Optional[Tensor], d_final, mask: Optional[Tensor], state0, states,
             saved, params, noise: Optional[Sequence[Tensor]] = None):
    """``backend.backward``, as one graph node when compiled: (d_xp, d_state0, d_params)."""
    if not torch.compiler.is_compiling():
        return backend.backward(cell, d_out, d_final, mask, state0, states, saved, params, noise)
    d_xp, d_state0, present = _backward_op(backend.name, cell.spec, d_out, list(d_final), mask, list(state0),
                                           list(states), list(saved), list(params), list(noise or ()))
    it = iter(present)
    return d_xp, tuple(d_state0), tuple(None if p is None else next(it) for p in params)
