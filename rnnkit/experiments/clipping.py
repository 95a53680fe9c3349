"""Experiment 3: exploding gradients and clipping (Pascanu, Mikolov & Bengio 2013).

An Elman network with ReLU units whose recurrent matrix starts as 1.1 times the identity (the
IRNN initialisation of Le et al. 2015 with a gain above 1) makes both the activations and the
backpropagated error grow like 1.1^t along the units the input drives.  The same network, same data and same seed is trained
twice with plain SGD: without clipping, and with the gradient norm clipped at 1.  The page
shows that common start reading one test sequence: the state and the error signal growing.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..diagnostics import gradient_flow
from ..view.capture import capture
from .common import Context, Section, pyplot, save, table

GAIN = 1.1
MEAN_MSE = 1 / 6         # MSE of always answering the mean sum, 1
NO_CLIP = 1e30          # clipping "at 1e30" never clips, but makes the trainer log the norm


def _explode(net) -> None:
    """Set every recurrent matrix to GAIN times the identity."""
    with torch.no_grad():
        for name, p in net.rnn.named_parameters():
            if name.startswith("weight_hh"):
                p.copy_(GAIN * torch.eye(p.shape[0], dtype=p.dtype))


def run(ctx: Context) -> Section:
    T, hidden, epochs, n = (40, 16, 3, 300) if ctx.quick else (50, 32, 15, 2000)
    common = {"task": "adding", "cell": "elman", "nonlinearity": "relu", "hidden": hidden,
              "seq_len": T, "n_samples": n, "epochs": epochs, "optimizer": "sgd", "lr": 0.01,
              "patience": 0, "log_every": 1}
    start = {}

    def explode_and_keep(net):
        _explode(net)
        start["net"] = copy.deepcopy(net)

    runs = {"no clipping": ctx.fit({**common, "clip": "norm", "clip_at": NO_CLIP}, prepare=explode_and_keep),
            "clip norm at 1": ctx.fit({**common, "clip": "norm", "clip_at": 1.0}, prepare=_explode)}
    rows, curves = [], {}
    for name, r in runs.items():
        steps = r.records("step")
        loss = [s["loss"] for s in steps]
        norm = [s["grad_norm"] for s in steps]
        curves[name] = (loss, norm)
        finite = [v for v in loss if math.isfinite(v)]
        mse = r.test_metric("mse")
        rows.append([name, max(v for v in norm if math.isfinite(v)), sum(not math.isfinite(v) for v in loss),
                     finite[-1] if finite else float("nan"), mse])
    sec = Section(
        title="3. Exploding gradients and clipping",
        claim="when the recurrent weights are large the gradient explodes; rescaling it to a "
              "maximum norm (clipping) keeps training stable.",
        setup=(f"Elman, ReLU, hidden {hidden}, W_hh = {GAIN} I at the start (other weights as "
               f"torch initialises them); adding problem T={T}, {n} sequences, SGD lr 0.01, batch 32, {epochs} "
               f"epochs, seed {ctx.seed}; identical start for both runs."),
    )
    sec.tables.append(table(["run", "largest gradient norm", "non-finite losses", "last finite loss",
                             "test MSE"], rows))
    sec.numbers += [rows[1][1], rows[1][2]]
    sec.figures.append(_plot(ctx, curves))
    a, b = rows
    first_bad = next((i + 1 for i, v in enumerate(curves["no clipping"][0]) if not math.isfinite(v)), None)
    if runs["no clipping"].diverged:
        sec.findings.append(f"Without clipping the largest gradient norm was {a[1]:.3g}, and the loss "
                            f"was not finite at update {first_bad} (one unclipped step threw the weights "
                            f"to infinity), where the trainer stops a run as diverged: it has no test MSE.")
    else:
        sec.findings.append(f"Without clipping the largest gradient norm was {a[1]:.3g} and "
                            f"{a[2]} training losses were not finite"
                            + (f" (from update {first_bad} on: one unclipped step threw the weights to "
                               f"infinity)" if first_bad else "") + f"; test MSE {a[4]:.4g}.")
    sec.findings.append(f"With clipping the largest (pre-clipping) norm was {b[1]:.3g}, "
                        f"{b[2]} non-finite losses, test MSE {b[4]:.4g}.")
    better = math.isfinite(b[4]) and (not math.isfinite(a[4]) or b[4] < a[4])
    sec.findings.append("Clipping " + ("kept training finite and stable, as the lecture says." if better
                                       else "did not help here: the claim does not show at this setting."))
    if math.isfinite(b[4]) and b[4] > 0.5 * MEAN_MSE:
        sec.findings.append(f"Clipping only keeps the steps bounded: the clipped network did not learn "
                            f"the task in this budget (test MSE {b[4]:.3f}; always answering 1 scores "
                            f"{MEAN_MSE:.3f}).")
    sec.pages.append(_page(ctx, start["net"], runs["clip norm at 1"].trainer.task.tests["test"]))
    return sec


def _page(ctx: Context, net, test):
    """The common start (W_hh = GAIN I) reading the first test sequence."""
    one = test.take(slice(0, 1))
    loss = lambda out: F.mse_loss(out[0].squeeze(-1), one.y)                  # noqa: E731
    g = gradient_flow(net, (one.x,), loss).hidden()[0, 0].double()               # (T,) ||dL/dh_t||
    h = capture(net, (one.x,)).trace[0][0]["hidden"]                            # (T, H)
    T, factor = len(g), float(g[0] / g[-1])
    look = (f"the ||dL/dh_t|| panel: going back from step {T - 1} to step 0 the error signal grows "
            f"x{factor:.3g} (x{factor ** (1 / (T - 1)):.3f} per step, W_hh's gain is {GAIN}), and the "
            f"hidden state (opened by the link) grows from at most {float(h[0].max()):.3g} at step 0 "
            f"to {float(h[-1].max()):.3g} at step {T - 1} (steps counted from 0, as on the page).")
    return ctx.page("clipping_start.html", net, (one.x,),
                    f"elman (ReLU, W_hh = {GAIN} I) before training, adding problem T={T}, test sequence 0",
                    look, view="quantity=hidden", loss_fn=loss,
                    loss_label="squared error of the answer after the last step")


def _plot(ctx: Context, curves: dict) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (name, (loss, norm)) in enumerate(curves.items()):
        color = f"C{k}"
        axes[0].semilogy(range(1, len(loss) + 1), loss, color=color, label=name)
        axes[1].semilogy(range(1, len(norm) + 1), norm, color=color, label=name)
        broken = next((i for i, v in enumerate(loss) if not math.isfinite(v)), None)
        if broken is not None:       # a NaN/inf curve simply stops: mark where
            for ax in axes:
                ax.axvline(broken + 1, color=color, ls="--",
                           label=f"{name}: not finite from update {broken + 1}")
    axes[0].set_ylabel("training loss (MSE)")
    axes[1].set_ylabel("gradient norm before clipping")
    for ax in axes:
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend()
    path, ref = ctx.figure("clipping.png")
    save(fig, path)
    return ref
