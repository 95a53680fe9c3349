"""Experiment 4: GRU against LSTM -- parameter counts and accuracy on real data.

A GRU layer has three gate blocks to the LSTM's four, so exactly 3/4 of its parameters
(the lecture puts it as "a third fewer").  Both are trained on the same real data sets with the
same budget over several seeds; reported are test accuracy and the gap between training and
validation accuracy (a measure of over-fitting).
"""
from __future__ import annotations

import numpy as np

from ..layers import GRU, LSTM
from .common import Context, Section, bars, mean_std, table

DATASETS = ("digits", "japanese_vowels")


def _counts() -> list:
    rows = []
    for H in (16, 64, 256):
        lstm, gru = LSTM(H, H).parameter_count(), GRU(H, H).parameter_count()
        rows.append([H, lstm, gru, gru / lstm, 1 - gru / lstm])
    return rows


def _accuracy(run, split) -> float:
    t = run.trainer
    return float(t.task.metrics(t.predict(split), split)["accuracy"])


def run(ctx: Context) -> Section:
    seeds = [ctx.seed + k for k in range(3)]
    epochs = {"digits": 1, "japanese_vowels": 2} if ctx.quick else {"digits": 30, "japanese_vowels": 40}
    counts = _counts()
    rows, acc = [], {}
    for data in DATASETS:
        for cell in ("lstm", "gru"):
            tests, gaps = [], []
            for seed in seeds:
                r = ctx.fit({"task": data, "cell": cell, "seed": seed, "epochs": epochs[data]})
                task = r.trainer.task
                train_acc = _accuracy(r, task.train)
                val_acc = _accuracy(r, task.val) if task.val is not None else float("nan")
                tests.append(r.test_metric("accuracy"))
                gaps.append(train_acc - val_acc)
            acc[(data, cell)] = tests
            rows.append([data, cell, r.result["parameters"], mean_std(tests), mean_std(gaps)])
    sec = Section(
        title="4. GRU versus LSTM",
        claim="a GRU has a third fewer parameters than an LSTM of the same size and performs "
              "about as well.",
        setup=(f"parameter counts of one layer with I=H; training: the trainer's presets for "
               f"'digits' (scikit-learn's 8x8 digits read row by row, 75/25 split) and "
               f"'japanese_vowels' (UEA, variable length, 12 channels), hidden 64, Adam, "
               f"{epochs['digits']} / {epochs['japanese_vowels']} epochs, early stopping on a held-out "
               f"validation part, seeds {seeds}; mean ± std over seeds."),
    )
    sec.tables.append(table(["H (=I)", "LSTM parameters", "GRU parameters", "GRU / LSTM",
                             "fewer by"], counts))
    sec.tables.append(table(["data", "cell", "parameters (whole net)", "test accuracy",
                             "train - validation accuracy"], rows))
    sec.numbers += [v for r in counts for v in r[1:]] + [v for t in acc.values() for v in t]
    sec.figures.append(bars(ctx, "gru_vs_lstm.png", "test accuracy over seeds", "accuracy",
                            {f"{d}\n{c}": v for (d, c), v in acc.items()}))
    ratio = counts[0][3]
    sec.findings.append(f"Measured: a GRU has {ratio:.2f} of an LSTM's parameters, i.e. "
                        f"{1 - ratio:.0%} fewer -- not a third fewer; it is the LSTM that has a third "
                        f"more ({1 / ratio - 1:.0%}).")
    for data in DATASETS:
        g, l = np.mean(acc[(data, "gru")]), np.mean(acc[(data, "lstm")])
        sec.findings.append(f"{data}: GRU {g:.4f}, LSTM {l:.4f} mean test accuracy "
                            f"({'GRU' if g > l else 'LSTM' if l > g else 'neither'} ahead by {abs(g - l):.4f}).")
    return sec
