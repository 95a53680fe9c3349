r"""ONNX export of rnnkit's layers, the graph written with ``onnx.helper`` (no tracing of the loop).

    export_onnx(model, path, *, example=None, opset=None, dynamic=True, lengths=False,
                initial_state=True, head=None, readout="all", tokens=0) -> onnx.ModelProto

Symbols as in rnnkit.layers: T steps, B batch, I input_size, H hidden_size, D directions,
L layers, S the emitted state's size (H, or O for Jordan), K the head's outputs.

The graph (inference: dropout is off, as in eval mode)::

    inputs   input    (T, B, I); (B, T, I) when batch_first; int64 ids (T, B) / (B, T) when tokens
             lengths  (B,) int64, each in [1, T]                     only with lengths=True
             h0 [c0]  (D*L, B, S) per carried state, named <state>0   only with initial_state=True
    outputs  output   (T, B, D*S) in the input's layout; with a head: (.., K), or (B, K) for readout='last'
             h_n [c_n] (D*L, B, S) per carried state, named <state>_n (y0 / y_n for Jordan)

How a layer becomes ONNX, decided by the cell registry and the cell's ``options()``:

- a cell whose layer has a torch.nn twin (Elman, LSTM, GRU), with only options the ONNX operator
  expresses -> one ONNX ``RNN`` / ``LSTM`` / ``GRU`` node per layer (the op is named as the twin),
  both directions in one node; layer k+1 reads layer k's Y with directions concatenated, as torch
  stacks them.  Weights per direction: W (G*H, I), R (G*H, H), B = [Wb, Rb] (2*G*H) with the gate
  blocks in ONNX order: LSTM i,o,f,c (torch i,f,g,o), GRU z,r,h (torch r,z,n).  Elman's
  nonlinearity is the RNN ``activations``; GRU ``reset_after`` is ``linear_before_reset`` (True = 1,
  torch's form; False = 0, Cho 2014); LSTM peepholes are the input P = [p_i, p_o, p_f].  Lengths go
  to ``sequence_lens`` (int32): ONNX's reverse direction reads each sequence within its own
  length, as rnnkit's does.
- any other layer (Jordan; an LSTM with ``proj_size``; layer_norm; zoneout) -> per layer and direction a
  ``Scan`` over time whose body is the cell's step written in ONNX nodes (``_SCAN_STEPS``, one per
  cell), zoneout's eval-mode expected value after it; the input projection x W_ih^T + b_ih is one
  MatMul over all steps before the Scan.  With lengths, padded steps keep the state and emit
  zeros; the reverse direction is the same Scan run backwards (scan directions 1), which, with
  padding at the end, reads each sequence backwards within its own length.
- options that only act in training (recurrent dropout, clip_recurrent; dropout between layers)
  leave the graph as it is; an option rnnkit.export does not know is an error naming it.

``batch_first`` is a Transpose at each end.  With ``dynamic`` the batch and time axes are named
('batch', 'time'), else fixed to ``example``'s sizes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import registry

DEFAULT_OPSET = 17
LN_EPS = 1e-5                                           # rnnkit.cells.base.LN_EPS
MIN_OPSET = 13                                          # Unsqueeze/Squeeze axes as inputs, Softmax(axis=-1)
READOUTS = ("all", "last")

# ONNX operator (named as the torch.nn twin) -> torch's gate blocks in ONNX order.
_GATE_ORDER = {"RNN": (0,), "LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'rnnkit[onnx]'") from None
    return onnx


# -- a graph under construction ------------------------------------------------------------------
class _Graph:
    """Nodes and initializers with fresh value names; ``op`` adds a node and returns its output(s)."""

    def __init__(self, onnx, dtype: np.dtype, opset: int, prefix: str = ""):
        self.onnx, self.dtype, self.opset, self.prefix = onnx, dtype, opset, prefix
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs):
        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, hint: str = "const", dtype=None) -> str:
        """An initializer (floats in the graph's dtype unless ``dtype`` says otherwise)."""
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value, dtype=dtype or self.dtype)
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), "ints", np.int64)

    # small compositions used throughout
    def linear(self, x: str, weight: Tensor, bias: Optional[Tensor]) -> str:
        """x (.., in) W^T + b: one MatMul (any rank) and an Add."""
        y = self.op("MatMul", [x, self.const(weight.t(), "weight_t")])
        return y if bias is None else self.op("Add", [y, self.const(bias, "bias")])

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] as a 1-D int64 tensor of one element."""
        return self.op("Gather", [self.op("Shape", [x]), self.ints(axis)], axis=0)

    def zeros(self, like: str, batch_axis: int, size: int) -> str:
        """Zeros (B, size) with B read from ``like``'s ``batch_axis``."""
        shape = self.op("Concat", [self.dim(like, batch_axis), self.ints(size)], axis=0)
        zero = self.onnx.helper.make_tensor("zero", _onnx_type(self.onnx, self.dtype), [1], [0])
        return self.op("ConstantOfShape", [shape], value=zero)

    def split(self, x: str, n: int) -> List[str]:
        """x (B, n*H) -> n tensors (B, H) (sizes from the shape: the ``split`` input is optional)."""
        return self.op("Split", [x], n_out=n, axis=1, **({"num_outputs": n} if self.opset >= 18 else {}))

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.ints(start), self.ints(end), self.ints(axis)])

    def mean_last(self, x: str) -> str:
        """Mean over the last axis, kept (ReduceMean's axes: an attribute before opset 18, an input since)."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(-1)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)

    def block_norm(self, x: str, blocks: int, size: int) -> str:
        """x (B, blocks*size) normalised over each block of ``size`` features: (x - mean) / sqrt(var + eps)
        with the biased variance (rnnkit.cells.base.block_norm; no gain or bias)."""
        v = self.op("Reshape", [x, self.ints(-1, blocks, size)])                # (B, blocks, size)
        centred = self.op("Sub", [v, self.mean_last(v)])
        var = self.mean_last(self.op("Mul", [centred, centred]))
        std = self.op("Sqrt", [self.op("Add", [var, self.const(LN_EPS, "eps")])])
        return self.op("Reshape", [self.op("Div", [centred, std]), self.ints(-1, blocks * size)])


def _onnx_type(onnx, dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# -- which form a layer takes ---------------------------------------------------------------------
# Cell options (``Cell.options()`` keys) by what they need in the graph.
_EVAL_FREE = frozenset({"recurrent_dropout", "clip_recurrent"})    # no effect on eval-mode math
_NATIVE_OPTIONS = frozenset({"nonlinearity", "reset_after", "peephole"})   # attributes / P of RNN, GRU, LSTM
_SCAN_OPTIONS = frozenset({"nonlinearity", "reset_after", "peephole", "proj_size", "output_activation",
                           "zoneout", "layer_norm"})               # what the Scan steps below compute


def _native_op(entry, cell) -> Optional[str]:
    """The ONNX operator that computes this layer (named as its torch.nn twin), or None when the
    layer needs a Scan: no twin, or an option the operator cannot express (projection, zoneout).
    An option that neither form knows is an error naming it."""
    used = set(cell.options()) - _EVAL_FREE
    twin = entry.torch_twin.__name__ if entry.torch_twin is not None else None
    if twin in _GATE_ORDER and used <= _NATIVE_OPTIONS:
        return twin
    if entry.name in _SCAN_STEPS and used <= _SCAN_OPTIONS:
        return None
    if entry.name not in _SCAN_STEPS and twin not in _GATE_ORDER:
        raise ValueError(f"model: expected a cell with an ONNX form (a torch.nn twin among {sorted(_GATE_ORDER)}, "
                         f"or a Scan step for {sorted(_SCAN_STEPS)}), got cell {entry.name!r}")
    unknown = sorted(used - (_SCAN_OPTIONS if entry.name in _SCAN_STEPS else _NATIVE_OPTIONS))
    raise ValueError(f"model: expected {entry.name} options among {sorted(_SCAN_OPTIONS | _EVAL_FREE)} "
                     f"(those rnnkit.export writes in ONNX), got {', '.join(f'{k}={cell.options()[k]}' for k in unknown)}")


# -- cells ONNX has: RNN / LSTM / GRU nodes -------------------------------------------------------
def _blocks(t: Tensor, order: Sequence[int]) -> Tensor:
    """Reorder the gate blocks (dim 0) of a torch-layout weight or bias."""
    chunks = t.detach().chunk(len(order))
    return torch.cat([chunks[k] for k in order])


def _native_layer(g: _Graph, model, op: str, layer: int, x: str, seq_lens: Optional[str],
                  states0: Optional[List[str]]) -> Tuple[str, List[str]]:
    """One ONNX RNN/LSTM/GRU node for layer ``layer``: x (T, B, F) -> (T, B, D*H), finals (D, B, H)."""
    cell, D, order = model.cell, (2 if model.bidirectional else 1), _GATE_ORDER[op]
    sfx = [f"_l{layer}", f"_l{layer}_reverse"][:D]
    w = lambda name: [getattr(model, name + s) for s in sfx]               # noqa: E731
    stacked = lambda name, order: g.const(torch.stack([_blocks(t, order) for t in w(name)]), name)  # noqa: E731
    inputs = [x, stacked("weight_ih", order), stacked("weight_hh", order)]
    if model.bias:
        inputs.append(g.const(torch.stack([torch.cat([_blocks(a, order), _blocks(b, order)])
                                           for a, b in zip(w("bias_ih"), w("bias_hh"))]), "B"))
    else:
        inputs.append("")
    inputs.append(seq_lens or "")
    n_states = len(cell.state_names)
    inputs += [g.slice(s, layer * D, (layer + 1) * D, 0) for s in states0] if states0 else [""] * n_states
    attrs = {}
    if "nonlinearity" in cell.options():
        attrs["activations"] = [cell.nonlinearity.capitalize()] * D       # Tanh / Relu, per direction
    if "reset_after" in cell.options():
        attrs["linear_before_reset"] = int(cell.reset_after)
    if getattr(cell, "peephole", False):
        inputs.append(stacked("weight_ch", (0, 2, 1)))                     # [ci, cf, co] -> P = [i, o, f]
    y, *finals = g.op(op, inputs, n_out=1 + n_states, hidden_size=model.hidden_size,
                      direction="bidirectional" if D == 2 else "forward", **attrs)
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])                          # (T, D, B, H) -> (T, B, D, H)
    return g.op("Reshape", [y, g.ints(0, 0, -1)]), finals


# -- every cell: a Scan over the cell's step ------------------------------------------------------
# A step: (graph, cell, xp (B, G*H), states [(B, S_k)], params by name) -> new states, in the
# cell's eval-mode math (rnnkit/cells/*.py; recurrent dropout is the identity in eval).
def _act(g: _Graph, kind: str, x: str) -> str:
    """tanh / relu / sigmoid / softmax (last axis) / identity as an ONNX node."""
    if kind == "identity":
        return x
    if kind == "softmax":
        return g.op("Softmax", [x], axis=-1)
    return g.op({"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}[kind], [x])


def _elman_step(g: _Graph, cell, xp: str, state: List[str], p: Dict[str, Optional[Tensor]]) -> List[str]:
    """h = act(xp + h W_hh^T + b_hh)."""
    return [_act(g, cell.nonlinearity, g.op("Add", [xp, g.linear(state[0], p["weight_hh"], p.get("bias_hh"))]))]


def _lstm_step(g: _Graph, cell, xp: str, state: List[str], p: Dict[str, Optional[Tensor]]) -> List[str]:
    """Gates i, f, g, o from xp + h W_hh^T + b_hh (peepholes: + w_ci c, w_cf c, w_co c_new);
    c = f c + i g;  h = o tanh(c) (W_hr^T with a projection).  Layer normalisation as in
    rnnkit/cells/lstm.py: the two products normalised per gate block, and the cell before its tanh."""
    h, c = state
    H = cell.hidden_size
    if cell.layer_norm:                                    # g_ih LN_4(xp) + g_hh LN_4(h W_hh^T) + b_hh
        pre = _gains_norm(g, [(xp, p["weight_ln_ih"]), (g.linear(h, p["weight_hh"], None), p["weight_ln_hh"])],
                          4, H, p.get("bias_hh"))
    else:
        pre = g.op("Add", [xp, g.linear(h, p["weight_hh"], p.get("bias_hh"))])
    i, f, gg, o = g.split(pre, 4)
    peep = p["weight_ch"].detach().chunk(3) if "weight_ch" in p else None
    if peep is not None:
        i, f = (g.op("Add", [a, g.op("Mul", [g.const(w, "peephole"), c])]) for a, w in ((i, peep[0]), (f, peep[1])))
    i, f, gg = g.op("Sigmoid", [i]), g.op("Sigmoid", [f]), g.op("Tanh", [gg])
    c_new = g.op("Add", [g.op("Mul", [f, c]), g.op("Mul", [i, gg])])
    if peep is not None:
        o = g.op("Add", [o, g.op("Mul", [g.const(peep[2], "peephole"), c_new])])
    read = _gains_norm(g, [(c_new, p["weight_ln_c"])], 1, H, p.get("bias_ln_c")) if cell.layer_norm else c_new
    h_new = g.op("Mul", [g.op("Sigmoid", [o]), g.op("Tanh", [read])])
    if "weight_hr" in p:
        h_new = g.linear(h_new, p["weight_hr"], None)
    return [h_new, c_new]


def _gru_step(g: _Graph, cell, xp: str, state: List[str], p: Dict[str, Optional[Tensor]]) -> List[str]:
    """r, z from xp + h W_hh^T + b_hh;  n = tanh(xn + r (h W_hn^T + b_hn)) (torch form) or
    tanh(xn + (r h) W_hn^T + b_hn) (Cho 2014);  h = n + z (h - n).  Layer normalisation (torch form)
    as in rnnkit/cells/gru.py: each product normalised per gate block, b_hh after it."""
    h, H = state[0], cell.hidden_size
    w, b = p["weight_hh"], p.get("bias_hh")
    if cell.layer_norm:                  # torch form only: g_ih LN_3(xp), g_hh LN_3(h W_hh^T) + b_hh
        xp = _gains_norm(g, [(xp, p["weight_ln_ih"])], 3, H, None)
        rec_terms = _gains_norm(g, [(g.linear(h, w, None), p["weight_ln_hh"])], 3, H, b)
    elif cell.reset_after:
        rec_terms = g.linear(h, w, b)
    xr, xz, xn = g.split(xp, 3)
    if cell.reset_after:
        hr, hz, hn = g.split(rec_terms, 3)
    else:
        hr, hz = g.split(g.linear(h, w[:2 * H], None if b is None else b[:2 * H]), 2)
    r, z = g.op("Sigmoid", [g.op("Add", [xr, hr])]), g.op("Sigmoid", [g.op("Add", [xz, hz])])
    if cell.reset_after:
        rec = g.op("Mul", [r, hn])
    else:
        rec = g.linear(g.op("Mul", [r, h]), w[2 * H:], None if b is None else b[2 * H:])
    n = g.op("Tanh", [g.op("Add", [xn, rec])])
    return [g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])])]


def _gains_norm(g: _Graph, terms, blocks: int, H: int, bias: Optional[Tensor]) -> str:
    """sum over (x, gain) of gain * LN(x) per block of H features, + bias."""
    out = None
    for x, gain in terms:
        t = g.op("Mul", [g.const(gain, "ln_gain"), g.block_norm(x, blocks, H)])
        out = t if out is None else g.op("Add", [out, t])
    return out if bias is None else g.op("Add", [out, g.const(bias, "bias")])


def _jordan_step(g: _Graph, cell, xp: str, state: List[str], p: Dict[str, Optional[Tensor]]) -> List[str]:
    """h = act(xp + y W_yh^T);  y = out(h W_hy^T + b_hy)."""
    h = _act(g, cell.nonlinearity, g.op("Add", [xp, g.linear(state[0], p["weight_yh"], None)]))
    return [_act(g, cell.output_activation, g.linear(h, p["weight_hy"], p.get("bias_hy")))]


# Cell name -> its step in ONNX nodes.
_SCAN_STEPS = {"elman": _elman_step, "lstm": _lstm_step, "gru": _gru_step, "jordan": _jordan_step}


def _scan_direction(g: _Graph, model, step, layer: int, d: int, x: str, mask: Optional[str],
                    states0: Optional[List[str]]) -> Tuple[str, List[str]]:
    """One layer and direction as a Scan: x (T, B, F) -> (T, B, S), finals [(B, S_k)]."""
    onnx, cell = g.onnx, model.cell
    sfx = f"_l{layer}" + ("_reverse" if d else "")
    in_k = model.input_size if layer == 0 else (2 if model.bidirectional else 1) * cell.out_size
    p = {name: getattr(model, name + sfx) for name, _ in cell.param_shapes(in_k, model.bias)}
    xp = g.linear(x, p["weight_ih"], p.get("bias_ih"))                      # (T, B, G*H), hoisted
    idx = layer * (2 if model.bidirectional else 1) + d                    # its row in h0
    init = ([g.op("Gather", [s, g.const(idx, "index", np.int64)], axis=0) for s in states0] if states0
            else [g.zeros(x, 1, size) for size in cell.state_sizes()])

    body = _Graph(onnx, g.dtype, g.opset, prefix=g.name("body") + "/")
    vtype = _onnx_type(onnx, g.dtype)
    old = [body.name(f"{n}_prev") for n in cell.state_names]
    xp_t, m_t = body.name("xp_t"), body.name("mask_t")
    new = step(body, cell, xp_t, old, p)
    zoneout = float(getattr(cell, "zoneout", 0.0) or 0.0)
    if zoneout:                                            # eval: the expected value n + p (s - n)
        keep = body.const(zoneout, "zoneout")
        new = [body.op("Add", [n, body.op("Mul", [keep, body.op("Sub", [o, n])])]) for n, o in zip(new, old)]
    if mask is not None:                                   # padded steps keep the state, emit zeros
        new = [body.op("Where", [m_t, n, o]) for n, o in zip(new, old)]
        out = body.op("Where", [m_t, new[0], body.const(0.0, "zero")])
    else:
        out = body.op("Identity", [new[0]])
    new = [body.op("Identity", [n]) for n in new]          # a body output must be a node's own output
    info = lambda names, t=vtype: [onnx.helper.make_tensor_value_info(n, t, None) for n in names]  # noqa: E731
    body_inputs = info(old) + info([xp_t]) + (info([m_t], onnx.TensorProto.BOOL) if mask is not None else [])
    graph = onnx.helper.make_graph(body.nodes, f"{cell.name}_step{sfx}", body_inputs, info(new + [out]),
                                   initializer=body.inits)
    scan_in = [xp] + ([mask] if mask is not None else [])
    outs = g.op("Scan", init + scan_in, n_out=len(new) + 1, body=graph, num_scan_inputs=len(scan_in),
                scan_input_directions=[d] * len(scan_in), scan_output_directions=[d])
    return outs[-1], outs[:-1]


# -- the arguments --------------------------------------------------------------------------------
@dataclass
class _Options:
    """export_onnx's keyword arguments, checked."""

    example: Optional[Tensor]
    opset: int
    dynamic: bool
    lengths: bool
    initial_state: bool
    head: Optional[nn.Linear]
    readout: str
    tokens: int


def _entry(model):
    """The registry entry of an rnnkit layer whose cell has an ONNX form."""
    try:
        entry = registry.of_layer(model)
    except TypeError:
        layers = ", ".join(e.layer.__name__ for e in registry.CELLS.values())
        raise TypeError(f"model: expected an rnnkit layer ({layers}), got {type(model).__name__}") from None
    _native_op(entry, model.cell)
    dtype = _dtype(model)
    if dtype not in (torch.float16, torch.float32, torch.float64):
        raise TypeError(f"model: expected float16, float32 or float64 parameters (ONNX's recurrent "
                        f"operators' types), got {dtype}")
    return entry


def _dtype(model) -> torch.dtype:
    return model.weight_ih_l0.dtype


def _check_opset(opset, onnx) -> int:
    newest = onnx.defs.onnx_opset_version()
    opset = min(DEFAULT_OPSET, newest) if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an integer in [{MIN_OPSET}, {newest}], got {opset!r}")
    return opset


def _check_readout(model, head, readout, tokens) -> None:
    if readout not in READOUTS:
        raise ValueError(f"readout: expected one of {READOUTS}, got {readout!r}")
    if readout != "all" and head is None:
        raise ValueError(f"readout: expected 'all' without a head, got {readout!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise TypeError(f"tokens: expected an integer >= 0, got {tokens!r}")
    if tokens and tokens != model.input_size:
        raise ValueError(f"tokens: expected the model's input_size {model.input_size} (one-hot width), got {tokens}")
    if head is None:
        return
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head: expected a torch.nn.Linear or None, got {type(head).__name__}")
    features = (2 if model.bidirectional else 1) * model.cell.out_size
    if head.in_features != features or head.weight.dtype != _dtype(model):
        raise ValueError(f"head: expected in_features {features} and dtype {_dtype(model)}, "
                         f"got {head.in_features} and {head.weight.dtype}")


def _check_example(model, example, dynamic: bool, tokens: int) -> None:
    if example is None:
        if not dynamic:
            raise ValueError("example: expected an input tensor when dynamic=False (it fixes the sizes), got None")
        return
    if not isinstance(example, Tensor):
        raise TypeError(f"example: expected a Tensor, got {type(example).__name__}")
    if tokens:
        dims, kind, ok = 2, "integer", not (example.dtype.is_floating_point or example.dtype == torch.bool)
    else:
        dims, kind = 3, str(_dtype(model))
        ok = example.dtype == _dtype(model) and example.shape[-1:] == (model.input_size,)
    if example.dim() != dims or not ok:
        layout = ("(B, T)" if model.batch_first else "(T, B)") + ("" if tokens else f" + ({model.input_size},)")
        raise ValueError(f"example: expected a {dims}-D {kind} tensor {layout}, "
                         f"got {example.dim()}-D {example.dtype} of shape {tuple(example.shape)}")


def _check(model, path, onnx, **kw) -> _Options:
    """Every argument checked before anything is built or written."""
    _entry(model)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    for name in ("dynamic", "lengths", "initial_state"):
        if not isinstance(kw[name], bool):
            raise TypeError(f"{name}: expected True or False, got {kw[name]!r}")
    _check_readout(model, kw["head"], kw["readout"], kw["tokens"])
    _check_example(model, kw["example"], kw["dynamic"], kw["tokens"])
    return _Options(**dict(kw, opset=_check_opset(kw["opset"], onnx)))


# -- the whole network ----------------------------------------------------------------------------
def _build(onnx, model, opt: _Options):
    """The ModelProto: inputs, layer by layer, the read-out, outputs (see the module docstring)."""
    entry, cell = registry.of_layer(model), model.cell
    op = _native_op(entry, cell)
    g = _Graph(onnx, torch.empty((), dtype=_dtype(model)).numpy().dtype, opt.opset)
    D, L, S = (2 if model.bidirectional else 1), model.num_layers, cell.out_size
    batch, time = ("batch", "time") if opt.dynamic else _sizes(model, opt.example)
    inputs, x, seq_lens, mask, states0 = _inputs(g, model, op is not None, opt, batch, time)

    finals: List[List[str]] = [[] for _ in cell.state_names]
    for layer in range(L):
        if op is not None:
            x, fin = _native_layer(g, model, op, layer, x, seq_lens, states0)
        else:
            outs, fin = [], []
            for d in range(D):
                y, f = _scan_direction(g, model, _SCAN_STEPS[entry.name], layer, d, x, mask, states0)
                outs.append(y)
                fin += [g.op("Unsqueeze", [s, g.ints(0)]) for s in f]         # (1, B, S_k) each
            x = g.op("Concat", outs, axis=-1) if D == 2 else outs[0]
        for k in range(len(finals)):
            finals[k] += fin[k::len(finals)]

    features = D * S
    if opt.head is not None:
        if opt.readout == "last":
            x = _last(g, x, "lengths" if opt.lengths else None, S, D)         # (B, D*S)
        x = g.linear(x, opt.head.weight, opt.head.bias)
        features = opt.head.out_features
    if opt.readout == "last":
        out_shape = [batch, features]
    else:
        out_shape = [batch, time, features] if model.batch_first else [time, batch, features]
        if model.batch_first:
            x = g.op("Transpose", [x], perm=[1, 0, 2])
    outputs = _outputs(g, x, out_shape, cell, finals, D * L, batch)

    graph = onnx.helper.make_graph(g.nodes, f"rnnkit_{type(model).__name__}", inputs, outputs, initializer=g.inits)
    opsets = [onnx.helper.make_opsetid("", opt.opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnnkit",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    proto.doc_string = repr(model) + (f" + head {opt.head!r} (readout {opt.readout!r})" if opt.head else "")
    return proto


def _sizes(model, example: Tensor) -> Tuple[int, int]:
    """(B, T) of the example."""
    B, T = example.shape[:2]
    return (B, T) if model.batch_first else (T, B)


def _inputs(g: _Graph, model, native: bool, opt: _Options, batch, time):
    """The graph inputs and what the layers read: (inputs, x (T, B, F), sequence_lens, mask, states0)."""
    onnx, cell = g.onnx, model.cell
    info, vtype = onnx.helper.make_tensor_value_info, _onnx_type(onnx, g.dtype)
    shape = [batch, time] if model.batch_first else [time, batch]
    inputs = [info("input", onnx.TensorProto.INT64 if opt.tokens else vtype,
                   shape + ([] if opt.tokens else [model.input_size]))]
    x = "input"
    if opt.tokens:                                                         # ids -> one-hot features
        x = g.op("OneHot", [x, g.ints(opt.tokens), g.const([0.0, 1.0], "off_on")], axis=-1)
    if model.batch_first:
        x = g.op("Transpose", [x], perm=[1, 0, 2])                         # (T, B, F) from here on
    seq_lens = mask = states0 = None
    if opt.lengths:
        inputs.append(info("lengths", onnx.TensorProto.INT64, [batch]))
        if native:
            seq_lens = g.op("Cast", ["lengths"], to=onnx.TensorProto.INT32)
        else:
            mask = _step_mask(g, x, "lengths")
    if opt.initial_state:
        states0 = [f"{n}0" for n in cell.state_names]
        D = 2 if model.bidirectional else 1
        inputs += [info(n, vtype, [D * model.num_layers, batch, s]) for n, s in zip(states0, cell.state_sizes())]
    return inputs, x, seq_lens, mask, states0


def _step_mask(g: _Graph, x: str, lengths: str) -> str:
    """(T, B, 1) bool: step t is inside sequence b (t < lengths[b])."""
    T = g.op("Squeeze", [g.dim(x, 0), g.ints(0)])
    steps = g.op("Range", [g.const(0, "zero", np.int64), T, g.const(1, "one", np.int64)])
    mask = g.op("Less", [g.op("Unsqueeze", [steps, g.ints(1)]), g.op("Unsqueeze", [lengths, g.ints(0)])])
    return g.op("Unsqueeze", [mask, g.ints(2)])


def _outputs(g: _Graph, x: str, out_shape, cell, finals: List[List[str]], DL: int, batch) -> list:
    """Name the results 'output' and '<state>_n' (D*L, B, S_k) and declare them."""
    onnx = g.onnx
    info, vtype = onnx.helper.make_tensor_value_info, _onnx_type(onnx, g.dtype)
    g.nodes.append(onnx.helper.make_node("Identity", [x], ["output"]))
    outputs = [info("output", vtype, out_shape)]
    for name, size, fin in zip(cell.state_names, cell.state_sizes(), finals):
        g.nodes.append(onnx.helper.make_node("Concat", fin, [f"{name}_n"], axis=0))
        outputs.append(info(f"{name}_n", vtype, [DL, batch, size]))
    return outputs


def _last(g: _Graph, y: str, lengths: Optional[str], S: int, D: int) -> str:
    """(T, B, D*S) -> (B, D*S): forward features at each sequence's last valid step, reverse
    features at step 0 (where the reverse direction has read the whole sequence)."""
    if lengths is None:
        fwd = g.op("Gather", [y, g.const(-1, "last", np.int64)], axis=0)
    else:
        index = g.op("Unsqueeze", [g.op("Sub", [lengths, g.const(1, "one", np.int64)]), g.ints(1)])   # (B, 1)
        fwd = g.op("GatherND", [g.op("Transpose", [y], perm=[1, 0, 2]), index], batch_dims=1)
    if D == 1:
        return fwd
    rev = g.op("Gather", [y, g.const(0, "first", np.int64)], axis=0)
    return g.op("Concat", [g.slice(fwd, 0, S, 1), g.slice(rev, S, D * S, 1)], axis=1)


def _write(data: bytes, path) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    failure leaves nothing (and an existing file as it was)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@torch.no_grad()
def export_onnx(model: nn.Module, path, *, example: Optional[Tensor] = None, opset: Optional[int] = None,
                dynamic: bool = True, lengths: bool = False, initial_state: bool = True,
                head: Optional[nn.Linear] = None, readout: str = "all", tokens: int = 0):
    """Write an rnnkit layer (optionally with a linear read-out) as an ONNX model; returns the ModelProto.

    model          an rnnkit layer (Elman/RNN, LSTM, GRU either form, Jordan), any num_layers,
                   bidirectional, bias, batch_first; exported as in eval mode (no dropout)
    path           the .onnx file, written atomically (nothing is written when anything fails)
    example        an input tensor like the model's; required when ``dynamic=False`` (fixes B and T)
    opset          ONNX opset, default 17 (at least 13)
    dynamic        name the batch and time axes ('batch', 'time') instead of fixing them
    lengths        add the graph input ``lengths`` (B,) int64: valid steps per sequence
    initial_state  add the graph inputs <state>0 (D*L, B, S) (h0, c0; y0 for Jordan); zeros if False
    head           an nn.Linear applied to the output features (rnnkit train's read-out)
    readout        with a head: 'all' steps, or 'last' (each sequence's last step; B rows)
    tokens         > 0: the input is int64 symbol ids, one-hot encoded to ``tokens`` features

    See the module docstring for the graph's inputs, outputs and operators.
    """
    onnx = _onnx()
    opt = _check(model, path, onnx, example=example, opset=opset, dynamic=dynamic, lengths=lengths,
                 initial_state=initial_state, head=head, readout=readout, tokens=tokens)
    proto = _build(onnx, model, opt)
    onnx.checker.check_model(proto, full_check=True)
    _write(proto.SerializeToString(), path)
    return proto


__all__ = ["export_onnx"]
