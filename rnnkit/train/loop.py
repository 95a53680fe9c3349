"""The training loop: ``train(config) -> result``, what the CLI and the tests call.

Every update divides the summed loss by the number of loss terms (sequences, or valid steps
for per-step losses: padded steps are masked out) of the *global* batch, so one process with
batch B and P processes with B/P each compute the same gradient.

Truncated BPTT (text task), TBPTT(k1, k2) after Williams & Peng (1990): the training text is
cut into ``batch_size`` parallel rows read left to right.  Every k1 steps the weights are
updated from the losses of those k1 steps, with gradients flowing back k2 >= k1 steps
(k2 = 0 means k2 = k1).  Each update re-runs the network over its last k2 steps from the state
carried (detached, so no gradient crosses it) from k2 steps back; the state for the next
update is taken from inside this window.  The carried state is part of every checkpoint.

Epoch ends: validation, LR scheduler step, early stopping (``patience`` epochs without a
better validation loss; the best weights are kept and used for the test), checkpoint.
A checkpoint also follows every ``checkpoint_every`` steps and Ctrl-C / SIGTERM; resuming
restores weights, optimiser, scheduler, RNG, carried state and position, so the resumed run
ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint, config as cfgmod, distributed, logs, plots, tasks
from .config import Config
from .errors import Interrupted, UserError
from .model import Net, detach_state

EVAL_BATCH = 512


@dataclass
class TrainState:
    """Where a run is; saved as JSON in every checkpoint."""
    step: int = 0
    epoch: int = 0                 # completed epochs
    batch: int = 0                 # completed batches of the current epoch
    loss_sum: float = 0.0          # current epoch: summed training loss and number of terms
    loss_count: float = 0.0
    best: Optional[float] = None   # best validation loss so far
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: List[dict] = field(default_factory=list)


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    o, lr, wd = cfg.optimizer, cfg.lr, cfg.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad}
    return kinds[o](params, lr=lr, weight_decay=wd)


def make_scheduler(cfg: Config, opt):
    """An epoch-wise LR schedule, or None."""
    s = cfg.scheduler
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    if s == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, cfg.gamma)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma,
                                                          patience=max(1, cfg.patience // 3))
    return None


class _Signals:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.received = 0
        self._old: Dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def default_out(task: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{task}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_folder(cfg: Config) -> Path:
    """The folder this run writes to; a fresh run never writes over another run's checkpoint."""
    if cfg.out:
        out = Path(cfg.out)
    elif cfg.resume:
        r = Path(cfg.resume)
        out = r if r.is_dir() else r.parent
    else:
        out = default_out(cfg.task)
    if not cfg.resume and (out / checkpoint.NAME).exists():
        raise UserError(f"--out {out}: already holds a run; continue it with --resume {out} "
                        f"or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    return out


class Trainer:
    """One run: task, network, optimiser, schedule and their state."""

    def __init__(self, cfg: Config, d: distributed.Dist):
        self.cfg, self.d = cfg, d
        torch.manual_seed(cfg.seed)
        self.task = tasks.build(cfg)
        self.net = Net(cfg, self.task.n_in, self.task.n_out, self.task.readout, self.task.tokens).to(d.device)
        self.model: nn.Module = self.net
        if d.world > 1:
            self._check_shardable()
            ids = [d.device.index] if d.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.opt = make_optimizer(cfg, self.net.parameters())
        self.sched = make_scheduler(cfg, self.opt)
        self.state = TrainState()
        self.best_weights: Optional[Dict[str, Tensor]] = None
        self.carry = None
        if self.task.stream:
            self.rows_x, self.rows_y = self.task.streams(self.task.train_ids, cfg.batch_size)
            self.rows = d.shard(torch.arange(cfg.batch_size))           # this process's rows
        if cfg.resume:
            self._restore(checkpoint.load(cfg.resume))
        self.out: Optional[Path] = None
        self.log = logs.RunLog(None, False)

    def _check_shardable(self) -> None:
        if self.task.stream and self.cfg.batch_size % self.d.world:
            raise UserError(f"batch_size {self.cfg.batch_size}: the text task needs a multiple of "
                            f"the {self.d.world} processes")
        if not self.task.stream and len(self.task.train) < self.d.world:
            raise UserError(f"{len(self.task.train)} training sequences for {self.d.world} processes")

    # -- batches -----------------------------------------------------------------------------
    def _batches(self, epoch: int) -> List:
        """Index tensors of this epoch's global batches (text: (start, end) of each chunk)."""
        if self.task.stream:
            L, k1 = self.rows_x.shape[1], self.cfg.k1
            return [(s, min(s + k1, L)) for s in range(0, L, k1)]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)   # order depends on epoch only
        batches = list(torch.randperm(len(self.task.train), generator=g).split(self.cfg.batch_size))
        if len(batches) > 1 and len(batches[-1]) < self.d.world:
            batches.pop()                       # every process needs at least one sequence
        return batches

    def _loss_terms(self, batch) -> Tuple[Tensor, Tensor, int]:
        """(summed loss, number of terms) on this process's part, and the global batch's items."""
        if self.task.stream:
            return self._chunk_loss(*batch)
        part = self.task.train.take(self.d.shard(batch))
        part = tasks.Split(*(t.to(self.d.device) for t in (part.x, part.y, part.lengths)))
        out, _ = self.model(part.x, part.lengths)
        total, count = self.task.loss(out, part)
        return total, count, len(batch)

    def _chunk_loss(self, s: int, e: int) -> Tuple[Tensor, Tensor, int]:
        """TBPTT(k1, k2) update for the chunk of steps [s, e); see the module docstring."""
        k2 = self.cfg.k2 or self.cfg.k1
        L = self.rows_x.shape[1]
        s0 = max(0, e - k2)                                      # where this window starts
        nxt = max(0, min(e + self.cfg.k1, L) - k2) if e < L else None   # next window's start
        x = self.rows_x[self.rows, s0:e].to(self.d.device)
        y = self.rows_y[self.rows, s:e].to(self.d.device)
        if nxt is not None and s0 < nxt < e:
            out, _, mid = self.model(x, state=self.carry, split_at=nxt - s0)
            self.carry = detach_state(mid)
        else:
            out, final = self.model(x, state=self.carry)
            if nxt == e:
                self.carry = detach_state(final)
        lengths = torch.full((len(self.rows),), e - s, dtype=torch.long, device=self.d.device)
        total, count = tasks.masked_step_ce(out[:, s - s0:], y, lengths)
        return total, count, self.rows_x.shape[0] * (e - s)

    # -- one update --------------------------------------------------------------------------
    def _update(self, batch) -> Tuple[float, Optional[Tensor], int]:
        """One optimiser step: (mean loss of the global batch, gradient norm or None, items).

        One collective and one host sync per step: the global count and loss sum travel
        together; the gradient norm stays a tensor until a step record needs it."""
        total, count, items = self._loss_terms(batch)
        sums = self.d.all_sum(torch.stack([count.detach(), total.detach()]))
        # DDP averages gradients over processes; scaling by world/n makes that the global mean.
        loss = total * self.d.world / sums[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = None
        if self.cfg.clip == "norm":
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_at)
        elif self.cfg.clip == "value":
            nn.utils.clip_grad_value_(self.net.parameters(), self.cfg.clip_at)
        self.opt.step()
        n, total_all = sums.tolist()
        self.state.loss_sum += total_all
        self.state.loss_count += n
        self.state.step += 1
        return total_all / n, norm, items

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, split: tasks.Split) -> Tensor:
        """Outputs for a whole split, in eval mode, on the CPU."""
        self.net.eval()
        outs = []
        for i in range(0, len(split), EVAL_BATCH):
            part = split.take(slice(i, i + EVAL_BATCH))
            outs.append(self.net(part.x.to(self.d.device), part.lengths.to(self.d.device))[0].cpu())
        self.net.train()
        return torch.cat(outs)

    def evaluate(self, split: tasks.Split) -> Dict[str, float]:
        out = self.predict(split)
        total, count = self.task.loss(out, split)
        return {**self.task.metrics(out, split), "loss": float(total / count)}

    @torch.no_grad()
    def evaluate_stream(self, ids: Tensor) -> Dict[str, float]:
        """Bits per character over a text, read as parallel rows in chunks of k1 with state carried."""
        k1 = self.cfg.k1
        n_rows = max(1, min(self.cfg.batch_size, (len(ids) - 1) // k1))
        x, y = self.task.streams(ids, n_rows)
        self.net.eval()
        state, total, count = None, 0.0, 0.0
        for s in range(0, x.shape[1], k1):
            out, state = self.net(x[:, s:s + k1].to(self.d.device), state=state)
            t, c = tasks.masked_step_ce(out, y[:, s:s + k1].to(self.d.device),
                                        torch.full((n_rows,), out.shape[1], device=self.d.device))
            total, count = total + t.double(), count + c.double()
        self.net.train()
        loss = float(total / count)
        return {"bpc": loss / tasks.LN2, "loss": loss}

    def _validate(self) -> Optional[Dict[str, float]]:
        if self.task.stream:
            return self.evaluate_stream(self.task.val_ids)
        return self.evaluate(self.task.val) if self.task.val is not None else None

    # -- checkpoints -------------------------------------------------------------------------
    def _carry_tensors(self) -> List[Tensor]:
        """The carried TBPTT state of all processes, batch on dim 1 (a collective under DDP)."""
        if self.carry is None:
            return []
        parts = self.net.rnn.unpack_state(self.carry)
        return [self.d.gather_rows(p.transpose(0, 1)).transpose(0, 1) for p in parts]

    def save_checkpoint(self) -> Optional[Path]:
        """Write the checkpoint (rank 0); every process must call it (it gathers carried state)."""
        carry = self._carry_tensors()
        rng = self.d.gather_rows(torch.get_rng_state().unsqueeze(0))
        if not self.d.main:
            return None
        opt_tensors, opt_rest = checkpoint.flatten_optimizer(self.opt.state_dict())
        tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in (self.best_weights or {}).items()})
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"carry.{i}": t for i, t in enumerate(carry)})
        tensors.update({f"rng.torch.{r}": t for r, t in enumerate(rng)})
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
        meta = {"config": cfgmod.to_dict(dataclasses.replace(self.cfg, resume=None)), "optimizer": opt_rest,
                "scheduler": self.sched.state_dict() if self.sched else None,
                "progress": dataclasses.asdict(self.state), "stats": self.task.stats()}
        path = self.out / checkpoint.NAME
        checkpoint.save(path, checkpoint.Checkpoint(tensors, meta))
        return path

    def _restore(self, ck: checkpoint.Checkpoint) -> None:
        where = f"--resume {self.cfg.resume}"
        cfgmod.check_resumable(cfgmod.from_dict(ck.meta["config"], where), self.cfg)
        try:
            self.net.load_state_dict(ck.group("model"))
            self.best_weights = ck.group("best") or None
            self.opt.load_state_dict(checkpoint.unflatten_optimizer(ck.group("optim"), ck.meta["optimizer"]))
            if self.sched is not None:
                self.sched.load_state_dict(ck.meta["scheduler"])
            self.state = TrainState(**ck.meta["progress"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: incompatible checkpoint ({str(e).splitlines()[0]})") from None
        rng = ck.group("rng.torch")
        torch.set_rng_state(rng.get(str(self.d.rank), rng["0"]))
        cuda = ck.group("rng.cuda")
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])
        carry = [ck.tensors[f"carry.{i}"] for i in range(len(ck.group("carry")))]
        if carry:
            rows = self.d.shard(torch.arange(carry[0].shape[1]))
            parts = tuple(c[:, rows].to(self.d.device) for c in carry)
            self.carry = self.net.rnn.pack_state(parts)

    # -- the run -----------------------------------------------------------------------------
    def open_outputs(self) -> None:
        """Create the run folder and its files (rank 0); only after data and model are ready."""
        self.out = run_folder(self.cfg)
        self.cfg = dataclasses.replace(self.cfg, out=str(self.out))
        if not self.d.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.resume:
            logs.truncate_after(self.out, self.state.step)
        cfgmod.write_toml(dataclasses.replace(self.cfg, resume=None), self.out / "config.toml")
        self.log = logs.RunLog(self.out, self.cfg.tensorboard)

    def run(self, interrupt: Optional[Callable[[int], bool]] = None) -> dict:
        cfg, st = self.cfg, self.state
        t0 = time.perf_counter()
        n_batches = len(self._batches(0))
        bar = logs.Progress(cfg.progress if self.d.main else False, cfg.epochs * n_batches,
                            st.epoch * n_batches + st.batch, "char" if self.task.stream else "seq")
        try:
            with _Signals() as signals:
                for epoch in range(st.epoch, cfg.epochs):
                    if st.stopped_early:
                        break
                    bar.epoch(epoch + 1, cfg.epochs, self.task.metric, None)
                    self._train_epoch(epoch, bar, signals, interrupt)
                    self._end_epoch(epoch, bar)
        finally:
            bar.close()
        return self._finish(time.perf_counter() - t0)

    def _train_epoch(self, epoch, bar, signals, interrupt) -> None:
        cfg, st = self.cfg, self.state
        batches = self._batches(epoch)
        for i in range(st.batch, len(batches)):
            loss, norm, items = self._update(batches[i])
            st.batch = i + 1
            rate = bar.step(loss, items)
            if st.step % cfg.log_every == 0:
                self.log.write({"kind": "step", "step": st.step, "epoch": epoch + 1, "loss": loss,
                                "lr": self.opt.param_groups[0]["lr"],
                                "grad_norm": None if norm is None else float(norm),
                                "items_per_s": rate})
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.batch < len(batches):
                self.save_checkpoint()          # (the epoch's end writes one anyway)
            asked = bool(signals.received) or bool(interrupt and interrupt(st.step))
            if self.d.any(asked):
                self._stop(signals.received)

    def _stop(self, signum: int) -> None:
        path = self.save_checkpoint() or self.out / checkpoint.NAME
        self.log.close()
        code = 128 + signum if signum else 130
        raise Interrupted(f"interrupted at step {self.state.step}; checkpoint {path}; continue with: "
                          f"rnnkit train --resume {self.out}", code)

    def _end_epoch(self, epoch: int, bar) -> None:
        st = self.state
        record = {"kind": "epoch", "epoch": epoch + 1, "step": st.step,
                  "train_loss": st.loss_sum / max(st.loss_count, 1.0),
                  "lr": self.opt.param_groups[0]["lr"]}
        val = self._validate()
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items()})
            if st.best is None or val["loss"] < st.best:
                st.best, st.best_epoch, st.bad_epochs = val["loss"], epoch + 1, 0
                self.best_weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                st.bad_epochs += 1
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(val["loss"] if val else record["train_loss"])
        elif self.sched is not None:
            self.sched.step()
        st.history.append({k: record[k] for k in ("epoch", "train_loss", "val_loss") if k in record})
        st.epoch, st.batch, st.loss_sum, st.loss_count = epoch + 1, 0, 0.0, 0.0
        self.carry = None                         # each epoch reads the stream from its start
        st.stopped_early = bool(self.cfg.patience and st.bad_epochs >= self.cfg.patience
                                and st.epoch < self.cfg.epochs)
        self.log.write(record)
        bar.epoch(epoch + 1, self.cfg.epochs, self.task.metric, val.get(self.task.metric) if val else None)
        self.save_checkpoint()

    # -- the end -----------------------------------------------------------------------------
    def _finish(self, seconds: float) -> dict:
        """Test with the best-validation weights (else the last), write summary and figures."""
        if self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)
        result = self.describe()
        result.update(epochs=self.state.epoch, steps=self.state.step, seconds=seconds,
                      best_epoch=self.state.best_epoch, stopped_early=self.state.stopped_early,
                      out=str(self.out), main=self.d.main)
        test_outputs = self.test(result)
        if self.d.main:
            self.log.write({"kind": "test", "step": self.state.step, **_flat(result["test"])})
            self.log.close()
            (self.out / "summary.json").write_text(_json(result), encoding="utf-8")
            if self.cfg.plots:
                self.figures(test_outputs)
        return result

    def describe(self) -> dict:
        c = self.cfg
        n = sum(p.numel() for p in self.net.parameters())
        model = (f"{c.cell}, {c.layers} layer(s), hidden {c.hidden}"
                 f"{', bidirectional' if c.bidirectional else ''}, {n:,} parameters")
        return {"task": c.task, "describe": self.task.describe(), "model": model, "model_name": c.cell,
                "parameters": n, "metric": self.task.metric}

    def test(self, result: dict) -> Dict[str, Tensor]:
        """Fill result['val'], ['test'], ['baselines']; returns the test outputs for figures."""
        val = self._validate()
        result["val"] = val or {}
        outputs = {}
        if self.task.stream:
            result["test"] = {"test": self.evaluate_stream(self.task.test_ids)}
        else:
            result["test"] = {}
            for name, split in self.task.tests.items():
                outputs[name] = self.predict(split)
                result["test"][name] = self.task.metrics(outputs[name], split)
        result["baselines"] = self.task.baselines()
        return outputs

    def figures(self, outputs: Dict[str, Tensor]) -> None:
        if self.state.history:
            plots.loss_curves(self.state.history, self.out / "loss.png")
        task = self.task
        if isinstance(task, tasks.Forecast):
            name, (a, b) = max(task.test_ranges.items(), key=lambda kv: kv[1][1] - kv[1][0])
            preds = {self.cfg.cell: task.unscale(outputs[name]), **task.baseline_predictions(a, b)}
            plots.forecast(task.labels[a:b], task.series[a:b], preds,
                           f"{task.name}: one step ahead, {name}", self.out / "forecast.png")
        elif isinstance(task, tasks.Classify):
            split = task.tests["test"]
            k = len(task.classes)
            m = np.zeros((k, k), dtype=np.int64)
            np.add.at(m, (split.y.numpy(), task.predicted(outputs["test"]).numpy()), 1)
            plots.confusion(m, task.classes, f"{task.name}: test", self.out / "confusion.png")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _json(d: dict) -> str:
    return json.dumps(d, indent=2) + "\n"


def train(cfg: Config, interrupt: Optional[Callable[[int], bool]] = None) -> dict:
    """Train as ``cfg`` says and return the result (metrics, baselines, run folder).

    ``interrupt(step) -> bool`` is checked after every step, like Ctrl-C: when it returns True
    the run writes a checkpoint and raises ``Interrupted``.
    """
    cfgmod.validate(cfg)
    d = distributed.init(cfg.device)
    try:
        trainer = Trainer(cfg, d)
        trainer.open_outputs()
        return trainer.run(interrupt)
    finally:
        distributed.shutdown(d)


def config_for(overrides: Dict[str, object], toml_path: Optional[str] = None) -> Config:
    """The config of a run from the flags given and a TOML file; with ``resume`` the checkpoint's
    saved config is the base and only run-control options may differ from it."""
    resume = overrides.get("resume")
    if not resume:
        return cfgmod.resolve(overrides, toml_path)
    saved = cfgmod.from_dict(checkpoint.load(str(resume)).meta["config"], f"--resume {resume}")
    folder = checkpoint.resolve_path(str(resume)).parent      # by default, keep writing there
    cfg = cfgmod.resolve({"out": str(folder), **overrides}, toml_path, base=saved)
    cfgmod.check_resumable(saved, cfg)
    return cfg
