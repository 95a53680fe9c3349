"""Fused CPU backend: the C++ kernels of rnnkit/csrc behind the backend contract (base.py).

``forward`` and ``backward`` take and return exactly what the reference backend's do (same
shapes, same saved tensors in the cell's ``saved_names`` format, so ``cell.trace`` works
unchanged).  Each call runs the whole sequence of one layer and direction in C++: per step one
BLAS call for the recurrent term and one fused pass over the gates; in backward the recurrent
weight gradients are single GEMMs after the loop.  CPU float32 and float64 only.

The cell options the kernels take (rnnkit/csrc/rnn.h): clip_recurrent, recurrent_dropout and
zoneout on every cell (zoneout not on Jordan), peepholes and proj_size on the LSTM, layer_norm on
the LSTM and the GRU's torch form; ``supports`` declines any other with the kernels' reason (a
GRU's original form with layer_norm, zoneout on Jordan), and ``auto`` then runs the reference.
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells.base import Cell
from . import _build
from .base import YES, Backend, Support, wanted_grads

DTYPES = (torch.float32, torch.float64)


def extension():
    """The compiled kernels (built on first use), or None when they cannot be built here."""
    return _build.load()


def empty_cache() -> int:
    """Free the large buffers the C++ kernels keep for their next call (csrc/pool.h: at most
    RNNKIT_CPU_POOL_MB, default 256 MiB, of freed (T, B, .) buffers; 0 turns the cache off), as
    torch.cuda.empty_cache() does for CUDA memory.  Returns the bytes freed (0 when this process has
    not loaded the kernels: it never builds them)."""
    ext = _build.loaded()
    return ext.pool_release() if ext is not None else 0


class CPU(Backend):
    name = "cpu"
    checks_arguments = True          # csrc/check.h: nothing from Python is trusted

    def __init__(self):
        self._specs: Dict[tuple, Union[List[int], str]] = {}          # cell.key -> spec, or why none

    def available(self) -> Support:
        if extension() is None:
            return Support(False, f"the C++ kernels could not be built ({_build.error()}); "
                                  "run `rnnkit build --verbose` to see why", unavailable=True)
        return YES

    def supports(self, cell: Cell, device, dtype) -> Support:
        if torch.device(device).type != "cpu":
            return Support(False, f"runs on CPU tensors only, got device {device}")
        if dtype not in DTYPES:
            return Support(False, f"runs float32 and float64 only, got {dtype}")
        ok = self.available()
        if not ok:
            return ok
        spec = self._lookup(cell)
        return Support(False, spec) if isinstance(spec, str) else YES

    def _lookup(self, cell: Cell) -> Union[List[int], str]:
        """The kernels' encoding of a cell (their table's make_spec), or why they have none; memoised
        per kind of cell (``step`` needs it per call)."""
        spec = self._specs.get(cell.key)
        if spec is None:
            ext = extension()
            if cell.name not in ext.cells():
                spec = f"has no kernel for the {cell.name!r} cell"
            else:
                try:
                    spec = ext.make_spec(cell.name, cell.options())
                except ValueError as e:
                    spec = f"its {cell.name!r} kernel does not take {e}"
            self._specs[cell.key] = spec
        return spec

    def _spec(self, cell: Cell) -> List[int]:
        spec = self._lookup(cell)
        if isinstance(spec, str):
            raise RuntimeError(f"backend 'cpu' {spec}")
        return spec

    # noise (recurrent dropout's mask, zoneout's z; None in eval) goes to the kernels as it is: they
    # read a step's (B, N_k) slice, so the mask expanded over time is not copied T times.
    def forward(self, cell, xp, mask, state0, params, save=True, noise=None):
        states, saved = extension().forward(self._spec(cell), xp, mask, list(state0), list(params), save,
                                            list(noise or ()))
        return tuple(states), tuple(saved)

    def backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise=None):
        d_xp, d_state0, d_params = extension().backward(
            self._spec(cell), d_out, list(d_final), mask, list(state0), list(states), list(saved), list(params),
            list(noise or ()))
        return d_xp, tuple(d_state0), tuple(d_params)

    def step(self, cell: Cell, x: Tensor, state0, layers) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        out, h_n = extension().step(self._spec(cell), x, list(state0), layers)   # out: a copy of h_n[0][-1]
        return out, tuple(h_n)

    # The plain cells csrc/cell_step.h takes, by cell.key, and its code for each.
    STEP_KINDS = {("elman", (("nonlinearity", "tanh"),)): 0, ("elman", (("nonlinearity", "relu"),)): 1,
                  ("lstm", ()): 2, ("gru", (("reset_after", "1"),)): 3}

    def cell_step(self, cell, x, state, layer):
        kind = self.STEP_KINDS.get(cell.key)
        if kind is None:
            return None
        w_ih, b_ih, w_hh, b_hh = layer
        h, c = (None, None) if state is None else (state[0], state[1] if len(state) > 1 else None)
        return tuple(extension().cell_step(kind, x, h, c, w_ih, w_hh, b_ih, b_hh))

    # Up to this many multiply-adds in a layer's input projection the one-call path projects through
    # the same BLAS as F.linear; above, the layer-by-layer path takes oneDNN's GEMM (ops._linear),
    # faster there by more than the layer-by-layer path's Python (about 25 us a call): at 2^26,
    # (T, B, H) = (128, 8, 128), 1.40 against 1.33 ms on one thread.
    INFER_MAX_MACS = 1 << 26
    # ... unless that projection, a new tensor on the layer path, is larger than glibc's largest
    # mmap threshold (32 MiB): then it is mapped afresh on every call and every page faults in,
    # where the one-call path writes into its pooled workspace (with oneDNN's matmul from 2^26
    # multiply-adds, gemm.cpp).  GRU (T, B, H) = (100, 64, 512), a 39 MB projection, two threads:
    # 109 -> 102 ms, against ONNX Runtime's 118-123; one thread 213 -> 200.  Below it the layer
    # path stays ahead (GRU (128, 32, 256) 0.96, Elman (100, 64, 512) 0.97 of its time).
    LAYER_MAX_PROJECTION_BYTES = 32 << 20

    # A plain float32 LSTM stack whose steps are large runs faster on oneDNN's LSTM primitive (what
    # torch.nn.LSTM calls on the CPU) than on our loops, so its inference goes there: measured on
    # Zen 4, forward under no_grad, torch.nn / rnnkit at T = 128 (ratios move by 10-20% between
    # runs), one thread: (B, H) = (8, 128) 0.75-0.92, (16, 128) 0.79-0.82, (32, 256) 0.85-0.86
    # (two layers 0.85); two threads: (16, 128) 0.86, (32, 256) 0.86-0.89, (64, 512) 0.87-0.90.
    # Ours stays ahead with few rows, where the primitive's per-step GEMM has too few to fill its
    # tiles ((2, 256) 1.26 on one thread, 1.28 on two; (4, 128) 1.01, 1.29; (4, 256) 0.91-0.97 on
    # one; (8, 128) on two 0.95-1.21 over four runs), on short calls (T = 1 at (8, 128): 1.33;
    # T = 8: 1.07), where its set-up dominates, and on small steps ((1, 64): 1.27).  The set-up
    # reorders every weight on every call, a cost of a few rows' products whatever H is: ours /
    # the primitive's time (above 1: the primitive is faster) by T, one thread, (B, H) = (8, 512)
    # T = 1 0.25, 4 0.69, 16 0.89, 32 0.94, 64 1.01; (32, 256) T = 1 0.56, 4 1.15; (64, 512) T = 1
    # 0.77, 4 1.04; two threads (16, 256) T = 4 0.93, 16 1.04; (64, 512) T = 1 0.88, T = 4 1.14
    # (torch.nn's own LSTM at (8, 512), T = 1: 4.1 ms against its native loop's 0.8).  Hence: at
    # least ONEDNN_ROWS rows per thread, ONEDNN_STEP_MACS multiply-adds per thread in a step's
    # recurrent product (B * 4H * H / threads), ONEDNN_CALL_MACS in the first layer's whole run
    # (T * B * 4H * (I + H)) and ONEDNN_CALL_ROWS rows in it (T * B).
    ONEDNN_ROWS = 8
    ONEDNN_STEP_MACS = 1 << 18
    ONEDNN_CALL_MACS = 1 << 25
    ONEDNN_CALL_ROWS = 256

    @staticmethod
    def _onednn_case(cell, x, rows: int):
        """(B, a step's recurrent multiply-adds B * 4H * H, the first layer's T * B * 4H * (I + H),
        threads) of a call on x that oneDNN's LSTM primitive could take (a plain float32 LSTM, torch
        with oneDNN switched on: without it torch runs its native loop, slower than ours), else None.
        ``rows``: the fewest batch rows the caller's rule takes, tested first (a small batch's call
        then skips torch.backends.mkldnn's queries: 1.4 of the 26 us of an LSTM (1, 64) forward at T = 1)."""
        if x.shape[1] < rows or x.dtype != torch.float32 or cell.key != ("lstm", ()):
            return None                                    # oneDNN's primitive has no variants
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return None
        T, B, I = x.shape
        H = cell.hidden_size
        return B, B * 4 * H * H, T * B * 4 * H * (I + H), torch.get_num_threads()

    def _onednn_pays(self, cell, x) -> bool:
        case = self._onednn_case(cell, x, self.ONEDNN_ROWS * torch.get_num_threads())
        if case is None:
            return False
        B, step, call, n = case
        return (B >= self.ONEDNN_ROWS * n and step >= self.ONEDNN_STEP_MACS * n and call >= self.ONEDNN_CALL_MACS
                and x.shape[0] * B >= self.ONEDNN_CALL_ROWS)

    def infers(self, cell, x, bidirectional, varlen=False):
        return True                                   # the C++ infer takes every stack without draws

    def infer(self, cell, x, state0, layers, bidirectional=False, lengths=None, batch_sizes=None):
        varlen = lengths is not None or batch_sizes is not None
        if not varlen and self._onednn_pays(cell, x):
            if state0 is None:
                state0 = tuple(x.new_zeros(len(layers), x.shape[1], s) for s in cell.state_sizes())
            return _onednn_lstm(x, state0, layers, bidirectional)
        if batch_sizes is not None:                           # x: a PackedSequence's data (N, I)
            T, B, valid = len(batch_sizes), int(batch_sizes[0]), x.shape[0]
        else:
            T, B = x.shape[0], x.shape[1]
            valid = int(lengths.sum()) if lengths is not None else T * B
        # with lengths, a layer whose sequences are long enough projects each over its valid steps
        # (row_projection's rule, in C++); the others' projections, as without lengths, go to the
        # layer-by-layer path's oneDNN GEMM once large
        steps = valid / max(B, 1)
        row_macs = self.ROW_PROJECTION_MACS if varlen and steps < T else 0
        for w in layers:
            by_rows = row_macs and steps * w[0].shape[0] * w[0].shape[1] >= row_macs
            if (not by_rows and T * B * w[0].shape[0] * w[0].shape[1] >= self.INFER_MAX_MACS
                    and T * B * w[0].shape[0] * x.element_size() <= self.LAYER_MAX_PROJECTION_BYTES):
                return None
        # both directions in one call, with lengths too: a small bidirectional GRU (T, B, H) = (128, 1,
        # 64) took 0.378 ms layer by layer on one thread (one direction: 0.135), ONNX Runtime 0.332
        out, h_n = extension().infer(self._spec(cell), x, [] if state0 is None else list(state0), layers,
                                     lengths, row_macs, batch_sizes, bidirectional)
        return out, tuple(h_n)

    # Training (forward + backward) of a plain float32 LSTM stack runs on oneDNN's primitive
    # (torch.nn's CPU training path) where it beat our fused loops, measured side by side (fwd+bwd,
    # T = 128, alternating calls in one process, Zen 4): one thread, oneDNN / ours speed-up (B, H) =
    # (8, 128) 1.08, (16, 128) 1.09, (32, 128) 1.10, (24, 128) 1.11, (32, 64) 1.08, (8, 256) 1.06,
    # (16, 256) 1.08, two layers (8, 128) 1.11, T = 512 1.11; it loses on many rows ((64, 128) 0.87,
    # (64, 256) 0.89, (32, 256) 0.97), small steps ((8, 64) 0.93), short runs (T = 16 at (8, 128)
    # 0.93, T = 4 0.79) and with two threads on small steps ((8, 128) 0.94, (4, 128) 0.82), which
    # our loops split by hidden units; two threads: (16, 128) 1.03, (32, 128) 1.01, (8, 256) 1.06,
    # (16, 256) 1.09, (32, 256) 0.89.  Re-measured by T and B (session 20), ours / oneDNN's time
    # (above 1: oneDNN is faster): its weights' reorders on every call (forward and backward) take
    # short runs out of its reach (one thread, (8, 128) T = 1 0.59, 16 0.97, 128 1.07; (8, 512)
    # T = 16 0.92, 32 1.01; (64, 384) T = 1 0.97, 4 1.12), and its time grows faster than T once
    # its workspace (T * B * H) is large (two threads, (64, 128): T = 32 1.12 (11.4 against 10.5 ms),
    # T = 128 0.77 (42.9 against 55.6); (64, 256) T = 32 1.10, T = 128 0.80; (64, 384) T = 16 1.15,
    # T = 32 0.98; (16, 256) T = 128 1.12; (64, 512) T = 16 1.12, one thread 0.94 and 1.10 in
    # two runs, T = 4 1.19; one thread (64, 384) T = 8 1.11, torch.nn / rnnkit 0.86 off it).  Hence: at
    # least ONEDNN_TRAIN_ROWS rows, a step's recurrent product (B * 4H * H) of ONEDNN_TRAIN_STEP_MACS
    # to ONEDNN_TRAIN_MAX_STEP_MACS per thread, ONEDNN_TRAIN_CALL_MACS in the first layer's run,
    # and from ONEDNN_CALL_ROWS to ONEDNN_TRAIN_MAX_CELLS / H rows in it (T * B).
    ONEDNN_TRAIN_ROWS = 8
    ONEDNN_TRAIN_STEP_MACS = 1 << 19
    ONEDNN_TRAIN_MAX_STEP_MACS = 1 << 26
    ONEDNN_TRAIN_CALL_MACS = 1 << 26
    ONEDNN_TRAIN_MAX_CELLS = 1 << 19

    def _onednn_trains(self, cell, x) -> bool:
        case = self._onednn_case(cell, x, self.ONEDNN_TRAIN_ROWS)
        if case is None:
            return False
        B, step, call, n = case
        rows = x.shape[0] * B
        return (B >= self.ONEDNN_TRAIN_ROWS and call >= self.ONEDNN_TRAIN_CALL_MACS
                and self.ONEDNN_TRAIN_STEP_MACS * n <= step <= self.ONEDNN_TRAIN_MAX_STEP_MACS * n
                and self.ONEDNN_CALL_ROWS <= rows and rows * cell.hidden_size <= self.ONEDNN_TRAIN_MAX_CELLS)

    # One GEMM per sequence pays where a sequence's product is large enough; below, the batch is
    # copied into the run's order and projected in one GEMM, padded steps included.  Measured
    # (Elman, two threads, copy / rows): (T, B, H) = (8, 256, 256) 1.13, (64, 4, 512) 1.14,
    # (32, 32, 256) 1.04, (128, 8, 128) 1.03, but (16, 64, 128) 0.89, (12, 128, 64) 0.90,
    # (4, 512, 128) 0.96: a sequence's mean valid steps x I x G*H of at least 2^19.
    ROW_PROJECTION_MACS = 1 << 19

    def row_projection(self, cell, x, order, lengths):
        # saves the copy of x into the run's order and the padded steps' share of the projection:
        # (T, B, H) = (128, 32, 256), 73% of the steps valid, forward without a graph, interleaved
        # in one process: Elman 9.05 -> 7.62 ms (two threads), 15.36 -> 12.83 (one); GRU 19.26 ->
        # 18.48 and 31.96 -> 30.78; LSTM (two threads) 25.39 -> 24.95; a PackedSequence, only the
        # padded steps (its rows come in the run's order): Elman 8.78 -> 7.87, LSTM 26.96 -> 25.35
        T, B, I = x.shape
        if (x.device.type != "cpu" or x.dtype not in DTYPES or x.stride(-1) != 1
                or min(x.stride(0), x.stride(1)) < I or B == 0):
            return None
        if order is None and int(lengths.min()) >= T:        # in the run's order and no padding
            return None
        if int(lengths.sum()) / B * I * cell.n_gates * cell.hidden_size < self.ROW_PROJECTION_MACS:
            return None
        ext = extension()
        order = torch.arange(B) if order is None else order.to(torch.long).contiguous()
        lengths = lengths.to(torch.long).contiguous()
        return lambda x, w, b: ext.project_rows(x, order, lengths, w.contiguous(),
                                                None if b is None else b.contiguous())

    # The other stacks train as one autograd node over the whole stack (one direction, no noise,
    # no lengths: _FusedTraining), not layer by layer, which pays Python and an autograd node per
    # layer: most of a short call (BENCHMARKS.md, session 19).  Its GEMMs (projection, dW_ih, dx)
    # are the BLAS ones infer uses; the layer path's are oneDNN's, faster on large products.
    # Interleaved in one process, T = 128, layer path / one node: two threads, (B, H) = (8, 128)
    # LSTM 1.02-1.03, (16, 128) LSTM 1.01 and GRU 1.00, Elman (16, 256) 1.03; (32, 256) GRU 0.97,
    # Elman 0.98 (one thread: 0.97, 0.99).  Hence a layer's projection of at most
    # FUSED_TRAIN_MAX_MACS multiply-adds (T * B * G*H * I).
    FUSED_TRAIN_MAX_MACS = 1 << 27

    def _fused_trains(self, cell, x) -> bool:
        return (x.device.type == "cpu" and x.dtype in DTYPES and x.dim() == 3 and not isinstance(self._lookup(cell), str)
                and x.shape[0] * x.shape[1] * cell.n_gates * cell.hidden_size * x.shape[2] <= self.FUSED_TRAIN_MAX_MACS)

    def trains(self, cell, x, bidirectional=False):
        return self._onednn_trains(cell, x) or (not bidirectional and self._fused_trains(cell, x))

    def train(self, cell, x, state0, layers, bidirectional=False):
        onednn = self._onednn_trains(cell, x)
        if not onednn and (bidirectional or not self._fused_trains(cell, x)):
            return None
        T, B = x.shape[0], x.shape[1]
        if not onednn and any(T * B * w[0].shape[0] * w[0].shape[1] > self.FUSED_TRAIN_MAX_MACS for w in layers[1:]):
            return None
        if state0 is None:
            state0 = tuple(x.new_zeros(len(layers), B, s) for s in cell.state_sizes())
        if not onednn:
            flat = [w for layer in layers for w in layer]
            out, *h_n = _FusedTraining.apply(cell, self._spec(cell), len(layers), len(state0), x, *state0, *flat)
            return out, tuple(h_n)
        # torch records the graph: oneDNN's backward, or with create_graph=True torch's
        # differentiable one (composite ops, step by step), so second order stays exact.  Wrapping
        # the call in a Function of our own cost a nested backward: 0.95 -> 1.00 of torch.nn's time
        # at (8, 128), one thread (BENCHMARKS.md, session 20)
        return _onednn_lstm(x, state0, layers, bidirectional, train=True)

    def stepper(self, cell, layers, batch_size, who):
        return extension().Stepper(who, self._spec(cell), layers, batch_size)


def _flat_weights(layers) -> Tuple[bool, List[Tensor]]:
    """(has_biases, torch's flat weights) of an LSTM stack, layers[l*D + d] = [w_ih, b_ih, w_hh, b_hh]
    (biases None or all present)."""
    has_biases = layers[0][1] is not None
    return has_biases, [w for w_ih, b_ih, w_hh, b_hh in layers
                        for w in ((w_ih, w_hh, b_ih, b_hh) if has_biases else (w_ih, w_hh))]


def _onednn_lstm(x: Tensor, state0, layers, bidirectional: bool,
                 train: bool = False) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A plain LSTM stack on torch's LSTM (oneDNN's primitive on the CPU), D directions: x (T, B, I),
    state0 (h0, c0) (D*L, B, H) each, layers[l*D + d] = [w_ih, b_ih, w_hh, b_hh]
    -> (out (T, B, D*H), (h_n, c_n) (D*L, B, H) each).  train=False is inference (oneDNN then keeps
    no workspace for a backward); train=True records torch's graph."""
    has_biases, flat = _flat_weights(layers)
    h0, c0 = (s.contiguous() for s in state0)
    out, h_n, c_n = torch._VF.lstm(x, (h0, c0), flat, has_biases, len(layers) // (2 if bidirectional else 1),
                                   0.0, train, bidirectional, False)
    return out, (h_n, c_n)


def _per_layer(flat, L: int) -> List[list]:
    """flat (L layers' [w_ih, b_ih | None, *rec] in turn) as L lists."""
    n = len(flat) // L
    return [list(flat[k * n:(k + 1) * n]) for k in range(L)]


class _FusedTraining(torch.autograd.Function):
    """A stack of one direction, without noise or lengths, as one autograd node: the extension's
    train_forward and train_backward (each cell's hand-derived BPTT and the input projections'
    gradients, in C++, bindings.cpp).  A backward that records a graph (create_graph=True)
    recomputes the forward layer by layer on the cells' Python steps (the oracle), whose ops
    autograd differentiates again, from the saved inputs (still connected to the outer graph).
    Inputs: cell, spec, L, n_state, x (T, B, I), *state0 (L, B, S_k), *flat (per layer [w_ih,
    b_ih | None, *rec]); outputs: out (T, B, S_0), *h_n (L, B, S_k)."""

    @staticmethod
    def forward(ctx, cell, spec, L, n_state, x, *rest):
        ctx.set_materialize_grads(False)            # an unused output's gradient stays None: no zeros made
        state0, flat = rest[:n_state], rest[n_state:]
        out, h_n, keep = extension().train_forward(spec, x, list(state0), _per_layer(flat, L))
        ctx.cell, ctx.spec, ctx.L, ctx.n_state, ctx.n_flat = cell, spec, L, n_state, len(flat)
        ctx.save_for_backward(x, *state0, *flat, *keep)
        return (out, *h_n)

    @staticmethod
    def backward(ctx, d_out, *d_h_n):
        saved = ctx.saved_tensors
        n, k = ctx.n_state, 1 + ctx.n_state + ctx.n_flat
        x, state0, flat, keep = saved[0], saved[1:1 + n], saved[1 + n:k], saved[k:]
        need = ctx.needs_input_grad[4:]             # x, *state0, *flat
        if d_out is None and all(d is None for d in d_h_n):
            return (None,) * (4 + k)
        if torch.is_grad_enabled():
            return (None,) * 4 + _stack_graph_backward(ctx.cell, x, state0, flat, ctx.L, (d_out, *d_h_n), need)
        need_state0 = any(need[1:1 + n])
        dx, d_state0, d_layers = extension().train_backward(ctx.spec, d_out, list(d_h_n), x, list(state0),
                                                            _per_layer(flat, ctx.L), list(keep), bool(need[0]),
                                                            need_state0)
        d_state0 = d_state0 if need_state0 else (None,) * n            # incomplete then: not returned
        return (None,) * 4 + (dx, *d_state0, *(g for layer in d_layers for g in layer))


def _stack_graph_backward(cell, x, state0, flat, L: int, d_outputs, need) -> tuple:
    """_FusedTraining's gradients with create_graph=True: the stack run again on the oracle (the
    cells' Python steps) under autograd, as ops._graph_backward does for one layer, and
    differentiated with create_graph."""
    from . import ORACLE, get                   # (the package imports this module: looked up at call time)
    oracle = get(ORACLE)
    with torch.enable_grad():
        inp, finals = x, []
        for k, (w_ih, b_ih, *rec) in enumerate(_per_layer(flat, L)):
            states, _ = oracle.forward(cell, F.linear(inp, w_ih, b_ih), None, tuple(s[k] for s in state0), tuple(rec),
                                       False)
            inp = states[0]
            finals.append([s[-1] for s in states])
        outputs = (inp, *(torch.stack([f[j] for f in finals]) for j in range(len(state0))))
    return wanted_grads((x, *state0, *flat), need, outputs, d_outputs)


BACKEND = CPU()
