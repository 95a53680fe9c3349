"""Conversion to and from torch.nn.RNN / LSTM / GRU (same parameter names, so state_dicts move as is).

Which rnnkit layer twins which torch.nn class is declared by the layers (``torch_twin``) and
found through the cell registry.
"""
from __future__ import annotations

from torch import nn

from . import registry


def from_torch(module: nn.Module, **kwargs) -> nn.Module:
    """An rnnkit layer equivalent to a torch.nn.RNN/LSTM/GRU, with a copy of its weights.

    Extra keyword arguments (e.g. ``backend``) go to the rnnkit constructor.
    """
    entry = registry.of_twin(type(module))
    if entry is None:
        twins = ", ".join(e.torch_twin.__name__ for e in registry.CELLS.values() if e.torch_twin is not None)
        raise TypeError(f"module: expected torch.nn {twins}, got {type(module).__name__}")
    new = entry.layer(**entry.layer.kwargs_from_torch(module), **kwargs)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


def to_torch(module: nn.Module) -> nn.Module:
    """The torch.nn module equivalent to an rnnkit Elman/LSTM/GRU, with a copy of its weights."""
    registry.of_layer(module)                  # TypeError for what is not an rnnkit layer
    return module.to_torch()
