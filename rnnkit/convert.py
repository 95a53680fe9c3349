"""Conversion to and from torch.nn.RNN / LSTM / GRU (same parameter names, so state_dicts move as is)."""
from __future__ import annotations

from torch import nn

from . import layers

_PAIRS = ((nn.LSTM, layers.LSTM), (nn.GRU, layers.GRU), (nn.RNN, layers.Elman))


def _common(m) -> dict:
    p = next(m.parameters())
    return dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                bias=m.bias, batch_first=m.batch_first, dropout=float(m.dropout),
                bidirectional=m.bidirectional, device=p.device, dtype=p.dtype)


def from_torch(module: nn.Module, **kwargs) -> nn.Module:
    """An rnnkit layer equivalent to a torch.nn.RNN/LSTM/GRU, with a copy of its weights.

    Extra keyword arguments (e.g. ``backend``) go to the rnnkit constructor.
    """
    for torch_cls, ours in _PAIRS:
        if type(module) is torch_cls:
            args = _common(module)
            if torch_cls is nn.RNN:
                args["nonlinearity"] = module.nonlinearity
            if getattr(module, "proj_size", 0):
                raise ValueError(f"module: expected proj_size=0, got {module.proj_size}")
            new = ours(**args, **kwargs)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
    raise TypeError(f"module: expected torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")


def to_torch(module: nn.Module) -> nn.Module:
    """The torch.nn module equivalent to an rnnkit Elman/LSTM/GRU, with a copy of its weights."""
    if isinstance(module, layers.GRU) and not module.reset_after:
        raise ValueError("module: torch.nn.GRU has only the reset_after=True form, got reset_after=False")
    for torch_cls, ours in _PAIRS:
        if type(module) is ours:
            args = _common(module)
            if ours is layers.Elman:
                args["nonlinearity"] = module.nonlinearity
            new = torch_cls(**args)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            return new
    raise TypeError(f"module: expected rnnkit.Elman, LSTM or GRU, got {type(module).__name__}")
