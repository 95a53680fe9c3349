"""Stateful streaming inference: ``stream = model.stream(batch_size)``, then ``y_t = stream(x_t)``.

Symbols as in layers.py: B batch, I input_size, L num_layers, S the emitted state size (H, or O
for Jordan).  A Stream is the online counterpart of ``model.step``: it keeps the state itself and
updates it in place, so a step on the fused ``cpu`` backend is one call into C++ that allocates
nothing (rnnkit/csrc/stream.h).  Everything is checked once at creation; a step checks only the
input (shape, dtype, device, grad).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import validation


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
      * the backend is resolved once, at creation, and its ``stepper`` runs the steps (the fused
        ``cpu`` kernels for CPU float32/float64 when available, else the cell's Python step, with
        the same results);
      * not thread-safe: one caller per stream.
    """

    def __init__(self, model, batch_size: int = 1, hx=None):
        who = f"{type(model).__name__}.stream"
        if model.bidirectional:
            raise ValueError(f"{who}: bidirectional networks need the whole sequence; got bidirectional=True")
        self.batch_size = validation.positive_int("batch_size", batch_size)
        self._model, self._who = model, who
        layers = model.step_parameters()
        w_ih = layers[0][0]
        backend = model.backend_for(w_ih)
        self.backend = backend.name
        self._stepper = backend.stepper(model.cell, layers, batch_size, who)
        self._step = self._stepper.step
        self.reset(hx)

    def __call__(self, x: Tensor) -> Tensor:
        """Advance by one step: x (B, I) or (I,) when B == 1; returns y (B, S) or (S,)."""
        return self._step(x)

    @property
    def state(self):
        """A copy of the current state: (L, B, S), or (h, c) for an LSTM."""
        return self._model.pack_state(tuple(s.clone() for s in self._stepper.state()))

    def reset(self, hx=None) -> None:
        """Set the state to hx (forward's format, (L, B, S) or (L, S) when B == 1); zeros when None."""
        bufs = self._stepper.state()
        if hx is None:
            full: Tuple[Tensor, ...] = tuple(torch.zeros_like(b) for b in bufs)
        else:
            first = self._model.unpack_state(hx)[0]
            unbatched = self.batch_size == 1 and isinstance(first, Tensor) and first.dim() == 2
            full = self._model.initial_state(hx, self.batch_size, unbatched, bufs[0])
        with torch.no_grad():           # copying a grad-requiring hx must not give the buffers a history
            self._stepper.set_state(list(full))

    def __repr__(self) -> str:
        return (f"Stream({self._model._get_name()}, batch_size={self.batch_size}, "
                f"backend={self.backend!r})")
