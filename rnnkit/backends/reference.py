"""Reference backend: the time loop in Python around the cell's step math (shapes: base.py).

Variable lengths: at a padded step the carried state is left unchanged, so the
last entry of ``states`` is each sequence's own final state.  Run with autograd
enabled, ``forward`` is also the plain step loop that tests differentiate
through; ``backward`` is backpropagation through time by the cell's
hand-derived ``step_backward``.

``noise`` (the cell's per-step random tensors, (T, B, N_k); None in eval) is sliced per step and
handed to the cell.  ``cell.clip_recurrent`` = x clamps the gradient of every carried state after
step t -- its total, from the output at t and from step t+1 -- to [-x, x] at every step of
``backward``; under autograd, ``forward`` registers the same clamp as a hook on every state.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell
from ..sequence import keep, step_stack
from .base import Backend


def _noise_at(noise: Optional[Sequence[Tensor]], t: int) -> Optional[Tuple[Tensor, ...]]:
    return None if noise is None else tuple(n[t] for n in noise)


def forward(cell: Cell, xp: Tensor, mask: Optional[Tensor], state0: Tuple[Tensor, ...],
            params: Tuple[Optional[Tensor], ...], save: bool = True, noise=None):
    """Run the cell over T steps; returns (states, saved) stacked over time."""
    T = xp.shape[0]
    state = tuple(state0)
    states = [[] for _ in state]
    saved = [[] for _ in cell.saved_names]
    clip = cell.clip_recurrent
    for t in range(T):
        new, sv = cell.step(xp[t], state, params, _noise_at(noise, t))
        m = None if mask is None else mask[t]
        state = tuple(keep(m, n, s) for n, s in zip(new, state))
        if clip is not None:
            # The hook goes on an alias: the step's own tensor (a full-length step keeps it) also
            # feeds the step's other outputs (an LSTM's c_t its h_t), whose gradient must not be
            # clamped with it -- only what comes from the output at t and from step t+1 is.
            state = tuple(s.view_as(s) for s in state)
            for s in state:
                if s.requires_grad:
                    s.register_hook(lambda g: g.clamp(-clip, clip))
        for k, s in enumerate(state):
            states[k].append(s)
        if save:
            for k, s in enumerate(sv):
                saved[k].append(s)
    return (tuple(torch.stack(s) for s in states),
            tuple(torch.stack(s) for s in saved) if save else ())


def backward(cell: Cell, d_out: Optional[Tensor], d_final: Tuple[Optional[Tensor], ...],
             mask: Optional[Tensor], state0, states, saved, params, noise=None):
    """Backpropagation through time.

    d_out    (T, B, S_0) gradient of the emitted output (zero on padded steps), or None
    d_final  gradients of the final state, entries may be None
    returns  (d_xp (T, B, G*H), d_state0 tuple, d_params tuple)
    """
    T = states[0].shape[0]
    d_state = [torch.zeros_like(s[0]) if d is None else d.clone() for d, s in zip(d_final, states)]
    d_params = [None if p is None else torch.zeros_like(p) for p in params]
    d_xp = []
    clip = cell.clip_recurrent
    for t in reversed(range(T)):
        prev = state0 if t == 0 else tuple(s[t - 1] for s in states)
        new = tuple(s[t] for s in states)
        m = None if mask is None else mask[t]
        if d_out is not None:
            d_state[0] = d_state[0] + d_out[t]
        if clip is not None:
            d_state = [d.clamp(-clip, clip) for d in d_state]
        # On padded rows the step did not happen: its gradient passes straight through.
        d_new = [d if m is None else torch.where(m, d, 0.0) for d in d_state]
        dxp_t, d_prev, dp = cell.step_backward(d_new, [s[t] for s in saved], prev, new, params,
                                               _noise_at(noise, t))
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


class PythonStepper:
    """The Stepper of ``model.stream()`` by the cell's Python step (base.Stepper's contract)."""

    def __init__(self, cell: Cell, layers, batch_size: int, who: str):
        w_ih = layers[0][0]
        self._cell, self._layers, self._who = cell, layers, who
        self._B, self._I, self._dtype, self._device = batch_size, w_ih.shape[1], w_ih.dtype, w_ih.device
        names = ("weight_ih", "bias_ih") + tuple(cell.rec_params)
        self._made_for = [[(f"{n}_l{k}", None if p is None else tuple(p.shape)) for n, p in zip(names, layer)]
                          for k, layer in enumerate(layers)]
        self._states = [w_ih.new_zeros(len(layers), batch_size, s) for s in cell.state_sizes()]
        self._out = w_ih.new_zeros(batch_size, cell.out_size)

    def _check(self, x: Tensor) -> None:
        """The checks the C++ Stepper makes, with the same messages."""
        B, I = self._B, self._I
        ok = isinstance(x, Tensor) and (tuple(x.shape) == (B, I) or (B == 1 and tuple(x.shape) == (I,)))
        if not ok:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            alt = f" or ({I},)" if B == 1 else ""
            raise ValueError(f"{self._who}: input: expected shape ({B}, {I}) (batch_size, input_size){alt}, got {got}")
        if x.dtype != self._dtype:
            raise TypeError(f"{self._who}: input: expected dtype {self._dtype} (the parameters' dtype), got {x.dtype}")
        if x.device != self._device:
            raise ValueError(f"{self._who}: input: expected device {self._device}, got {x.device}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{self._who}: input requires grad, but a stream records no autograd graph "
                             "(inference only); use model.step for a differentiable step, or call it "
                             "under torch.no_grad()")

    def _check_params(self) -> None:
        """The held (or read again) parameters still have the shapes, dtype and device the stream
        was made for; an error names the first that does not (as the C++ Stepper's)."""
        for layer, made in zip(self._layers, self._made_for):
            for p, (name, shape) in zip(layer, made):
                now = None if p is None else tuple(p.shape)
                if now != shape or (p is not None and (p.dtype != self._dtype or p.device != self._device)):
                    it = "None" if p is None else f"{now}, {p.dtype}, on {p.device}"
                    raise RuntimeError(f"{self._who}: {name} changed since the stream was created: it is now {it}; "
                                       f"the stream was made for {shape}, {self._dtype}, on {self._device}; "
                                       f"create a new stream")

    def set_params(self, layers) -> None:
        """Read again from the module (checked at every step by ``_check_params`` and the step's math)."""
        self._layers = layers

    def step(self, x: Tensor) -> Tensor:
        self._check(x)
        self._check_params()
        with torch.no_grad():
            out, new = step_stack(self._cell, x.view(1, -1) if x.dim() == 1 else x, self._states, self._layers)
            for s, n in zip(self._states, new):
                s.copy_(n)
            self._out.copy_(out)
        return self._out.view(-1) if x.dim() == 1 else self._out

    def state(self) -> List[Tensor]:
        return self._states

    def set_state(self, full: Sequence[Tensor]) -> None:
        for b, h in zip(self._states, full):
            b.copy_(h)


class Reference(Backend):
    """The readable Python loop with hand-derived BPTT; runs every cell on every device and dtype."""

    name = "reference"

    def forward(self, cell, xp, mask, state0, params, save=True, noise=None):
        return forward(cell, xp, mask, state0, params, save, noise)

    def backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise=None):
        return backward(cell, d_out, d_final, mask, state0, states, saved, params, noise)

    def step(self, cell, x, state0, layers):
        return step_stack(cell, x, state0, layers)

    def stepper(self, cell, layers, batch_size, who):
        return PythonStepper(cell, layers, batch_size, who)


BACKEND = Reference()
