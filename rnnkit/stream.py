"""Stateful streaming inference: ``stream = model.stream(batch_size)``, then ``y_t = stream(x_t)``.

Symbols as in layers.py: B batch, I input_size, L num_layers, S the emitted state size (H, or O
for Jordan).  A Stream is the online counterpart of ``model.step``: it keeps the state itself and
updates it in place, so a step on the fused ``cpu`` backend is one call into C++ that allocates
nothing (rnnkit/csrc/stream.h).  Everything is checked once at creation; a step checks only the
input (shape, dtype, device, grad).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, validation
from .backends import cpu


class Stream:
    """One step at a time through a unidirectional rnnkit network, state kept inside.

    stream = model.stream(batch_size=1, hx=None)
    y_t = stream(x_t)     x_t (B, I), or (I,) when B == 1  ->  y_t (B, S), or (S,)
    stream.state          the current state in forward's format ((L, B, S), LSTM (h, c)): a copy
    stream.reset(hx=None) back to hx (forward's format; zeros when None)

    Semantics:
      * inference only: no autograd graph is recorded and outputs never require grad; an input
        that requires grad while grad mode is on is an error (use ``model.step`` to differentiate);
      * y_t is the stream's own output buffer, overwritten by the next call: ``.clone()`` it to
        keep it;
      * eval-mode math: inter-layer dropout is never applied, whatever ``model.training`` is;
      * the parameters are the Parameter objects the model had at creation, held by reference:
        in-place changes (optimiser steps, ``load_state_dict``) are seen by the next step;
        replacing a Parameter object is not, and a changed dtype or device is an error: create a
        new stream after either;
      * the backend is resolved once, at creation: the fused ``cpu`` kernels for CPU
        float32/float64 when available, else the cell's Python step (same results);
      * not thread-safe: one caller per stream.
    """

    def __init__(self, model, batch_size: int = 1, hx=None):
        who = f"{type(model).__name__}.stream"
        if model.bidirectional:
            raise ValueError(f"{who}: bidirectional networks need the whole sequence; got bidirectional=True")
        self.batch_size = validation.positive_int("batch_size", batch_size)
        self._model, self._who = model, who
        first = getattr(model, model._param_names[0][0])
        self._dtype, self._device = first.dtype, first.device
        self._layers = [[model._parameters.get(n) for n in names] for names in model._step_names]
        self.backend = backends.resolve(model.backend, self._device, self._dtype)
        if self.backend == "cpu" and self._dtype in backends._FUSED_DTYPES:
            self._stepper = cpu.extension().Stepper(who, cpu._spec(model.cell), self._layers, batch_size)
            self._step = self._stepper.step
        else:
            self._stepper = None
            self._states = [first.new_zeros(model.num_layers, batch_size, s) for s in model.cell.state_sizes()]
            self._out = first.new_zeros(batch_size, model.cell.out_size)
            self._step = self._python_step
        self.reset(hx)

    def __call__(self, x: Tensor) -> Tensor:
        """Advance by one step: x (B, I) or (I,) when B == 1; returns y (B, S) or (S,)."""
        return self._step(x)

    @property
    def state(self):
        """A copy of the current state: (L, B, S), or (h, c) for an LSTM."""
        return self._model._hx_pack(tuple(s.clone() for s in self._state_buffers()))

    def reset(self, hx=None) -> None:
        """Set the state to hx (forward's format, (L, B, S) or (L, S) when B == 1); zeros when None."""
        bufs = self._state_buffers()
        if hx is None:
            full: Tuple[Tensor, ...] = tuple(torch.zeros_like(b) for b in bufs)
        else:
            first = self._model._hx_tensors(hx)[0]
            unbatched = self.batch_size == 1 and isinstance(first, Tensor) and first.dim() == 2
            full = self._model._full_state(hx, self.batch_size, unbatched, bufs[0])
        with torch.no_grad():           # copying a grad-requiring hx must not give the buffers a history
            if self._stepper is not None:
                self._stepper.set_state(list(full))
            else:
                for b, h in zip(bufs, full):
                    b.copy_(h)

    def _state_buffers(self) -> List[Tensor]:
        return self._stepper.state() if self._stepper is not None else self._states

    # -- fallback: the cell's Python step -------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        """The checks the C++ Stepper makes, with the same messages."""
        B, I = self.batch_size, self._model.input_size
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

    def _python_step(self, x: Tensor) -> Tensor:
        self._check(x)
        cell = self._model.cell
        with torch.no_grad():
            inp = x.unsqueeze(0) if x.dim() == 1 else x
            for layer, (w_ih, b_ih, *rec) in enumerate(self._layers):
                new, _ = cell.step(F.linear(inp, w_ih, b_ih), tuple(s[layer] for s in self._states), tuple(rec))
                for s, n in zip(self._states, new):
                    s[layer].copy_(n)
                inp = new[0]
            self._out.copy_(inp)
        return self._out.view(-1) if x.dim() == 1 else self._out

    def __repr__(self) -> str:
        return (f"Stream({self._model._get_name()}, batch_size={self.batch_size}, "
                f"backend={self.backend!r})")
