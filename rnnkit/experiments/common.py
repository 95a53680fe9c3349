"""What every experiment shares: training through the trainer's library API, and the report.

An experiment is a function ``(ctx) -> Section``.  It trains with ``ctx.fit(overrides)``, which
runs the same Trainer as ``rnnkit train`` in a scratch folder, and returns a Section: prose,
tables and figures for docs/experiments.md.  ``ctx.quick`` asks for the small version.
Where a picture of the inside explains the result, ``ctx.page(...)`` writes an ``rnnkit view``
page of a network the section trained (beside the figures) and the section links it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from torch import nn

from ..view import page as view_page

from ..train import distributed
from ..train.config import Config, resolve
from ..train.errors import Diverged
from ..train.logs import JSONL
from ..train.loop import Trainer
from ..train.model import build_rnn


@dataclass
class Run:
    """One finished training run."""
    config: dict
    result: dict
    trainer: Trainer

    @property
    def net(self) -> nn.Module:
        return self.trainer.net

    @property
    def diverged(self) -> Optional[str]:
        """Why the trainer stopped the run as diverged (None: it finished)."""
        return self.result.get("diverged")

    def test_metric(self, name: str, split: str = "test") -> float:
        """The test metric; NaN for a run the trainer stopped as diverged."""
        return float(self.result["test"].get(split, {}).get(name, math.nan))

    def records(self, kind: str) -> List[dict]:
        """JSONL records of one kind ('step', 'epoch', 'test') from the run folder."""
        lines = (Path(self.result["out"]) / JSONL).read_text(encoding="utf-8").splitlines()
        return [r for r in map(json.loads, lines) if r.get("kind") == kind]


PAGE_BUDGET = 400_000       # bytes of one committed view page: its trace gets fewer bits past it


@dataclass
class Shown:
    """One ``rnnkit view`` page of a section: the file, its link (with the view to open), what
    to look at, and the network and inputs it shows (kept so tests can read the page back)."""
    file: Path
    ref: str
    label: str
    look: str
    net: nn.Module
    inputs: tuple
    size: int


@dataclass
class Section:
    """One experiment's part of the report."""
    title: str
    claim: str
    setup: str
    tables: List[str] = field(default_factory=list)
    figures: List[str] = field(default_factory=list)
    findings: List[str] = field(default_factory=list)
    numbers: List[float] = field(default_factory=list)     # every reported figure, checked finite
    pages: List[Shown] = field(default_factory=list)


    def markdown(self) -> str:
        parts = [f"## {self.title}", f"**The lecture says:** {self.claim}", f"**Setup:** {self.setup}"]
        parts += self.tables
        parts += [f"![{Path(f).stem}]({f})" for f in self.figures]
        if self.pages:
            parts.append("**Inside the networks** (`rnnkit view` pages: open from disk in a browser):\n"
                         + "\n".join(f"- [{p.label}]({p.ref}): {p.look}" for p in self.pages))
        parts += ["**What happened:**\n" + "\n".join(f"- {s}" for s in self.findings)]
        return "\n\n".join(parts) + "\n"


@dataclass
class Context:
    """Where an experiment writes, how big it runs, and its seed."""
    quick: bool
    seed: int
    work: Path                 # scratch run folders
    figures: Path              # PNGs referenced by the report
    figure_prefix: str         # how the report refers to that folder
    runs: int = 0

    def fit(self, overrides: Dict[str, object], prepare: Optional[Callable[[nn.Module], None]] = None) -> Run:
        """Train as ``rnnkit train`` would with these options; ``prepare(net)`` may alter the
        freshly initialised network first (e.g. rescale a recurrent matrix)."""
        self.runs += 1
        opts = {"seed": self.seed, **overrides, "out": str(self.work / f"run{self.runs:03d}"),
                "plots": False, "progress": False, "tensorboard": False, "device": "cpu"}
        cfg = resolve(opts)
        trainer = Trainer(cfg, distributed.Dist())
        if prepare is not None:
            prepare(trainer.net)
        trainer.open_outputs()
        try:
            result = trainer.run()
        except Diverged as e:                 # an experiment may mean to show a run blowing up
            result = {"out": str(trainer.out), "diverged": str(e), "test": {}}
        return Run(opts, result, trainer)

    def page(self, name: str, net: nn.Module, inputs: tuple, label: str, look: str, view: str = "",
             **options) -> Shown:
        """Write the view page of ``net`` reading ``inputs`` beside the figures (``options`` go
        to ``rnnkit.view.page``); ``view`` is the link's fragment, e.g. ``quantity=cell&unit=3``,
        and ``look`` the sentence that says what to see there."""
        net.eval()
        version = "quick version" if self.quick else "full version"
        shown = view_page(net, inputs, title=label, budget=PAGE_BUDGET,
                          note=f"rnnkit experiments ({version}, seed {self.seed}): {label}", **options)
        path, ref = self.figure(name)
        shown.save(path)
        return Shown(path, ref + (f"#{view}" if view else ""), label, look, net, inputs, shown.size)

    def figure(self, name: str) -> tuple:
        """(path to save to, reference for the markdown)."""
        return self.figures / name, f"{self.figure_prefix}/{name}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats with 4 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def bars(ctx: "Context", name: str, title: str, ylabel: str, groups: Dict[str, Sequence[float]]) -> str:
    """A bar per group (mean, with the spread over seeds as an error bar); returns the reference."""
    plt = pyplot()
    labels = list(groups)
    means = [float(np.mean(groups[k])) for k in labels]
    errs = [float(np.std(groups[k], ddof=1)) if len(groups[k]) > 1 else 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels)), 3.4))
    ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    path, ref = ctx.figure(name)
    save(fig, path)
    return ref


def param_count(cell: str, n_in: int, hidden: int) -> int:
    """Parameters of the recurrent layer the trainer builds for this cell and hidden size."""
    cfg = dataclasses.replace(Config(), cell=cell, hidden=hidden)
    return sum(p.numel() for p in build_rnn(cfg, n_in).parameters())


def hidden_for_params(cell: str, n_in: int, target: int) -> int:
    """The hidden size whose recurrent layer has the parameter count closest to ``target``."""
    best, best_gap = 1, None
    for h in range(1, 513):
        n = param_count(cell, n_in, h)
        if best_gap is None or abs(n - target) < best_gap:
            best, best_gap = h, abs(n - target)
        if n > target:
            break
    return best


def best_unit(trace: np.ndarray, signal: np.ndarray) -> tuple:
    """(unit, r): the unit of ``trace`` (N, H) whose values correlate most strongly (|Pearson r|)
    with ``signal`` (N,) over the N rows (steps, or sequences); constant units count as r = 0."""
    a = trace - trace.mean(0)
    s = signal - signal.mean()
    den = np.sqrt((a * a).sum(0) * (s * s).sum())
    r = np.where(den > 0, (a * s[:, None]).sum(0) / np.where(den > 0, den, 1.0), 0.0)
    unit = int(np.argmax(np.abs(r)))
    return unit, float(r[unit])


def finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(float(v)) for v in values)
