"""``rnnkit.view.page``: one self-contained HTML page of a recurrent network reading a sequence.

The page holds its data and script inline (no server, no network) and shows, for a chosen
layer, direction and unit: a heatmap units x steps of every trace quantity of the cell, the
sequence itself (text coloured by the unit, a series with forecast and truth, or a class
sequence with its probabilities per step), the units that track a signal best (correlation),
and ||dL/dh_t|| over the steps (log scale) from ``rnnkit.gradient_flow``.

Symbols: T steps, H units, L layers, D directions, K classes.
"""
from __future__ import annotations

import html
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..train.checkpoint import atomic_write
from . import encode, signals as sig
from .capture import Capture, capture, flow

VALUES_CAP = 16_000_000      # trace values (L * D * sum of units * T) a page may hold
BUDGET = 4_900_000           # bytes of the whole page; the trace gets fewer bits past it
LABELS = {"input_gate": "i  input gate", "forget_gate": "f  forget gate", "output_gate": "o  output gate",
          "reset_gate": "r  reset gate", "update_gate": "z  update gate", "candidate": "candidate",
          "cell": "c  memory cell", "hidden": "h  hidden state", "output": "y  output (fed back)"}


@dataclass
class Page:
    """The page: ``html`` (str), the quantisation ``bits`` and ``steps`` it shows.

    ``save(path)`` writes it atomically; in Jupyter it shows itself (``_repr_html_``).
    """

    html: str
    bits: int
    steps: int

    @property
    def size(self) -> int:
        """Bytes of the UTF-8 file."""
        return len(self.html.encode("utf-8"))

    def save(self, path) -> Path:
        """Write to ``path`` through a temporary file in the same folder and a rename."""
        path = Path(path)
        atomic_write(path, self.html.encode("utf-8"))
        return path

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
                f'style="width:100%;height:900px;border:1px solid #ccc"></iframe>')


def max_steps_for(cap: Capture) -> int:
    """The step cap of this layer: VALUES_CAP over the values one step adds."""
    per_step = sum(a.shape[1] for lay in cap.trace for d in lay for a in d.values())
    return max(VALUES_CAP // per_step, 1)


def page(model, inputs, *, loss_fn: Optional[Callable] = None, loss_label: str = "",
         text: Optional[str] = None, series: Optional[Mapping[str, Sequence[float]]] = None,
         classes: Optional[Mapping] = None, signals: Optional[Mapping[str, Sequence[float]]] = None,
         sample: int = 0, layer: Optional[str] = None, title: str = "", note: str = "",
         max_steps: Optional[int] = None, budget: int = BUDGET) -> Page:
    """The page of ``model`` reading ``inputs`` (see the module doc).

    model     an rnnkit layer or a module containing one (run as it is: call ``.eval()`` first)
    inputs    a tensor or a tuple of the model's positional arguments; the page shows batch
              element ``sample`` (valid steps only when the layer is given lengths)
    loss_fn   model output -> scalar loss, for ||dL/dh_t|| (None: no gradient panel);
              ``loss_label`` says in words what the loss is
    text      the T characters read (text view: each coloured by the chosen unit)
    series    {name: (T,) values}: the series view ('input', 'forecast', 'truth', any other)
    classes   {'names': K names, 'probs': (T, K) probabilities per step, 'label': index or None}
    signals   {name: (T,) values}: more signals to rank units by (beside the view's own)
    layer     the name of the rnnkit layer inside ``model`` (default: the first)
    max_steps the step cap (default: VALUES_CAP trace values); longer inputs: ValueError
    budget    bytes for the page; past it the trace values get fewer bits (8 down to 4)
    """
    with _one_thread():
        cap = capture(model, inputs, sample, layer)
        limit = max_steps or max_steps_for(cap)
        if cap.steps > limit:
            raise ValueError(f"input: {cap.steps} steps, more than the page's cap of {limit} steps "
                             f"for this network; shorten the input")
        data = _base(cap, title, note, limit)
        data.update(_view(cap, text, series, classes))
        data["signals"] = _signals(cap, data, series, signals)
        data["flow"] = _flow(model, inputs, loss_fn, loss_label, cap)
    data["trace"] = {"bits": 0, "blob": "", "blocks": []}
    rest = len(render(data).encode("utf-8"))
    data["trace"] = encode.pack([d[n] for lay in cap.trace for d in lay for n in cap.names], budget - rest)
    return Page(render(data), data["trace"]["bits"], cap.steps)


@contextmanager
def _one_thread():
    """One intra-op thread while the page's sequence runs: its per-step tensors are tiny, and on
    a busy machine extra threads only wait for each other (10x slower gradient flow measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _base(cap: Capture, title: str, note: str, limit: int) -> Dict:
    """The model's description: layers, directions, trace names, their labels and unit counts."""
    first = cap.trace[0][0]
    rnn = cap.layer
    return {
        "title": title or f"{type(rnn).__name__} reading {cap.steps} steps",
        "note": note,
        "model": {"describe": repr(rnn).replace("\n", " "), "cell": rnn.cell.name,
                  "layers": len(cap.trace), "directions": len(cap.trace[0]), "names": list(cap.names),
                  "labels": {n: LABELS.get(n, n) for n in cap.names},
                  "units": {n: int(first[n].shape[1]) for n in cap.names}},
        "steps": cap.steps,
        "maxSteps": limit,
    }


def _check_steps(name: str, n: int, T: int) -> None:
    if n != T:
        raise ValueError(f"{name}: expected {T} steps (the sequence the layer read), got {n}")


def _view(cap: Capture, text, series, classes) -> Dict:
    """The task view's data: exactly one of text / series / classes, else the layer's input."""
    T = cap.steps
    given = [k for k, v in (("text", text), ("series", series), ("classes", classes)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"text/series/classes: give one view, got {given}")
    small_input = encode.rounded(cap.x) if cap.x.shape[1] <= sig.MAX_CHANNELS else None
    if text is not None:
        _check_steps("text", len(text), T)
        return {"kind": "text", "text": text}
    if series is not None:
        for k, v in series.items():
            _check_steps(f"series[{k!r}]", len(v), T)
        return {"kind": "series", "series": {k: encode.rounded(v) for k, v in series.items()}}
    if classes is not None:
        probs = np.asarray(classes["probs"], dtype=np.float64)
        _check_steps("classes['probs']", probs.shape[0], T)
        names = [str(n) for n in classes["names"]]
        if probs.ndim != 2 or probs.shape[1] != len(names):
            raise ValueError(f"classes['probs']: expected (T, {len(names)}), got {probs.shape}")
        return {"kind": "classes", "input": small_input,
                "classes": {"names": names, "probs": encode.rounded(probs, 4), "label": classes.get("label")}}
    return {"kind": "sequence", "input": small_input}


def _signals(cap: Capture, data: Dict, series, extra) -> Dict[str, list]:
    """{name: (T,) list}: the view's signals, then the caller's."""
    found: Dict[str, np.ndarray] = {}
    if data["kind"] == "text":
        found.update(sig.text_signals(data["text"]))
    elif data["kind"] == "series":
        found.update({k: np.asarray(v, dtype=np.float64) for k, v in series.items()})
    else:
        found.update(sig.channel_signals(cap.x))
        if data["kind"] == "classes":
            c = data["classes"]
            found.update(sig.channel_signals(np.asarray(c["probs"]), "p", c["names"]))
    for k, v in (extra or {}).items():
        _check_steps(f"signals[{k!r}]", len(v), cap.steps)
        found[k] = np.asarray(v, dtype=np.float64)
    return {k: encode.rounded(v, 5) for k, v in found.items()}


def _flow(model, inputs, loss_fn, label: str, cap: Capture) -> Optional[Dict]:
    """||dL/ds_t|| per state (h[, c]) as (L, D, T) lists and the story of each layer/direction."""
    if loss_fn is None:
        return None
    norms, loss = flow(model, inputs, loss_fn, cap)
    return {"loss": loss, "what": label, "states": list(cap.layer.cell.state_names),
            "norms": [encode.rounded(n, 4) for n in norms],
            "story": [[story(norms[0][l, d], d) for d in range(norms[0].shape[1])]
                      for l in range(norms[0].shape[0])]}


def story(g: np.ndarray, direction: int) -> str:
    """One line on ||dL/dh_t|| (T,) of one layer and direction.

    Forward: how the norm changes going back in time, from the latest step it reaches to the
    earliest (a loss late in the sequence makes this the vanishing/exploding story).  Reverse:
    where it is largest and smallest (its gradient also arrives through the outputs at every
    step, so it has no single direction of travel).
    """
    nz = np.flatnonzero(np.isfinite(g) & (g > 0))
    if len(nz) == 0:
        return "no gradient reaches this direction"
    if len(nz) == 1:
        return f"the gradient reaches step {nz[0]} only"
    if direction == 1:
        hi, lo = int(nz[np.argmax(g[nz])]), int(nz[np.argmin(g[nz])])
        return (f"largest at step {hi} ({g[hi]:.3g}), smallest at step {lo} ({g[lo]:.3g}): "
                f"x{g[lo] / g[hi]:.3g} over {abs(hi - lo)} steps")
    near, far = int(nz[-1]), int(nz[0])
    factor = g[far] / g[near]
    per_step = factor ** (1.0 / (near - far))
    verdict = ("vanishing" if factor < 1e-2 else "exploding" if factor > 1e2 else "kept within a factor of 100")
    return (f"from step {near} back to step {far} ({near - far} steps) the norm changes x{factor:.3g} "
            f"(x{per_step:.4g} per step): {verdict}")


def _static(name: str) -> str:
    return resources.files("rnnkit.view").joinpath("static", name).read_text(encoding="utf-8")


def render(data: Dict) -> str:
    """The HTML: the template with the stylesheet, script and data inline (one pass, so that
    nothing inserted is read as a placeholder)."""
    parts = {"title": html.escape(data["title"]), "css": _static("page.css"), "js": _static("page.js"),
             "data": json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _static("page.html"))
