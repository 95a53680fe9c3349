"""The fit loop: ``train(config) -> result``, what the CLI and the tests call (Keras's ``fit``).

Each epoch runs the updates of ``step.py`` over its batches; at its end come validation, the
LR schedule's step, early stopping (``patience`` epochs without a better validation loss; the
best weights are kept and used for the test) and a checkpoint.  A checkpoint also follows
every ``checkpoint_every`` steps and Ctrl-C / SIGTERM; resuming restores weights, optimiser,
scheduler, RNG, carried state and position, so the resumed run ends with exactly the weights
of an uninterrupted one.

    step.py        one update and one evaluation pass (full BPTT, or TBPTT on a stream)
    optim.py       the optimiser and LR schedule a config asks for
    checkpoint.py  what a checkpoint holds, written and read back
    runfolder.py   the run folder and the files in it
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import checkpoint, config as cfgmod, distributed, logs, runfolder, tasks
from .config import Config
from .errors import Interrupted, UserError
from .model import Net
from .optim import Schedule, make_optimizer
from .step import steps_for


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


class Trainer:
    """One run: task, network, optimiser, schedule, the step that updates them, and the state."""

    def __init__(self, cfg: Config, d: distributed.Dist):
        self.cfg, self.d = cfg, d
        torch.manual_seed(cfg.seed)
        self.task = tasks.build(cfg)
        self.net = Net.for_task(cfg, self.task).to(d.device)
        self.model: nn.Module = self.net
        kind = steps_for(self.task)
        if d.world > 1:
            kind.check_shardable(cfg, self.task, d.world)
            ids = [d.device.index] if d.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.opt = make_optimizer(cfg, self.net.parameters())
        self.sched = Schedule(cfg, self.opt)
        self.steps = kind(cfg, d, self.task, self.net, self.model, self.opt)
        self.state = TrainState()
        self.best_weights: Optional[Dict[str, Tensor]] = None
        if cfg.resume:
            self._restore(checkpoint.load(cfg.resume))
        self.out: Optional[Path] = None
        self.log = logs.RunLog(None, False)

    def predict(self, split: tasks.Split) -> Tensor:
        """Outputs for a whole split, in eval mode, on the CPU."""
        return self.steps.predict(split)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[Path]:
        """Write the checkpoint (rank 0); every process must call it (it gathers carried state)."""
        carry = self.steps.carry_tensors()
        rng = self.d.gather_rows(torch.get_rng_state().unsqueeze(0))
        if not self.d.main:
            return None
        path = self.out / checkpoint.NAME
        checkpoint.save(path, checkpoint.capture(
            config=self.cfg, weights=self.net.state_dict(), best=self.best_weights,
            optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            progress=dataclasses.asdict(self.state), stats=self.task.stats(), carry=carry, rng=rng))
        return path

    def _restore(self, ck: checkpoint.Checkpoint) -> None:
        where = f"--resume {self.cfg.resume}"
        cfgmod.check_resumable(ck.config(where), self.cfg)
        try:
            self.net.load_state_dict(ck.last_weights())
            self.best_weights = ck.best_weights()
            self.opt.load_state_dict(ck.optimizer_state())
            self.sched.load_state_dict(ck.scheduler_state())
            self.state = TrainState(**ck.progress())
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: incompatible checkpoint ({str(e).splitlines()[0]})") from None
        ck.restore_rng(self.d.rank)
        self.steps.restore_carry(ck.carry())

    # -- the run -----------------------------------------------------------------------------
    def open_outputs(self) -> None:
        """Create the run folder and its files (rank 0); only after data and model are ready."""
        self.out = runfolder.choose(self.cfg)
        self.cfg = dataclasses.replace(self.cfg, out=str(self.out))
        if self.d.main:
            self.log = runfolder.open_run(self.out, self.cfg, self.state.step)

    def run(self, interrupt: Optional[Callable[[int], bool]] = None) -> dict:
        cfg, st = self.cfg, self.state
        t0 = time.perf_counter()
        n_batches = len(self.steps.batches(0))
        bar = logs.Progress(cfg.progress if self.d.main else False, cfg.epochs * n_batches,
                            st.epoch * n_batches + st.batch, self.steps.unit)
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
        batches = self.steps.batches(epoch)
        for i in range(st.batch, len(batches)):
            r = self.steps.update(batches[i])
            st.loss_sum += r.total
            st.loss_count += r.count
            st.step += 1
            st.batch = i + 1
            rate = bar.step(r.loss, r.items)
            if st.step % cfg.log_every == 0:
                self.log.write({"kind": "step", "step": st.step, "epoch": epoch + 1, "loss": r.loss,
                                "lr": self.opt.param_groups[0]["lr"],
                                "grad_norm": None if r.norm is None else float(r.norm),
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
        val = self.steps.validate()
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items()})
            if st.best is None or val["loss"] < st.best:
                st.best, st.best_epoch, st.bad_epochs = val["loss"], epoch + 1, 0
                self.best_weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                st.bad_epochs += 1
        self.sched.step(val["loss"] if val else record["train_loss"])
        st.history.append({k: record[k] for k in ("epoch", "train_loss", "val_loss") if k in record})
        st.epoch, st.batch, st.loss_sum, st.loss_count = epoch + 1, 0, 0.0, 0.0
        self.steps.end_epoch()
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
            runfolder.write_result(self.out, self.log, result, self.state.step)
            if self.cfg.plots:
                runfolder.write_figures(self.out, self.state.history, self.task, test_outputs, self.cfg.cell)
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
        result["val"] = self.steps.validate() or {}
        result["test"], outputs = self.steps.test()
        result["baselines"] = self.task.baselines()
        return outputs


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
