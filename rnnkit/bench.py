"""``rnnkit bench``: rnnkit (its ``auto`` backend) against torch.nn, side by side in one process.

Every row times a baseline and rnnkit on the same weights and inputs, interleaved repeat by
repeat (so that load from other processes hits both alike), and reports medians after
warm-up, GFLOP/s and the ratio baseline / rnnkit (above 1: rnnkit is faster).  A sample of a
sequence row times back-to-back calls of one side for at least ``--sample-ms`` (SAMPLE_MS): the
steady state of a loop over batches, as timeit and torch.utils.benchmark measure it; ``0`` times
single calls, each right after another side's (caches and idle thread pools left by that side).

    fwd        forward under torch.no_grad()
    fwd+bwd    forward, sum of the output, backward
    step       one streaming step (B=1, one thread) under no_grad: torch.nn.*Cell against ``model.step``
    stream     the same, against ``model.stream()`` (state kept inside, no allocation per step)
    cell       the same, against rnnkit's Cell module (rnnkit.RNNCell, LSTMCell, GRUCell); also on
               a batch (B, H) = (32, 256) and (64, 512) at each thread count (``bench_cell``)
    cell+bwd   a Cell module's step with grad, sum of the new state, backward: torch.nn.*Cell
               against rnnkit's (a training loop over single steps), at the same sizes
    memory     peak resident memory (MiB, in the ms columns) of one training step, each in a
               fresh subprocess; ratio above 1: rnnkit needs less

Baselines: torch.nn.RNN / GRU / LSTM (LSTM twice: with oneDNN, torch's default, and with
``torch.backends.mkldnn.flags(enabled=False)``); for Jordan, a plain PyTorch loop of the same
math differentiated by autograd.  Variant rows (issue 11: peepholes, projection, clip_recurrent,
recurrent dropout, zoneout, layer_norm; case labels like ``lstm zoneout T128 B8 H128``) time the variant on ``auto``
against the same layer, weights and noise on the ``autograd`` backend: the plain PyTorch loop of
the cell's step that a user would write, differentiated by autograd.  Both run in training mode
(the noise is drawn), each call after the same seed, so both sides draw the same masks.  Inference rows (fwd, full-length sequences) also time ONNX
Runtime (CPU provider, the same number of intra-op threads) on ``rnnkit.export_onnx`` of the
same model, when ``onnxruntime`` is installed (else those rows are left out and ``machine()``
says so).  ``--threads 2,1`` runs every sequence row once per intra-op thread count (a table
each); step rows always run on one thread and, like the memory rows, once.  FLOPs count the GEMMs only: 2*B*G*H*(I+H) per step and layer
direction forward (Jordan 2*B*H*(I+2*O)), three times that for fwd+bwd.

Each thread count's table also gives the machine's measured sgemm throughput (``torch.mm`` of two
square float32 matrices, SGEMM_N = 2048 a side, on that many threads, median of the repeats) and
every row's rnnkit GFLOP/s as a share of it: the ceiling a recurrent layer's GEMMs can approach.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import tempfile
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import backends, registry
from . import cell_modules as rnnkit_cells
from .cells import LSTMCell
from .convert import from_torch
from .layers import Jordan


def _label(e: registry.Entry) -> str:
    """A cell's name in the table: its torch.nn twin's ('rnn', 'gru', 'lstm'), else its own."""
    return e.torch_twin.__name__.lower() if e.torch_twin is not None else e.name


_ENTRIES = {_label(e): e for e in registry.CELLS.values()}
_TORCH = {k: e.torch_twin for k, e in _ENTRIES.items() if e.torch_twin is not None}
CELLS = tuple(_ENTRIES)
FULL_SIZES = ((128, 1, 64), (128, 8, 128), (128, 32, 256), (100, 64, 512))   # (T, B, H = I)
QUICK_SIZES = ((8, 2, 8),)
CELL_SIZES = ((32, 256), (64, 512))               # (B, H = I) of the batched Cell rows
QUICK_CELL_SIZES = ((2, 8),)
VARIANT_SIZES = ((128, 8, 128), (128, 32, 256))      # issue 11's (B, H) at T = 128
# ``--sweep``: shapes beyond the table's four, (T, B, H = I), where a route or a threshold chosen on
# the table's sizes can lose to torch.nn: one step and short runs, many rows, small and large H
# (session 20's sweep found GRU (1, 16, 384) training at 0.33 of torch.nn's speed, and LSTM (8, 64,
# 384) at 0.84, none of them in the table).
SWEEP_SIZES = tuple((T, B, H) for T in (1, 8, 64) for B in (1, 4, 16, 64) for H in (32, 128, 384))
QUICK_SWEEP_SIZES = ((1, 2, 8), (4, 3, 8))
# The variants of issue 11 with a fused kernel: {name: (H -> layer keyword arguments, cells)}.
# clip_recurrent binds (the gradients reach it), the probabilities are typical ones, P = H / 2.
VARIANTS = {
    "peephole": (lambda H: {"peephole": True}, ("lstm",)),
    "proj": (lambda H: {"proj_size": H // 2}, ("lstm",)),
    "clip": (lambda H: {"clip_recurrent": 0.01}, ("rnn", "jordan", "lstm", "gru")),
    "dropout": (lambda H: {"recurrent_dropout": 0.25}, ("rnn", "jordan", "lstm", "gru")),
    "zoneout": (lambda H: {"zoneout": 0.1}, ("rnn", "lstm", "gru")),
    "layer_norm": (lambda H: {"layer_norm": True}, ("lstm", "gru")),
}


@dataclass
class Case:
    cell: str
    T: int
    B: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    varlen: bool = False
    variant: str = ""                     # a VARIANTS key: the variant rows

    @property
    def label(self) -> str:
        extra = (f" L{self.layers}" if self.layers > 1 else "") + (" bidir" if self.bidirectional else "") \
            + (" varlen" if self.varlen else "")
        name = f"{self.cell} {self.variant}" if self.variant else self.cell
        return f"{name} T{self.T} B{self.B} H{self.H}{extra}"


@dataclass
class Row:
    case: str
    cell: str
    mode: str
    baseline: str
    baseline_ms: float
    rnnkit_ms: float
    ratio: float
    baseline_gflops: Optional[float] = None
    rnnkit_gflops: Optional[float] = None
    threads: int = 0                      # intra-op threads of both sides (step rows: 1)
    x_plain: Optional[float] = None       # variant rows: time over our plain cell's, same turns
    x_lstm: Optional[float] = None        # ... and over our plain LSTM's


# -- timing ------------------------------------------------------------------------------------
def interleaved_medians(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                        inner: int = 1, min_ms: float = 0.0) -> Dict[str, float]:
    """Median milliseconds per call of every function over interleaved_samples' repeats."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, repeats, warmup, inner, min_ms).items()}


def interleaved_samples(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                        inner: int = 1, min_ms: float = 0.0) -> Dict[str, List[float]]:
    """Milliseconds per call of every function in each repeat (a list of ``repeats`` samples per
    function, sample r of each taken in repeat r), the functions timed in turn within each repeat.

    Repeat r starts its turn at function r mod n: a call right after another side's runs on caches,
    pages and thread pools that side left cold (measured: an LSTM (1, 64) forward 0.27 ms after
    itself, 0.57 ms right after torch.nn's), so no side may always come after the same one.

    Each sample times ``inner`` calls back to back, or with ``min_ms`` > 0 as many as last about
    min_ms (counted per function from its last warm-up call, at least ``inner``): the steady state
    of a loop that calls one model, where only a turn's first call pays for the other side's
    leftovers.  min_ms = 0 and inner = 1 time single calls, each right after another side's."""
    counts = {}
    for k, f in fns.items():
        one = 0.0
        for _ in range(max(warmup, 1 if min_ms > 0 else 0)):
            t0 = time.perf_counter()
            f()
            one = (time.perf_counter() - t0) * 1e3
        counts[k] = max(inner, math.ceil(min_ms / one) if min_ms > 0 and one > 0 else 1)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            f, n = fns[k], counts[k]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times[k].append((time.perf_counter() - t0) * 1e3 / n)
    return times


# The sequence rows' samples: back-to-back calls for at least this many ms (QUICK_SAMPLE_MS with
# --quick; ``--sample-ms 0``: one call per sample).  Measured at 2 threads, T = 128, one call per
# sample against 10 ms samples: LSTM (1, 64) forward rnnkit 0.26-0.31 -> 0.15 ms, ONNX Runtime
# 0.30-0.33 -> 0.19, torch.nn 0.48 -> 0.37; the rows from about 10 ms a call are unchanged.
SAMPLE_MS = 10.0
QUICK_SAMPLE_MS = 1.0


SGEMM_N = 2048                        # the side of sgemm_gflops' matrices (QUICK_SGEMM_N with --quick)
QUICK_SGEMM_N = 64


def sgemm_gflops(repeats: int, n: int = SGEMM_N) -> float:
    """The machine's float32 GEMM throughput on torch's current intra-op threads: GFLOP/s of
    ``torch.mm`` of two (n, n) matrices (2 n^3 FLOPs), median of ``repeats`` calls after warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append((time.perf_counter() - t0) * 1e3)
    return _gflops(2.0 * n ** 3, statistics.median(times))


def flops(case: Case, jordan_out: int = 0) -> float:
    """Forward GEMM FLOPs of the whole run."""
    D = 2 if case.bidirectional else 1
    if case.cell == "jordan":
        return 2.0 * case.T * case.B * case.H * (case.H + 2 * jordan_out)
    total, inp = 0.0, case.H
    for _ in range(case.layers):
        total += D * 2.0 * case.T * case.B * _ENTRIES[case.cell].cell.n_gates * case.H * (inp + case.H)
        inp = D * case.H
    return total


def _gflops(f: float, ms: float) -> float:
    return f / (ms * 1e6)


# -- workloads ---------------------------------------------------------------------------------
def _fwd(model, args) -> Callable[[], None]:
    def run():
        with torch.no_grad():
            model(*args)
    return run


def _fwd_bwd(model, args, out_of=lambda r: r[0]) -> Callable[[], None]:
    def run():
        for p in model.parameters():
            p.grad = None
        out = out_of(model(*args))
        out = out.data if hasattr(out, "batch_sizes") else out
        out.sum().backward()
    return run


def _no_onednn(f: Callable[[], None]) -> Callable[[], None]:
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # flags() warns about TF32 on Intel GPUs
            with torch.backends.mkldnn.flags(enabled=False):
                f()
    return run


def _onnxruntime():
    """The onnxruntime module, or None when it is not installed (its rows are then left out)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


class OrtModel(nn.Module):
    """ONNX Runtime running ``rnnkit.export_onnx`` of ``source`` (no initial-state inputs), called
    like the layer: x (T, B, I) -> (output, h_n) or (output, (h_n, c_n)) as torch tensors.  The
    source is kept as a submodule so that its weights are the row's (it is never called)."""

    def __init__(self, source: nn.Module, threads: int):
        super().__init__()
        ort = _onnxruntime()
        self.source = source
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.onnx")
            from .export import export_onnx
            export_onnx(source, path, initial_state=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # ORT's pool threads spin after a run by default: on a machine with as many cores as
            # threads they take the cores from whatever is timed next (an interleaved rnnkit or
            # torch.nn call at (B, H) = (1, 64) measured 30x slower after it)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def forward(self, x):
        out, *states = (torch.from_numpy(v) for v in self.session.run(self.names, {"input": x.detach().numpy()}))
        return out, (tuple(states) if len(states) > 1 else states[0])


def _torch_and_rnnkit(case: Case):
    """(torch.nn module, rnnkit module with its weights, lengths or None)."""
    torch.manual_seed(0)
    tm = _TORCH[case.cell](case.H, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
    rk = from_torch(tm)
    if not case.varlen:
        return tm, rk, None
    lengths = torch.randint(case.T // 2, case.T + 1, (case.B,))
    lengths[0], lengths[-1] = case.T, case.T // 2             # variable whatever the draw
    return tm, rk, lengths


def _args(x, lengths):
    """The same input for both sides: (torch.nn's args, rnnkit's args)."""
    if lengths is None:
        return (x,), (x,)
    packed = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)   # its data a leaf, like x
    data = packed.data.requires_grad_(x.requires_grad)
    return (PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),), (x, None, lengths)


def bench_case(case: Case, repeats: int, sample_ms: float = SAMPLE_MS, torch_only: bool = False) -> List[Row]:
    """fwd and fwd+bwd rows of one torch.nn case (LSTM against oneDNN on and off, and ONNX Runtime;
    torch_only: against torch.nn as it runs by default only); each sample ``sample_ms`` of
    back-to-back calls (interleaved_medians' min_ms)."""
    tm, rk, lengths = _torch_and_rnnkit(case)
    x = torch.randn(case.T, case.B, case.H)
    f = flops(case)
    rows = []
    for mode, make, fl in (("fwd", _fwd, f), ("fwd+bwd", _fwd_bwd, 3 * f)):
        t_args, r_args = _args(x.clone().requires_grad_(mode == "fwd+bwd"), lengths)   # both differentiate x
        fns = {"torch.nn": make(tm, t_args), "rnnkit": make(rk, r_args)}
        if case.cell == "lstm" and not torch_only:
            fns["torch.nn (no oneDNN)"] = _no_onednn(make(tm, t_args))
        if mode == "fwd" and lengths is None and not torch_only and _onnxruntime() is not None:
            fns["onnxruntime"] = make(OrtModel(rk, torch.get_num_threads()), r_args)
        ms = interleaved_medians(fns, repeats, min_ms=sample_ms)
        for base in (k for k in fns if k != "rnnkit"):
            rows.append(Row(case.label, case.cell, mode, base, ms[base], ms["rnnkit"], ms[base] / ms["rnnkit"],
                            _gflops(fl, ms[base]), _gflops(fl, ms["rnnkit"]), torch.get_num_threads()))
    return rows


class JordanLoop(nn.Module):
    """A plain PyTorch loop of the Jordan network's math (tanh hidden, tanh output), autograd for BPTT."""

    def __init__(self, j: Jordan):
        super().__init__()
        self.j = j

    def forward(self, x):
        j = self.j
        y = x.new_zeros(x.shape[1], j.output_size)
        outs = []
        for t in range(x.shape[0]):
            h = torch.tanh(F.linear(x[t], j.weight_ih_l0, j.bias_ih_l0) + F.linear(y, j.weight_yh_l0))
            y = torch.tanh(F.linear(h, j.weight_hy_l0, j.bias_hy_l0))
            outs.append(y)
        return torch.stack(outs), y


def bench_jordan(case: Case, repeats: int, sample_ms: float = SAMPLE_MS) -> List[Row]:
    torch.manual_seed(0)
    O = case.H
    rk = Jordan(case.H, case.H, O, output_activation="tanh")
    loop = JordanLoop(rk)
    x = torch.randn(case.T, case.B, case.H)
    f = flops(case, O)
    rows = []
    for mode, make, fl in (("fwd", _fwd, f), ("fwd+bwd", _fwd_bwd, 3 * f)):
        xin = x.clone().requires_grad_() if mode == "fwd+bwd" else x
        ms = interleaved_medians({"plain loop": make(loop, (xin,)), "rnnkit": make(rk, (xin,))}, repeats,
                                 min_ms=sample_ms)
        rows.append(Row(case.label, "jordan", mode, "plain loop", ms["plain loop"], ms["rnnkit"],
                        ms["plain loop"] / ms["rnnkit"], _gflops(fl, ms["plain loop"]), _gflops(fl, ms["rnnkit"]),
                        torch.get_num_threads()))
    return rows


def _seeded(f: Callable[[], None], seed: int = 0) -> Callable[[], None]:
    """f after seeding torch's CPU generator (every call, either side of a row, draws the same noise:
    rnnkit.noise takes its keys from that generator).  Not torch.manual_seed, which seeds every
    device's generator and costs about 0.11 ms here: a tenth of a small forward."""
    def run():
        torch.default_generator.manual_seed(seed)
        f()
    return run


def variant_model(case: Case, backend: Optional[str] = None, cell: Optional[str] = None) -> nn.Module:
    """The layer of a variant row (weights from seed 0; a Jordan network with O = H); ``cell``: that
    plain cell at the row's size instead (the variant's options left out)."""
    kw = VARIANTS[case.variant][0](case.H) if cell is None else {}
    entry = _ENTRIES[cell or case.cell]
    extra = {"output_size": case.H} if entry.name == "jordan" else {}
    torch.manual_seed(0)
    return entry.layer(case.H, case.H, backend=backend, **extra, **kw)


def bench_variant(case: Case, repeats: int, sample_ms: float = SAMPLE_MS) -> List[Row]:
    """fwd and fwd+bwd of a variant: ``auto`` (the fused kernel) against the same layer on the
    autograd backend (the plain PyTorch loop), same weights, input and noise, training mode.  The
    variant's cost, ``x_plain`` and ``x_lstm`` (issue 11: its time over our plain cell's and plain
    LSTM's of the same size), is measured side by side too, in turns of its own."""
    rk = variant_model(case)
    loop = variant_model(case, backends.ORACLE)
    loop.load_state_dict(rk.state_dict())
    plains = {"plain cell": variant_model(case, cell=case.cell)}
    if case.cell != "lstm":
        plains["plain lstm"] = variant_model(case, cell="lstm")
    x = torch.randn(case.T, case.B, case.H)
    P = getattr(rk, "proj_size", 0)
    # with a projection: W_hh is (4H, P) and each step adds h = m W_hr^T
    fl = flops(case, case.H) if not P else 2.0 * case.T * case.B * (4 * case.H * (case.H + P) + P * case.H)
    rows = []
    for mode, make, f in (("fwd", _fwd, fl), ("fwd+bwd", _fwd_bwd, 3 * fl)):
        xin = x.clone().requires_grad_(mode == "fwd+bwd")
        ms = interleaved_medians({"plain loop (autograd)": _seeded(make(loop, (xin,))),
                                  "rnnkit": _seeded(make(rk, (xin,)))}, repeats, min_ms=sample_ms)
        # the cost against our plain layers in turns of their own: the slow loop leaves caches
        # and pages cold for whichever side follows it
        cost = interleaved_medians({"rnnkit": _seeded(make(rk, (xin,))),
                                    **{k: _seeded(make(m, (xin,))) for k, m in plains.items()}}, repeats,
                                   min_ms=sample_ms)
        base = ms["plain loop (autograd)"]
        rows.append(Row(case.label, case.cell, mode, "plain loop (autograd)", base, ms["rnnkit"], base / ms["rnnkit"],
                        _gflops(f, base), _gflops(f, ms["rnnkit"]), torch.get_num_threads(),
                        cost["rnnkit"] / cost["plain cell"], cost["rnnkit"] / cost.get("plain lstm", cost["plain cell"])))
    return rows


def bench_step(cell: str, H: int, repeats: int, steps: int = 1000) -> List[Row]:
    """Streaming at B=1 on one thread: torch.nn.{RNN,GRU,LSTM}Cell against ``model.step``, ``Stream``
    and rnnkit's Cell module of the same weights, then both Cell modules' steps with backward.

    Rows step, stream and cell timed interleaved in one run under no_grad, and cell+bwd in
    another: per-step time over ``steps`` calls, median of at least 5 repeats.  One intra-op
    thread for all, since at these sizes a second thread only adds wake-ups (and the machine's
    other load hits it).
    """
    torch.manual_seed(0)
    tm = _TORCH[cell](H, H)
    rk = from_torch(tm)
    tc = getattr(nn, _TORCH[cell].__name__ + "Cell")(H, H)
    tc.load_state_dict({k: v for k, v in zip(tc.state_dict(), tm.state_dict().values())})   # the same weights
    x, h = torch.randn(1, H), torch.zeros(1, H)
    n_states = len(_ENTRIES[cell].state_names)
    t_state = (h,) * n_states if n_states > 1 else h
    r_state = rk.pack_state((h[None],) * n_states)
    stream = rk.stream(1)
    rc = getattr(rnnkit_cells, type(tc).__name__)(H, H)
    rc.load_state_dict(tc.state_dict())
    name = type(tc).__name__
    fns = {name: lambda: tc(x, t_state), "step": lambda: rk.step(x, r_state), "stream": lambda: stream(x),
           "cell": lambda: rc(x, t_state)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ms = interleaved_medians(fns, max(repeats, 5), warmup=20, inner=steps)
        ms_bwd = interleaved_medians({name: _trained(tc, x, t_state), "cell+bwd": _trained(rc, x, t_state)},
                                     max(repeats, 5), warmup=20,
                                     inner=max(steps // 10, 1))
    finally:
        torch.set_num_threads(threads)
    label = f"{cell} step B1 H{H} 1 thread"
    return [Row(label, cell, mode, f"torch.nn.{name}", ms[name], ms[mode], ms[name] / ms[mode], threads=1)
            for mode in ("step", "stream", "cell")] + \
        [Row(label, cell, "cell+bwd", f"torch.nn.{name}", ms_bwd[name], ms_bwd["cell+bwd"],
             ms_bwd[name] / ms_bwd["cell+bwd"], threads=1)]


def _trained(module, x, state):
    """One step of a training loop over single steps: the new state's sum, backward."""
    def run():
        new = module(x, state)
        (new[0] if isinstance(new, tuple) else new).sum().backward()
    return run


def bench_cell(cell: str, B: int, H: int, repeats: int) -> List[Row]:
    """A Cell module's step on a batch (a decoder step, teacher forcing) at the current intra-op
    thread count: torch.nn.{RNN,GRU,LSTM}Cell against rnnkit's of the same weights, under no_grad
    (``cell``) and with the new state's sum and backward (``cell+bwd``), each in its own timer call.
    """
    torch.manual_seed(0)
    tc = getattr(nn, _TORCH[cell].__name__ + "Cell")(H, H)
    rc = getattr(rnnkit_cells, type(tc).__name__)(H, H)
    rc.load_state_dict(tc.state_dict())
    x, h = torch.randn(B, H), torch.randn(B, H)
    state = (h,) * len(_ENTRIES[cell].state_names) if len(_ENTRIES[cell].state_names) > 1 else h
    name = type(tc).__name__
    inner = max(1, (1 << 21) // (B * H * H))          # about 2M multiply-adds of weights per timing
    with torch.no_grad():
        ms = interleaved_medians({name: lambda: tc(x, state), "cell": lambda: rc(x, state)}, repeats, inner=inner)
    ms_bwd = interleaved_medians({name: _trained(tc, x, state), "cell+bwd": _trained(rc, x, state)}, repeats,
                                 inner=inner)
    threads = torch.get_num_threads()
    label = f"{cell} cell B{B} H{H} {threads} thread{'s' if threads != 1 else ''}"
    return [Row(label, cell, "cell", f"torch.nn.{name}", ms[name], ms["cell"], ms[name] / ms["cell"], threads=threads),
            Row(label, cell, "cell+bwd", f"torch.nn.{name}", ms_bwd[name], ms_bwd["cell+bwd"],
                ms_bwd[name] / ms_bwd["cell+bwd"], threads=threads)]


_MEMORY_SCRIPT = """
import gc, sys, torch, rnnkit
impl, cell, T, B, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
torch.manual_seed(0)
m = getattr(torch.nn, cell.upper())(H, H)
if impl == "rnnkit":
    m = rnnkit.from_torch(m)
x = torch.randn(T, B, H, requires_grad=True)
def step():
    m(x)[0].sum().backward()
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024
step()
gc.collect()
from rnnkit.backends import cpu
cpu.empty_cache()                     # the kernels' cached buffers (csrc/pool.h) count as the step's
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                      # the peak is reset to what is resident now ...
base = hwm()                          # ... and read back in the same units
step()
print((hwm() - base) / 2**20)
"""
# The smallest size whose training step needs several MiB (the gates kept for backward alone are
# T*B*G*H floats, 1 MiB for an LSTM here): below that, page-granular resident memory is noise.
QUICK_MEMORY_SIZES = ((64, 16, 64),)


def peak_training_mb(impl: str, cell: str, T: int, B: int, H: int) -> float:
    """Peak extra resident memory (MiB) of one fwd+bwd, measured in a fresh process: the rise
    of the resident high-water mark (reset just before the step) over the resident size then.

    A fixed mmap threshold makes every large tensor its own mapping, so resident memory
    follows live tensors instead of what the C allocator keeps.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, impl, cell, str(T), str(B), str(H)],
                         capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_memory(cell: str, T: int, B: int, H: int) -> Row:
    base, mine = peak_training_mb("torch", cell, T, B, H), peak_training_mb("rnnkit", cell, T, B, H)
    return Row(f"{cell} T{T} B{B} H{H}", cell, "memory MiB", "torch.nn", base, mine, base / max(mine, 1e-9),
               threads=torch.get_num_threads())


# -- the whole run -----------------------------------------------------------------------------
def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ort = _onnxruntime()
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "onednn": torch.backends.mkldnn.is_available(),
            "backend": backends.resolve(None, LSTMCell(1), "cpu", torch.float32).name,
            "onnxruntime": ort.__version__ if ort is not None else "not installed: its rows are left out",
            "load": load}


def cases(quick: bool, cells) -> List[Case]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    big_T, big_B, big_H = (8, 2, 8) if quick else (128, 32, 256)
    out = [Case(c, T, B, H) for c in cells for T, B, H in sizes]
    out += [Case(c, big_T, big_B, big_H, layers=2, bidirectional=True) for c in cells if c in _TORCH]
    out += [Case(c, big_T, big_B, big_H, varlen=True) for c in cells if c in _TORCH]
    out += [Case(c, T, B, H, variant=v) for v, (_, on) in VARIANTS.items() for c in cells if c in on
            for T, B, H in (QUICK_SIZES if quick else VARIANT_SIZES)]
    return out


def _bench(case: Case, repeats: int, sample_ms: float) -> List[Row]:
    if case.variant:
        return bench_variant(case, repeats, sample_ms)
    return (bench_case if case.cell in _TORCH else bench_jordan)(case, repeats, sample_ms)


def run_all(quick: bool = False, repeats: int = 7, cells=CELLS, memory: bool = True,
            log: Callable[[str], None] = lambda s: None, threads=None, sample_ms: Optional[float] = None) -> dict:
    """Every row of the benchmark; returns {"machine": ..., "rows": [...]}.  threads: the intra-op
    thread counts to run the sequence rows with (default: torch's current one); sample_ms: their
    samples' length (default SAMPLE_MS, QUICK_SAMPLE_MS when quick; 0: one call each)."""
    if sample_ms is None:
        sample_ms = QUICK_SAMPLE_MS if quick else SAMPLE_MS
    rows: List[Row] = []
    sgemm: Dict[str, float] = {}
    before = torch.get_num_threads()
    try:
        for n in threads or (before,):
            torch.set_num_threads(n)
            sgemm[str(n)] = sgemm_gflops(repeats, QUICK_SGEMM_N if quick else SGEMM_N)
            log(f"sgemm on {n} thread{'s' if n != 1 else ''}: {sgemm[str(n)]:.1f} GFLOP/s")
            for case in cases(quick, cells):
                new = _bench(case, repeats, sample_ms)
                rows += new
                for r in new:
                    log(format_row(r))
            for cell in (c for c in _TORCH if c in cells):
                for B, H in (QUICK_CELL_SIZES if quick else CELL_SIZES):
                    new = bench_cell(cell, B, H, repeats)
                    rows += new
                    for r in new:
                        log(format_row(r))
    finally:
        torch.set_num_threads(before)
    step_H = 8 if quick else 64
    for cell in (c for c in _TORCH if c in cells):
        new = bench_step(cell, step_H, repeats, steps=50 if quick else 1000)
        rows += new
        for r in new:
            log(format_row(r))
    if memory:
        for cell in (c for c in _TORCH if c in cells):
            for T, B, H in (QUICK_MEMORY_SIZES if quick else FULL_SIZES[2:]):
                rows.append(bench_memory(cell, T, B, H))
                log(format_row(rows[-1]))
    return {"machine": machine(), "repeats": repeats, "sample_ms": sample_ms, "rows": [asdict(r) for r in rows],
            "sgemm": {"n": QUICK_SGEMM_N if quick else SGEMM_N, "gflops": sgemm}}


def run_sweep(quick: bool = False, repeats: int = 7, cells=CELLS, log: Callable[[str], None] = lambda s: None,
              threads=None, sample_ms: Optional[float] = None) -> dict:
    """fwd and fwd+bwd of every torch.nn twin in ``cells`` over SWEEP_SIZES (QUICK_SWEEP_SIZES when
    quick) against torch.nn, per thread count; returns {"machine", "repeats", "sample_ms", "rows"}
    as run_all does (no sgemm: the rows are about auto against torch.nn, not throughput)."""
    if sample_ms is None:
        sample_ms = QUICK_SAMPLE_MS if quick else SAMPLE_MS
    rows: List[Row] = []
    before = torch.get_num_threads()
    try:
        for n in threads or (before,):
            torch.set_num_threads(n)
            for cell in (c for c in cells if c in _TORCH):
                for T, B, H in (QUICK_SWEEP_SIZES if quick else SWEEP_SIZES):
                    new = bench_case(Case(cell, T, B, H), repeats, sample_ms, torch_only=True)
                    rows += new
                    for r in new:
                        log(format_row(r))
    finally:
        torch.set_num_threads(before)
    return {"machine": machine(), "repeats": repeats, "sample_ms": sample_ms, "rows": [asdict(r) for r in rows]}


def slower(rows: List[dict], below: float = 1.0) -> List[dict]:
    """The sequence rows where rnnkit took longer than its baseline (ratio under ``below``), slowest first."""
    return sorted((r for r in rows if r["mode"] in ("fwd", "fwd+bwd") and r["ratio"] < below), key=lambda r: r["ratio"])


def _thread_counts(text: str) -> List[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise SystemExit(f"rnnkit bench: --threads: expected positive integers separated by commas, got {text!r}")
    return counts


HEADER = (f"{'case':28s} {'mode':10s} {'baseline':22s} {'base ms':>9s} {'rnnkit ms':>9s} "
          f"{'base GF/s':>9s} {'rk GF/s':>8s} {'ratio':>6s} {'thr':>3s}")


def format_row(r: Row) -> str:
    gf = (f"{r.baseline_gflops:9.2f} {r.rnnkit_gflops:8.2f}" if r.baseline_gflops is not None
          else f"{'':9s} {'':8s}")
    return (f"{r.case:28s} {r.mode:10s} {r.baseline:22s} {_ms(r.baseline_ms):>9s} {_ms(r.rnnkit_ms):>9s} "
            f"{gf} {r.ratio:6.2f} {r.threads:3d}")


def _ms(v: float) -> str:
    """Milliseconds, with the digits a streaming step (a few microseconds) needs."""
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}"


def markdown(result: dict) -> str:
    """The rows as Markdown tables, one per intra-op thread count (what BENCHMARKS.md keeps)."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
             f"rnnkit backend {m.get('backend', 'cpu')}, onnxruntime {m.get('onnxruntime', 'not recorded')}, "
             f"load average at the end {m.get('load', 'not recorded')}; median of {result['repeats']} "
             f"interleaved repeats{_sampling(result.get('sample_ms'))}."]
    counts = sorted({r.get("threads", 0) for r in result["rows"] if r["mode"] in ("fwd", "fwd+bwd")}, reverse=True)
    groups = [(f"{n} thread{'s' if n != 1 else ''}", [r for r in result["rows"] if r["mode"] in ("fwd", "fwd+bwd")
                                                      and r.get("threads", 0) == n]) for n in counts]
    groups.append(("single steps (streaming on 1 thread, Cells on a batch) and peak memory",
                   [r for r in result["rows"] if r["mode"] not in ("fwd", "fwd+bwd")]))
    costs = variant_costs(result["rows"])
    if costs:
        lines += ["", "### variants against our plain cell and our plain LSTM",
                  "", "rnnkit ms of each variant row over rnnkit ms of our plain cell and plain LSTM of the same "
                  "size, mode and threads, timed side by side with the variant in turns of their own (rows marked * "
                  "come from a run without them: over the plain rows of the table, each from its own row)", "",
                  "| variant | mode | threads | rnnkit ms | x plain cell | x plain LSTM |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {c['case']}{'' if c['side_by_side'] else ' *'} | {c['mode']} | {c['threads']} | {_ms(c['ms'])} | "
                  f"{c['x_plain']:.2f} | {c['x_lstm']:.2f} |" for c in costs]
    sgemm = result.get("sgemm", {})
    for title, rows in groups:
        if not rows:
            continue
        lines += ["", f"### {title}"]
        peak = sgemm.get("gflops", {}).get(str(rows[0].get("threads", 0))) if rows[0]["mode"] in ("fwd", "fwd+bwd") \
            else None
        if peak is not None:
            lines += ["", f"sgemm (torch.mm, {sgemm['n']} x {sgemm['n']} float32) on these threads: {peak:.1f} GFLOP/s; "
                      "the last column is rnnkit's GFLOP/s as a share of it."]
        lines += ["", "| case | mode | baseline | baseline ms | rnnkit ms | baseline GFLOP/s "
                  "| rnnkit GFLOP/s | ratio baseline/rnnkit |" + (" rnnkit / sgemm |" if peak else ""),
                  "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if peak else "")]
        for r in rows:
            gf = (f"{r['baseline_gflops']:.1f} | {r['rnnkit_gflops']:.1f}" if r["baseline_gflops"] is not None
                  else " | ")
            share = "" if not peak else (f" {r['rnnkit_gflops'] / peak:.0%} |" if r["rnnkit_gflops"] is not None
                                         else " |")
            lines.append(f"| {r['case']} | {r['mode']} | {r['baseline']} | {_ms(r['baseline_ms'])} | "
                         f"{_ms(r['rnnkit_ms'])} | {gf} | {r['ratio']:.2f} |{share}")
    return "\n".join(lines) + "\n"


def _sampling(sample_ms: Optional[float]) -> str:
    """How the sequence rows' samples were taken, for the table's machine line (older results
    without the field: nothing)."""
    if sample_ms is None:
        return ""
    if sample_ms <= 0:
        return "; each sample of a sequence row one call, right after another side's"
    return f"; each sample of a sequence row back-to-back calls for at least {sample_ms:g} ms"


def variant_costs(rows: List[dict]) -> List[dict]:
    """Each variant row's cost: its rnnkit time over our plain cell's and plain LSTM's, as measured
    side by side (``x_plain``, ``x_lstm``); rows of an older run without them: over the rnnkit side
    of the plain rows with the same T, B, H, mode and threads (left out when there are none)."""
    def key(r, cell):
        size = re.findall(r"\b[TBH]\d+\b", r["case"])
        return (cell, *size, r["mode"], r.get("threads", 0))
    plain = {key(r, r["cell"]): r["rnnkit_ms"] for r in rows
             if r["mode"] in ("fwd", "fwd+bwd") and re.fullmatch(r"\w+ T\d+ B\d+ H\d+", r["case"])}
    found = []
    for r in rows:
        if r["baseline"] != "plain loop (autograd)":
            continue
        if r.get("x_plain") is not None:
            x_plain, x_lstm, side = r["x_plain"], r["x_lstm"], True
        elif key(r, r["cell"]) in plain and key(r, "lstm") in plain:
            x_plain, x_lstm, side = r["rnnkit_ms"] / plain[key(r, r["cell"])], r["rnnkit_ms"] / plain[key(r, "lstm")], False
        else:
            continue
        found.append({"case": r["case"], "mode": r["mode"], "threads": r.get("threads", 0), "ms": r["rnnkit_ms"],
                      "x_plain": x_plain, "x_lstm": x_lstm, "side_by_side": side})
    return found


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per row, median taken (default 7)")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH", help="also write the rows as a Markdown table to PATH")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory rows (subprocesses)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu: the CPU table (default); cuda: rnnkit on the GPU against cuDNN (rnnkit/bench_cuda.py)")
    p.add_argument("--dtypes", default="fp32,bf16,fp16",
                   help="with --device cuda: comma-separated subset of fp32,bf16,fp16 (default all)")
    p.add_argument("--sample-ms", type=float, default=None,
                   help=f"the CPU table's sequence rows' samples: back-to-back calls for at least this many ms (default "
                        f"{SAMPLE_MS:g}, {QUICK_SAMPLE_MS:g} with --quick; 0: one call per sample, each right "
                        "after another side's)")
    p.add_argument("--threads", default=None,
                   help="comma-separated intra-op thread counts for the sequence rows, a table each "
                        "(default: torch's current count, then 1)")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the table: every torch.nn twin over a grid of shapes (T 1-64, B 1-64, "
                        "H 32-384) against torch.nn, fwd and fwd+bwd, then the rows where rnnkit is slower")


def checked_cells(args) -> tuple:
    """--cells and --repeats checked (the CPU and the GPU table alike)."""
    cells = tuple(c for c in args.cells.split(",") if c)
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise SystemExit(f"rnnkit bench: --cells: expected a subset of {CELLS}, got {args.cells!r}")
    if args.repeats < 1:
        raise SystemExit(f"rnnkit bench: --repeats: expected a positive integer, got {args.repeats}")
    return cells


def run(args) -> int:
    """The CPU table."""
    cells = checked_cells(args)
    now = torch.get_num_threads()
    threads = _thread_counts(args.threads) if args.threads else ([now, 1] if now > 1 else [1])
    sample_ms = getattr(args, "sample_ms", None)
    if sample_ms is not None and not sample_ms >= 0:
        raise SystemExit(f"rnnkit bench: --sample-ms: expected a number of milliseconds >= 0, got {sample_ms}")
    print(json.dumps(machine()))
    print(HEADER)
    if getattr(args, "sweep", False):
        result = run_sweep(args.quick, args.repeats, cells, log=lambda s: print(s, flush=True), threads=threads,
                           sample_ms=sample_ms)
        late = slower(result["rows"])
        print(f"rnnkit slower than torch.nn on {len(late)} of {len(result['rows'])} rows"
              + (":" if late else ""))
        for r in late:
            print(f"  {r['case']} {r['mode']} {r['threads']} thread{'s' if r['threads'] != 1 else ''}: {r['ratio']:.2f}")
    else:
        result = run_all(args.quick, args.repeats, cells, not args.no_memory, log=lambda s: print(s, flush=True),
                         threads=threads, sample_ms=sample_ms)
    write(args, result, markdown)
    return 0


def write(args, result: dict, to_markdown) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(result))
