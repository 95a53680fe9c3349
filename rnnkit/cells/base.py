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

Options every cell has (written once, here; the subclasses only say where h enters their
recurrence):

recurrent dropout (Gal & Ghahramani 2016), probability q: one mask m per sequence, shared by every
step, on the emitted state where it enters the recurrence (the recurrent matrix products only)::

    m ~ Bernoulli(1 - q)^(B, S_0) / (1 - q)      # drawn once per forward (training)
    h_{t-1}  ->  h_{t-1} * m   in every  . W_hh^T  of the step        (eval: m = 1)
    backward: the gradient that reaches h_{t-1} through those products is multiplied by m

zoneout (Krueger et al. 2017), probability p: per unit and step, every carried state keeps its
previous value with probability p::

    z_t ~ Bernoulli(p)^(B, S_k)   (training),    z_t = p   (eval: the expected value)
    s_t = z_t * s_{t-1} + (1 - z_t) * s~_t        s~_t: the state the cell computed
    backward: ds~_t = ds_t (1 - z_t),   ds_{t-1} += ds_t z_t

The random tensors ("noise": the mask m expanded over time, the z_t) are drawn by the layer once
per forward (``draw_noise``; rnnkit.noise: a hash keyed by one draw of torch's generator) and
handed to the time loop as per-step inputs, so backward uses the same ones; ``noise=None`` means
eval: their expected values.

clip_recurrent x (backward only): the time loop bounds the gradient of every carried state to
[-x, x] at every step of BPTT (``rnnkit.backends.reference.backward``); ``step_backward`` itself is
the exact derivative.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import noise

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
                      (set by ``_declare_saved``, zoneout's additions included)
      trace_names     per-step quantities exposed by ``return_trace=True``
    and implement ``_step``, ``_step_backward`` and ``_trace`` (the cell's own math, with the
    recurrent dropout mask); the public ``step``, ``step_backward`` and ``trace`` add zoneout.
    """

    name: str = ""
    n_gates: int = 1
    state_names: Tuple[str, ...] = ("h",)
    rec_params: Tuple[str, ...] = ()
    saved_names: Tuple[str, ...] = ()
    trace_names: Tuple[str, ...] = ()
    noise_names: Tuple[str, ...] = ()

    _classes: Dict[str, type] = {}               # every cell class by name, for ``from_spec``

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Cell._classes[cls.name] = cls

    def __init__(self, hidden_size: int, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 clip_recurrent: Optional[float] = None):
        self.hidden_size = hidden_size
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = float(zoneout)
        self.clip_recurrent = None if clip_recurrent is None else float(clip_recurrent)
        self.noise_names = ((("recurrent_mask",) if self.recurrent_dropout else ())
                            + (tuple(f"zoneout_{s}" for s in self.state_names) if self.zoneout else ()))

    def _declare_saved(self, saved: Sequence[Tuple[str, int]]) -> None:
        """Called last by a subclass's ``__init__``: (name, size) of every tensor its ``_step``
        saves; zoneout appends the states the cell computed before zoneout (for backward)."""
        if self.zoneout:
            saved = tuple(saved) + tuple((f"{s}_update", n) for s, n in zip(self.state_names, self.state_sizes()))
        self.saved_names = tuple(n for n, _ in saved)
        self._saved_sizes = tuple(n for _, n in saved)

    def _variants(self) -> Dict[str, float]:
        """The options shared by every cell, those not at their default."""
        found = {"recurrent_dropout": self.recurrent_dropout, "zoneout": self.zoneout,
                 "clip_recurrent": self.clip_recurrent}
        return {k: v for k, v in found.items() if v}

    def init_kwargs(self) -> Dict[str, Any]:
        """The constructor's arguments: ``type(cell)(**cell.init_kwargs())`` is an equal cell."""
        return {"hidden_size": self.hidden_size, **self._variants()}

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
        return self.__dict__.get("_saved_sizes", ())

    def noise_sizes(self) -> Tuple[int, ...]:
        """Feature size of every per-step noise tensor, in ``noise_names`` order."""
        return ((self.state_sizes()[0],) if self.recurrent_dropout else ()) + \
            (self.state_sizes() if self.zoneout else ())

    # -- identity --------------------------------------------------------
    def options(self) -> Dict[str, str]:
        """The settings that change the cell's math, as strings (e.g. {'nonlinearity': 'relu'}).

        Kernels are chosen and specialised by (name, options); a cell is immutable after
        construction, so ``key`` is computed once.  Options at their default are left out, so a
        kernel that does not know an option still runs the cells without it.
        """
        return {k: repr(v) for k, v in self._variants().items()}

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
    def step(self, xp: Tensor, state: State, p: Params,
             noise: Optional[Sequence[Tensor]] = None, save: bool = True) -> Tuple[State, Tuple[Tensor, ...]]:
        """One step forward: xp (B, G*H) = x W_ih^T + b_ih; returns (new state, saved).

        noise: this step's noise tensors (B, N_k) in ``noise_names`` order; None = eval (their
        expected values: no recurrent dropout, zoneout by its probability).  save=False: a step
        whose saved tensors nobody reads (a differentiated single step): saved may then be
        incomplete, and what only it needs is not computed (a cat and its autograd node).
        """
        drop, zones = self._noise(noise)
        new, saved = self._step(xp, state, p, drop, save)
        if self.zoneout:
            saved = tuple(saved) + tuple(new) if save else ()
            new = tuple(n + z * (s - n) for n, s, z in zip(new, state, zones))     # z s + (1-z) n
        return new, saved

    def step_backward(
        self, d_new: State, saved: Sequence[Tensor], prev: State, new: State, p: Params,
        noise: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[Tensor, State, Tuple[Optional[Tensor], ...]]:
        """One step back: gradients w.r.t. the new state -> (d_xp, d_prev_state, d_params).

        ``d_params`` has one entry per ``rec_params`` (None where the parameter is None).
        """
        drop, zones = self._noise(noise)
        if not self.zoneout:
            return self._step_backward(d_new, saved, prev, new, p, drop)
        n = len(self.state_names)
        computed = tuple(saved[-n:])
        d_cell = [d * (1.0 - z) for d, z in zip(d_new, zones)]
        d_xp, d_prev, d_params = self._step_backward(d_cell, saved[:-n], prev, computed, p, drop)
        return d_xp, tuple(dp + d * z for dp, d, z in zip(d_prev, d_new, zones)), d_params

    def trace(self, saved: Sequence[Tensor], states: State) -> Dict[str, Tensor]:
        """Per-step quantities from stacked saved tensors (T, B, .) and new states (T, B, .): the
        same names for every form of a cell (``trace_names``); the states are those carried
        (after zoneout), the gates those computed (with peepholes, recurrent dropout)."""
        return self._trace(saved[:len(saved) - (len(self.state_names) if self.zoneout else 0)], states)

    def draw_noise(self, T: int, B: int, like: Tensor) -> Optional[Tuple[Tensor, ...]]:
        """The noise of one forward (training) from torch's RNG: (T, B, N_k) per ``noise_names``
        (the recurrent dropout mask drawn once and expanded over time); None when the cell has none."""
        if not self.noise_names:
            return None
        found = []
        if self.recurrent_dropout:
            keep = 1.0 - self.recurrent_dropout
            S = self.state_sizes()[0]
            found.append(noise.bernoulli((B, S), keep, like, 1.0 / keep).expand(T, B, S))
        if self.zoneout:
            found += [noise.bernoulli((T, B, s), self.zoneout, like) for s in self.state_sizes()]
        return tuple(found)

    def _noise(self, noise):
        """(recurrent dropout mask (B, S_0) or None, zoneout's z per state: tensors, or p in eval)."""
        if noise is None:
            return None, (self.zoneout,) * len(self.state_names)
        drop = noise[0] if self.recurrent_dropout else None
        return drop, tuple(noise[1:] if self.recurrent_dropout else noise)

    # -- the subclass's own math -------------------------------------------
    def _step(self, xp: Tensor, state: State, p: Params, drop: Optional[Tensor],
              save: bool = True) -> Tuple[State, Tuple[Tensor, ...]]:
        """The cell's step; ``drop`` (B, S_0) multiplies state[0] where it enters the recurrence.
        save=False: the saved tensors are not read (``step``), those costing extra ops may be left out."""
        raise NotImplementedError

    def _step_backward(self, d_new, saved, prev, new, p, drop):
        """The hand-derived backward of ``_step`` (``new``: the states ``_step`` returned)."""
        raise NotImplementedError

    def _trace(self, saved: Sequence[Tensor], states: State) -> Dict[str, Tensor]:
        raise NotImplementedError

    def constant_init(self, name: str) -> Optional[float]:
        """The value a parameter (name without layer suffix) starts at when it is not drawn like
        torch.nn's (uniform in +-1/sqrt(H)): layer normalisation's gains 1 and biases 0."""
        if name.startswith("weight_ln"):
            return 1.0
        if name.startswith("bias_ln"):
            return 0.0
        return None

    def recurrent_matrix(self, params: Dict[str, Tensor]) -> Optional[Tensor]:
        """The matrix of the linear part of the map state_{t-1} -> state_t, or None when the
        recurrence is gated (its spectral radius then says little).  ``params`` maps the
        parameter names of ``param_shapes`` (no layer suffix) to one direction's tensors."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._variants().items())


def dropped(h: Tensor, drop: Optional[Tensor]) -> Tensor:
    """h as it enters the recurrence: h * m under recurrent dropout, else h."""
    return h if drop is None else h * drop


LN_EPS = 1e-5                                                # torch.nn.LayerNorm's default


def block_norm(a: Tensor, blocks: int) -> Tuple[Tensor, Tensor]:
    """Layer normalisation without gain and bias, over each of the ``blocks`` equal feature blocks of
    a (B, blocks*n): returns (a_hat (B, blocks*n), rstd (B, blocks)), a_hat = (a - mean) * rstd,
    rstd = 1 / sqrt(var + eps) (biased variance, as torch.nn.LayerNorm)."""
    if a.shape[0] == 0:                                                      # an empty batch
        return a.clone(), a.new_empty(0, blocks)
    v = a.reshape(a.shape[0], blocks, a.shape[1] // blocks)
    var, mean = torch.var_mean(v, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + LN_EPS)
    return ((v - mean) * rstd).reshape(a.shape), rstd.reshape(a.shape[0], blocks)


def block_norm_backward(d_hat: Tensor, a_hat: Tensor, rstd: Tensor) -> Tensor:
    """d a from d a_hat, per block: da = rstd * (d_hat - mean(d_hat) - a_hat * mean(d_hat * a_hat))."""
    blocks = rstd.shape[1]
    shape = (d_hat.shape[0], blocks, d_hat.shape[1] // blocks)
    g, y = d_hat.reshape(shape), a_hat.reshape(shape)
    da = rstd.unsqueeze(-1) * (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True))
    return da.reshape(d_hat.shape)


def join_repr(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def act_forward(kind: str, a: Tensor) -> Tensor:
    """Element-wise hidden activation (tanh or relu)."""
    return torch.tanh(a) if kind == "tanh" else torch.relu(a)


def act_backward(kind: str, y: Tensor, dy: Tensor) -> Tensor:
    """Gradient through the activation, written with its *output* y."""
    if kind == "tanh":
        return dy * (1.0 - y * y)
    # a select, not dy * [y > 0]: as torch's relu, a NaN gradient stops where the unit is off
    return torch.where(y <= 0, torch.zeros((), dtype=dy.dtype, device=dy.device), dy)


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
