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
    """Append-only JSONL (flushed per line) plus optional TensorBoard; a no-op when ``folder`` is None."""

    def __init__(self, folder: Optional[Path], tensorboard: bool):
        self.fh = open(folder / JSONL, "a", encoding="utf-8") if folder else None
        self.tb = _tensorboard(folder) if folder and tensorboard else None

    def write(self, record: Dict[str, Any]) -> None:
        if self.fh is None:
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
    """A tqdm bar over all steps of the run with loss, validation metric and throughput."""

    def __init__(self, enabled: Optional[bool], total: int, initial: int, unit: str):
        show = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.unit = unit
        self.items, self.t0 = 0, time.perf_counter()
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, leave=False)
        self.postfix: Dict[str, str] = {}

    def step(self, loss: float, items: int) -> float:
        """Advance one step; returns the throughput in items per second since the last call."""
        now = time.perf_counter()
        rate = items / max(now - self.t0, 1e-9)
        self.t0 = now
        if self.bar is not None:
            self.postfix.update(loss=f"{loss:.4f}", speed=f"{rate:,.0f} {self.unit}/s")
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(1)
        return rate

    def epoch(self, epoch: int, epochs: int, metric: str, value: Optional[float]) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{epochs}")
            if value is not None:
                self.postfix[f"val_{metric}"] = f"{value:.4f}"

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
    if "epochs" in result:
        early = f", stopped early; best epoch {result['best_epoch']}" if result.get("stopped_early") \
            else (f", best epoch {result['best_epoch']}" if result.get("best_epoch") else "")
        lines.append(f"trained {result['epochs']} epochs, {result['steps']} steps in "
                     f"{result['seconds']:.1f} s{early}")
    names = list(result["baselines"]) + [result["model_name"]]
    rows = []
    for test, metrics in result["test"].items():
        for m, v in metrics.items():
            row = [result["baselines"][b].get(test, {}).get(m) for b in result["baselines"]] + [v]
            rows.append((f"{test} {m}", row))
    width = max([len(r[0]) for r in rows] + [10])
    cols = [max(len(n), 8) for n in names]
    lines.append(" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols)))
    for label, row in rows:
        cells = _cells(row)
        lines.append(label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols)))
    if result.get("out"):
        lines.append(f"run folder: {result['out']}")
    return "\n".join(lines)
