"""The fit loop: ``train(config) -> result``, what the CLI and the tests call (Keras's ``fit``).

Each epoch runs the updates of ``step.py`` over its batches; at its end come validation, the
LR schedule's step, early stopping (``patience`` epochs without a better validation loss; the
best weights are kept and used for the test) and a checkpoint.  A checkpoint also follows
every ``checkpoint_every`` steps and Ctrl-C / SIGTERM; resuming restores weights, optimiser,
scheduler, RNG, carried state and position, so the resumed run ends with exactly the weights
of an uninterrupted one.

A run that diverges (a loss, validation loss or test metric that is not finite, or weights that
are not) stops with ``Diverged``: no checkpoint is written after the last good one.  A fresh run
that fails before its first checkpoint removes its run folder, so bad input leaves nothing.

When the task offers variants chosen by validation (``Task.variants``: the forecasting
representation, ``--forecast auto``), each variant is trained in memory, the one with the best
validation metric is kept, and only then is the run folder written.

    step.py        one update and one evaluation pass (full BPTT, or TBPTT on a stream)
    optim.py       the optimiser and LR schedule a config asks for
    checkpoint.py  what a checkpoint holds, written and read back
    runfolder.py   the run folder and the files in it
    resources.py   memory checks and the number of CPU threads
"""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from .. import backends
from . import checkpoint, config as cfgmod, distributed, logs, resources, runfolder, tasks
from .config import Config
from .errors import Diverged, Interrupted, UserError
from .model import Net, check_fits
from .optim import Schedule, make_optimizer
from .step import check_precision, steps_for


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

    @classmethod
    def from_saved(cls, d: dict, where: str) -> "TrainState":
        """A checkpoint's progress, every field's type checked."""
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
        checks = {"step": count, "epoch": count, "batch": count, "best_epoch": count, "bad_epochs": count,
                  "loss_sum": number, "loss_count": number, "best": lambda v: v is None or number(v),
                  "stopped_early": lambda v: isinstance(v, bool),
                  "history": lambda v: isinstance(v, list) and all(
                      isinstance(h, dict) and all(number(x) for x in h.values()) for h in v)}
        if not isinstance(d, dict) or set(d) != set(checks):
            raise UserError(f"{where}: damaged state (progress: expected the fields {', '.join(checks)})")
        for name, ok in checks.items():
            if not ok(d[name]):
                raise UserError(f"{where}: damaged state (progress.{name}: {str(d[name])[:80]})")
        return cls(**d)


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
    """One run: task, network, optimiser, schedule, the step that updates them, and the state.

    ``stats``: the normalisation a checkpoint was trained with (``evaluate``), used instead of
    computing it from the data; a resumed run takes its checkpoint's.
    """

    def __init__(self, cfg: Config, d: distributed.Dist, stats: Optional[dict] = None):
        self.cfg, self.d = cfg, d
        ck = checkpoint.load(cfg.resume) if cfg.resume else None
        if ck is not None:
            stats = ck.stats()
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        self.task = tasks.build(cfg, stats)
        self.timing = {"build": 0.0, "data": time.perf_counter() - t0, "training": 0.0}
        check_fits(cfg, self.task, d.device, self.task.steps())
        self.net = Net.for_task(cfg, self.task).to(d.device)
        self.timing["build"] = self._warm_up()
        self.threads = cfg.threads or resources.auto_threads(self.work())
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
        if ck is not None:
            self._restore(ck)
        self.out: Optional[Path] = None
        self.log = logs.RunLog(None, False)          # keeps records until the run folder opens
        self.note = ""                                # said in config.toml and the summary

    def _warm_up(self) -> float:
        """Seconds to ready the time-loop backend (building the C++ kernels on a first run),
        by one forward step on a dummy input; eval mode, no gradient, no random numbers drawn."""
        t0 = time.perf_counter()
        shape, dtype = ((1, 1), torch.long) if self.task.tokens else ((1, 1, self.task.n_in), torch.float32)
        self.net.eval()
        with torch.no_grad():
            self.net(torch.zeros(shape, dtype=dtype, device=self.d.device))
        self.net.train()
        return time.perf_counter() - t0

    def work(self) -> int:
        """Multiply-adds of one recurrent step over a batch: batch x the recurrent weights."""
        weights = sum(p.numel() for n, p in self.net.rnn.named_parameters() if n.startswith("weight"))
        batch = self.cfg.batch_size if self.task.stream else min(self.cfg.batch_size, len(self.task.train))
        return batch * weights

    def predict(self, split: tasks.Split) -> Tensor:
        """Outputs for a whole split, in eval mode, on the CPU."""
        return self.steps.predict(split)

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Optional[Path]:
        """Write the checkpoint (rank 0) when the run folder is open; every process must call
        it (it gathers carried state).  Weights that are not finite are never written."""
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            self._diverged(f"weights {bad[0]} are not finite")
        carry = self.steps.carry_tensors()
        rng = self.d.gather_rows(torch.get_rng_state().unsqueeze(0))
        if not self.d.main or self.out is None:
            return None
        path = self.out / checkpoint.NAME
        checkpoint.save(path, checkpoint.capture(
            config=self.cfg, weights=self.net.state_dict(), best=self.best_weights,
            optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
            progress=dataclasses.asdict(self.state), stats=self.task.stats(), carry=carry, rng=rng,
            scaler=self.steps.scaler.state_dict() if self.steps.scaler.is_enabled() else None))
        return path

    def _restore(self, ck: checkpoint.Checkpoint) -> None:
        where = f"--resume {self.cfg.resume}"
        cfgmod.check_resumable(ck.config(where), self.cfg)
        saved_opt, fresh_opt = ck.meta["optimizer"], self.opt.state_dict()
        checkpoint.conforms(saved_opt.get("param_groups"), fresh_opt["param_groups"], f"{where}: optimizer")
        state = saved_opt.get("state")
        if not isinstance(state, dict) or not all(
                isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
                for v in state.values()):
            raise UserError(f"{where}: damaged state (optimizer.state)")
        if self.sched.state_dict() is not None:
            checkpoint.conforms(ck.scheduler_state(), self.sched.state_dict(), f"{where}: scheduler")
        progress = TrainState.from_saved(ck.progress(), where)
        scaler = self._saved_scaler(ck, where)
        try:
            self.net.load_state_dict(ck.last_weights())
            self.best_weights = ck.best_weights()
            if self.best_weights is not None:                   # same names and shapes
                Net.for_task(self.cfg, self.task).load_state_dict(self.best_weights)
            self.opt.load_state_dict(ck.optimizer_state())
            self.sched.load_state_dict(ck.scheduler_state())
            if scaler is not None:
                self.steps.scaler.load_state_dict(scaler)
            self.state = progress
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: incompatible checkpoint ({str(e).splitlines()[0]})") from None
        ck.restore_rng(self.d.rank)
        carry = ck.carry()
        LD = self.cfg.layers * self.net.directions
        expected = [(LD, self.cfg.batch_size, s) for s in self.net.rnn.cell.state_sizes()]
        if carry and [tuple(c.shape) for c in carry] != expected:
            raise UserError(f"{where}: incompatible checkpoint (carried state "
                            f"{[tuple(c.shape) for c in carry]}, expected {expected})")
        self.steps.restore_carry(carry)

    def _saved_scaler(self, ck: checkpoint.Checkpoint, where: str) -> Optional[dict]:
        """The checkpoint's GradScaler state (checked) when this run scales its loss too; else None:
        a run without a scaler has no use for it, and one whose checkpoint has none (another
        precision or device, or a checkpoint from before --precision) starts at the initial scale."""
        saved = ck.scaler_state()
        if saved is None or not self.steps.scaler.is_enabled():
            return None
        checkpoint.conforms(saved, self.steps.scaler.state_dict(), f"{where}: scaler")
        return saved

    # -- the run -----------------------------------------------------------------------------
    def open_outputs(self) -> None:
        """Create the run folder and its files (rank 0); only after data and model are ready.
        A run already trained in memory (a chosen variant) writes its records and checkpoint now."""
        self.out = runfolder.choose(self.cfg)
        self.cfg = dataclasses.replace(self.cfg, out=str(self.out))
        self.before = runfolder.snapshot(self.out)
        if self.d.main:
            pending = self.log.pending
            self.log = runfolder.open_run(self.out, self.cfg, self.state.step, self.note)
            for record in pending:
                self.log.write(record)
        if self.state.step and not self.cfg.resume:          # trained in memory: its checkpoint now
            self.save_checkpoint()

    def headline(self) -> str:
        """The task and model on one line each, said before training."""
        r = self.describe()
        backend = backends.resolve(self.cfg.backend, self.net.rnn.cell, self.d.device,
                                   self.net.head.weight.dtype).name
        precision = "" if self.cfg.precision == "fp32" else f", {self.cfg.precision} autocast"
        return (f"{r['describe']}\nmodel: {r['model']}; {self.threads} thread(s), "
                f"{backend} backend, device {self.d.device}{precision}")

    def fit(self, interrupt: Optional[Callable[[int], bool]] = None) -> None:
        """Train for the configured epochs (or until early stopping), from where the state is."""
        cfg, st = self.cfg, self.state
        n_batches = len(self.steps.batches(0))
        bar = logs.Progress(cfg.progress if self.d.main else False, cfg.epochs * n_batches,
                            st.epoch * n_batches + st.batch, self.steps.unit)
        bar.note(self.headline())
        t0 = time.perf_counter()
        try:
            with resources.threads(self.threads), _Signals() as signals:
                for epoch in range(st.epoch, cfg.epochs):
                    if st.stopped_early:
                        break
                    bar.epoch(epoch + 1, cfg.epochs, self.task.metric, None)
                    self._train_epoch(epoch, bar, signals, interrupt)
                    self._end_epoch(epoch, bar)
        finally:
            bar.close()
            self.timing["training"] += time.perf_counter() - t0

    def run(self, interrupt: Optional[Callable[[int], bool]] = None) -> dict:
        """``fit`` then ``finish``: the whole run once the outputs are open."""
        self.fit(interrupt)
        return self.finish()

    def _train_epoch(self, epoch, bar, signals, interrupt) -> None:
        cfg, st = self.cfg, self.state
        batches = self.steps.batches(epoch)
        for i in range(st.batch, len(batches)):
            r = self.steps.update(batches[i])
            finite = math.isfinite(r.total)
            st.loss_sum += r.total
            st.loss_count += r.count
            st.step += 1
            st.batch = i + 1
            rate = bar.step(r.loss, r.items)
            if st.step % cfg.log_every == 0 or not finite:
                self.log.write({"kind": "step", "step": st.step, "epoch": epoch + 1, "loss": r.loss,
                                "lr": self.opt.param_groups[0]["lr"],
                                "grad_norm": None if r.norm is None else float(r.norm),
                                "items_per_s": rate})
            if not finite:
                self._diverged(f"the training loss became {r.total}")
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.batch < len(batches):
                self.save_checkpoint()          # (the epoch's end writes one anyway)
            asked = bool(signals.received) or bool(interrupt and interrupt(st.step))
            if self.d.any(asked):
                self._stop(signals.received)

    def _stop(self, signum: int) -> None:
        code = 128 + signum if signum else 130
        if self.out is None:
            raise Interrupted(f"interrupted at step {self.state.step} while choosing by validation; "
                              f"nothing was written", code)
        path = self.save_checkpoint() or self.out / checkpoint.NAME
        self.log.close()
        raise Interrupted(f"interrupted at step {self.state.step}; checkpoint {path}; continue with: "
                          f"rnnkit train --resume {self.out}", code)

    def _diverged(self, what: str) -> None:
        """Stop: ``what`` went non-finite.  The checkpoint on disk (if any) is the last good one."""
        st, cfg = self.state, self.cfg
        kept = self.out is not None and (self.out / checkpoint.NAME).exists()
        self.log.close()
        where = f"the last good checkpoint is in {self.out}" if kept else "nothing was kept"
        raise Diverged(f"the run diverged: {what} at step {st.step} (epoch {st.epoch + 1}); "
                       f"lower --lr (now {cfg.lr:g}) or clip harder (--clip-at, now {cfg.clip_at:g}); {where}")

    def _end_epoch(self, epoch: int, bar) -> None:
        st = self.state
        record = {"kind": "epoch", "epoch": epoch + 1, "step": st.step,
                  "train_loss": st.loss_sum / max(st.loss_count, 1.0),
                  "lr": self.opt.param_groups[0]["lr"]}
        val = self.steps.validate()
        if val is not None:
            if not math.isfinite(val["loss"]):
                self._diverged(f"the validation loss became {val['loss']}")
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
        bar.epoch(epoch + 1, self.cfg.epochs, self.task.metric, val.get(self.task.metric) if val else None,
                  record["train_loss"], last=st.stopped_early or st.epoch == self.cfg.epochs)
        self.save_checkpoint()

    # -- the end -----------------------------------------------------------------------------
    def use_best(self) -> None:
        """Put the best-validation weights (else keep the last) into the network."""
        if self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)

    def finish(self) -> dict:
        """Test with the best-validation weights (else the last), write summary and figures."""
        self.use_best()
        result = self.describe()
        result.update(epochs=self.state.epoch, steps=self.state.step, seconds=self.timing["training"],
                      timing=dict(self.timing), threads=self.threads, precision=self.cfg.precision,
                      best_epoch=self.state.best_epoch,
                      stopped_early=self.state.stopped_early, out=str(self.out), main=self.d.main)
        with resources.threads(self.threads):
            test_outputs = self.test(result)
        bad = [f"{t} {m}" for t, ms in result["test"].items() for m, v in ms.items() if not math.isfinite(v)]
        if bad:
            self._diverged(f"the test metric {bad[0]} is not finite")
        if self.note:
            result["note"] = self.note
        if self.d.main and self.out is not None:
            runfolder.write_result(self.out, self.log, result, self.state.step)
            if self.cfg.plots:
                runfolder.write_figures(self.out, self.state.history, self.task, test_outputs,
                                        self.cfg.cell, self.state.best_epoch)
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


def _choose(cfg: Config, d: distributed.Dist, interrupt) -> Trainer:
    """Train every variant the task offers (``Task.variants``) in memory and keep the one with
    the lowest validation metric (the first variant when nothing is held out)."""
    name, options = tasks.TASKS[cfg.task][0].variants
    scores: Dict[str, float] = {}
    best, timing = None, {"build": 0.0, "data": 0.0, "training": 0.0}
    for option in options:
        trainer = Trainer(dataclasses.replace(cfg, **{name: option}), d)
        trainer.fit(interrupt)
        for k in timing:
            timing[k] += trainer.timing[k]
        if trainer.task.val is None:
            best = trainer
            best.note = f"{name} {option}: no validation part to choose by"
            break
        trainer.use_best()
        scores[option] = trainer.steps.validate()[trainer.task.metric]
        if best is None or scores[option] < scores[getattr(best.cfg, name)]:
            best = trainer
    best.timing = timing
    if scores:
        best.note = (f"{name}: {getattr(best.cfg, name)}, chosen by validation {best.task.metric} "
                     f"among {len(scores)} networks trained in turn ("
                     + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + ")")
    return best


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e)


def train(cfg: Config, interrupt: Optional[Callable[[int], bool]] = None) -> dict:
    """Train as ``cfg`` says and return the result (metrics, baselines, run folder).

    ``interrupt(step) -> bool`` is checked after every step, like Ctrl-C: when it returns True
    the run writes a checkpoint and raises ``Interrupted``.
    """
    cfgmod.validate(cfg)
    runfolder.check(cfg)
    d = distributed.init(cfg.device)
    trainer: Optional[Trainer] = None
    done = False
    try:
        check_precision(cfg.precision, d.device)       # here, not in Trainer: eval runs float32
        variants = tasks.TASKS[cfg.task][0].variants
        if variants and getattr(cfg, variants[0]) == "auto" and not cfg.resume:
            trainer = _choose(cfg, d, interrupt)             # trained in memory, then written
            trainer.open_outputs()
        else:
            trainer = Trainer(cfg, d)
            trainer.open_outputs()
            trainer.fit(interrupt)
        result = trainer.finish()
        done = True
        return result
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        raise UserError(f"out of memory: {str(e).splitlines()[0][:200]}; lower --hidden, --layers "
                        f"or --batch-size") from None
    finally:
        if not done and trainer is not None and trainer.out is not None and d.main:
            trainer.log.close()
            runfolder.undo(trainer.out, trainer.before)
        distributed.shutdown(d)
