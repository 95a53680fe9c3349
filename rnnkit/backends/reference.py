"""Reference backend: the time loop in Python around the cell's step math.

Shapes (one layer, one direction): T steps, B batch, G*H gate width, S_k size of state k.

    xp      (T, B, G*H)   input projection x W_ih^T + b_ih for all steps
    mask    (T, B, 1)     bool, True where step t is inside sequence b; None = all valid
    state0  tuple of (B, S_k)
    states  tuple of (T, B, S_k): the carried state *after* every step (padded steps keep it)
    saved   tuple of (T, B, .): the cell's ``saved_names`` for backward / trace

Variable lengths: at a padded step the carried state is left unchanged, so the
last entry of ``states`` is each sequence's own final state.  Run with autograd
enabled, ``forward`` is also the plain step loop that tests differentiate
through; ``backward`` is backpropagation through time by the cell's
hand-derived ``step_backward``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell

name = "reference"


def _keep(mask_t: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    """State after a step: the new one inside the sequence, the old one on padding."""
    return new if mask_t is None else torch.where(mask_t, new, old)


def forward(cell: Cell, xp: Tensor, mask: Optional[Tensor], state0: Tuple[Tensor, ...],
            params: Tuple[Optional[Tensor], ...], save: bool = True):
    """Run the cell over T steps; returns (states, saved) stacked over time."""
    T = xp.shape[0]
    state = tuple(state0)
    states = [[] for _ in state]
    saved = [[] for _ in cell.saved_names]
    for t in range(T):
        new, sv = cell.step(xp[t], state, params)
        m = None if mask is None else mask[t]
        state = tuple(_keep(m, n, s) for n, s in zip(new, state))
        for k, s in enumerate(state):
            states[k].append(s)
        if save:
            for k, s in enumerate(sv):
                saved[k].append(s)
    return (tuple(torch.stack(s) for s in states),
            tuple(torch.stack(s) for s in saved) if save else ())


def backward(cell: Cell, d_out: Optional[Tensor], d_final: Tuple[Optional[Tensor], ...],
             mask: Optional[Tensor], state0, states, saved, params):
    """Backpropagation through time.

    d_out    (T, B, S_0) gradient of the emitted output (zero on padded steps), or None
    d_final  gradients of the final state, entries may be None
    returns  (d_xp (T, B, G*H), d_state0 tuple, d_params tuple)
    """
    T = states[0].shape[0]
    d_state = [torch.zeros_like(s[0]) if d is None else d.clone() for d, s in zip(d_final, states)]
    d_params = [None if p is None else torch.zeros_like(p) for p in params]
    d_xp = []
    for t in reversed(range(T)):
        prev = state0 if t == 0 else tuple(s[t - 1] for s in states)
        new = tuple(s[t] for s in states)
        m = None if mask is None else mask[t]
        if d_out is not None:
            d_state[0] = d_state[0] + d_out[t]
        # On padded rows the step did not happen: its gradient passes straight through.
        d_new = [d if m is None else torch.where(m, d, 0.0) for d in d_state]
        dxp_t, d_prev, dp = cell.step_backward(d_new, [s[t] for s in saved], prev, new, params)
        if m is not None:
            dxp_t = torch.where(m, dxp_t, 0.0)
            d_prev = [torch.where(m, dp_, d) for dp_, d in zip(d_prev, d_state)]
        d_state = list(d_prev)
        for k, g in enumerate(dp):
            if g is not None:
                d_params[k] += g
        d_xp.append(dxp_t)
    d_xp.reverse()
    return torch.stack(d_xp), tuple(d_state), tuple(d_params)
