"""One time step as a module: rnnkit.ElmanCell (alias RNNCell), LSTMCell, GRUCell, JordanCell.

torch.nn's Cell surface (``torch.nn.RNNCell(input_size, hidden_size, bias=True,
nonlinearity='tanh')``, ``forward(input, hx=None)``; parameters weight_ih, weight_hh, bias_ih,
bias_hh, so state_dicts move both ways), computed by the cell math of ``rnnkit.cells`` (its
``step``, which the layers' ``step`` runs for each layer through ``sequence.step_stack``) and
differentiated by autograd.  A step without a graph to record (under no_grad, a (B, I) input)
runs on the ``backend`` (``auto`` by default: the C++ kernels on the CPU) as the layers' ``step``
does; a (B, I) step of a cell the backend has a one-node step for (``Backend.cell_step``: the
cpu backend's for Elman, LSTM and the GRU's torch form, whose backward is the cells' hand-derived
one) runs as that node, with a graph or without: at B = 1 a step under autograd spends more on
its 6-15 nodes than on its arithmetic, and without a graph that call is the cheapest.
(``rnnkit.cells.LSTMCell`` & co. are the math classes; these are the modules.)

Symbols: B batch, I input_size, H hidden_size, O output_size (Jordan).

    input   (B, I) or (I,) unbatched
    hx      (B, H) or (H,); LSTM (h, c), each (B, H); Jordan the previous output y (B, O);
            zeros when None
    returns h' (B, H); LSTM (h', c'); Jordan y' (B, O) -- unbatched without the B dimension
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends, ops, validation
from .cells import NONLINEARITIES, OUTPUT_ACTIVATIONS, Cell
from .cells import ElmanCell as _ElmanMath
from .cells import GRUCell as _GRUMath
from .cells import JordanCell as _JordanMath
from .cells import LSTMCell as _LSTMMath
from .layers import state_pair


class _CellModule(nn.Module):
    """Shared machinery: parameters from ``cell.param_shapes`` (absent biases registered as None,
    as torch.nn does), input and state checks, one step of the cell's math.

    ``torch_twin``: the torch.nn Cell class with the same parameters and semantics (None if none).
    ``backend``: what runs a step without a graph to record, as the layers' argument (None: auto).
    """

    torch_twin: Optional[type] = None
    _bias_names: Tuple[str, ...] = ("bias_ih", "bias_hh")
    backend: Optional[str] = None                 # (a module pickled before it had one: auto)

    def __init__(self, cell: Cell, input_size: int, bias: bool, device, dtype, backend: Optional[str] = None):
        super().__init__()
        self.input_size = validation.positive_int("input_size", input_size)
        self.hidden_size = validation.positive_int("hidden_size", cell.hidden_size)
        self.bias = bool(bias)
        self.cell = cell
        if backend is not None:
            validation.choice("backend", backend, backends.BACKENDS)
            backends.check_name(backend)
        self.backend = backend
        for name, shape in cell.param_shapes(self.input_size, self.bias):
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        if not self.bias:
            for name in self._bias_names:
                self.register_parameter(name, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    # -- the state argument ---------------------------------------------
    _hx_name = "hx"

    def unpack_state(self, hx) -> Tuple[Tensor, ...]:
        return (hx,)

    def pack_state(self, new: Tuple[Tensor, ...]):
        return new[0]

    def forward(self, input: Tensor, hx=None):
        found = self._one_node(input, hx)
        if found is None and not torch.is_grad_enabled():
            found = self._unchecked(input, hx)
        if found is not None:
            return found
        who = type(self).__name__
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"{who}: input: expected 1-D (unbatched) or 2-D (batched) input, got {got}")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input                           # (B, I)
        validation.input_tensor(who, x, self.input_size, self.weight_ih.dtype)
        sizes = self.cell.state_sizes()
        if hx is None:
            state = tuple(x.new_zeros(x.shape[0], s) for s in sizes)
        else:
            hs = self.unpack_state(hx)
            state = []
            for k, (h, s) in enumerate(zip(hs, sizes)):
                name = self._hx_name if len(hs) == 1 else f"{self._hx_name}[{k}]"
                shape = (s,) if unbatched else (x.shape[0], s)
                validation.state_tensor(who, name, h, shape, x.dtype, x.device)
                state.append(h.unsqueeze(0) if unbatched else h)
        rec = tuple(getattr(self, n) for n in self.cell.rec_params)
        # step_stack's one layer, without its (L, B, S_k) stacking (three autograd nodes more a step)
        new, _ = self.cell.step(F.linear(x, self.weight_ih, self.bias_ih), tuple(state), rec,   # (B, S_k) each
                                save=False)
        return self.pack_state(tuple(s.squeeze(0) for s in new) if unbatched else tuple(new))

    def _unchecked(self, x, hx):
        """forward's result from ``ops.unchecked_step`` (the backend's own checks only, a (B, I)
        input under no_grad), or None: forward then runs its checks, whose errors name the argument."""
        cell = self.cell

        def state0():                                                    # (1, B, S_k) each
            if hx is None:
                return [x.new_zeros(1, x.shape[0], s) for s in cell.state_sizes()]
            return [h.unsqueeze(0) for h in self.unpack_state(hx)]
        held = ops.held_layers(self, (("weight_ih", "bias_ih") + cell.rec_params,),
                               lambda: dict(cell.param_shapes(self.input_size, self.bias)))
        found = ops.unchecked_step(self.backend, cell, x, held, state0)
        if found is None:
            return None
        out, h_n = found            # out: a new (B, S_0), the first state's value (no view of h_n to make)
        return out if len(h_n) == 1 else self.pack_state((out,) + tuple(h[0] for h in h_n[1:]))

    def _one_node(self, x, hx):
        """forward's result from ``ops.cell_step`` (a (B, I) input: the step as one autograd node
        where a graph is recorded, the backend's own checks only), or None: forward then tries
        ``_unchecked`` under no_grad, else runs its checks and the cell's step under autograd."""
        if hx is None or len(self.cell.state_names) == 1:
            state = hx if hx is None else (hx,)
        elif isinstance(hx, (tuple, list)) and len(hx) == len(self.cell.state_names):
            state = tuple(hx)
        else:
            return None
        held = self._parameters              # a parametrized weight is not held: getattr computes it
        layer = [held[n] if n in held else getattr(self, n) for n in ("weight_ih", "bias_ih") + self.cell.rec_params]
        new = ops.cell_step(self.backend, self.cell, x, state, layer)
        return None if new is None else self.pack_state(new)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class ElmanCell(_CellModule):
    r"""One step of an Elman network, drop-in for ``torch.nn.RNNCell``:
    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act tanh or relu.  forward(input, hx=None) -> h'."""

    torch_twin = nn.RNNCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, backend: Optional[str] = None):
        validation.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.nonlinearity = nonlinearity
        super().__init__(_ElmanMath(hidden_size, nonlinearity), input_size, bias, device, dtype, backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity}")


RNNCell = ElmanCell


class LSTMCell(_CellModule):
    r"""One LSTM step, drop-in for ``torch.nn.LSTMCell`` (gate order i, f, g, o).
    forward(input, hx=None) -> (h', c'); hx = (h, c)."""

    torch_twin = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 backend: Optional[str] = None):
        super().__init__(_LSTMMath(hidden_size), input_size, bias, device, dtype, backend)

    def unpack_state(self, hx):
        return state_pair("LSTMCell", hx, "(h, c)")

    def pack_state(self, new):
        return new[0], new[1]


class GRUCell(_CellModule):
    r"""One GRU step, drop-in for ``torch.nn.GRUCell`` (gate order r, z, n); ``reset_after=False``
    is the original form of Cho et al. 2014 (as ``rnnkit.GRU``).  forward(input, hx=None) -> h'."""

    torch_twin = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 reset_after: bool = True, backend: Optional[str] = None):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after: expected True or False, got {reset_after!r}")
        self.reset_after = reset_after
        super().__init__(_GRUMath(hidden_size, reset_after), input_size, bias, device, dtype, backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class JordanCell(_CellModule):
    r"""One step of a Jordan network: h = act(x W_ih^T + b_ih + y W_yh^T), y' = out(h W_hy^T + b_hy).
    Parameters weight_ih (H, I), weight_yh (H, O), bias_ih (H), weight_hy (O, H), bias_hy (O), as
    ``rnnkit.Jordan`` without the layer suffix.  forward(input, y=None) -> y' (B, O)."""

    _hx_name = "y"
    _bias_names = ("bias_ih", "bias_hy")

    def __init__(self, input_size: int, hidden_size: int, output_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", output_activation: str = "identity", device=None, dtype=None,
                 backend: Optional[str] = None):
        validation.positive_int("output_size", output_size)
        validation.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        validation.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.output_size = output_size
        self.nonlinearity = nonlinearity
        self.output_activation = output_activation
        super().__init__(_JordanMath(hidden_size, output_size, nonlinearity, output_activation), input_size,
                         bias, device, dtype, backend)

    def forward(self, input: Tensor, y=None):
        return super().forward(input, y)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, {self.output_size}" + ("" if self.bias else ", bias=False")
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.output_activation != "identity":
            s += f", output_activation={self.output_activation!r}"
        return s


# Whole-model torch.save / torch.load under torch's default weights-only loading (as the layers).
torch.serialization.add_safe_globals([ElmanCell, LSTMCell, GRUCell, JordanCell])

__all__ = ["ElmanCell", "RNNCell", "LSTMCell", "GRUCell", "JordanCell"]
