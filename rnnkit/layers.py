"""The public layers: Elman (RNN), Jordan, LSTM, GRU as torch.nn-compatible modules.

The sequence machinery lives here once for every cell: stacking layers,
running the reverse direction (each sequence reversed within its own length),
variable lengths and PackedSequence, initial/final states, inter-layer
dropout, the trace of per-step quantities and the one-step streaming API.

Symbols (as in torch.nn): T steps, B batch, I input_size, H hidden_size,
O output_size (Jordan), D = 2 if bidirectional else 1, L = num_layers,
S = the size of the emitted state (H, or O for Jordan).

Equivalent reference loop, for one layer and direction::

    noise = cell.draw_noise(T, B, x) if training else None     # recurrent dropout / zoneout
    for t in range(T):                      # only t < length[b] for sequence b
        state = cell.step(x[t] @ W_ih.T + b_ih, state, noise[t])
        out[t] = state[0]

Options of every layer (the cell's, see rnnkit/cells/base.py): ``recurrent_dropout`` q in [0, 1)
(Gal & Ghahramani 2016: one mask per sequence on the emitted state where it enters the recurrence),
``zoneout`` p in [0, 1) (Krueger et al. 2017: each unit of each carried state keeps its previous
value with probability p in training; in eval the expected value (1-p)*new + p*old), and
``clip_recurrent`` x > 0 (backward only: the gradient of every carried state is clamped to [-x, x]
at every step of BPTT -- a biased gradient that keeps long BPTT stable, not a replacement for
clipping the global gradient norm).  The masks are drawn from torch's RNG once per forward, so
``torch.manual_seed`` reproduces them.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends, ops, sequence, validation
from .cells import NONLINEARITIES, OUTPUT_ACTIVATIONS, Cell, ElmanCell, GRUCell, JordanCell, LSTMCell
from .stream import Stream


class Trace:
    """Per-step quantities of every layer and direction: ``trace[layer][direction][name]``.

    Each tensor is (T, B, H) ((B, T, H) when batch_first, (T, H) unbatched), zero on
    padded steps, detached from the graph, in the input's time order for both directions.
    """

    def __init__(self, layers: List[List[Dict[str, Tensor]]]):
        self.layers = layers

    def __getitem__(self, layer: int) -> List[Dict[str, Tensor]]:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self.layers[0][0])

    def get(self, name: str, layer: int = -1, direction: int = 0) -> Tensor:
        """One quantity, e.g. ``trace.get('forget_gate', layer=0)``."""
        if name not in self.layers[0][0]:
            raise KeyError(f"name: expected one of {self.names}, got {name!r}")
        return self.layers[layer][direction][name]

    def __repr__(self) -> str:
        return f"Trace(layers={len(self.layers)}, directions={len(self.layers[0])}, names={self.names})"


def state_pair(who: str, hx, names: str) -> Tuple[Tensor, Tensor]:
    """An LSTM's state argument, ``names`` e.g. '(h_0, c_0)', as a tuple; TypeError otherwise."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{who}: hx: expected a tuple {names}, got {type(hx).__name__}"
                        + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
    return tuple(hx)


def _probability(name: str, value) -> float:
    """A probability in [0, 1) (1 would drop or freeze every unit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def _variants(recurrent_dropout, zoneout, clip_recurrent) -> dict:
    """The options every cell has, checked: the cell's keyword arguments."""
    if clip_recurrent is not None and (isinstance(clip_recurrent, bool) or not isinstance(clip_recurrent, (int, float))
                                       or not 0.0 < clip_recurrent < math.inf):
        raise ValueError(f"clip_recurrent: expected None or a positive finite number, got {clip_recurrent!r}")
    return {"recurrent_dropout": _probability("recurrent_dropout", recurrent_dropout),
            "zoneout": _probability("zoneout", zoneout),
            "clip_recurrent": None if clip_recurrent is None else float(clip_recurrent)}


class _Recurrent(nn.Module):
    """Shared machinery; subclasses choose the cell and the form of the state argument.

    ``torch_twin``: the torch.nn class with the same parameters and semantics (None if none).
    """

    torch_twin: Optional[type] = None

    def __init__(self, cell: Cell, input_size: int, num_layers: int, bias: bool, batch_first: bool,
                 dropout: float, bidirectional: bool, backend: Optional[str], device, dtype):
        super().__init__()
        self.input_size = validation.positive_int("input_size", input_size)
        self.hidden_size = validation.positive_int("hidden_size", cell.hidden_size)
        self.num_layers = validation.positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = validation.dropout(dropout)
        self.bidirectional = bool(bidirectional)
        if backend is not None:
            # Check the name now; 'auto' is decided per call (device, dtype), so it builds nothing here.
            validation.choice("backend", backend, backends.BACKENDS)
            backends.check_name(backend)
        self.backend = backend
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout acts between stacked layers; with num_layers=1 it has no effect "
                          f"(dropout={self.dropout})", stacklevel=3)
        self.cell = cell
        self.recurrent_dropout, self.zoneout = cell.recurrent_dropout, cell.zoneout
        self.clip_recurrent = cell.clip_recurrent
        cell.spec, cell.key                     # memoised now: compiled code must not compute them
        D = 2 if self.bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        self._param_names: List[List[str]] = []
        self._shapes: Dict[str, Tuple[int, ...]] = {}                   # every parameter's shape, by name
        for layer in range(self.num_layers):
            in_k = self.input_size if layer == 0 else D * cell.out_size
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                names = []
                for name, shape in cell.param_shapes(in_k, self.bias):
                    self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape, **factory)))
                    self._shapes[name + sfx] = tuple(shape)
                    names.append(name + sfx)
                self._param_names.append(names)
        # Per layer, forward direction: [weight_ih, bias_ih, *rec_params], as step's C++ call takes them.
        self._step_names = [[n + f"_l{k}" for n in ("weight_ih", "bias_ih") + cell.rec_params]
                            for k in range(self.num_layers)]
        self.reset_parameters()

    # -- parameters ------------------------------------------------------
    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn; the cell's constants
        where it has them (layer normalisation's gains 1, biases 0)."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for layer in range(self.num_layers):
                for d in range(self._D):
                    sfx = f"_l{layer}" + ("_reverse" if d else "")
                    for name, _ in self.cell.param_shapes(1, self.bias):
                        value = self.cell.constant_init(name)
                        p = getattr(self, name + sfx)
                        if value is None:
                            p.uniform_(-stdv, stdv)
                        else:
                            p.fill_(value)

    def parameter_count(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters())

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, n) for n in names] for names in self._param_names]

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for torch.nn (cuDNN) runs unchanged."""

    @property
    def _all_weights(self) -> List[List[str]]:
        """The parameter names per layer and direction, as torch.nn's attribute of that name
        (pruning and weight-drop code walks it)."""
        return [list(names) for names in self._param_names]

    @property
    def _flat_weights_names(self) -> List[str]:
        """Every parameter name in torch.nn's order (as weight-drop / AWD-LSTM code reads it)."""
        return [n for names in self._param_names for n in names]

    @property
    def _flat_weights(self) -> List[Optional[Tensor]]:
        """The parameters as the module holds them now, in ``_flat_weights_names`` order."""
        return [getattr(self, n, None) for n in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, weights) -> None:
        """Binds each name to its tensor (code written for torch.nn assigns the list; rnnkit reads
        the attributes, so the assignment must reach them).  ``nn.Module``'s rules apply: a
        registered Parameter takes a Parameter or None."""
        names = self._flat_weights_names
        if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
            got = f"{type(weights).__name__} of length {len(weights)}" if isinstance(weights, (list, tuple)) \
                else type(weights).__name__
            raise ValueError(f"{type(self).__name__}: _flat_weights: expected a list of {len(names)} tensors "
                             f"({', '.join(names)}), got {got}")
        for name, w in zip(names, weights):
            if getattr(self, name, None) is not w:
                setattr(self, name, w)

    def __prepare_scriptable__(self):
        raise RuntimeError(f"{type(self).__name__}: torch.jit.script cannot compile rnnkit layers (and TorchScript "
                           "is deprecated); use torch.compile(model) or torch.export.export(model, args)")

    def _param(self, name: str, like: Tensor) -> Optional[Tensor]:
        """A parameter as the module holds it now (parametrizations computed), checked against its
        registered shape and the data's dtype and device before any kernel reads it; None for an
        absent bias."""
        t = self._held(name)
        if t is None:
            if name in self._shapes:
                raise RuntimeError(f"{type(self).__name__}: {name}: expected a tensor of shape "
                                   f"{self._shapes[name]}, got None")
            return None
        if not isinstance(t, Tensor):
            raise TypeError(f"{type(self).__name__}: {name}: expected a Tensor, got {type(t).__name__}")
        cast = like.dtype == self.__dict__.get("_run_dtype")    # autocast: stored in another dtype
        dtype = self._param_dtype if cast else like.dtype
        if t.shape != self._shapes[name] or t.dtype != dtype or t.device != like.device:
            raise RuntimeError(f"{type(self).__name__}: {name}: expected shape {self._shapes[name]}, "
                               f"dtype {dtype}, device {like.device}; got shape {tuple(t.shape)}, "
                               f"dtype {t.dtype}, device {t.device}")
        return t.to(like.dtype) if cast else t

    def _held(self, name: str):
        """The attribute ``name`` as ``getattr`` finds it: a registered parameter straight from
        ``_parameters`` (nn.Module's ``__getattr__`` is the slow way to the same object; a
        parametrized or replicated module holds none there and takes ``getattr``)."""
        t = self._parameters.get(name)
        return t if t is not None else getattr(self, name, None)

    def _params(self, names: Sequence[str], like: Tensor) -> List[Optional[Tensor]]:
        """``[self._param(n, like) for n in names]`` in one pass: a parameter held in
        ``_parameters`` with its registered shape and like's dtype and device is taken as it is
        (the per-call cost of ``step`` and ``forward`` at streaming sizes); any other (absent,
        parametrized, replicated, mismatched, under autocast) goes through ``_param``."""
        if like.dtype == self.__dict__.get("_run_dtype"):
            return [self._param(n, like) for n in names]
        held, shapes, dtype, device = self._parameters, self._shapes, like.dtype, like.device
        out = []
        for n in names:
            t = held.get(n)
            if t is None or t.shape != shapes[n] or t.dtype != dtype or t.device != device:
                t = self._param(n, like)
            out.append(t)
        return out

    def _direction_params(self, layer: int, d: int, like: Tensor):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, b_ih, *rec = self._params(["weight_ih" + sfx, "bias_ih" + sfx] + [n + sfx for n in self.cell.rec_params],
                                        like)
        return w_ih, b_ih, tuple(rec)

    def step_parameters(self) -> List[List[Optional[Tensor]]]:
        """Per layer of the forward direction [weight_ih, bias_ih, *rec_params] (None where absent),
        as a backend's ``step`` and ``stepper`` take them.

        Read from the module at every call, as ``forward`` reads them, so that parametrizations
        (``torch.nn.utils.parametrize``, pruning's re-computed weights) and rebound parameters
        are seen.
        """
        like = self._held(self._param_names[0][0])
        return [self._params(names, like) for names in self._step_names]

    @property
    def _dtype(self) -> torch.dtype:
        """The dtype the recurrence runs in: the parameters' own, or the autocast dtype while
        ``_under_autocast`` runs a backend that keeps float32 states in that dtype."""
        return self.__dict__.get("_run_dtype") or self._param_dtype

    @property
    def _param_dtype(self) -> torch.dtype:
        return self._held(self._param_names[0][0]).dtype

    def backend_for(self, x: Tensor) -> backends.Backend:
        """The backend that runs this layer on tensors like ``x`` (see rnnkit.backends)."""
        return backends.resolve_cached(self.backend, self.cell, x.device, x.dtype)

    @property
    def _D(self) -> int:
        return 2 if self.bidirectional else 1

    # -- states ----------------------------------------------------------
    _hx_name = "hx"

    def unpack_state(self, hx) -> Tuple[Tensor, ...]:
        """The user's state argument as a tuple, one tensor per carried state."""
        return (hx,)

    def pack_state(self, finals: Tuple[Tensor, ...]):
        """Inverse of ``unpack_state``: the state in the form ``forward`` returns it."""
        return finals[0]

    def initial_state(self, hx, B: int, unbatched: bool, ref: Tensor) -> Tuple[Tensor, ...]:
        """The checked initial states as (D*L, B, S_k) tensors, one per carried state (zeros when
        ``hx`` is None, made like ``ref``); ``unbatched``: hx is (D*L, S_k)."""
        LD = self.num_layers * self._D
        sizes = self.cell.state_sizes()
        who = type(self).__name__
        if hx is None:
            return tuple(ref.new_zeros(LD, B, s) for s in sizes)
        hs = self.unpack_state(hx)
        dtype, device = ref.dtype, ref.device
        for k, (h, s) in enumerate(zip(hs, sizes)):
            shape = (LD, s) if unbatched else (LD, B, s)
            if not (isinstance(h, Tensor) and h.shape == shape and h.dtype == dtype and h.device == device):
                name = self._hx_name if len(hs) == 1 else f"{self._hx_name}[{k}]"
                validation.state_tensor(who, name, h, shape, dtype, device)      # raises: says what differs
        return tuple(h.unsqueeze(1) for h in hs) if unbatched else tuple(hs)

    def _initial_states(self, hx, B: int, unbatched: bool, ref: Tensor,
                        order: Optional[Tensor] = None) -> List[Tuple[Tensor, ...]]:
        """Per layer-direction tuple of (B, S_k) initial states, rows in ``order`` (the user's rows
        order[0], order[1], ...; None: as given)."""
        if hx is None:                  # zeros made per layer-direction: no (D*L, B, S_k) to index
            sizes = self.cell.state_sizes()
            return [tuple(ref.new_zeros(B, s) for s in sizes) for _ in range(self.num_layers * self._D)]
        full = self.initial_state(hx, B, unbatched, ref)
        if order is not None:
            full = tuple(h.index_select(1, order.to(h.device)) for h in full)
        return [tuple(h[i] for h in full) for i in range(self.num_layers * self._D)]

    # -- sequence --------------------------------------------------------
    def forward(self, input, hx=None, lengths=None, return_trace: bool = False):
        """Run the network over a sequence.

        input    (T, B, I), (B, T, I) if batch_first, (T, I) unbatched, or a PackedSequence
        hx       initial state(s) (D*L, B, H) (see the subclass); zeros when None
        lengths  optional 1-D integers (B,): valid steps of each sequence
        returns  (output (T, B, D*S), final state) [+ Trace if return_trace]
        """
        if lengths is None and not return_trace:
            found = self._unchecked_infer(input, hx)
            if found is not None:
                return found
        if torch.jit.is_tracing():                      # (dynamo knows this one; not torch._C._is_tracing)
            return self._traced(input, hx, lengths, return_trace)
        return self._forward(input, hx, lengths, return_trace)

    def _unchecked_infer(self, x, hx):
        """``forward``'s result straight from the backend's one-call inference (``Backend.infer``),
        without the checks in Python: the backend checks its own arguments (``checks_arguments``).
        Only with no graph to record (grad mode off), x a plain (T, B, I) tensor (or (B, T, I) if
        batch_first), one direction, no random draws, outside autocast, torch.compile and what needs
        torch's own ops, and each parameter held as registered (in ``_parameters``, its registered
        shape: a parametrized or rebound one takes the checked path, which reads and checks it).
        None otherwise, where the backend has no one-call inference for the call, or where it
        rejects an argument (the checked path then names it).  Saves about a third of a short
        call (LSTM (1, 64), T = 1, one thread: BENCHMARKS.md, session 19)."""
        if torch.is_grad_enabled() or type(x) is not Tensor or x.dim() != 3 or self.bidirectional or self._draws():
            return None
        if torch.compiler.is_compiling() or ops.torch_ops_only() or ops.autocast_enabled(x):
            return None
        layers = self._held_step_layers()
        if layers is None:
            return None
        try:                                            # (no backend for x's dtype or device: the checked path says why)
            backend = backends.resolve_cached(self.backend, self.cell, x.device, x.dtype)
            if not backend.checks_arguments:
                return None
            state0 = None if hx is None else self.unpack_state(hx)
            found = backend.infer(self.cell, x.transpose(0, 1) if self.batch_first else x, state0, layers)
        except (RuntimeError, TypeError, ValueError, AttributeError):
            return None
        if found is None:
            return None
        return self._layout(found[0], False), self.pack_state(tuple(found[1]))

    def _draws(self) -> bool:
        """Whether a call draws random masks (training with recurrent dropout, zoneout, or dropout
        between layers): the one-call paths then do not apply."""
        return self.training and bool(self.cell.noise_names or (self.dropout and self.num_layers > 1))

    def _held_step_layers(self):
        """``step_parameters`` without its checks (ops.held_layers), or None where a parameter is
        not held as registered."""
        return ops.held_layers(self, self._step_names, lambda: self._shapes)

    def _traced(self, input, hx, lengths, return_trace):
        """Under ``torch.jit.trace`` (and the TorchScript ONNX exporter): torch.nn's forward on
        this module's parameters, so that the trace records torch's RNN op, which serves any T
        and B and runs in libtorch without Python; the tracer cannot see into our kernels, and
        the Python loop would record one fixed T.  Only where torch.nn computes the same
        function; elsewhere a clear error."""
        who = type(self).__name__
        try:
            self._check_torch_equivalent()
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"{who}: torch.jit.trace records torch.nn's RNN op in place of rnnkit's kernels "
                               f"(which it cannot see), and this layer has none: {e}. Trace the cells "
                               f"torch.nn has, or use torch.export.export / rnnkit.export_onnx") from None
        if lengths is not None:
            raise ValueError(f"{who}: lengths: under torch.jit.trace give variable lengths as a PackedSequence "
                             f"(torch.nn's form), got lengths={lengths!r}")
        if return_trace:
            raise ValueError(f"{who}: return_trace: the trace is not recorded under torch.jit.trace, "
                             f"got return_trace=True")
        return self.torch_twin.forward(self, input, hx)

    def _forward(self, input, hx, lengths, return_trace):
        data = input.data if isinstance(input, PackedSequence) else input
        amp = self._autocast_dtype(data)
        if amp is not None:
            native = backends.autocast_dtype(self.backend, self.cell, data.device, self._dtype, amp) == amp
            return self._under_autocast(amp, self._forward, input, hx, lengths, return_trace, native=native)
        who = type(self).__name__
        dtype = self._dtype
        packed = isinstance(input, PackedSequence)
        order = None                    # row i of the run is the user's row order[i] (None: the same)
        if packed:
            validation.no_conflict(who, lengths)
            order = input.sorted_indices
            if not return_trace and input.data.dim() == 2:                         # data (N, I) as it is
                validation.input_tensor(who, input.data, self.input_size, dtype)
                fast = self._inferred(input.data, hx, int(input.batch_sizes[0]), False, order=order,
                                      batch_sizes=input.batch_sizes)
                if fast is not None:
                    return (PackedSequence(fast[0], input.batch_sizes, input.sorted_indices, input.unsorted_indices),
                            self.pack_state(fast[1]))
            x, lengths = sequence.unpacked(input.data, input.batch_sizes)   # (T, B, I), longest first
            validation.input_tensor(who, x, self.input_size, dtype)
            unbatched = False
        else:
            validation.input_tensor(who, input, self.input_size, dtype)
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise validation.MismatchError(f"{who}: input: expected at least one time step, "
                                           f"got shape {tuple(x.shape)}")
        if lengths is not None and not packed:
            lengths = validation.lengths_tensor(who, lengths, T, B)
        fast = None if return_trace or packed else self._inferred(x, hx, B, unbatched, lengths)
        if fast is not None:
            return self._layout(fast[0], unbatched), self.pack_state(fast[1])
        if lengths is not None and not packed:
            order = sequence.longest_first(lengths)
            if order is not None:
                lengths = lengths[order]
        mask, rev = sequence.length_mask(lengths, T, x.device, reversal=self._D == 2)
        # whether a backward follows through x or the weights (once: a walk over the weights); x's
        # padded steps must then be zeros, and no row projection may run
        graph = lengths is not None and self._zeros_needed(x)
        zeros = graph and mask is not None and not packed
        # the first layer's projection from the user's rows where they are (a packed batch's are in
        # the run's order already), else None and x is copied into the run's order
        first_project = None if lengths is None or graph else \
            self._row_projection(x, hx, None if packed else order, lengths)
        if order is not None:
            order = order.to(x.device)
        if first_project is None and not packed:
            if zeros:                                   # copied and zeroed in one pass
                x = sequence.rows_to_run(x, order, lengths, mask)
            elif order is not None:
                x = sequence.batch_rows(x, order)
        state0 = self._initial_states(hx, B, unbatched, x, order)
        out, finals, trace = self._run(x, mask, rev, state0, return_trace, first_project)
        # (D*L, B, S_k); finals are fresh tensors (clones or the op's own outputs), so one of them
        # needs no copy
        h_n = tuple(f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f) for f in finals)
        back = sequence.user_order(order, x.device)                     # the run's rows back to the user's
        if packed:
            out = PackedSequence(sequence.packed_data(out, lengths, input.batch_sizes), input.batch_sizes,
                                 input.sorted_indices, input.unsorted_indices)
        elif mask is not None:                          # zeros on padded steps, in the user's rows
            out = self._layout(sequence.rows_to_user(out, order, lengths, mask, back), unbatched)
        else:
            out = self._layout(sequence.batch_rows(out, back, order), unbatched)
        if back is not None:                            # (D*L, B, S_k): torch's own op, no Function to enter
            h_n = tuple(h.index_select(1, back) for h in h_n)
        if unbatched:
            h_n = tuple(h.squeeze(1) for h in h_n)
        result = (out, self.pack_state(h_n))
        if return_trace:
            result += (Trace([[{k: self._layout(sequence.batch_rows(v, back, order), unbatched) for k, v in tr.items()}
                               for tr in lay] for lay in trace]),)
        return result

    def _inferred(self, x: Tensor, hx, B: int, unbatched: bool, lengths: Optional[Tensor] = None,
                  order: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None):
        """(out (T, B, D*S_0), h_n (D*L, B, S_k) each, unbatched squeezed) from the backend's one-call
        inference (Backend.infer, also with ``lengths``) or, with a graph to record and no lengths,
        its one-call training (Backend.train).  ``batch_sizes``: x is a PackedSequence's data (N, I)
        and out its output's data (N, D*S_0); ``order``: x's row i is the user's row order[i] (a
        PackedSequence's sorted_indices: hx and h_n are in the user's order).  None where neither
        applies: random draws (training with noise or dropout between layers), lengths with a graph
        to record, or a backend without it for these tensors (the cpu backend's inference takes
        every stack; its training of both directions is oneDNN's LSTM only).  The layer-by-layer
        path costs about 25 us more per call in Python (measured, LSTM (1, 64), T = 1), and with
        lengths about 150 us more (Elman (8, 128), T = 4: the run's order, mask and copies in
        tensor ops)."""
        if torch.compiler.is_compiling() or ops.torch_ops_only():
            return None
        if self._draws():
            return None
        grad = torch.is_grad_enabled()                  # (checked first: no tuples built under no_grad)
        # a training step (decided before gathering anything) goes to the backend's ``train``
        training = grad and ops.needs_graph((x, *self._parameters.values()))
        varlen = lengths is not None or batch_sizes is not None
        if training and varlen:
            return None
        backend = self.backend_for(x)
        if training and not backend.trains(self.cell, x, self.bidirectional):
            return None
        if not training and not backend.infers(self.cell, x, self.bidirectional, varlen):
            return None
        state0 = None if hx is None else self.initial_state(hx, B, unbatched, x)   # (D*L, B, S_k)
        if state0 is not None and order is not None:
            state0 = tuple(h.index_select(1, order.to(h.device)) for h in state0)
        if self.bidirectional:                                             # (layer, direction) order
            layers = [[w_ih, b_ih, *rec] for k in range(self.num_layers) for d in range(2)
                      for w_ih, b_ih, rec in (self._direction_params(k, d, x),)]
        else:
            layers = self.step_parameters()
        if grad and not training and ops.needs_graph((x, *(state0 or ()), *(w for layer in layers for w in layer))):
            training = True                             # only the state (or a parametrized weight) requires grad
            if varlen or not backend.trains(self.cell, x, self.bidirectional):
                return None
        if training:
            found = backend.train(self.cell, x, state0, layers, self.bidirectional)
        else:
            found = backend.infer(self.cell, x, state0, layers, self.bidirectional, lengths=lengths,
                                  batch_sizes=batch_sizes)
        if found is None:
            return None
        out, h_n = found
        if order is not None:
            back = sequence.user_order(order, x.device)
            h_n = tuple(h.index_select(1, back) for h in h_n)
        if unbatched:
            h_n = tuple(h.squeeze(1) for h in h_n)
        return out, h_n

    # -- autocast --------------------------------------------------------
    def _autocast_dtype(self, x) -> Optional[torch.dtype]:
        """The autocast dtype in force for x's device when it differs from the parameters', else None."""
        if not isinstance(x, Tensor) or not ops.autocast_enabled(x):
            return None
        amp = torch.get_autocast_dtype(x.device.type)
        return amp if amp != self._dtype else None

    def _amp_result_dtypes(self, amp: torch.dtype, device_type: str, packed: bool, n_state: int):
        """Under autocast to ``amp``: the dtypes of (output, the n_state state parts) as torch.nn's
        layer returns them.  On CUDA every torch.nn RNN comes back in ``amp``; on the CPU the dtype
        follows which of torch's kernels ran (see the subclasses).  This one: ``amp`` for all."""
        return amp, (amp,) * n_state

    def _under_autocast(self, amp: torch.dtype, run, input, hx, *rest, native: bool = False):
        """Autocast: the output and final state come back in the dtypes torch.nn's layer returns
        (``_amp_result_dtypes``: the autocast dtype but for a few CPU cases).  ``native``: the backend keeps float32 states while running 16-bit
        tensors, so the input, state and (cast copies of the) parameters go in as ``amp`` and the
        products run in it; otherwise the recurrence runs in the parameters' precision (float32
        state and memory cell: the fused CPU kernels stay usable) and the inputs are cast to it."""
        dtype = amp if native else self._dtype
        input = input.to(dtype)
        if hx is not None:
            hx = self.pack_state(tuple(h.to(dtype) if isinstance(h, Tensor) else h for h in self.unpack_state(hx)))
        with torch.autocast(input.data.device.type if isinstance(input, PackedSequence) else input.device.type,
                            enabled=False):
            if native:
                self.__dict__["_run_dtype"] = amp
            try:
                result = run(input, hx, *rest)
            finally:
                self.__dict__.pop("_run_dtype", None)
        packed = isinstance(input, PackedSequence)
        finals = self.unpack_state(result[1])
        out_dtype, state_dtypes = self._amp_result_dtypes(amp, (input.data if packed else input).device.type,
                                                          packed, len(finals))
        state = self.pack_state(tuple(h.to(t) for h, t in zip(finals, state_dtypes)))
        out = result[0].to(out_dtype)
        return (out, state) + tuple(result[2:])

    def _layout(self, t: Tensor, unbatched: bool) -> Tensor:
        """Time-major (T, B, .) to the user's layout."""
        if unbatched:
            return t.squeeze(1)
        return t.transpose(0, 1) if self.batch_first else t

    def _zeros_needed(self, x: Tensor) -> bool:
        """Whether x's padded steps must be zeros: where a backward pass will follow, padding must
        not enter the math (a NaN times a zero gradient is NaN in the weight gradients).  A forward
        without a graph only computes the padded rows' projections, which every backend leaves
        unread, so no copy is made there."""
        # (grad mode first: no walk over the parameters under no_grad)
        return torch.is_grad_enabled() and ops.needs_graph((x, *self.parameters()))

    def _row_projection(self, x: Tensor, hx, order: Optional[Tensor], lengths: Tensor):
        """The backend's projection of the first layer from the user's rows (``Backend.row_projection``)
        where it applies: one direction, no graph to record (nothing differentiates it), no
        compile or functorch transform; else None (x is then copied into the run's order).  The
        caller has found that neither x nor the weights record a graph (``_zeros_needed``)."""
        if self._D != 1 or torch.compiler.is_compiling() or ops.torch_ops_only():
            return None
        states = hx if isinstance(hx, tuple) else (hx,)
        if torch.is_grad_enabled() and ops.needs_graph(states):
            return None
        backend = self.backend_for(x)
        return None if backend.differentiable else backend.row_projection(self.cell, x, order, lengths)

    def _run(self, x, mask, rev, state0, want_trace, first_project=None):
        """The stack over the sequence; ``first_project``: the first layer's projection where x is
        still in the user's row order (``_row_projection``), else None.  x's padded steps are
        zeros wherever a backward follows (``_zeros_needed``); the output's padded steps hold the
        carried state (ops.run_direction's ``zero_out=False``: the caller zeroes them)."""
        backend = self.backend_for(x)
        layer_in = x
        finals: List[List[Tensor]] = [[] for _ in self.cell.state_names]
        traces = []
        for layer in range(self.num_layers):
            outs, layer_trace = [], []
            for d in range(self._D):
                w_ih, b_ih, rec = self._direction_params(layer, d, x)
                xin = layer_in if d == 0 else sequence.reverse(layer_in, rev)
                noise = self.cell.draw_noise(x.shape[0], x.shape[1], x) if self.training else None
                # the output's padded steps keep the carried state: zeroed once, on the way out
                out, fin, tr = ops.run_direction(self.cell, backend, xin, mask, state0[layer * self._D + d],
                                                 w_ih, b_ih, rec, want_trace, noise,
                                                 project=first_project if layer == 0 else None, zero_out=False)
                if d == 1:
                    out = sequence.reverse(out, rev)
                    tr = {k: sequence.reverse(v, rev) for k, v in tr.items()}
                outs.append(out)
                layer_trace.append(tr)
                for k, f in enumerate(fin):
                    finals[k].append(f)
            layer_in = torch.cat(outs, dim=-1) if self._D == 2 else outs[0]   # (T, B, D*S)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
            traces.append(layer_trace)
        return layer_in, finals, traces

    # -- streaming -------------------------------------------------------
    def step(self, input: Tensor, hx=None):
        """Advance by one time step (online inference): the same math as ``forward`` with T=1
        (in training, the same random draws: recurrent dropout's mask is then new at every call).

        input    (B, I) or (I,) unbatched
        hx       state as returned by ``forward``/``step`` (zeros when None)
        returns  (output (B, S), new state); differentiable
        """
        found = self._unchecked_step(input, hx)
        if found is not None:
            return found
        amp = self._autocast_dtype(input)
        if amp is not None:
            return self._under_autocast(amp, self.step, input, hx)
        who = type(self).__name__
        if self.bidirectional:
            raise ValueError(f"{who}.step: bidirectional networks need the whole sequence; "
                             f"got bidirectional=True")
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}-D" if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"{who}.step: input: expected (B, I) or (I,), got {got}")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input                  # (B, I)
        validation.input_tensor(who + ".step", x, self.input_size, self._dtype)
        full = self.initial_state(hx, x.shape[0], unbatched, x)         # (L, B, S_k)
        dropout = self.dropout if self.training and self.num_layers > 1 else 0.0
        noisy = self.training and bool(self.cell.noise_names)
        params = self.step_parameters()
        # The weights as read (a DataParallel replica holds them as attributes, not parameters);
        # under no_grad nothing is gathered for the test.
        graph = ops.torch_ops_only() or (    # (forward AD, torch.func, jit.trace: torch's ops only)
            torch.is_grad_enabled() and ops.needs_graph((x, *full, *(w for layer in params for w in layer))))
        if graph or dropout or noisy:
            out, h_n = sequence.step_stack(self.cell, x, full, params, dropout, noisy,  # differentiable
                                           functools.partial(ops.cell_step, self.backend, self.cell))
        else:
            backend = backends.resolve_cached(self.backend, self.cell, x.device, x.dtype)
            out, h_n = backend.step(self.cell, x, full, params)
        if unbatched:
            out, h_n = out.squeeze(0), tuple(h.squeeze(1) for h in h_n)
        return out, self.pack_state(h_n)

    def _unchecked_step(self, x, hx):
        """``step``'s result from ``ops.unchecked_step`` (the backend's own checks only), or with a
        graph to record from ``_one_node_step``; or None: no random draws, one direction, and
        without a graph a given state."""
        if self.bidirectional or self._draws():
            return None
        if torch.is_grad_enabled():
            return self._one_node_step(x, hx)
        if hx is None:
            return None
        found = ops.unchecked_step(self.backend, self.cell, x, self._held_step_layers(), lambda: self.unpack_state(hx))
        return None if found is None else (found[0], self.pack_state(found[1]))

    def _one_node_step(self, x, hx):
        """``step`` with a graph to record, each layer's step as the backend's one autograd node
        (``ops.cell_step``, which checks its own arguments), without the checks in Python (about
        40 us of a 130 us training step of a small Elman); None where a layer's node does not
        apply or rejects an argument (the checked path then names it), or a weight is not held (a
        parametrized one: the checked path reads it)."""
        layers = self._held_step_layers()
        if layers is None:
            return None
        L = self.num_layers
        states = None if hx is None else self.unpack_state(hx)                 # (L, B, S_k) each
        if states is not None and any(type(s) is not Tensor or s.dim() != 3 or s.shape[0] != L for s in states):
            return None
        out, new_states = x, []
        for k, layer in enumerate(layers):
            new = ops.cell_step(self.backend, self.cell, out, None if states is None else tuple(s[k] for s in states),
                                layer)
            if new is None:
                return None
            new_states.append(new)
            out = new[0]
        return out, self.pack_state(sequence.stacked_states(new_states))

    def stream(self, batch_size: int = 1, hx=None) -> Stream:
        """A stateful stream for online inference: ``y_t = stream(x_t)``, state updated in place.

        batch_size  B, fixed for the stream's life;  hx  initial state as for ``forward`` (zeros
        when None).  Inference only, eval-mode math; see :class:`rnnkit.Stream`.
        """
        return Stream(self, batch_size, hx)

    def extra_repr(self) -> str:
        s = self._size_repr()
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        cell_repr = self.cell.extra_repr()
        return s + (", " + cell_repr if cell_repr else "")

    def _size_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    _TORCH_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")

    @staticmethod
    def _common_args(module: nn.Module) -> dict:
        p = next(module.parameters())
        args = {k: getattr(module, k) for k in _Recurrent._TORCH_ARGS}
        return dict(args, dropout=float(args["dropout"]), device=p.device, dtype=p.dtype)

    def torch_kwargs(self) -> dict:
        """Constructor arguments of the ``torch_twin`` module equivalent to this one."""
        return self._common_args(self)

    def _not_in_torch(self) -> dict:
        """The options this module has that its torch twin does not (name -> value), at non-defaults."""
        return self.cell._variants()

    @classmethod
    def kwargs_from_torch(cls, module: nn.Module) -> dict:
        """Inverse of ``torch_kwargs``: our constructor arguments for a ``torch_twin`` module."""
        return cls._common_args(module)

    def _check_torch_equivalent(self) -> None:
        """Raise (TypeError: no twin class; ValueError: an option the twin lacks) unless torch.nn's
        ``torch_twin`` computes exactly this module's function."""
        if self.torch_twin is None:
            raise TypeError(f"{type(self).__name__}: torch.nn has no equivalent module to convert to")
        for name, value in self._not_in_torch().items():
            raise ValueError(f"module: torch.nn.{self.torch_twin.__name__} has no {name}, got {name}={value!r}")

    def to_torch(self) -> nn.Module:
        """The equivalent torch.nn module (``torch_twin``) with a copy of the weights."""
        self._check_torch_equivalent()
        new = self.torch_twin(**self.torch_kwargs())
        new.load_state_dict(self.state_dict())
        new.train(self.training)
        return new


class _TorchRNNBase(nn.RNNBase):
    """Makes a layer with a torch.nn twin an ``nn.RNNBase``, as user code checks it
    (``isinstance(m, nn.RNNBase)`` in weight-drop, AWD-LSTM and training libraries), while the
    layer keeps rnnkit's forward, parameters and pickled state.

    Listed after ``_Recurrent`` in a layer's bases, so ``_Recurrent``'s methods win where both
    define one (forward, reset_parameters, extra_repr, flatten_parameters -- a no-op --,
    all_weights, ``_all_weights``, ``_flat_weights_names``).  torch's constructor is skipped: it would register
    torch's own parameters.  torch keeps a cached ``_flat_weights`` list with weak references
    that its forward refreshes; here ``_flat_weights`` is read from the module's attributes at
    every access, so the RNNBase methods that maintain that cache are replaced by the plain
    ``nn.Module`` ones or by nothing (``__setattr__`` stays torch's: the list it patches is a
    fresh copy, so it does what ``nn.Module``'s does).  The methods that only read attributes (``mode``,
    ``proj_size``, ``_flat_weights``) are torch's: check_input, get_expected_hidden_size,
    check_hidden_size, check_forward_args, permute_hidden.
    """

    def __init__(self):
        nn.Module.__init__(self)

    __getstate__ = nn.Module.__getstate__               # torch's drops weak references we do not keep
    __setstate__ = nn.Module.__setstate__               # torch's rebuilds its name lists and cache
    _replicate_for_data_parallel = nn.Module._replicate_for_data_parallel   # torch's copies the cache

    def _apply(self, fn, recurse=True):
        return nn.Module._apply(self, fn, recurse)      # torch's also resets the weak references

    def _init_flat_weights(self) -> None:
        """Nothing to build: ``_flat_weights`` is read from the module at every access."""

    def _weights_have_changed(self) -> bool:
        """Never: ``_flat_weights`` is never stale."""
        return False


class Elman(_Recurrent, _TorchRNNBase):
    r"""Elman network (simple RNN), drop-in for ``torch.nn.RNN``: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    Arguments as torch.nn.RNN, plus ``backend`` ('auto', 'reference', 'autograd', ...).
    forward(input, hx=None, lengths=None, return_trace=False) -> (output, h_n[, trace]);
    hx and h_n are (D*L, B, H).  Trace names: hidden.
    """

    torch_twin = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, backend: Optional[str] = None,
                 proj_size: int = 0, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 clip_recurrent: Optional[float] = None):
        validation.no_projection("Elman", proj_size)
        validation.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.nonlinearity = nonlinearity
        self.mode, self.proj_size = ("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"), 0   # nn.RNNBase's
        cell = ElmanCell(hidden_size, nonlinearity, **_variants(recurrent_dropout, zoneout, clip_recurrent))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, bidirectional, backend,
                         device, dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")

    def torch_kwargs(self) -> dict:
        return {**super().torch_kwargs(), "nonlinearity": self.nonlinearity}

    @classmethod
    def kwargs_from_torch(cls, module: nn.Module) -> dict:
        return {**super().kwargs_from_torch(module), "nonlinearity": module.nonlinearity}


RNN = Elman


class LSTM(_Recurrent, _TorchRNNBase):
    r"""Long short-term memory, drop-in for ``torch.nn.LSTM`` (gate order i, f, g, o).

    Arguments as torch.nn.LSTM (``proj_size`` P > 0: h_t = W_hr (o_t * tanh(c_t)), parameters
    weight_hr_l{k}[_reverse] (P, H), layer k+1 reads D*P features), plus ``forget_bias`` (e.g. 1.0,
    Jozefowicz et al. 2015: the forget block of bias_ih is set to it and that of bias_hh to 0 at
    every reset), ``peephole`` (Gers & Schmidhuber 2000: c_{t-1} enters the input and forget
    gates, c_t the output gate, through diagonal weights weight_ch_l{k}[_reverse] (3H,) ordered
    input, forget, output), ``layer_norm`` (Ba et al. 2016, haste's placements: each gate block of the
    input and of the recurrent pre-activations normalised, and the cell before the output tanh;
    gains weight_ln_ih/weight_ln_hh (4H,), weight_ln_c (H,), bias bias_ln_c (H,); with it b_hh is
    the gates' shift after the normalisation, and forget_bias goes there), the options of every
    layer (module docstring) and ``backend``.
    forward(input, hx=None, lengths=None, return_trace=False) -> (output, (h_n, c_n)[, trace]);
    hx = (h_0, c_0), h_0 (D*L, B, P or H), c_0 (D*L, B, H).  Trace names: input_gate,
    forget_gate, candidate, output_gate, cell, hidden (+ unprojected: o_t * tanh(c_t), with a
    projection).
    """

    torch_twin = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, forget_bias: Optional[float] = None,
                 backend: Optional[str] = None, peephole: bool = False, recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, clip_recurrent: Optional[float] = None, layer_norm: bool = False):
        if isinstance(proj_size, bool) or not isinstance(proj_size, int):
            raise validation.ArgumentTypeError(f"proj_size: expected a non-negative integer, got {proj_size!r}")
        if proj_size < 0 or (proj_size and isinstance(hidden_size, int) and proj_size >= hidden_size):
            raise ValueError(f"proj_size: expected 0 (no projection) or an integer in [1, hidden_size), "
                             f"got proj_size={proj_size!r} with hidden_size={hidden_size!r}")
        if forget_bias is not None and not bias:
            raise ValueError(f"forget_bias: expected None when bias=False, got {forget_bias!r}")
        if forget_bias is not None and (isinstance(forget_bias, bool)
                                        or not isinstance(forget_bias, (int, float))):
            raise TypeError(f"forget_bias: expected a number or None, got {forget_bias!r}")
        for name, value in (("peephole", peephole), ("layer_norm", layer_norm)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected True or False, got {value!r}")
        self.mode, self.proj_size = "LSTM", proj_size                   # nn.RNNBase's
        self.peephole = peephole
        self.layer_norm = layer_norm
        self.forget_bias = forget_bias
        cell = LSTMCell(hidden_size, proj_size, peephole, layer_norm,
                        **_variants(recurrent_dropout, zoneout, clip_recurrent))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, bidirectional, backend,
                         device, dtype)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.forget_bias is None:
            return
        H = self.hidden_size
        # The shift of the forget gate's pre-activation: bias_ih, or bias_hh under layer normalisation
        # (bias_ih is then inside the normalisation).
        shift, other = ("bias_hh", "bias_ih") if self.layer_norm else ("bias_ih", "bias_hh")
        with torch.no_grad():
            for names in self._param_names:
                for n in names:
                    if n.startswith(shift):
                        getattr(self, n)[H:2 * H].fill_(self.forget_bias)
                    elif n.startswith(other):
                        getattr(self, n)[H:2 * H].zero_()

    # torch.nn.LSTM's versions of these nn.RNNBase methods (its state is a pair).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def unpack_state(self, hx):
        return state_pair("LSTM", hx, "(h_0, c_0)")

    def pack_state(self, finals):
        return finals[0], finals[1]

    def _amp_result_dtypes(self, amp, device_type, packed, n_state):
        """torch.nn.LSTM on the CPU: a padded batch runs oneDNN's LSTM, which autocast lowers to
        ``amp``; a PackedSequence runs torch's fused cell on the float32 input, so all comes back
        in the parameters' dtype; with proj_size (padded or packed) a loop of matmuls runs in
        ``amp``, but c_n sums into the float32 c_0 and stays in the parameters' dtype."""
        if device_type != "cpu":
            return amp, (amp, amp)
        if self.proj_size:
            return amp, (amp, self._dtype)
        if packed:
            return self._dtype, (self._dtype, self._dtype)
        return amp, (amp, amp)

    def _size_repr(self) -> str:
        return super()._size_repr() + (f", proj_size={self.proj_size}" if self.proj_size else "")

    def torch_kwargs(self) -> dict:
        return {**super().torch_kwargs(), "proj_size": self.proj_size}

    @classmethod
    def kwargs_from_torch(cls, module: nn.Module) -> dict:
        return {**super().kwargs_from_torch(module), "proj_size": module.proj_size}

    def _not_in_torch(self) -> dict:
        return {**({"peephole": True} if self.peephole else {}), **({"layer_norm": True} if self.layer_norm else {}),
                **super()._not_in_torch()}


class GRU(_Recurrent, _TorchRNNBase):
    r"""Gated recurrent unit, drop-in for ``torch.nn.GRU`` (gate order r, z, n).

    ``reset_after=True`` (default) is torch's form, n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
    ``reset_after=False`` is the original form of Cho et al. 2014,
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn) (ONNX linear_before_reset=0).
    ``layer_norm=True`` (torch form only): each gate block of the input and of the recurrent
    pre-activations normalised (gains weight_ln_ih, weight_ln_hh (3H,)); b_hh is added after it.
    forward(input, hx=None, lengths=None, return_trace=False) -> (output, h_n[, trace]).
    Trace names: reset_gate, update_gate, candidate, hidden.
    """

    torch_twin = nn.GRU

    def _amp_result_dtypes(self, amp, device_type, packed, n_state):
        """torch.nn.GRU on the CPU has no kernel autocast lowers: output and h_n come back in the
        parameters' dtype (on CUDA, cuDNN's, in ``amp``)."""
        dtype = amp if device_type != "cpu" else self._dtype
        return dtype, (dtype,)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, reset_after: bool = True, backend: Optional[str] = None,
                 proj_size: int = 0, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 clip_recurrent: Optional[float] = None, layer_norm: bool = False):
        validation.no_projection("GRU", proj_size)
        for name, value in (("reset_after", reset_after), ("layer_norm", layer_norm)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected True or False, got {value!r}")
        if layer_norm and not reset_after:
            raise ValueError("layer_norm: normalises torch's GRU form (reset_after=True); got reset_after=False")
        self.mode, self.proj_size = "GRU", 0                            # nn.RNNBase's
        self.reset_after = reset_after
        self.layer_norm = layer_norm
        cell = GRUCell(hidden_size, reset_after, layer_norm, **_variants(recurrent_dropout, zoneout, clip_recurrent))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, bidirectional, backend,
                         device, dtype)

    def _check_torch_equivalent(self) -> None:
        if not self.reset_after:
            raise ValueError("module: torch.nn.GRU has only the reset_after=True form, got reset_after=False")
        super()._check_torch_equivalent()

    def _not_in_torch(self) -> dict:
        return {**({"layer_norm": True} if self.layer_norm else {}), **super()._not_in_torch()}


class Jordan(_Recurrent):
    r"""Jordan network: the previous *output* is fed back.

        h_t = act(W_ih x_t + b_ih + W_yh y_{t-1}),   y_t = act_out(W_hy h_t + b_hy)

    Parameters per layer k and direction: weight_ih_l{k} (H, in_k), weight_yh_l{k} (H, O),
    bias_ih_l{k} (H), weight_hy_l{k} (O, H), bias_hy_l{k} (O).  Layer k+1 reads the outputs y
    of layer k (both directions concatenated, D*O features).
    forward(input, y0=None, lengths=None, return_trace=False) -> (y for every step (T, B, D*O),
    y_n (D*L, B, O)[, trace]).  Trace names: hidden, output.
    """

    _hx_name = "y0"

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, nonlinearity: str = "tanh",
                 output_activation: str = "identity", device=None, dtype=None,
                 backend: Optional[str] = None, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 clip_recurrent: Optional[float] = None):
        validation.positive_int("output_size", output_size)
        validation.choice("nonlinearity", nonlinearity, NONLINEARITIES)
        validation.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if zoneout:
            raise ValueError(f"zoneout: a Jordan network carries its output y, which zoneout would freeze "
                             f"unit by unit; expected 0, got {zoneout!r} (recurrent_dropout acts on y instead)")
        self.output_size = output_size
        self.nonlinearity = nonlinearity
        self.output_activation = output_activation
        cell = JordanCell(hidden_size, output_size, nonlinearity, output_activation,
                          **_variants(recurrent_dropout, 0.0, clip_recurrent))
        super().__init__(cell, input_size, num_layers, bias, batch_first, dropout, bidirectional, backend,
                         device, dtype)

    def forward(self, input, y0=None, lengths=None, return_trace: bool = False):
        """As the other layers; the state is the previous output y, (D*L, B, O)."""
        return super().forward(input, y0, lengths, return_trace)

    def step(self, input: Tensor, y0=None):
        return super().step(input, y0)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if self.output_activation != "identity":
            s += f", output_activation={self.output_activation!r}"
        return s

    def _size_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, {self.output_size}"



# Whole-model torch.save / torch.load under torch's default weights-only loading: the layers and
# their cells hold nothing but these classes, tensors and plain Python values.
torch.serialization.add_safe_globals([Elman, LSTM, GRU, Jordan, ElmanCell, LSTMCell, GRUCell, JordanCell])
