"""Every cell rnnkit has, declared once.

An entry names the cell, its math (``rnnkit.cells``), its public layer (``rnnkit.layers``, which
declares its torch.nn twin), the forms that exercise its distinct code paths, and the trainer's
options for it.  The trainer's choices and model builder, convert (from_torch / to_torch), the
experiments, the benchmark and the tests' tables all read this table.

Adding a cell: its math file in rnnkit/cells/, its layer class in rnnkit/layers.py, its C++
kernel file in rnnkit/csrc/, and one ``Entry`` below (see CONTRIBUTING.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

from .cells import Cell, ElmanCell, GRUCell, JordanCell, LSTMCell
from .layers import GRU, LSTM, Elman, Jordan, _Recurrent


@dataclass(frozen=True)
class Entry:
    """One cell.

    name      the cell's name (``Cell.name``), as the trainer's ``--cell`` takes it
    cell      the Cell subclass (math: step, hand-derived step_backward, trace)
    layer     the public nn.Module, ``layer(input_size, hidden_size, **kwargs)``
    forms     {form name: layer kwargs}, one per distinct code path of the cell (tests, bench);
              ``twin_forms`` lists those that its torch.nn twin can also build
    options   trainer config fields this cell reads (a field that no option list of the chosen cell
              names must keep its default; SHARED_OPTIONS are read by several cells)
    build     trainer config -> the layer's cell-specific kwargs
    """

    name: str
    cell: type
    layer: type
    forms: Dict[str, Dict[str, Any]]
    twin_forms: Tuple[str, ...] = ()
    options: Tuple[str, ...] = ()
    build: Callable[[Any], Dict[str, Any]] = field(default=lambda cfg: {})

    @property
    def torch_twin(self) -> Optional[type]:
        return self.layer.torch_twin

    @property
    def state_names(self) -> Tuple[str, ...]:
        return self.cell.state_names

    @property
    def trace_names(self) -> Tuple[str, ...]:
        return self.cell.trace_names


# The trainer's options that every cell reads (zoneout: not Jordan's, whose state is its output).
SHARED_OPTIONS = ("recurrent_dropout", "zoneout", "clip_recurrent")


def _shared(cfg, zoneout: bool = True) -> Dict[str, Any]:
    found = {"recurrent_dropout": cfg.recurrent_dropout, "clip_recurrent": cfg.clip_recurrent}
    return {**found, "zoneout": cfg.zoneout} if zoneout else found


# Forms of the options every cell has: clip_recurrent is large enough not to bind here (gradcheck
# compares the gradient with the exact derivative; the clipped one has its own tests), and the forms
# with noise (recurrent dropout, zoneout) are random in training, so the shared matrices run them in
# eval (tests/helpers.make): zoneout's expected value.  Their training masks have their own tests.
_ENTRIES = (
    Entry("elman", ElmanCell, Elman,
          forms={"tanh": {"nonlinearity": "tanh"}, "relu": {"nonlinearity": "relu"},
                 "zoneout": {"zoneout": 0.25}},
          twin_forms=("tanh", "relu"), options=("nonlinearity",) + SHARED_OPTIONS,
          build=lambda cfg: {"nonlinearity": cfg.nonlinearity, **_shared(cfg)}),
    Entry("jordan", JordanCell, Jordan,
          forms={"identity": {"output_size": 2},
                 "tanh": {"output_size": 2, "output_activation": "tanh"},
                 "sigmoid": {"output_size": 2, "output_activation": "sigmoid"},
                 "softmax": {"output_size": 2, "output_activation": "softmax"},
                 "relu": {"output_size": 2, "nonlinearity": "relu"}},
          options=("nonlinearity", "jordan_output", "output_activation", "recurrent_dropout", "clip_recurrent"),
          build=lambda cfg: {"output_size": cfg.jordan_output or cfg.hidden, "nonlinearity": cfg.nonlinearity,
                             "output_activation": cfg.output_activation, **_shared(cfg, zoneout=False)}),
    Entry("lstm", LSTMCell, LSTM,
          forms={"": {}, "proj": {"proj_size": 2}, "peephole": {"peephole": True},
                 "dropout_zoneout": {"recurrent_dropout": 0.25, "zoneout": 0.25}, "layer_norm": {"layer_norm": True}},
          twin_forms=("", "proj"), options=("forget_bias", "proj_size", "peephole", "layer_norm") + SHARED_OPTIONS,
          build=lambda cfg: {"forget_bias": cfg.forget_bias, "proj_size": cfg.proj_size, "peephole": cfg.peephole,
                             "layer_norm": cfg.layer_norm, **_shared(cfg)}),
    Entry("gru", GRUCell, GRU, forms={"": {}, "cho": {"reset_after": False}, "clip": {"clip_recurrent": 100.0},
                                      "layer_norm": {"layer_norm": True}},
          twin_forms=("",),
          options=("reset_after", "layer_norm") + SHARED_OPTIONS,
          build=lambda cfg: {"reset_after": cfg.reset_after, "layer_norm": cfg.layer_norm, **_shared(cfg)}),
)
CELLS: Dict[str, Entry] = {e.name: e for e in _ENTRIES}


def names() -> Tuple[str, ...]:
    return tuple(CELLS)


def get(name: str) -> Entry:
    """The entry of a cell name; ValueError naming the choices otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"cell: expected one of {names()}, got {name!r}") from None


def of_layer(module: nn.Module) -> Entry:
    """The entry of an rnnkit layer (by its cell)."""
    if not isinstance(module, _Recurrent):
        raise TypeError(f"module: expected an rnnkit layer, got {type(module).__name__}")
    return get(module.cell.name)


def of_twin(torch_cls: type) -> Optional[Entry]:
    """The entry whose layer is the twin of a torch.nn class (None when none is)."""
    return next((e for e in _ENTRIES if e.torch_twin is torch_cls), None)


def forms() -> Dict[str, Tuple[Entry, Dict[str, Any]]]:
    """Every form of every cell by id ('elman_tanh', 'lstm', 'gru_cho', ...) -> (entry, layer kwargs)."""
    return {e.name + (f"_{f}" if f else ""): (e, kw) for e in _ENTRIES for f, kw in e.forms.items()}


def twin_forms() -> Dict[str, Tuple[Entry, Dict[str, Any]]]:
    """The forms that torch.nn can build too (the parity matrix against torch.nn)."""
    return {e.name + (f"_{f}" if f else ""): (e, e.forms[f]) for e in _ENTRIES for f in e.twin_forms}


__all__ = ["Entry", "CELLS", "names", "get", "of_layer", "of_twin", "forms", "twin_forms", "Cell"]
