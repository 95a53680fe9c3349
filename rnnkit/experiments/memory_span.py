"""Experiment 1: long time lags on the adding problem (Hochreiter & Schmidhuber 1997).

Every cell learns the adding problem at several lengths T, once at equal hidden size and once
at (about) equal parameter count.  A test sequence counts as solved when the prediction is
within 0.04 of the target (the criterion of the 1997 paper); predicting the mean scores about
0.17 MSE and solves almost none.

The pages show the LSTM and the Elman network of equal hidden size at the longest T reading one
held-out sequence: the LSTM's memory cell holds the marked values, Elman's state does not.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import registry
from ..diagnostics import gradient_flow
from ..view.capture import capture
from ..view.command import prefix_outputs
from .common import Context, Section, best_unit, hidden_for_params, param_count, pyplot, save, table

CELLS = registry.names()
TOLERANCE = 0.04


def success_rate(run) -> float:
    """Fraction of test sequences predicted within TOLERANCE."""
    split = run.trainer.task.tests["test"]
    pred = run.trainer.predict(split).squeeze(-1)
    return float(((pred - split.y).abs() < TOLERANCE).double().mean())


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(lengths=(10, 20), hidden=12, n_samples=400, epochs=4)
    return dict(lengths=(10, 50, 100, 200), hidden=32, n_samples=2000, epochs=25)


def run(ctx: Context) -> Section:
    s = _sizes(ctx.quick)
    H = s["hidden"]
    budget = param_count("lstm", 2, H)
    hidden = {"equal hidden": {c: H for c in CELLS},
              "equal parameters": {c: hidden_for_params(c, 2, budget) for c in CELLS}}
    rows, rates, shown = [], {}, {}
    for sizing, sizes in hidden.items():
        for cell in CELLS:
            for T in s["lengths"]:
                r = ctx.fit({"task": "adding", "cell": cell, "hidden": sizes[cell], "seq_len": T,
                             "n_samples": s["n_samples"], "epochs": s["epochs"], "lr": 1e-2,
                             "patience": 0})
                rate, mse = success_rate(r), r.test_metric("mse")
                rates[(sizing, cell, T)] = rate
                if sizing == "equal hidden" and cell in ("lstm", "elman") and T == max(s["lengths"]):
                    shown[cell] = r
                rows.append([sizing, cell, sizes[cell], r.result["parameters"], T, rate, mse])
    sec = Section(
        title="1. Long time lags: the adding problem",
        claim="plain recurrent networks (Elman, Jordan) forget over long spans; LSTM and GRU, "
              "whose gates let the error flow unchanged, bridge them.",
        setup=(f"adding problem (values in [0,1), one marker in each half, target = sum of the two "
               f"marked values); {s['n_samples']} training sequences, Adam lr 1e-2, batch 32, "
               f"{s['epochs']} epochs, clipping at norm 1, seed {ctx.seed}. Equal hidden: H={H}; "
               f"equal parameters: hidden sizes chosen so each network has about as many "
               f"parameters as the LSTM with H={H} ({budget} in the recurrent layer). "
               f"Success = |prediction - target| < {TOLERANCE} on held-out sequences; "
               f"always answering 1 gives MSE 0.167."),
    )
    sec.tables.append(table(["sizing", "cell", "hidden", "parameters", "T", "success rate", "test MSE"],
                            rows))
    sec.numbers += [v for r in rows for v in r[5:]]
    sec.figures.append(_plot(ctx, rates, s["lengths"], list(hidden)))
    sec.findings += _findings(rates, s["lengths"], list(hidden))
    sec.pages += _pages(ctx, shown["lstm"], shown["elman"])
    return sec


def _pages(ctx: Context, lstm, elman) -> list:
    """The LSTM's and Elman's pages on the first held-out sequence the LSTM solves (the first
    one when it solves none)."""
    test = lstm.trainer.task.tests["test"]
    solved = ((lstm.trainer.predict(test).squeeze(-1) - test.y).abs() < TOLERANCE).nonzero()
    k = int(solved[0]) if len(solved) else 0
    which = f"held-out sequence {k}" + (" (the first the LSTM solves)" if len(solved) else "")
    return [_page(ctx, run, quantity, what, test, test.take(slice(k, k + 1)), which)
            for run, quantity, what in ((lstm, "cell", "memory-cell"), (elman, "hidden", "hidden-state"))]


def _page(ctx: Context, run, quantity: str, what: str, test, one, which: str):
    """One network's page; it links the unit of ``quantity`` whose value just before the second
    marker best tells the first marked value across the held-out sequences: what the network
    must hold between the two markers."""
    net = run.net.eval()
    values, marks = one.x[0, :, 0].double().numpy(), one.x[0, :, 1].double().numpy()     # (T,)
    a, b = np.flatnonzero(marks)
    unit, r, gap = _holding_unit(net, test, quantity)
    v = capture(net, (one.x,)).trace[0][0][quantity][:, unit].astype(np.float64)        # (T,)
    answers = prefix_outputs(net, one.x)[:, 0].double().numpy()       # (T,) the answer after each prefix
    loss = lambda out: F.mse_loss(out[0].squeeze(-1), one.y)           # noqa: E731
    flows = gradient_flow(net, (one.x,), loss).norms["rnn"]            # per state (1, 1, T)
    carried = "; in the gradient panel, back to step 0, " + " and ".join(
        _change(s, g[0, 0].double().numpy()) for s, g in zip(net.rnn.cell.state_names, flows))
    look = (f"across the {len(test)} held-out sequences, {what} unit {unit}'s value just before the "
            f"second marker correlates r = {r:.2f} with the first marked value, read {gap:.0f} steps "
            f"earlier on average; on this sequence (the link opens that unit) it goes from "
            f"{v[a - 1] if a > 0 else 0.0:.3f} to {v[a]:.3f} at the first marker (step {a} counting "
            f"from 0, value {values[a]:.3f}) and is {v[b - 1]:.3f} just before the second (step {b}); "
            f"the network answers {answers[-1]:.3f} for the target {float(one.y[0]):.3f}{carried}.")
    name, T = run.config["cell"], len(values)
    return ctx.page(f"adding_{name}.html", net, (one.x,),
                    f"{name}, H={run.config['hidden']}, adding problem T={T}, {which}", look,
                    view=f"quantity={quantity}&unit={unit}", loss_fn=loss,
                    loss_label="squared error of the answer after the last step",
                    series={"sum of the marked values so far": np.cumsum(values * marks), "value": values,
                            "marker": marks, "answer if the sequence ended here": answers})


def _change(state: str, g: np.ndarray) -> str:
    """How ||dL/ds_t|| (T,) changes from the latest step it reaches back to step 0 (the LSTM's
    last c_t is 0: h_t is computed before the probe on c_t, which only later steps read)."""
    near = int(np.flatnonzero(g > 0)[-1])
    return f"||dL/d{state}_t|| changes x{g[0] / g[near]:.3g} from step {near}"


def _holding_unit(net, test, quantity: str) -> tuple:
    """(unit, r, mean gap): the unit of ``quantity`` whose value at the step before the second
    marker correlates most strongly with the first marked value over the split, and the mean
    number of steps between the markers."""
    N, half = len(test), test.x.shape[1] // 2
    marks = test.x[:, :, 1]
    a, b = marks[:, :half].argmax(1), half + marks[:, half:].argmax(1)            # (N,) marker steps
    with torch.no_grad():
        trace = net.rnn(test.x, return_trace=True)[-1][0][0][quantity]            # (N, T, H)
    held = trace[torch.arange(N), b - 1].double().numpy()                        # (N, H)
    unit, r = best_unit(held, test.x[torch.arange(N), a, 0].double().numpy())
    return unit, r, float((b - a).double().mean())


def _plot(ctx: Context, rates: dict, lengths, sizings) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sizings), figsize=(5 * len(sizings), 3.6), sharey=True)
    for ax, sizing in zip(axes, sizings):
        for cell in CELLS:
            ax.plot(lengths, [rates[(sizing, cell, T)] for T in lengths], "o-", label=cell)
        ax.set_title(sizing)
        ax.set_xlabel("sequence length T")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"success rate (|error| < {TOLERANCE})")
    axes[0].legend()
    path, ref = ctx.figure("adding_success.png")
    save(fig, path)
    return ref


def _findings(rates: dict, lengths, sizings) -> list:
    longest = max(lengths)
    out = []
    for sizing in sizings:
        at_long = {c: rates[(sizing, c, longest)] for c in CELLS}
        order = sorted(at_long, key=at_long.get, reverse=True)
        out.append(f"{sizing}, T={longest}: " + ", ".join(f"{c} {at_long[c]:.2f}" for c in order) + ".")
    gated = min(rates[(s, c, longest)] for s in sizings for c in ("lstm", "gru"))
    plain = max(rates[(s, c, longest)] for s in sizings for c in ("elman", "jordan"))
    if gated > plain:
        out.append(f"At T={longest} every gated network beat every plain one ({gated:.2f} vs at most "
                   f"{plain:.2f}): the claim holds here.")
    else:
        out.append(f"At T={longest} a plain network did as well as a gated one (best plain {plain:.2f}, "
                   f"worst gated {gated:.2f}): the claim does not hold at this budget.")
    return out
