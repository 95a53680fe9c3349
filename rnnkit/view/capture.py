"""What the page shows, measured: one rnnkit layer's trace and gradient flow for one sequence.

Symbols: B batch, T steps, H units of one trace quantity (Jordan's ``output`` has O),
L layers, D directions, I the layer's input features.

The model may be an rnnkit layer or any module that contains one (the first rnnkit layer, or
the one named by ``layer``).  The model runs once as it is; a forward hook records the layer's
call, which is then repeated with ``return_trace=True``, so the model needs no trace support.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..diagnostics import gradient_flow
from ..layers import _Recurrent


@dataclass
class Capture:
    """One sequence through one rnnkit layer.

    output   the model's return value (whole batch)
    trace    trace[l][d][name]: float32 arrays (T, H) of the chosen sample, valid steps only
    x        (T, I) float32: the layer's input for that sample
    names    the cell's trace names in the cell's order
    layer    the rnnkit layer; ``layer_name`` its name inside the model
    """

    output: Any
    trace: List[List[Dict[str, np.ndarray]]]
    x: np.ndarray
    names: Tuple[str, ...]
    layer: _Recurrent
    layer_name: str

    @property
    def steps(self) -> int:
        return self.x.shape[0]


def find_layer(model: nn.Module, name: Optional[str] = None) -> Tuple[str, _Recurrent]:
    """(name, layer): the rnnkit layer called ``name`` inside ``model``, or the first one."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _Recurrent)]
    if not found:
        raise TypeError(f"model: expected an rnnkit layer or a module containing one, "
                        f"got {type(model).__name__}")
    if name is None:
        return found[0]
    for n, m in found:
        if n == name:
            return n, m
    raise ValueError(f"layer: expected one of {[n for n, _ in found]}, got {name!r}")


def _as_args(inputs) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _record_call(model: nn.Module, layer: _Recurrent, args: tuple) -> Tuple[Any, list]:
    """Run the model once under no_grad; return its output and the layer's calls [(args, kwargs)]."""
    calls = []
    handle = layer.register_forward_pre_hook(lambda m, a, kw: calls.append((a, dict(kw))), with_kwargs=True)
    try:
        with torch.no_grad():
            output = model(*args)
    finally:
        handle.remove()
    if len(calls) != 1:
        raise ValueError(f"model: the rnnkit layer ran {len(calls)} times in one call; the page "
                         f"shows a model that runs it once")
    return output, calls


def _sample(t: Tensor, layer: _Recurrent, sample: int) -> Tensor:
    """(T, B, F) / (B, T, F) batch_first / (T, F) unbatched -> (T, F) of one sample."""
    if t.dim() == 2:
        return t
    return t[sample] if layer.batch_first else t[:, sample]


def _length(lengths, sample: int, T: int) -> int:
    """Valid steps of the sample (T when the call had no lengths)."""
    if lengths is None:
        return T
    return int(torch.as_tensor(lengths).reshape(-1)[sample])


def capture(model: nn.Module, inputs, sample: int = 0, layer: Optional[str] = None) -> Capture:
    """Run ``model(*inputs)`` and trace one sample through its rnnkit layer (see module doc)."""
    layer_name, rnn = find_layer(model, layer)
    output, calls = _record_call(model, rnn, _as_args(inputs))
    args, kwargs = calls[0]
    kwargs = {**kwargs, "return_trace": True}
    if len(args) >= 3:                                   # (input, hx, lengths) positionally
        kwargs["lengths"], args = args[2], args[:2]
    x = args[0] if args else kwargs.pop("input")
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise TypeError("inputs: a PackedSequence reaches the layer; pass a padded tensor and lengths")
    with torch.no_grad():
        trace = rnn(x, *args[1:], **kwargs)[-1]
    x = _sample(x, rnn, sample)
    n = _length(kwargs.get("lengths"), sample, x.shape[0])
    arrays = [[{k: _sample(v, rnn, sample)[:n].float().cpu().numpy() for k, v in d.items()}
               for d in lay] for lay in trace.layers]
    return Capture(output, arrays, x[:n].float().cpu().numpy(), tuple(trace.names), rnn, layer_name)


def flow(model: nn.Module, inputs, loss_fn: Callable, cap: Capture) -> Tuple[List[np.ndarray], float]:
    """||dL/ds_t|| for each state s of the captured layer: a list (h[, c]) of (L, D, T) arrays,
    and the loss (over the whole batch of ``inputs``); cut to the captured sample's steps."""
    result = gradient_flow(model, _as_args(inputs), loss_fn)
    norms = result.norms[cap.layer_name or type(cap.layer).__name__]
    return [n[..., :cap.steps].double().numpy() for n in norms], result.loss
