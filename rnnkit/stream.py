"""Stateful streaming inference: ``stream = model.stream(batch_size)``, then ``y_t = stream(x_t)``.

Symbols as in layers.py: B batch, I input_size, L num_layers, S the emitted state size (H, or O
for Jordan).  A Stream is the online counterpart of ``model.step``: it keeps the state itself and
updates it in place, so a step on the fused ``cpu`` backend is one call into C++ that allocates
nothing (rnnkit/csrc/stream.h).  Everything is checked at creation; a step checks the input
(shape, dtype, device, grad) and that the held parameters still have the sizes, dtype, layout and
device the stream was made for.
"""
from __future__ import annotations

import importlib
from typing import Tuple

import torch
from torch import Tensor
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod

from . import validation

# Forward pre-hooks that compute a parameter from others (old-style pruning and weight_norm): a
# stream runs them before every step, as the module's __call__ would.
RECOMPUTING_HOOKS = (BasePruningMethod,
                     importlib.import_module("torch.nn.utils.weight_norm").WeightNorm)   # the name is the function


def reads_every_step(model, layers) -> bool:
    """Whether a stream must read the parameters from the module at every step: the model is
    parametrized or has forward pre-hooks (pruning, weight_norm, ...), or a parameter is not a
    contiguous ``nn.Parameter`` registered on the module (a computed attribute is recomputed or
    rebound; a non-contiguous one would be held as a copy)."""
    if parametrize.is_parametrized(model) or model._forward_pre_hooks:
        return True
    registered = {id(p) for p in model._parameters.values() if p is not None}
    return any(p is not None and (id(p) not in registered or not p.is_contiguous()) for layer in layers for p in layer)


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
      * which parameters a step reads is decided at creation (``stream.reads_every_step``):
        - a plain model (every parameter a contiguous ``nn.Parameter`` registered on the module,
          no parametrization, no forward pre-hook): the stream holds the Parameter objects the
          model had at creation.  In-place changes (optimiser steps, ``load_state_dict``,
          ``p.data.copy_``) are seen by the next step; replacing a Parameter object is not; a
          ``p.data = t`` of another shape, dtype, layout or device, or a converted module
          (``.double()``, ``.to()``), is an error at the next step, naming the parameter:
          create a new stream after any of these;
        - a parametrized model (``torch.nn.utils.parametrize``, e.g. ``parametrizations
          .weight_norm``), one with forward pre-hooks (old-style ``prune``, ``weight_norm``) or
          with a computed or non-contiguous parameter: every step first runs the module's
          pruning and weight_norm pre-hooks (other pre-hooks are not run) and then reads every
          parameter from the module again, as ``forward`` does -- so an optimiser step on the
          original weights is seen -- checking each against the sizes, dtype and device of
          creation (an error names it).  This costs the parametrizations' work every step;
        parametrizing, pruning or rebinding after creation is not looked for: create a new
        stream;
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
        self.reads_every_step = reads_every_step(model, layers)
        self._step = self._read_and_step if self.reads_every_step else self._stepper.step
        self.reset(hx)

    def __call__(self, x: Tensor) -> Tensor:
        """Advance by one step: x (B, I) or (I,) when B == 1; returns y (B, S) or (S,)."""
        return self._step(x)

    def _read_and_step(self, x: Tensor) -> Tensor:
        model = self._model
        for hook in list(model._forward_pre_hooks.values()):
            if isinstance(hook, RECOMPUTING_HOOKS):
                hook(model, (x,))
        self._stepper.set_params(model.step_parameters())
        return self._stepper.step(x)

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
