"""Experiment 7: the LSTM's variants on a character-level language model.

The papers behind the variants each claim a gain: peepholes let the gates see the cell (Gers &
Schmidhuber 2000), layer normalisation speeds up training and helps generalisation (Ba et al.
2016), zoneout (Krueger et al. 2017) and per-sequence recurrent dropout (Gal & Ghahramani 2016)
regularise.  Here every variant is the same LSTM (equal hidden size, same data, budget and seeds)
with one option switched on, trained by ``rnnkit train`` on the text task; reported are held-out
bits per character and the validation curves.

The text ships with Python itself: the standard library's top-level modules (``*.py`` directly in
the stdlib folder, sorted by name, those that are pure ASCII), concatenated and cut to a fixed
number of characters.  It is deterministic for a given Python version (the report names the
version and the text's SHA-256); another version's library gives another text.
"""
from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List

import numpy as np

from .common import Context, Section, mean_std, pyplot, save, table

VARIANTS: Dict[str, Dict[str, object]] = {
    "LSTM": {},
    "peephole": {"peephole": True},
    "layer norm": {"layer_norm": True},
    "zoneout 0.1": {"zoneout": 0.1},
    "recurrent dropout 0.25": {"recurrent_dropout": 0.25},
}


def stdlib_text(limit: int) -> str:
    """The first ``limit`` characters of the standard library's pure-ASCII top-level modules,
    concatenated in file-name order."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.isascii():
            continue
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def _curve(run) -> List[float]:
    """Validation bits per character after each epoch."""
    return [r["val_loss"] / math.log(2) for r in run.records("epoch") if "val_loss" in r]


def run(ctx: Context) -> Section:
    seeds = [ctx.seed + k for k in range(3)]
    size = dict(chars=30_000, hidden=32, epochs=1) if ctx.quick else dict(chars=600_000, hidden=128, epochs=5)
    text = stdlib_text(size["chars"])
    ctx.work.mkdir(parents=True, exist_ok=True)
    path = ctx.work / "stdlib.txt"
    path.write_text(text, encoding="ascii")
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
    bpc: Dict[str, List[float]] = {}
    curves: Dict[str, List[List[float]]] = {}
    for name, option in VARIANTS.items():
        for seed in seeds:
            r = ctx.fit({"task": "text", "text": str(path), "cell": "lstm", "hidden": size["hidden"],
                         "epochs": size["epochs"], "seed": seed, **option})
            bpc.setdefault(name, []).append(r.test_metric("bpc"))
            curves.setdefault(name, []).append(_curve(r))
    sec = Section(
        title="7. LSTM variants on a character-level language model",
        claim="peepholes (Gers & Schmidhuber 2000), layer normalisation (Ba et al. 2016), zoneout "
              "(Krueger et al. 2017) and recurrent dropout (Gal & Ghahramani 2016) each improve on the "
              "plain LSTM: peepholes by letting the gates read the cell, layer normalisation by faster "
              "and better training, zoneout and recurrent dropout by regularising.",
        setup=(f"text: Python {sys.version_info.major}.{sys.version_info.minor}'s standard library "
               f"(top-level pure-ASCII modules in file-name order, first {len(text):,} characters, "
               f"{len(set(text))} distinct, SHA-256 {digest}...), cut 90/5/5 into train/validation/test "
               f"by the text task; one-layer LSTM, hidden {size['hidden']} for every variant, Adam lr 3e-3, "
               f"batch 32, truncated BPTT k1=64, clipping at norm 5, {size['epochs']} epochs with early "
               f"stopping on validation, seeds {seeds}; test bits per character of the best epoch, "
               f"mean ± std over seeds."),
    )
    base = np.asarray(bpc["LSTM"])
    rows = []
    for name in VARIANTS:
        v = np.asarray(bpc[name])
        first = [c[0] for c in curves[name] if c]
        rows.append([name, mean_std(list(v)), float((v - base).mean()), float(np.mean(first))])
    sec.tables.append(table(["variant", "test bpc", "minus LSTM (same seed)", "validation bpc after epoch 1"],
                            rows))
    sec.numbers += [x for v in bpc.values() for x in v] + [x for c in curves.values() for s in c for x in s]
    sec.figures.append(_plot(ctx, curves))
    sec.findings += _findings(bpc, curves)
    return sec


def _plot(ctx: Context, curves: Dict[str, List[List[float]]]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, runs in curves.items():
        n = min(len(c) for c in runs)
        if n == 0:
            continue
        mean = np.mean([c[:n] for c in runs], axis=0)
        ax.plot(range(1, n + 1), mean, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation bits per character")
    ax.set_title("LSTM variants: validation bpc (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path, ref = ctx.figure("lstm_variants.png")
    save(fig, path)
    return ref


def _findings(bpc: Dict[str, List[float]], curves: Dict[str, List[List[float]]]) -> List[str]:
    """One line per variant: its gain over the plain LSTM with the same seed, and whether that gain
    is larger than its spread over the seeds (mean difference beyond twice its standard error)."""
    base = np.asarray(bpc["LSTM"])
    first_base = np.mean([c[0] for c in curves["LSTM"] if c])
    lines = []
    for name in VARIANTS:
        if name == "LSTM":
            continue
        d = np.asarray(bpc[name]) - base
        err = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
        verdict = ("better" if d.mean() < -2 * err else "worse" if d.mean() > 2 * err else
                   "no different within the spread over seeds")
        first = np.mean([c[0] for c in curves[name] if c])
        lines.append(f"{name}: test bpc {np.mean(bpc[name]):.3f} vs LSTM {base.mean():.3f} "
                     f"(difference {d.mean():+.3f} ± {err:.3f} standard error over seeds): {verdict}; "
                     f"after one epoch {first:.3f} vs {first_base:.3f}.")
    return lines
