"""The contract every recurrent cell fulfils.

A cell is pure math for one layer and one direction: given the input
projection of one step and the previous state, it produces the new state,
and given the gradient of the new state it produces the gradients of the
previous state, of the input projection and of its recurrent parameters.
Loops over time, masks for variable lengths, reversal and stacking live in
``rnnkit.backends`` and ``rnnkit.layers``, never here.

Symbols: B batch, I input features, H hidden units, O Jordan outputs,
G number of gate blocks (weight_ih has G*H rows).

State convention: ``state`` is a tuple; ``state[0]`` is what the layer
emits at every step (h for Elman/LSTM/GRU, y for Jordan).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

State = Tuple[Tensor, ...]
Params = Tuple[Optional[Tensor], ...]


class Cell:
    """Base class: constants describing the cell plus its step math.

    Subclasses set:
      name            short name ('lstm', 'gru', 'elman', 'jordan')
      n_gates         G, blocks of H rows in weight_ih
      state_names     names of the carried tensors, state_names[0] is emitted
      rec_params      names (without layer suffix) of the recurrent parameters
                      in the order ``step`` receives them
      saved_names     per-step tensors (B, .) that ``step`` returns for backward
      trace_names     per-step quantities exposed by ``return_trace=True``
    """

    name: str = ""
    n_gates: int = 1
    state_names: Tuple[str, ...] = ("h",)
    rec_params: Tuple[str, ...] = ()
    saved_names: Tuple[str, ...] = ()
    trace_names: Tuple[str, ...] = ()

    _classes: Dict[str, type] = {}               # every cell class by name, for ``from_spec``

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Cell._classes[cls.name] = cls

    def __init__(self, hidden_size: int):
        self.hidden_size = hidden_size

    def init_kwargs(self) -> Dict[str, Any]:
        """The constructor's arguments: ``type(cell)(**cell.init_kwargs())`` is an equal cell."""
        return {"hidden_size": self.hidden_size}

    @property
    def spec(self) -> str:
        """The cell as a string (name and constructor arguments), for torch custom operators,
        which take strings, not objects; ``Cell.from_spec`` rebuilds it."""
        spec = self.__dict__.get("_spec")
        if spec is None:
            spec = self.__dict__["_spec"] = json.dumps({"cell": self.name, **self.init_kwargs()}, sort_keys=True)
        return spec

    @staticmethod
    @lru_cache(maxsize=None)
    def from_spec(spec: str) -> "Cell":
        kwargs = json.loads(spec)
        return Cell._classes[kwargs.pop("cell")](**kwargs)

    def saved_sizes(self) -> Tuple[int, ...]:
        """Feature size of every per-step saved tensor, in ``saved_names`` order."""
        return ()

    # -- identity --------------------------------------------------------
    def options(self) -> Dict[str, str]:
        """The settings that change the cell's math, as strings (e.g. {'nonlinearity': 'relu'}).

        Kernels are chosen and specialised by (name, options); a cell is immutable after
        construction, so ``key`` is computed once.
        """
        return {}

    @property
    def key(self) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
        """(name, sorted options): hashable, equal for cells that run the same kernel."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = (self.name, tuple(sorted(self.options().items())))
        return key

    # -- sizes -----------------------------------------------------------
    def state_sizes(self) -> Tuple[int, ...]:
        """Feature size of every carried tensor."""
        return tuple(self.hidden_size for _ in self.state_names)

    def param_shapes(self, input_size: int, bias: bool):
        """(name, shape) of every parameter of one layer and direction, in registration order.

        torch.nn layout: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih (G*H), bias_hh (G*H).
        """
        GH, H = self.n_gates * self.hidden_size, self.hidden_size
        shapes = [("weight_ih", (GH, input_size)), ("weight_hh", (GH, H))]
        if bias:
            shapes += [("bias_ih", (GH,)), ("bias_hh", (GH,))]
        return shapes

    @property
    def out_size(self) -> int:
        """Features emitted per step (size of state[0])."""
        return self.state_sizes()[0]

    # -- math ------------------------------------------------------------
    def step(self, xp: Tensor, state: State, p: Params) -> Tuple[State, Tuple[Tensor, ...]]:
        """One step forward: xp (B, G*H) = x W_ih^T + b_ih; returns (new state, saved)."""
        raise NotImplementedError

    def step_backward(
        self, d_new: State, saved: Sequence[Tensor], prev: State, new: State, p: Params
    ) -> Tuple[Tensor, State, Tuple[Optional[Tensor], ...]]:
        """One step back: gradients w.r.t. the new state -> (d_xp, d_prev_state, d_params).

        ``d_params`` has one entry per ``rec_params`` (None where the parameter is None).
        """
        raise NotImplementedError

    def trace(self, saved: Sequence[Tensor], states: State) -> Dict[str, Tensor]:
        """Per-step quantities from stacked saved tensors (T, B, .) and new states (T, B, .)."""
        raise NotImplementedError

    def recurrent_matrix(self, params: Dict[str, Tensor]) -> Optional[Tensor]:
        """The matrix of the linear part of the map state_{t-1} -> state_t, or None when the
        recurrence is gated (its spectral radius then says little).  ``params`` maps the
        parameter names of ``param_shapes`` (no layer suffix) to one direction's tensors."""
        return None

    def extra_repr(self) -> str:
        return ""


def act_forward(kind: str, a: Tensor) -> Tensor:
    """Element-wise hidden activation (tanh or relu)."""
    return torch.tanh(a) if kind == "tanh" else torch.relu(a)


def act_backward(kind: str, y: Tensor, dy: Tensor) -> Tensor:
    """Gradient through the activation, written with its *output* y."""
    if kind == "tanh":
        return dy * (1.0 - y * y)
    return dy * (y > 0).to(dy.dtype)


def sigmoid_backward(y: Tensor, dy: Tensor) -> Tensor:
    """d sigmoid(a)/da = y (1 - y)."""
    return dy * y * (1.0 - y)


def tanh_backward(y: Tensor, dy: Tensor) -> Tensor:
    """d tanh(a)/da = 1 - y^2."""
    return dy * (1.0 - y * y)


def linear_grads(d_pre: Tensor, inp: Tensor, with_bias: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Gradients of W and b in pre = inp W^T + b: (d_pre^T inp, sum_B d_pre)."""
    dw = d_pre.t().mm(inp)
    db = d_pre.sum(0) if with_bias else None
    return dw, db
