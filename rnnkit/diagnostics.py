"""Gradient-flow diagnostics: how much of the loss's gradient reaches each step of each layer.

``gradient_flow(model, inputs, loss_fn)`` measures dL/dh_t -- the *total* derivative of
the loss with respect to the state at step t, through the output at t and through every
later step -- for every rnnkit layer inside ``model``, every layer of it, every direction
and every step.  Plotted over t it shows vanishing (norms shrinking towards t=0) or
exploding (growing) gradients.

How: every cell step adds a zero "probe" tensor to the state it emits,
h_t' = h_t + p_t with p_t = 0, so the forward values are unchanged and
dL/dp_t = dL/dh_t.  The model runs once on the plain autograd loop for this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn

from . import backends
from .cells.base import Cell
from .layers import _Recurrent


class _ProbeCell(Cell):
    """Wraps a cell; adds a zero probe (requires grad) to every new state it computes."""

    def __init__(self, inner: Cell):
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        for name in ("name", "n_gates", "state_names", "rec_params", "saved_names", "trace_names"):
            setattr(self, name, getattr(inner, name))
        self.probes: List[tuple] = []

    def state_sizes(self):
        return self.inner.state_sizes()

    def options(self):
        return self.inner.options()

    def param_shapes(self, input_size, bias):
        return self.inner.param_shapes(input_size, bias)

    def step(self, xp, state, p, noise=None, save=True):
        new, saved = self.inner.step(xp, state, p, noise, save)
        probes = tuple(torch.zeros_like(s, requires_grad=True) for s in new)
        self.probes.append(probes)
        return tuple(s + q for s, q in zip(new, probes)), saved

    def trace(self, saved, states):
        return self.inner.trace(saved, states)


@dataclass
class GradientFlow:
    """Result of ``gradient_flow``.

    norms[name][k]  tensor (L, D, T): ||dL/ds_t|| over batch and features, for state k of the
                    rnnkit layer ``name`` (k=0: h, or y for Jordan; k=1: the LSTM memory cell c)
    loss            the loss value
    """

    norms: Dict[str, List[Tensor]]
    loss: float

    def hidden(self, name: str = None) -> Tensor:
        """(L, D, T) norms of dL/dh_t for one layer (the first rnnkit layer when name is None)."""
        return self.norms[name if name is not None else next(iter(self.norms))][0]


def _recurrent_modules(model: nn.Module) -> Dict[str, _Recurrent]:
    found = {n or type(m).__name__: m for n, m in model.named_modules() if isinstance(m, _Recurrent)}
    if not found:
        raise TypeError(f"model: expected a module containing rnnkit layers, got {type(model).__name__}")
    return found


def _norms(layer: _Recurrent, probes: List[tuple], grads: List[Tensor]) -> List[Tensor]:
    """Per state component, norms (L, D, T) in input time order (reverse direction flipped back)."""
    L, D = layer.num_layers, 2 if layer.bidirectional else 1
    T = len(probes) // (L * D)
    n_state = len(probes[0])
    out = []
    for k in range(n_state):
        g = torch.stack([gr[k] for gr in grads])                       # (L*D*T, B, S)
        norms = g.flatten(1).norm(dim=1).reshape(L, D, T)
        if D == 2:
            norms[:, 1] = norms[:, 1].flip(-1)   # processed back to front; full-length view
        out.append(norms)
    return out


def gradient_flow(model: nn.Module, inputs, loss_fn: Callable) -> GradientFlow:
    """Run ``loss_fn(model(inputs))`` once and return ||dL/dh_t|| for every rnnkit layer and step.

    inputs   a tensor, or a tuple of positional arguments for ``model``
    loss_fn  maps the model's return value to a scalar loss
    Parameter gradients are left untouched.  For variable-length batches in the reverse
    direction, step t is counted from each sequence's end, as the reverse pass sees it.
    """
    layers = _recurrent_modules(model)
    saved = {name: (m.cell, m.backend) for name, m in layers.items()}
    try:
        for m in layers.values():
            m.cell, m.backend = _ProbeCell(m.cell), backends.ORACLE
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        loss = loss_fn(model(*args))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn: expected a scalar tensor, got {type(loss).__name__}"
                             + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""))
        flat = [q for m in layers.values() for step in m.cell.probes for q in step]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        grads = [torch.zeros_like(q) if g is None else g for q, g in zip(flat, grads)]
        result, i = {}, 0
        for name, m in layers.items():
            n_state = len(m.cell.state_names)
            steps = len(m.cell.probes)
            per_step = [grads[i + s * n_state:i + (s + 1) * n_state] for s in range(steps)]
            i += steps * n_state
            result[name] = _norms(m, m.cell.probes, per_step)
        return GradientFlow(result, float(loss.detach()))
    finally:
        for name, m in layers.items():
            m.cell, m.backend = saved[name]


def spectral_radius(layer: _Recurrent) -> Tensor:
    """(L, D) largest |eigenvalue| of the recurrent matrix of an Elman or Jordan layer.

    Elman: weight_hh (H, H).  Jordan: weight_hy @ weight_yh (O, O), the linear part of the
    map y_{t-1} -> y_t.  Above 1 the linearised recurrence can explode, below 1 it fades.
    Gated cells (LSTM, GRU) have no such matrix: TypeError.
    """
    L, D = layer.num_layers, 2 if layer.bidirectional else 1
    rho = torch.zeros(L, D, dtype=torch.float64)
    with torch.no_grad():
        for k in range(L):
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                params = {n: getattr(layer, n + sfx) for n, _ in layer.cell.param_shapes(1, layer.bias)}
                w = layer.cell.recurrent_matrix(params)
                if w is None:
                    raise TypeError(f"layer: expected an Elman or Jordan layer, got {type(layer).__name__}")
                rho[k, d] = torch.linalg.eigvals(w.double()).abs().max()
    return rho
