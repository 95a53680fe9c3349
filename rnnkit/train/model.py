"""The trained network: an rnnkit recurrent layer and a linear read-out.

Symbols: B batch, T steps, I input features (or V symbols, one-hot encoded), D directions,
S emitted state size (H, or the Jordan output size), K outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import registry
from . import resources
from .config import Config
from .errors import UserError


def build_rnn(cfg: Config, n_in: int) -> nn.Module:
    """The core layer the config asks for, batch-first (the cell's options from the registry)."""
    entry = registry.get(cfg.cell)
    return entry.layer(n_in, cfg.hidden, num_layers=cfg.layers, bias=cfg.bias, batch_first=True,
                       dropout=cfg.dropout, bidirectional=cfg.bidirectional, backend=cfg.backend,
                       **entry.build(cfg))


class Net(nn.Module):
    """x (B, T, I) floats or (B, T) symbol ids -> outputs (B, K) (readout 'last') or (B, T, K) ('all')."""

    def __init__(self, cfg: Config, n_in: int, n_out: int, readout: str, tokens: int = 0):
        super().__init__()
        self.readout, self.tokens = readout, tokens
        self.rnn = build_rnn(cfg, tokens or n_in)
        S = self.rnn.cell.out_size                                             # H, or Jordan's O
        self.state_size, self.directions = S, 2 if cfg.bidirectional else 1
        self.head = nn.Linear(self.directions * S, n_out)

    @classmethod
    def for_task(cls, cfg: Config, task) -> "Net":
        """The network a task's inputs and outputs call for (a ``tasks.Task``, data or not)."""
        return cls(cfg, task.n_in, task.n_out, task.readout, task.tokens)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None, state=None, split_at: int = 0):
        """Returns (outputs, final state); with ``split_at`` = k > 0 also the state after step k.

        The split lets truncated BPTT take the next chunk's start state from inside this chunk
        in a single forward call (one call, so DistributedDataParallel sees one forward).
        """
        if self.tokens:
            x = F.one_hot(x, self.tokens).to(self.head.weight.dtype)          # (B, T, V)
        if split_at:
            first, mid = self.rnn(x[:, :split_at], state)
            rest, state = self.rnn(x[:, split_at:], mid)
            out = torch.cat([first, rest], dim=1)
        else:
            out, state = self.rnn(x, state, lengths=lengths)                  # (B, T, D*S)
        if self.readout == "last":
            out = self._last(out, lengths)
        y = self.head(out)
        return (y, state, mid) if split_at else (y, state)

    def _last(self, out: Tensor, lengths: Optional[Tensor]) -> Tensor:
        """(B, T, D*S) -> (B, D*S): forward features at each sequence's last valid step,
        reverse features at step 0 (where the reverse direction has read the whole sequence)."""
        B, T, _ = out.shape
        last = (lengths - 1) if lengths is not None else torch.full((B,), T - 1)
        S = self.state_size
        fwd = out[torch.arange(B), last.to(out.device), :S]
        if self.directions == 1:
            return fwd
        return torch.cat([fwd, out[:, 0, S:]], dim=-1)


def check_fits(cfg: Config, task, device: torch.device, steps: int = 1) -> None:
    """Refuse, before anything is allocated, a network whose weights, gradients, optimiser
    moments, best-weights copy and the activations of one batch of ``steps`` steps will not fit
    in the memory available on ``device``."""
    try:
        with torch.device("meta"):                    # shapes only: nothing is allocated
            net = Net.for_task(cfg, task)
    except (RuntimeError, ValueError, OverflowError) as e:
        raise UserError(f"hidden {cfg.hidden}, layers {cfg.layers}: no such network can be built "
                        f"({str(e).splitlines()[0]})") from None
    params = sum(p.numel() for p in net.parameters())
    width = net.rnn.weight_ih_l0.shape[0]                # gates x hidden (H for Elman/Jordan)
    per_step = cfg.layers * net.directions * (width + 2 * net.state_size) + (task.tokens or task.n_in)
    acts = cfg.batch_size * steps * per_step
    nbytes = 4.0 * (6 * params + 2 * acts)
    resources.require(nbytes, f"the network ({params:,} parameters) with batches of {cfg.batch_size}",
                      "lower --hidden, --layers or --batch-size", device)
