"""Experiment 6: Elman against Jordan -- feeding back the state or the output.

A Jordan network remembers only what its output y_{t-1} carries.  On the delayed echo task
(target x_(t-3)) the output is one number, so with a one-unit output the network must squeeze
three past inputs into the value it is also asked to emit; with a wide output (O = H) it has
as much room as an Elman network.  On yearly sunspots, one step ahead, the fed-back
prediction is itself a good summary of the past.  The pages show Elman and the Jordan network
with O=1 on one echo test sequence: the fed-back output is the only memory the latter has.
"""
from __future__ import annotations

import numpy as np
import torch

from ..view.capture import capture
from .common import Context, Section, best_unit, bars, table

DELAY = 3


def run(ctx: Context) -> Section:
    T, n, epochs = (20, 300, 3) if ctx.quick else (40, 2000, 15)
    H = 16 if ctx.quick else 32
    variants = [("elman", {}), ("jordan", {"jordan_output": 1}), ("jordan", {"jordan_output": H})]
    rows, echoes = [], []
    for cell, extra in variants:
        name = cell + (f" (O={extra['jordan_output']})" if extra else "")
        echo = ctx.fit({"task": "echo", "cell": cell, "delay": DELAY, "seq_len": T, "n_samples": n,
                        "epochs": epochs, "hidden": H, "patience": 0, **extra})
        sun = ctx.fit({"task": "sunspots", "cell": cell, "hidden": H, "epochs": 10 if ctx.quick else 150,
                       "forecast": "level", **extra})      # the representation the report measured
        window = sun.trainer.cfg.window
        echoes.append((name, echo))
        rows.append([name, echo.result["parameters"], echo.test_metric("mse"),
                     sun.test_metric("rmse", "1921-1955"), sun.test_metric("rmse", "1921-1987")])
    sec = Section(
        title="6. Elman versus Jordan",
        claim="a Jordan network feeds back its output instead of its hidden state (the context "
              "units hold the previous output).",
        setup=(f"hidden {H}; delayed echo (target x_(t-{DELAY}), T={T}, {n} sequences, {epochs} epochs; "
               f"predicting 0 scores MSE 1) and yearly sunspots one step ahead (trainer defaults but "
               f"the standardised level, --forecast level; window {window}); a Jordan output O=1 feeds back a single number, O={H} as wide as the "
               f"Elman state; seed {ctx.seed}."),
    )
    sec.tables.append(table(["network", "parameters (echo)", "echo test MSE", "sunspots RMSE 1921-55",
                             "sunspots RMSE 1921-87"], rows))
    sec.numbers += [v for r in rows for v in r[1:]]
    sec.figures.append(bars(ctx, "elman_vs_jordan.png", f"delayed echo (x_(t-{DELAY}))", "test MSE",
                            {r[0]: [r[2]] for r in rows}))
    elman, narrow, wide = rows
    sec.findings.append(f"Echo: Elman MSE {elman[2]:.4f}, Jordan O=1 {narrow[2]:.4f}, Jordan O={H} "
                        f"{wide[2]:.4f}: feeding back only a narrow output "
                        + ("hurts memory." if narrow[2] > 2 * elman[2] else "did not hurt here."))
    sec.findings.append(f"With a wide output (O={H}) the Jordan network "
                        + ("did better than Elman on the echo" if wide[2] < elman[2] else
                           "did worse than Elman on the echo")
                        + f" ({wide[2]:.4f} vs {elman[2]:.4f}), at {wide[1]} against {elman[1]} parameters.")
    sec.findings.append(f"Sunspots 1921-55 RMSE: Elman {elman[3]:.2f}, Jordan O=1 {narrow[3]:.2f}, "
                        f"Jordan O={H} {wide[3]:.2f}: feeding back the forecast itself (O=1) "
                        + ("hurt" if narrow[3] > elman[3] else "helped") + " here.")
    sec.pages += [_page(ctx, name, run) for name, run in echoes[:2]]
    return sec


def _page(ctx: Context, name: str, run):
    """The network reading the first echo test sequence; the unit of the fed-back quantity
    (Jordan: its output, Elman: its state) that tracks the target x_(t-DELAY) best."""
    one = run.trainer.task.tests["test"].take(slice(0, 1))
    net = run.net.eval()
    x = one.x[0, :, 0].double().numpy()
    target = np.r_[np.full(DELAY, np.nan), x[:-DELAY]]                       # (T,) x_(t-DELAY)
    with torch.no_grad():
        out = net(one.x)[0][0, :, 0].double().numpy()                         # (T,) the answer per step
    quantity = "output" if run.config["cell"] == "jordan" else "hidden"
    trace = capture(net, (one.x,)).trace[0][0][quantity].astype(np.float64)   # (T, O or H)
    unit, r = best_unit(trace[DELAY:], target[DELAY:])
    T = len(x)
    err = float(np.mean((out[DELAY:] - target[DELAY:]) ** 2))
    what = ("the fed-back output y (opened by the link), all this network remembers of the past,"
            if quantity == "output" else f"hidden unit {unit} (opened by the link)")
    look = (f"{what} tracks the target x_(t-{DELAY}) with r = {r:.2f} over steps {DELAY}-{T - 1}; "
            f"the answers' mean squared error on this sequence is {err:.2g}.")
    return ctx.page(f"echo_{run.config['cell']}.html", net, (one.x,),
                    f"{name}, H={run.config['hidden']}, delayed echo x_(t-{DELAY}), T={T}, test sequence 0",
                    look, view=f"quantity={quantity}&unit={unit}",
                    loss_fn=lambda o: run.trainer.task.loss(o[0], one)[0],
                    loss_label=f"summed squared error of the answers from step {DELAY}",
                    series={f"target x_(t-{DELAY})": target, "input x_t": x, "answer": out})
