"""One op for every cell: the whole sequence of one layer and one direction.

``run_direction`` is what the layers call.  With a hand-written backend it goes
through ``RecurrentFunction``, whose forward hoists the input projection into one
GEMM and hands the time loop to the backend, and whose backward asks the
backend for backpropagation through time, then forms the input-weight and input
gradients with single GEMMs over all T*B rows.  With ``backend='autograd'`` the
same Python loop runs under autograd (a ``differentiable`` backend, the readable
reference the tests compare to).
When nothing needs a gradient (inference), the backend's forward runs without the
autograd.Function and keeps no saved tensors.

Shapes: x (T, B, I), mask (T, B, 1) bool or None, state0 tuple of (B, S_k),
w_ih (G*H, I), b_ih (G*H) or None, rec params as the cell lists them, noise None or a tuple of
(T, B, N_k) per ``cell.noise_names`` (drawn by the layer in training; never differentiated).
Returns out (T, B, S_0) zero on padded steps (with ``zero_out=False``: the carried state there,
zeroed by the caller on the way back to the user's rows, one copy fewer each way), final state
tuple of (B, S_k), and a dict of per-step trace tensors (T, B, .) (empty unless asked; detached).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.amp.autocast_mode import is_autocast_available

from . import backends
from .backends import library
from .backends.base import Backend, wanted_grads
from .cells.base import Cell
from .sequence import torch_ops_only  # noqa: F401 - the layers' and backends' name for it
from .sequence import zero_padded as _zero_padded
from .sequence import zero_padded_


# oneDNN's GEMM (behind torch.nn.LSTM) beats MKL's (behind F.linear) on the float32 projections
# over all T*B rows, forward (x W_ih^T) and backward (dx = dG W_ih), from about this many
# multiply-adds; below, its call costs more.  Measured on Zen 4, (T*B, H) x (H, 4H), ms MKL /
# oneDNN, one thread: 2^25 (B, H) = (4, 128) 0.676 / 0.641 (dx 0.689 / 0.678), 2^26 (8, 128)
# 1.40 / 1.33 (dx 1.48 / 1.36), 2^27 (16, 128) 3.06 / 2.77, 2^21 (1, 64) 0.052 / 0.062; two
# threads: 2^25 0.444 / 0.407 but dx 0.445 / 0.485, 2^26 0.819 / 0.720 (dx 0.807 / 0.762).
_DNNL_MIN_MACS = 1 << 26


def _has_dnnl_linear() -> bool:
    """Whether this torch build has oneDNN's linear op (a private op: absent from some builds)."""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise is not None
    except (AttributeError, RuntimeError):
        return False


_DNNL_LINEAR = _has_dnnl_linear()


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x w^T + b, never differentiated (the caller's autograd.Function or no graph at all)."""
    if (x.numel() * w.shape[0] >= _DNNL_MIN_MACS and x.dtype == torch.float32 and x.device.type == "cpu"
            and _DNNL_LINEAR and torch.backends.mkldnn.enabled):
        return torch.ops.mkldnn._linear_pointwise(x, w.contiguous(), b, "none", [], "")
    return F.linear(x, w, b)


def _trace(cell: Cell, mask, saved, states) -> Dict[str, Tensor]:
    full = cell.trace(saved, states)
    # new tensors (zero_padded copies where there is a mask), never views of the saved buffers
    return {k: _zero_padded(mask, full[k].detach()) if mask is not None else full[k].detach().clone()
            for k in cell.trace_names}


def _run(cell: Cell, backend, want_trace: bool, need_saved: bool, x, mask, w_ih, b_ih, state0, rec, noise,
         project=_linear, zero_out: bool = True):
    """The forward pass of one layer and direction: (out, finals, trace, states, saved).

    ``project`` computes x W_ih^T + b_ih; the autograd path passes F.linear, which autograd can
    differentiate (``_linear`` may call oneDNN's op, which it cannot).  ``zero_out``: out has
    zeros on padded steps (else it is states[0], the carried state there).
    """
    xp = project(x, w_ih, b_ih)                                        # (T, B, G*H)
    save = need_saved or want_trace
    if backend.differentiable:                                         # traced step by step by autograd
        states, saved = backend.forward(cell, xp, mask, state0, rec, save, noise)
    else:
        states, saved = library.forward(backend, cell, xp, mask, state0, rec, save, noise)
    finals = tuple(s[-1].clone() for s in states)                      # (B, S_k)
    trace = _trace(cell, mask, saved, states) if want_trace else {}
    if mask is None or not zero_out:
        out = states[0]                                                # (T, B, S_0)
    elif not save and not backend.differentiable:                      # states[0] is ours: zero it in place
        out = zero_padded_(mask, states[0])
    else:
        out = _zero_padded(mask, states[0])
    return out, finals, trace, states, saved


def needs_graph(tensors) -> bool:
    """Whether a computation on ``tensors`` (None entries skipped) must record an autograd graph:
    grad mode is on and one of them requires grad.  Pass every differentiable input -- the input,
    the initial state and the weights -- or gradients to the one left out are silently lost."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class RecurrentFunction(torch.autograd.Function):
    """Forward over the whole sequence, backward through time, for one layer and direction.
    ``zero_out=False``: out keeps the carried state on padded steps (``_run``), and its gradient
    there flows into that state as the math says (the callers zero those steps downstream, so it
    comes back zero)."""

    @staticmethod
    def forward(ctx, cell: Cell, backend, want_trace: bool, zero_out: bool, x, mask, w_ih, b_ih, n_noise: int,
                *rest):
        n = len(cell.state_names)
        state0, noise, rec = rest[:n], rest[n:n + n_noise], rest[n + n_noise:]
        out, finals, trace, states, saved = _run(cell, backend, want_trace, True,
                                                 x, mask, w_ih, b_ih, state0, rec, noise or None, zero_out=zero_out)
        ctx.cell, ctx.backend, ctx.n_state, ctx.n_rec, ctx.n_noise = cell, backend, n, len(rec), n_noise
        ctx.zero_out = zero_out
        ctx.save_for_backward(x, mask, w_ih, b_ih, *state0, *noise, *rec, *states, *saved)
        ctx.mark_non_differentiable(*trace.values())
        return (out, *finals, *trace.values())

    @staticmethod
    def backward(ctx, d_out, *d_rest):
        n, n_rec, k = ctx.n_state, ctx.n_rec, ctx.n_state + ctx.n_noise
        x, mask, w_ih, b_ih, *rest = ctx.saved_tensors
        state0, noise, rec = tuple(rest[:n]), tuple(rest[n:k]), tuple(rest[k:k + n_rec])
        states, saved = tuple(rest[k + n_rec:k + n + n_rec]), tuple(rest[k + n + n_rec:])
        d_final = d_rest[:n]
        nones = (None,) * ctx.n_noise
        if torch.is_grad_enabled():                # create_graph=True: higher-order gradients follow
            grads = _graph_backward(ctx, (x, mask, w_ih, b_ih, *state0, *rec), (d_out, *d_final), noise or None)
            return (None,) * 4 + grads[:4] + (None,) + grads[4:4 + n] + nones + grads[4 + n:]
        if d_out is not None and ctx.zero_out:
            d_out = _zero_padded(mask, d_out)      # padded outputs are constant zeros
        d_xp, d_state0, d_rec = library.backward(
            ctx.backend, ctx.cell, d_out, d_final, mask, state0, states, saved, rec, noise or None)
        T, B, I = x.shape
        d_xp2 = d_xp.reshape(T * B, d_xp.shape[-1])                    # (T*B, G*H); B may be 0
        need = ctx.needs_input_grad
        dx = _linear(d_xp, w_ih.t(), None) if need[4] else None       # (T, B, I)
        dw_ih = d_xp2.t().mm(x.reshape(T * B, I)) if need[6] else None
        db_ih = d_xp2.sum(0) if need[7] else None                     # False when b_ih is None
        return (None, None, None, None, dx, None, dw_ih, db_ih, None, *d_state0, *nones, *d_rec)


def _graph_backward(ctx, inputs, d_outputs, noise) -> tuple:
    """Backward that autograd can differentiate again (``create_graph=True``: gradient penalties,
    Hessian-vector products): the forward is recomputed by the cell's Python step under autograd
    from the saved inputs, which are still connected to the outer graph, and differentiated with
    ``create_graph``.  Slower than the hand-derived BPTT, and only taken when asked for.

    inputs (x, mask, w_ih, b_ih, *state0, *rec) as forward got them; d_outputs (d_out, *d_final);
    noise as forward got it.  Returns the inputs' gradients in that order (None where not needed).
    """
    x, mask, w_ih, b_ih, *rest = inputs
    n = ctx.n_state
    oracle = backends.get(backends.ORACLE)
    with torch.enable_grad():
        out, finals, _, _, _ = _run(ctx.cell, oracle, False, False, x, mask, w_ih, b_ih,
                                    tuple(rest[:n]), tuple(rest[n:]), noise, project=F.linear, zero_out=ctx.zero_out)
    need = ctx.needs_input_grad[4:8] + ctx.needs_input_grad[9:9 + n] + ctx.needs_input_grad[9 + n + ctx.n_noise:]
    return wanted_grads(inputs, need, (out, *finals), d_outputs)


def autocast_enabled(x: Tensor) -> bool:
    """Whether autocast is on for x's device (never on a device without autocast, e.g. meta)."""
    if x.is_cpu:
        return torch.is_autocast_enabled("cpu")
    kind = x.device.type
    return is_autocast_available(kind) and torch.is_autocast_enabled(kind)


def held_layers(module, step_names, registered) -> Optional[List[list]]:
    """Per layer the parameters ``module._parameters[n]`` for n in ``step_names``, where each is
    held as registered: with its registered shape (``registered()``: {name: shape}, absent names
    not registered, e.g. a bias turned off).  Else None: a parametrized, replaced or rebound
    parameter, which the callers' checked paths read and check (the unchecked calls skip those
    checks).  The per-layer shapes are kept in the module's ``_step_shapes`` on first use (also
    in a module pickled before they were kept)."""
    shapes = module.__dict__.get("_step_shapes")
    if shapes is None:
        found = registered()
        shapes = module.__dict__["_step_shapes"] = [[found.get(n) for n in names] for names in step_names]
    layers = [[module._parameters.get(n) for n in names] for names in step_names]
    if [[None if t is None else t.shape for t in layer] for layer in layers] != shapes:
        return None
    return layers


def unchecked_step(name, cell: Cell, x, layers, state0):
    """One inference step of a stack straight from a backend that checks its own arguments
    (``Backend.checks_arguments``), without the callers' checks in Python (about half of a small
    step's time): x (B, I) under no_grad, outside autocast and forward-mode AD; ``layers`` the
    stack's parameters as ``held_layers`` gives them (None: not as registered, and this does not
    apply); ``state0()`` the (L, B, S_k) states.  Returns the backend's (out, h_n), or None where
    this does not apply or the backend rejects an argument (the caller's checks then name it)."""
    if layers is None or torch.is_grad_enabled() or type(x) is not Tensor or x.dim() != 2 or torch_ops_only():
        return None
    backend = backends.resolve_cached(name, cell, x.device, x.dtype)
    if not backend.checks_arguments or autocast_enabled(x):
        return None
    try:
        return backend.step(cell, x, state0(), layers)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return None


def cell_step(name, cell: Cell, x, state, layer):
    """One step of one layer as the backend's single autograd node (``Backend.cell_step``; a Cell
    module's step, also under no_grad, where it is the cheapest call): x (B, I) outside autocast,
    torch.compile and what needs torch's own ops; state (B, S_k) each, or None for zeros; layer =
    [w_ih, b_ih, *rec_params].  Returns the new state, or None where this does not apply or the
    backend rejects an argument (the caller's checks then name it, and its step runs under
    autograd)."""
    if type(x) is not Tensor or x.dim() != 2 or torch_ops_only() or torch.compiler.is_compiling():
        return None
    backend = backends.resolve_cached(name, cell, x.device, x.dtype)
    if autocast_enabled(x):
        return None
    try:
        return backend.cell_step(cell, x, state, layer)
    except (RuntimeError, TypeError, ValueError):
        return None


def run_direction(cell: Cell, backend: Backend, x: Tensor, mask: Optional[Tensor],
                  state0: Tuple[Tensor, ...], w_ih: Tensor, b_ih: Optional[Tensor],
                  rec: Tuple[Optional[Tensor], ...], want_trace: bool = False,
                  noise: Optional[Tuple[Tensor, ...]] = None, project=None, zero_out: bool = True):
    """Run one layer and direction over the sequence: (out, finals, trace).  Under forward-mode
    AD the oracle's plain loop runs it (the same math in torch ops, which carry the tangents).
    ``project``: the backend's input projection (``Backend.row_projection``), only given for a
    forward without a graph.  ``zero_out=False``: out's padded steps keep the carried state (the
    caller zeroes them, see the module's docstring)."""
    if not backend.differentiable and torch_ops_only():
        backend = backends.get(backends.ORACLE)
    if project is not None and (backend.differentiable or needs_graph((x, w_ih, b_ih, *state0, *rec))):
        raise RuntimeError("run_direction: a backend's row projection is for its own forwards without a graph")
    if backend.differentiable:                               # the plain loop, under autograd
        out, finals, trace, _, _ = _run(cell, backend, want_trace, False, x, mask, w_ih, b_ih, state0,
                                        rec, noise, project=F.linear, zero_out=zero_out)
        return out, finals, trace
    if not needs_graph((x, w_ih, b_ih, *state0, *rec)):     # inference: no autograd node
        out, finals, trace, _, _ = _run(cell, backend, want_trace, False, x, mask, w_ih, b_ih, state0, rec, noise,
                                        project=project or _linear, zero_out=zero_out)
        return out, finals, trace
    noise = tuple(noise or ())
    res = RecurrentFunction.apply(cell, backend, want_trace, zero_out,
                                  x, mask, w_ih, b_ih, len(noise), *state0, *noise, *rec)
    n = len(cell.state_names)
    trace = dict(zip(cell.trace_names, res[1 + n:])) if want_trace else {}
    return res[0], tuple(res[1:1 + n]), trace
