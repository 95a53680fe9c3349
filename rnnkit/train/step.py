"""One training step and one evaluation pass (Keras's ``train_step`` / ``test_step``), for the two
ways a task is read: ``SequenceSteps`` for batches of whole sequences (full BPTT) and
``StreamSteps`` for one long text read in chunks with the state carried between them.

Every update divides the summed loss by the number of loss terms (sequences, or valid steps
for per-step losses: padded steps are masked out) of the *global* batch, so one process with
batch B and P processes with B/P each compute the same gradient.

Truncated BPTT (text task), TBPTT(k1, k2) after Williams & Peng (1990): the training text is
cut into ``batch_size`` parallel rows read left to right.  Every k1 steps the weights are
updated from the losses of those k1 steps, with gradients flowing back k2 >= k1 steps
(k2 = 0 means k2 = k1).  Each update re-runs the network over its last k2 steps from the state
carried (detached, so no gradient crosses it) from k2 steps back; the state for the next
update is taken from inside this window.  The carried state is part of every checkpoint.

Precision (``--precision``): bf16/fp16 run the training forward under ``torch.autocast`` on the
run's device type; the loss is computed on the outputs cast back to float32, and the weights,
the optimiser, the carried state and the evaluation passes stay float32, so a checkpoint does
not depend on the precision.  fp16 on CUDA scales the loss with a ``torch.amp.GradScaler``.

Symbols: B rows (the global batch), L steps per row, D directions, S state size.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn
from torch.amp.autocast_mode import is_autocast_available

from .config import Config
from .distributed import Dist
from .errors import UserError
from .model import Net
from .tasks import LN2, Split, Task, masked_step_ce

EVAL_BATCH = 512
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}     # fp32: no autocast


def uses_scaler(precision: str, device_type: str) -> bool:
    """Whether the loss is scaled (GradScaler): fp16 on CUDA only.  float16's 5 exponent bits
    flush small gradients to zero unless the loss is scaled up; bfloat16 has float32's range."""
    return precision == "fp16" and device_type == "cuda"


def autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch autocasts to ``dtype`` on ``device_type``, found by trying: an
    unsupported dtype makes torch warn and leave autocast off (CPU), or raise (CUDA bf16 on a
    GPU without it)."""
    if not is_autocast_available(device_type):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype
    except RuntimeError:
        return False


def check_precision(precision: str, device: torch.device) -> None:
    """UserError, naming --precision, when autocast to its dtype does not run on ``device``."""
    if precision in AMP_DTYPES and not autocast_works(device.type, AMP_DTYPES[precision]):
        ok = ["fp32"] + [p for p, t in AMP_DTYPES.items() if autocast_works(device.type, t)]
        raise UserError(f"--precision: expected {' or '.join(ok)} on device {device} (torch "
                        f"{torch.__version__} has no {AMP_DTYPES[precision]} autocast there); got {precision!r}")


@dataclass
class StepResult:
    """One update, over the global batch."""
    total: float                  # summed loss
    count: float                  # number of loss terms
    norm: Optional[Tensor]        # gradient norm before clipping (clip 'norm' only), on the device
    items: int                    # sequences (or characters) in the global batch

    @property
    def loss(self) -> float:
        return self.total / self.count


class Steps:
    """What both ways share: the optimiser update and whole-split predictions.

    ``net`` is the bare network, ``model`` what the update runs (DistributedDataParallel's
    wrapper of ``net`` under torchrun, else ``net`` itself).
    """

    unit = "seq"                  # what the progress bar counts per second

    def __init__(self, cfg: Config, d: Dist, task: Task, net: Net, model: nn.Module,
                 opt: torch.optim.Optimizer):
        self.cfg, self.d, self.task, self.net, self.model, self.opt = cfg, d, task, net, model, opt
        # Disabled (every call a pass-through) unless fp16 on CUDA: one update path for all precisions.
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=uses_scaler(cfg.precision, d.device.type))

    @classmethod
    def check_shardable(cls, cfg: Config, task: Task, world: int) -> None:
        """Raise UserError when the data cannot be spread over ``world`` processes."""
        raise NotImplementedError

    def batches(self, epoch: int) -> List:
        """This epoch's global batches, in order."""
        raise NotImplementedError

    def loss_terms(self, batch) -> Tuple[Tensor, Tensor, int]:
        """(summed loss, number of terms) on this process's part, and the global batch's items."""
        raise NotImplementedError

    def validate(self) -> Optional[Dict[str, float]]:
        """Validation metrics (with ``loss``), or None when the task holds none out."""
        raise NotImplementedError

    def test(self) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Tensor]]:
        """({test name: metrics}, {test name: outputs for the task's figures})."""
        raise NotImplementedError

    def update(self, batch) -> StepResult:
        """One optimiser step on a global batch.

        One collective and one host sync per step: the global count and loss sum travel
        together; the gradient norm stays a tensor until a step record needs it."""
        total, count, items = self.loss_terms(batch)
        sums = self.d.all_sum(torch.stack([count.detach(), total.detach()]))
        # DDP averages gradients over processes; scaling by world/n makes that the global mean.
        loss = total * self.d.world / sums[0]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)           # clip (and report) the true gradients
        norm = self._clip()
        n, total_all = sums.tolist()
        if math.isfinite(total_all):             # a non-finite loss stops the run: keep the weights it had
            self.scaler.step(self.opt)           # skipped when a scaled gradient overflowed
        self.scaler.update()
        return StepResult(total_all, n, norm, items)

    def forward(self, *args, **kwargs):
        """The training forward of ``model`` under the run's autocast, outputs back in float32:
        the tasks' losses sum and count in the outputs' dtype, and bfloat16 holds integers
        exactly only up to 256.  (Autocast runs mse/cross-entropy in float32 anyway.)"""
        dtype = AMP_DTYPES.get(self.cfg.precision)
        ctx = torch.autocast(self.d.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            out, *states = self.model(*args, **kwargs)
        return (out.float(), *states)

    def _clip(self) -> Optional[Tensor]:
        """Clip the gradients as configured; the norm before clipping for 'norm'."""
        if self.cfg.clip == "norm":
            return nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_at)
        if self.cfg.clip == "value":
            nn.utils.clip_grad_value_(self.net.parameters(), self.cfg.clip_at)
        return None

    @torch.no_grad()
    def predict(self, split: Split) -> Tensor:
        """Outputs for a whole split, in eval mode, on the CPU."""
        self.net.eval()
        outs = []
        for i in range(0, len(split), EVAL_BATCH):
            part = split.take(slice(i, i + EVAL_BATCH))
            outs.append(self.net(part.x.to(self.d.device), part.lengths.to(self.d.device))[0].cpu())
        self.net.train()
        return torch.cat(outs)

    # -- carried state (a stream's; none here) -----------------------------------------------
    def end_epoch(self) -> None:
        """Called after each epoch."""

    def carry_tensors(self) -> List[Tensor]:
        """The carried state of all processes, batch on dim 1 (a collective under DDP)."""
        return []

    def restore_carry(self, parts: List[Tensor]) -> None:
        """Take back what ``carry_tensors`` gave (from a checkpoint)."""


class SequenceSteps(Steps):
    """Batches of whole sequences in a seeded order per epoch; full BPTT through each."""

    @classmethod
    def check_shardable(cls, cfg, task, world):
        if len(task.train) < world:
            raise UserError(f"{len(task.train)} training sequences for {world} processes")

    def batches(self, epoch):
        """Index tensors into the training split."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)   # order depends on epoch only
        batches = list(torch.randperm(len(self.task.train), generator=g).split(self.cfg.batch_size))
        if len(batches) > 1 and len(batches[-1]) < self.d.world:
            batches.pop()                       # every process needs at least one sequence
        return batches

    def loss_terms(self, batch):
        part = self.task.train.take(self.d.shard(batch))
        part = Split(*(t.to(self.d.device) for t in (part.x, part.y, part.lengths)))
        out, _ = self.forward(part.x, part.lengths)
        total, count = self.task.loss(out, part)
        return total, count, len(batch)

    def evaluate(self, split: Split) -> Dict[str, float]:
        out = self.predict(split)
        total, count = self.task.loss(out, split)
        return {**self.task.metrics(out, split), "loss": float(total / count)}

    def validate(self):
        return self.evaluate(self.task.val) if self.task.val is not None else None

    def test(self):
        metrics, outputs = {}, {}
        for name, split in self.task.tests.items():
            outputs[name] = self.predict(split)
            metrics[name] = self.task.metrics(outputs[name], split)
        return metrics, outputs


class StreamSteps(Steps):
    """The text task: TBPTT(k1, k2) over ``batch_size`` rows of the training text (module docstring)."""

    unit = "char"

    def __init__(self, cfg, d, task, net, model, opt):
        super().__init__(cfg, d, task, net, model, opt)
        self.rows_x, self.rows_y = task.streams(task.train_ids, cfg.batch_size)   # (B, L) each
        self.rows = d.shard(torch.arange(cfg.batch_size))           # this process's rows
        self.carry = None               # the layer's state for this process's rows; None: zeros

    @classmethod
    def check_shardable(cls, cfg, task, world):
        if cfg.batch_size % world:
            raise UserError(f"batch_size {cfg.batch_size}: the text task needs a multiple of "
                            f"the {world} processes")

    def batches(self, epoch):
        """(start, end) of each chunk of k1 steps; the same every epoch."""
        L, k1 = self.rows_x.shape[1], self.cfg.k1
        return [(s, min(s + k1, L)) for s in range(0, L, k1)]

    def loss_terms(self, batch):
        return self.chunk_loss(*batch)

    def chunk_loss(self, s: int, e: int) -> Tuple[Tensor, Tensor, int]:
        """TBPTT(k1, k2) update for the chunk of steps [s, e); see the module docstring."""
        k2 = self.cfg.k2 or self.cfg.k1
        L = self.rows_x.shape[1]
        s0 = max(0, e - k2)                                      # where this window starts
        nxt = max(0, min(e + self.cfg.k1, L) - k2) if e < L else None   # next window's start
        x = self.rows_x[self.rows, s0:e].to(self.d.device)
        y = self.rows_y[self.rows, s:e].to(self.d.device)
        if nxt is not None and s0 < nxt < e:
            out, _, mid = self.forward(x, state=self.carry, split_at=nxt - s0)
            self.carry = self._detached(mid)
        else:
            out, final = self.forward(x, state=self.carry)
            if nxt == e:
                self.carry = self._detached(final)
        lengths = torch.full((len(self.rows),), e - s, dtype=torch.long, device=self.d.device)
        total, count = masked_step_ce(out[:, s - s0:], y, lengths)
        return total, count, self.rows_x.shape[0] * (e - s)

    def _detached(self, state):
        """The state with the graph behind it cut, in the layer's own form (via its pack/unpack),
        in the weights' dtype: under autocast the layer returns it in the autocast dtype, and
        the checkpoint keeps it float32 whatever the precision."""
        rnn, dtype = self.net.rnn, self.net.head.weight.dtype
        return rnn.pack_state(tuple(p.detach().to(dtype) for p in rnn.unpack_state(state)))

    @torch.no_grad()
    def evaluate(self, ids: Tensor) -> Dict[str, float]:
        """Bits per character over a text, read as parallel rows in chunks of k1 with state carried."""
        k1 = self.cfg.k1
        n_rows = max(1, min(self.cfg.batch_size, (len(ids) - 1) // k1))
        x, y = self.task.streams(ids, n_rows)
        self.net.eval()
        state, total, count = None, 0.0, 0.0
        for s in range(0, x.shape[1], k1):
            out, state = self.net(x[:, s:s + k1].to(self.d.device), state=state)
            t, c = masked_step_ce(out, y[:, s:s + k1].to(self.d.device),
                                  torch.full((n_rows,), out.shape[1], device=self.d.device))
            total, count = total + t.double(), count + c.double()
        self.net.train()
        loss = float(total / count)
        return {"bpc": loss / LN2, "loss": loss}

    def validate(self):
        return self.evaluate(self.task.val_ids)

    def test(self):
        return {"test": self.evaluate(self.task.test_ids)}, {}

    def end_epoch(self):
        self.carry = None                         # each epoch reads the stream from its start

    def carry_tensors(self):
        if self.carry is None:
            return []
        parts = self.net.rnn.unpack_state(self.carry)
        return [self.d.gather_rows(p.transpose(0, 1)).transpose(0, 1) for p in parts]

    def restore_carry(self, parts):
        if parts:
            rows = self.d.shard(torch.arange(parts[0].shape[1]))
            self.carry = self.net.rnn.pack_state(tuple(c[:, rows].to(self.d.device) for c in parts))


def steps_for(task: Task) -> Type[Steps]:
    """How a task is read: a stream task in TBPTT chunks, any other in batches of sequences."""
    return StreamSteps if task.stream else SequenceSteps
