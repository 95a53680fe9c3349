"""What a run reports: JSONL records, TensorBoard scalars, a live progress bar, the summary table.

``metrics.jsonl`` holds one JSON object per line: ``{"kind": "step", ...}`` every ``log_every``
steps, ``{"kind": "epoch", ...}`` after each epoch, ``{"kind": "test", ...}`` at the end.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .checkpoint import atomic_write

JSONL = "metrics.jsonl"


class RunLog:
    """Append-only JSONL (flushed per line) plus optional TensorBoard; when ``folder`` is None the
    records are kept in ``pending`` (a run trained before its folder opens writes them later)."""

    def __init__(self, folder: Optional[Path], tensorboard: bool):
        self.fh = open(folder / JSONL, "a", encoding="utf-8") if folder else None
        self.tb = _tensorboard(folder) if folder and tensorboard else None
        self.pending: List[Dict[str, Any]] = []

    def write(self, record: Dict[str, Any]) -> None:
        if self.fh is None:
            self.pending.append(record)
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()
        self.fh = self.tb = None


def _tensorboard(folder: Path):
    """A SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def truncate_after(folder: Path, step: int) -> None:
    """Drop records written after the checkpoint at ``step`` (a resumed run writes them again)."""
    path = folder / JSONL
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:             # a line cut short by a crash
            continue
        if record.get("kind") in ("step", "epoch") and record.get("step", 0) <= step:
            keep.append(line)
    atomic_write(path, "".join(k + "\n" for k in keep).encode("utf-8"))


class Progress:
    """Progress on stderr: a tqdm bar over all steps of the run (loss, validation metric,
    throughput) when stderr is a terminal, else plain lines -- the first and last epoch and one
    every ``every`` seconds between -- so that a log file or a pipe shows the run as it goes.
    ``enabled``: None chooses by the terminal, True forces the bar, False shows nothing."""

    def __init__(self, enabled: Optional[bool], total: int, initial: int, unit: str, every: float = 5.0):
        self.mode = "off" if enabled is False else ("bar" if enabled or sys.stderr.isatty() else "lines")
        self.bar = None
        self.unit = unit
        self.every = every
        self.items, self.t0 = 0, time.perf_counter()
        self.last_line = -float("inf")
        self.rate = 0.0
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.postfix: Dict[str, str] = {}

    def note(self, text: str) -> None:
        """A line of its own (above the bar when there is one)."""
        if self.mode == "bar":
            self.bar.write(text, file=sys.stderr)
        elif self.mode == "lines":
            print(text, file=sys.stderr, flush=True)

    def step(self, loss: float, items: int) -> float:
        """Advance one step; returns the throughput in items per second since the last call."""
        now = time.perf_counter()
        rate = items / max(now - self.t0, 1e-9)
        self.t0, self.rate = now, rate
        if self.bar is not None:
            self.postfix.update(loss=f"{loss:.4f}", speed=f"{rate:,.0f} {self.unit}/s")
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(1)
        return rate

    def epoch(self, epoch: int, epochs: int, metric: str, value: Optional[float],
              train_loss: Optional[float] = None, last: bool = False) -> None:
        """At an epoch's start (``train_loss`` None) and end."""
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{epochs}")
            if value is not None:
                self.postfix[f"val_{metric}"] = f"{value:.4f}"
        elif self.mode == "lines" and train_loss is not None:
            now = time.perf_counter()
            if epoch == 1 or last or now - self.last_line >= self.every:
                self.last_line = now
                val = f", val {metric} {value:.4f}" if value is not None else ""
                self.note(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}{val}, "
                          f"{self.rate:,.0f} {self.unit}/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cells(row: List[Optional[float]]) -> List[str]:
    """A row's numbers with one precision: 2 decimals when any is 10 or more, else 4."""
    digits = 2 if any(v is not None and abs(v) >= 10 for v in row) else 4
    return ["-" if v is None else f"{v:.{digits}f}" for v in row]


def summary_table(result: Dict[str, Any]) -> str:
    """The short table printed at the end of ``rnnkit train`` / ``rnnkit eval``."""
    lines = [result["describe"], f"model: {result['model']}"]
    if result.get("note"):
        lines.append(result["note"])
    if "epochs" in result:
        early = f", stopped early; best epoch {result['best_epoch']}" if result.get("stopped_early") \
            else (f", best epoch {result['best_epoch']}" if result.get("best_epoch") else "")
        lines.append(f"trained {result['epochs']} epochs, {result['steps']} steps{early}")
        t = result.get("timing")
        if t:
            lines.append(f"time: training {t['training']:.1f} s, data {t['data']:.1f} s, "
                         f"C++ kernels ready in {t['build']:.1f} s; {result['threads']} thread(s)")
    baselines = result["baselines"]
    names = list(baselines) + [result["model_name"]]
    tests = dict(result["test"])
    if any("validation" in b for b in baselines.values()) and result.get("val"):
        tests = {"validation": {m: v for m, v in result["val"].items() if m != "loss"}, **tests}
    rows = []
    for test, metrics in tests.items():
        for m, v in metrics.items():
            row = [baselines[b].get(test, {}).get(m) for b in baselines] + [v]
            rows.append((f"{test} {m}", row))
    width = max([len(r[0]) for r in rows] + [10])
    cols = [max(len(n), 8) for n in names]
    lines.append(" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols)))
    for label, row in rows:
        cells = _cells(row)
        lines.append(label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols)))
    lines += _not_beating_persistence(result, tests)
    if result.get("out"):
        lines.append(f"run folder: {result['out']}")
    return "\n".join(lines)


def _not_beating_persistence(result: Dict[str, Any], tests: Dict[str, Dict[str, float]]) -> List[str]:
    """A note for each period where the network's metric is no better than persistence's."""
    persistence, metric = result["baselines"].get("persistence", {}), result["metric"]
    worse = [(name, m[metric], persistence[name][metric]) for name, m in tests.items()
             if metric in m and metric in persistence.get(name, {}) and m[metric] >= persistence[name][metric]]
    if not worse:
        return []
    where = "; ".join(f"{name} {mine:.4g} against {theirs:.4g}" for name, mine, theirs in worse)
    return [f"note: the network does not beat persistence, the last value ({metric}: {where}); a series "
            f"whose changes are unpredictable, such as a random walk, has no better one-step forecast"]
