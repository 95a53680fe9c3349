"""Experiment 5: bidirectional against unidirectional, and depth.

Bidirectional: the echo task with a negative delay asks at step t for the input of step t+3,
which only a network that reads the sequence backwards as well can know.
Depth: 1, 2 and 3 stacked LSTM layers on the digits read row by row.
"""
from __future__ import annotations

from .common import Context, Section, bars, mean_std, table

LOOKAHEAD = 3


def run(ctx: Context) -> Section:
    T, n, epochs = (20, 300, 3) if ctx.quick else (40, 2000, 15)
    rows_dir = []
    for bidir in (False, True):
        r = ctx.fit({"task": "echo", "cell": "lstm", "delay": -LOOKAHEAD, "seq_len": T, "n_samples": n,
                     "epochs": epochs, "bidirectional": bidir, "hidden": 32, "patience": 0})
        rows_dir.append(["bidirectional" if bidir else "unidirectional", r.result["parameters"],
                         r.test_metric("mse")])
    seeds = [ctx.seed] if ctx.quick else [ctx.seed + k for k in range(3)]
    rows_depth, depth_acc = [], {}
    for layers in (1, 2, 3):
        accs = [ctx.fit({"task": "digits", "cell": "lstm", "layers": layers, "seed": s,
                         "epochs": 1 if ctx.quick else 30}).test_metric("accuracy") for s in seeds]
        depth_acc[layers] = accs
        rows_depth.append([layers, mean_std(accs)])
    sec = Section(
        title="5. Bidirectional versus unidirectional; depth",
        claim="a bidirectional network uses the future as well as the past, which helps where the "
              "future matters; stacking layers builds more abstract features.",
        setup=(f"echo task: input white noise x_t, target at step t is x_(t+{LOOKAHEAD}) (scored on "
               f"the steps where it exists), T={T}, {n} sequences, LSTM hidden 32, {epochs} epochs, "
               f"seed {ctx.seed}; predicting 0 scores MSE 1. Depth: digits (trainer preset, hidden 64) "
               f"with 1-3 LSTM layers, seeds {seeds}, mean ± std."),
    )
    sec.tables.append(table(["echo x_(t+3)", "parameters", "test MSE"], rows_dir))
    sec.tables.append(table(["LSTM layers", "digits test accuracy"], rows_depth))
    sec.numbers += [r[2] for r in rows_dir] + [v for a in depth_acc.values() for v in a]
    sec.figures.append(bars(ctx, "depth.png", "digits: accuracy against depth", "test accuracy",
                            {f"{k} layer{'s' if k > 1 else ''}": v for k, v in depth_acc.items()}))
    uni, bi = rows_dir[0][2], rows_dir[1][2]
    sec.findings.append(f"Looking {LOOKAHEAD} steps ahead: unidirectional test MSE {uni:.4f} "
                        f"(it cannot see x_(t+{LOOKAHEAD})), bidirectional {bi:.4f}.")
    best = max(depth_acc, key=lambda k: sum(depth_acc[k]))
    sec.findings.append(f"Depth on digits: the best mean accuracy came with {best} layer(s); "
                        + ("more layers did not help on this short, easy task." if best == 1
                           else "stacking helped here."))
    return sec
