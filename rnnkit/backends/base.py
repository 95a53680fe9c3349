"""The backend contract: what every time loop (Python, C++, Triton ...) provides, defined once.

A backend runs one cell over time for one layer and one direction; everything around it
(stacking, directions, lengths, the autograd.Function, the projections) is shared and lives
in ``rnnkit.ops``, ``rnnkit.sequence`` and ``rnnkit.layers``.

Shapes (one layer, one direction): T steps, B batch, G*H gate width, S_k size of state k,
L layers of a stack.

    xp      (T, B, G*H)   input projection x W_ih^T + b_ih for all steps
    mask    (T, B, 1)     bool, True where step t is inside sequence b; None = all valid
    state0  tuple of (B, S_k)
    states  tuple of (T, B, S_k): the carried state *after* every step (padded steps keep it)
    saved   tuple of (T, B, .): the cell's ``saved_names``, for backward and the trace
    params  the cell's recurrent parameters in ``cell.rec_params`` order (None where absent)
    noise   tuple of (T, B, N_k) in ``cell.noise_names`` order: the random tensors of recurrent
            dropout and zoneout that the layer drew for this forward (training), read by the cell's
            step at every step and by backward again; None = eval (the cell uses their expected values)
    layers  per layer of a stack, [w_ih, b_ih | None, *params]

Methods:
    supports(cell, device, dtype) -> Support   can this backend run this case here (and if not, why)
    forward(cell, xp, mask, state0, params, save, noise) -> (states, saved)
    backward(cell, d_out, d_final, mask, state0, states, saved, params, noise) -> (d_xp, d_state0, d_params)
    step(cell, x, state0, layers) -> (out (B, S_0), new states (L, B, S_k))   inference, one step
    stepper(cell, layers, batch_size, who) -> Stepper                       behind ``model.stream()``

``differentiable`` backends record an autograd graph in ``forward`` themselves (the oracle);
the others get their gradients from ``backward`` through ``rnnkit.ops.RecurrentFunction``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell


@dataclass(frozen=True)
class Support:
    """Whether a backend can run a case; ``reason`` says why not (empty when it can);
    ``unavailable``: not because of the case, but because the backend cannot run here at all."""

    ok: bool
    reason: str = ""
    unavailable: bool = False

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


class Stepper(Protocol):
    """The stateful one-step runner behind ``model.stream()``: states (L, B, S_k) kept inside.

    step(x)          x (B, I) or (I,) when B == 1 -> the last layer's output (B, S_0) or (S_0,),
                     a buffer overwritten by the next call; checks the input's shape, dtype,
                     device and grad with messages naming ``who``
    state()          the live state buffers, one (L, B, S_k) tensor per carried state
    set_state(full)  copy one (L, B, S_k) tensor per carried state into the buffers
    set_params(layers)  the parameters read again from the module (same shapes and dtype), for a
                     stream that reads them every step (parametrized or pruned models)
    """

    def step(self, x: Tensor) -> Tensor: ...

    def state(self) -> List[Tensor]: ...

    def set_state(self, full: Sequence[Tensor]) -> None: ...

    def set_params(self, layers) -> None: ...


class Backend:
    """Base class of the backends; subclasses override what they run natively."""

    name: str = ""
    differentiable: bool = False
    # Whether ``step`` checks every tensor it reads (presence, shape, dtype, device) and raises
    # before reading any out of bounds: the layers then call it without their own checks and run
    # those (whose errors name the argument) only when it raises.
    checks_arguments: bool = False

    def available(self) -> Support:
        """Whether the backend can run at all on this machine (e.g. its kernels are built)."""
        return YES

    def supports(self, cell: Cell, device: torch.device, dtype: torch.dtype) -> Support:
        """Whether this backend runs ``cell`` on tensors of this device and dtype."""
        return self.available()

    def float32_state(self, dtype: torch.dtype) -> bool:
        """Whether, running tensors of this (16-bit) dtype, the backend keeps the states, memory
        cells and accumulators in float32 inside the time loop (rounding only what it stores).
        Autocast runs a layer's recurrence in the autocast dtype only on such a backend; elsewhere
        it runs in the parameters' precision (a 16-bit state rounded at every step drifts)."""
        return False

    def forward(self, cell: Cell, xp: Tensor, mask: Optional[Tensor], state0: Tuple[Tensor, ...],
                params: Tuple[Optional[Tensor], ...], save: bool = True,
                noise: Optional[Tuple[Tensor, ...]] = None):
        raise NotImplementedError

    def backward(self, cell: Cell, d_out: Optional[Tensor], d_final: Tuple[Optional[Tensor], ...],
                 mask: Optional[Tensor], state0, states, saved, params,
                 noise: Optional[Tuple[Tensor, ...]] = None):
        raise NotImplementedError

    def step(self, cell: Cell, x: Tensor, state0: Tuple[Tensor, ...], layers) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """One inference step of a stack: x (B, I), state0 (L, B, S_k) each, layers[l] = [w_ih, b_ih,
        *rec_params] -> (out (B, S_0), h_n (L, B, S_k) each), new tensors; out is not a view of h_n
        (the user may edit it in place)."""
        raise NotImplementedError

    def cell_step(self, cell: Cell, x: Tensor, state: Tuple[Tensor, ...],
                  layer) -> Optional[Tuple[Tensor, ...]]:
        """One step of one layer as a single autograd node (the Cell modules, with a graph or
        without; ``model.step`` per layer with one): x (B, I), state (B, S_k) each or None for
        zeros, layer = [w_ih, b_ih, *rec_params] -> the new state (B, S_k) each, differentiable
        (first and second order) with respect to x, the state and every weight; or None where the
        backend has no such step for this cell (the caller then runs the cell's step under
        autograd)."""
        return None

    def infers(self, cell: Cell, x: Tensor, bidirectional: bool, varlen: bool = False) -> bool:
        """Whether ``infer`` may take a stack of ``cell`` on inputs like ``x`` (T, B, I), or a
        PackedSequence's data (N, I), in both directions when ``bidirectional``, with lengths or
        batch sizes when ``varlen``: the layers ask before
        gathering the weights, which a call it declines would waste (measured 35 us of a 200 us
        call, a small bidirectional GRU).  ``infer`` may still return None for a case this admits."""
        return False

    def infer(self, cell: Cell, x: Tensor, state0: Optional[Tuple[Tensor, ...]], layers,
              bidirectional: bool = False, lengths: Optional[Tensor] = None,
              batch_sizes: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
        """A stack's forward without autograd in one call, or None where the backend has none for
        these tensors (the layers then run layer by layer).  x (T, B, I) with T >= 1; D directions
        (2 when ``bidirectional``); state0 (D*L, B, S_k) each, or None for zeros; layers[l*D + d] = [w_ih, b_ih,
        *rec_params] of layer l, direction d (None where absent); no noise; ``lengths`` None or the
        valid steps of each row (B,), int64 on the CPU, each in [1, T] (the layers' checked
        lengths_tensor).  Returns (out (T, B, D*S_0), h_n (D*L, B, S_k) each), new tensors in x's
        row order; with lengths, out is zero on padded steps and h_n holds each row's state after
        its last valid step (torch.nn's packed results, padded).  ``batch_sizes`` (T,) int64 CPU (a
        PackedSequence's, lengths None): x is the sequence's data (N, I), rows longest first, and
        out is the output's data (N, D*S_0), h_n in those rows' order."""
        return None

    def row_projection(self, cell: Cell, x: Tensor, order: Optional[Tensor], lengths: Tensor):
        """For a batch with lengths, the first layer of ``cell``: a function ``project(x, w_ih,
        b_ih) -> xp (T, B, G*H)`` that reads ``x`` (T, B, I) in the user's order and writes the
        projection in the run's, longest first (row i = the user's row order[i]; order None: the
        rows are in the run's order already; ``lengths`` (B,) the run's rows', non-increasing),
        where padded steps may be left unset; or None, and the layers copy x into the run's order
        (where order is given) and project every step.  Asked only for a forward without a graph
        (the projection is then never differentiated) and one direction."""
        return None

    def trains(self, cell: Cell, x: Tensor, bidirectional: bool = False) -> bool:
        """Whether ``train`` takes a stack of ``cell`` on inputs like ``x`` (T, B, I), in one
        direction or both: the layers ask before gathering the weights, which a training call
        that ``train`` declines would waste (every small training step)."""
        return False

    def train(self, cell: Cell, x: Tensor, state0: Optional[Tuple[Tensor, ...]], layers,
              bidirectional: bool = False) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
        """``infer``'s training counterpart where ``trains`` says so: the same arguments and
        results, differentiable (first and second order) with respect to x, state0 and every
        weight, or None (the layers then run layer by layer through the hand-derived BPTT).
        Never asked with noise or dropout between layers."""
        return None

    def stepper(self, cell: Cell, layers, batch_size: int, who: str) -> Stepper:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<rnnkit backend {self.name!r}>"


def wanted_grads(inputs, need, outputs, d_outputs) -> tuple:
    """The recomputing backwards' last step (second-order gradients, create_graph=True): the
    gradients of ``outputs``, with cotangents ``d_outputs`` (None where none came), with respect
    to each of ``inputs`` that needs one (``need[i]``, not None, requiring grad), recorded for
    autograd to differentiate again; a tuple as long as ``inputs``, None where not wanted or not
    reached."""
    wanted = [i for i, t in enumerate(inputs) if t is not None and need[i] and t.requires_grad]
    pairs = [(o, d) for o, d in zip(outputs, d_outputs) if d is not None and o.requires_grad]
    grads = [None] * len(inputs)
    if wanted and pairs:
        found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [d for _, d in pairs],
                                    create_graph=True, allow_unused=True)
        for i, g in zip(wanted, found):
            grads[i] = g
    return tuple(grads)
