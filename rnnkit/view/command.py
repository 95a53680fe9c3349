"""``rnnkit view RUN [--input FILE] [--out PAGE.html]``: the page of a trained run.

The network is rebuilt from the run's checkpoint (its config, its task as saved, the weights
that eval/predict use) and reads one sequence:

    text          --input: a UTF-8 file (default: the held-out end of the run's text, at most
                  2,000 characters); gradient flow: cross-entropy of the last prediction
    forecasting   --input: a CSV column (--target, default the trained one; default: the run's
                  series); the network reads the series as one sequence; lines: the input, the
                  truth (the next value), the forecast from the last ``window`` values (as
                  trained, as ``rnnkit predict`` gives it) and the forecast from the whole prefix
    classifying   --input: a CSV with one sequence per row (--row, default 1; default: the first
                  test sequence); the class probabilities after each step (the network reading
                  the prefix up to it)
    synthetic     a sequence drawn by the task (no --input)

Gradient flow uses the task's own loss on this sequence, except for text (see above).
Bad input -- no checkpoint, an input the task cannot read, an input past the page's cap --
is one UserError line (exit 2), and nothing is written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..train import checkpoint, config as cfgmod, data, infer, tasks
from ..train.errors import UserError
from ..train.model import Net
from ..train.tasks.classify import read_rows
from .build import Page, page

TEXT_STEPS = 2000            # characters read from the run's own text when no --input is given
PREFIX_BATCH = 256           # prefixes per call when outputs per step come from prefixes


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint.safetensors")
    p.add_argument("--input", metavar="FILE", help="text file (text runs) or CSV (forecasting, "
                   "classification); default: the run's own data")
    p.add_argument("--target", metavar="COLUMN", help="forecasting: the CSV column (default: the trained one)")
    p.add_argument("--row", type=int, default=1, help="classification: the CSV row to read (from 1)")
    p.add_argument("--out", metavar="PAGE", help="write the page here (default: RUN/view.html)")
    p.add_argument("--max-steps", type=int, default=None, help="the page's step cap (default: from its size)")
    p.add_argument("--title", default="", help="the page's title")


@dataclasses.dataclass
class Run:
    """A trained run, restored: its config, its task (without data), its network in eval mode."""

    path: str
    cfg: cfgmod.Config
    task: tasks.Task
    net: Net


def load_run(path: str) -> Run:
    """The run's network with the weights eval/predict use; UserError when it cannot be."""
    cfg, task, net = infer.load(path)
    return Run(path, cfg, task, net)


# ---------- per-step outputs ----------

@torch.no_grad()
def prefix_outputs(net: Net, x: torch.Tensor) -> torch.Tensor:
    """x (1, T, I) -> (T, K): the output a 'last'-readout network gives for every prefix x[:, :t+1]
    (the sequence as if it ended at step t), in batches of prefixes with lengths."""
    T = x.shape[1]
    outs = []
    for a in range(0, T, PREFIX_BATCH):
        lengths = torch.arange(a + 1, min(a + PREFIX_BATCH, T) + 1)
        batch = x[:, :int(lengths[-1])].expand(len(lengths), -1, -1)
        outs.append(net(batch, lengths)[0])
    return torch.cat(outs)


def _ids(text: str, vocab, what: str) -> torch.Tensor:
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted({ch for ch in text if ch not in index})
    if unknown:
        raise UserError(f"{what}: characters {''.join(unknown)!r} are not in the model's vocabulary")
    return torch.tensor([[index[ch] for ch in text]])


# ---------- one builder per kind of task ----------

def text_page(run: Run, args) -> Page:
    """Characters coloured by a unit; signals: the model's p(next character) and its surprise."""
    if args.input:
        text, what = data.open_text(args.input, "--input"), f"--input {args.input}"
    else:
        built = tasks.build(run.cfg)                 # its vocabulary is the file's, as when trained
        text = "".join(built.vocab[i] for i in built.test_ids[:TEXT_STEPS].tolist())
        what = "the run's text"
    ids = _ids(text, run.task.vocab, what)
    with torch.no_grad():
        logp = F.log_softmax(run.net(ids)[0][0], -1)                     # (T, V)
    p_next = np.r_[logp[:-1].gather(1, ids[0, 1:, None]).exp().squeeze(1).numpy(), np.nan]
    loss = None
    if len(text) > 1:
        loss = lambda out: F.cross_entropy(out[0][0, -2], ids[0, -1])  # noqa: E731
    return _page(run, args, (ids,), loss, f"cross-entropy of the last prediction ({text[-1]!r} after step {len(text) - 2})",
                 text=text, signals={"p(next character)": p_next, "surprise (bits)": -np.log2(p_next)})


def window_inputs(task, values: np.ndarray):
    """Every window of ``values`` as the network reads it: (x (N, w, 1), offset (N,), scale (N,)),
    N = len(values) - w + 1; the forecast after window j is offset[j] + scale[j] * output[j]."""
    windows = np.lib.stride_tricks.sliding_window_view(values, task.window)
    encode = getattr(task, "encode", None)
    if encode is not None:
        return encode(windows)
    n = len(windows)                                  # checkpoints before Forecast.encode: the level
    x = torch.tensor((windows - task.mean) / task.std, dtype=torch.float32).unsqueeze(-1)
    return x, np.full(n, task.mean), np.full(n, task.std)


def series_page(run: Run, args) -> Page:
    """Input, truth (the next value) and the forecast from each window, as trained and as
    ``rnnkit predict`` gives it.  When every window reads a slice of one sequence (the series
    standardised), the page traces the network reading the whole series as that sequence (and
    adds its forecast from the whole prefix); otherwise it traces the last window."""
    task = run.task
    if args.input:
        values, _ = data.read_csv_column(args.input, args.target or run.cfg.target)
    else:
        values = tasks.build(run.cfg).series
    w = task.window
    if len(values) <= w:
        raise UserError(f"--input {args.input}: the series has {len(values)} values; the model's "
                        f"window of {w} needs at least {w + 1}")
    x, offset, scale = window_inputs(task, values[:-1])              # window j predicts values[j + w]
    with torch.no_grad():
        forecast = offset + scale * run.net(x)[0].squeeze(-1).double().numpy()
    one_sequence = bool(torch.equal(x[1:, :-1], x[:-1, 1:]))
    start = 0 if one_sequence else len(values) - 1 - w               # the traced steps: start .. n-2
    seq = torch.cat([x[0], x[1:, -1]])[None] if one_sequence else x[-1:]
    T = seq.shape[1]
    by_step = np.r_[np.full(w - 1, np.nan), forecast]               # step t: the window ending at t
    lines = {"input": values[start:-1], "truth": values[start + 1:], "forecast": by_step[start:]}
    if one_sequence:
        prefix = prefix_outputs(run.net, seq).squeeze(-1).double().numpy()[w - 1:]
        lines["forecast from the prefix"] = np.r_[np.full(w - 1, np.nan), offset + scale * prefix]
    y = torch.tensor([(values[-1] - offset[-1]) / scale[-1]], dtype=torch.float32)
    split = tasks.Split(seq, y, torch.tensor([T]))
    what = ("the network reading the whole series as one sequence" if one_sequence else
            f"the last window, values {start}-{len(values) - 2} (each window is read on its own scale)")
    return _page(run, args, (seq,), lambda out: task.loss(out[0], split)[0],
                 f"squared error of the last forecast; traces and gradients: {what}", series=lines)


def classes_page(run: Run, args) -> Page:
    """The sequence (standardised channels) and the class probabilities after each step."""
    task = run.task
    if args.input:
        rows = read_rows(args.input, task.n_in)
        if not 1 <= args.row <= len(rows):
            raise UserError(f"--row {args.row}: {args.input} has {len(rows)} row(s)")
        x = ((torch.from_numpy(rows[args.row - 1]) - task.mean) / task.std).unsqueeze(0).float()
        label = None
    else:
        test = tasks.build(run.cfg).tests["test"]
        n = int(test.lengths[0])
        x, label = test.x[:1, :n], int(test.y[0])
    probs = task.probabilities(prefix_outputs(run.net, x)).numpy()
    target = label if label is not None else int(probs[-1].argmax())
    split = tasks.Split(x, torch.tensor([target]), torch.tensor([x.shape[1]]))
    what = f"the true class {task.classes[target]!r}" if label is not None else \
        f"the predicted class {task.classes[target]!r}"
    return _page(run, args, (x,), lambda out: run.task.loss(out[0], split)[0],
                 f"the task's loss of the final prediction against {what}",
                 classes={"names": task.classes, "probs": probs, "label": label})


def synthetic_page(run: Run, args) -> Page:
    """The first test sequence the task draws; per-step outputs beside the input channels."""
    if args.input:
        raise UserError(f"--input: a {run.cfg.task} model reads sequences its task draws; run without --input")
    task = tasks.build(run.cfg)                  # drawn again from the run's seed, loss settings too
    test = task.tests["test"].take(slice(0, 1))
    with torch.no_grad():
        if run.net.readout == "all":
            out = run.net(test.x)[0][0]
        else:
            out = prefix_outputs(run.net, test.x)
    loss = lambda o: task.loss(o[0], test)[0]                          # noqa: E731
    label = f"the {run.cfg.task} task's loss on this sequence"
    if run.task.tokens:
        text = "".join(str(int(s)) for s in test.x[0])
        return _page(run, args, (test.x,), loss, label, text=text,
                     signals={"target symbol": test.y[0].double().numpy(), "output argmax": out.argmax(-1).double().numpy()})
    series = {f"input {k}": test.x[0, :, k].numpy() for k in range(test.x.shape[2])}
    series["output"] = out[:, 0].numpy()
    if test.y.dim() == 2:
        series["truth"] = test.y[0].numpy()
    return _page(run, args, (test.x,), loss, label, series=series)


BUILDERS: Dict[type, Callable[[Run, object], Page]] = {
    tasks.Text: text_page, tasks.Forecast: series_page, tasks.Classify: classes_page,
}


def _page(run: Run, args, inputs, loss_fn, loss_label: str, **view) -> Page:
    """The library's page; its ValueErrors (the cap, mismatched lengths) become UserErrors."""
    title = args.title or f"{Path(run.path).name}: {run.cfg.cell} on {run.cfg.task}"
    try:
        return page(run.net, inputs, loss_fn=loss_fn, loss_label=loss_label, title=title,
                    note=f"run {run.path}", max_steps=args.max_steps, **view)
    except ValueError as e:
        where = f"--input {args.input}" if args.input else "input"
        raise UserError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def build_page(args) -> Page:
    """The page for parsed arguments (the CLI's work, callable from tests)."""
    run = load_run(args.run)
    builder = next((b for cls, b in BUILDERS.items() if isinstance(run.task, cls)), synthetic_page)
    return builder(run, args)


def run(args) -> int:
    out = Path(args.out) if args.out else checkpoint.resolve_path(args.run).parent / "view.html"
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such folder {out.parent}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps: expected 1 or more, got {args.max_steps}")
    result = build_page(args)
    result.save(out)
    print(f"wrote {out} ({result.size / 1e6:.2f} MB, {result.steps} steps, values in {result.bits} bits)")
    return 0
