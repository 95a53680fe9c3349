"""The page in headless Chromium, as a person would use it: it loads from a file without a
JavaScript error, its plots exist and hold the model's numbers, a selection changes the view,
and a screenshot is saved.  Skipped where Chromium is not installed."""
from __future__ import annotations

import os
import statistics
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.view import page

from view_browser import Browser, chromium
from view_helpers import page_data, trace_blocks

TEXT = ('The "quick" brown fox (jumps over) the lazy dog.\nA second line, with "quotes" '
        'and (brackets (nested)) in it.\n') * 2
VOCAB = sorted(set(TEXT))
# Screenshots go to the test's temporary folder, or to this folder when it is set.
SCREENSHOTS = os.environ.get("RNNKIT_VIEW_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (/usr/bin/chromium; `make test` installs Debian's "
                    "package when run as root): the page's browser tests are skipped")
    b = Browser(exe)
    yield b
    b.close()


def clean(b: Browser) -> None:
    """The page threw nothing and reported nothing."""
    assert b.exceptions == [], b.exceptions
    assert b.js("window.rnnkitView.errors") == []


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor([[VOCAB.index(c) for c in text]])


class CharModel(torch.nn.Module):
    """One-hot characters -> a 2-layer bidirectional LSTM -> next-character logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = rnnkit.LSTM(len(VOCAB), 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, len(VOCAB))

    def forward(self, ids):
        out, state = self.rnn(F.one_hot(ids, len(VOCAB)).float())
        return self.head(out), state


@pytest.fixture(scope="module")
def text_page(tmp_path_factory):
    """(path, page data, the layer's own trace) of the character model reading TEXT."""
    model, ids = CharModel().eval(), ids_of(TEXT)
    p = page(model, (ids,), loss_fn=lambda out: F.cross_entropy(out[0][0, -2], ids[0, -1]),
             loss_label="last prediction", text=TEXT)
    path = p.save(tmp_path_factory.mktemp("page") / "text.html")
    with torch.no_grad():
        trace = model.rnn(F.one_hot(ids, len(VOCAB)).float(), return_trace=True)[-1]
    return path, page_data(p.html), trace


def hover(b: Browser, name: str, step: int, unit: int) -> dict:
    """Move the mouse over (step, unit) of a heatmap; the readout as {name: value} and the
    value under the pointer."""
    b.js(f"document.querySelector('canvas[data-name={name}]').scrollIntoView({{block: 'center'}})")
    rect = b.js(f"(() => {{ const r = document.querySelector('canvas[data-name={name}]').getBoundingClientRect();"
                f" return [r.left, r.top, r.width]; }})()")
    start, end = b.js("[window.rnnkitView.state.start, Math.min(window.rnnkitView.state.start + "
                      "window.rnnkitView.state.width, %d)]" % b.js("JSON.parse(document.getElementById('rnnkit-data').textContent).steps"))
    row = b.js(f"document.querySelector('canvas[data-name={name}]').height") / b.js(
        f"JSON.parse(document.getElementById('rnnkit-data').textContent).model.units['{name}']")
    x = rect[0] + (step - start + 0.5) * rect[2] / (end - start)
    y = rect[1] + (unit + 0.5) * row
    b.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    values = b.js("Object.fromEntries([...document.querySelectorAll('#readout tr[data-name]')]"
                  ".map(tr => [tr.dataset.name, tr.dataset.value === '' ? null : +tr.dataset.value]))")
    pointer = b.js("(() => { const p = document.getElementById('pointer'); return p && "
                   "[p.dataset.name, +p.dataset.unit, +p.dataset.value]; })()")
    assert b.js("+document.getElementById('readout-step').textContent") == step
    return {"values": values, "pointer": pointer}


def half_step(data: dict, layer: int, direction: int, name: str, unit: int) -> float:
    m = data["model"]
    k = (layer * m["directions"] + direction) * len(m["names"]) + m["names"].index(name)
    return data["trace"]["blocks"][k]["step"][unit] / 2 + 1e-6


def test_the_page_shows_the_models_numbers(browser, text_page):
    path, data, trace = text_page
    browser.open(path)
    clean(browser)
    T, names = len(TEXT), list(data["model"]["names"])
    assert browser.js("document.querySelectorAll('#text span').length") == T
    assert browser.js("[...document.querySelectorAll('#heatmaps canvas')].map(c => c.dataset.name)") == names
    assert browser.js("[...document.querySelectorAll('#heatmaps canvas')].every(c => c.width > 0 && c.height >= 6)")
    assert browser.js("document.querySelectorAll('#flow-plot path[data-name]').length") == 4   # 2 layers x (h, c)
    assert browser.js("document.querySelectorAll('#unit-plot path[data-name]').length") == len(names)
    assert browser.js("document.querySelectorAll('#top-table tbody tr').length") == 6          # 6 units
    assert "vanishing" in browser.js("document.getElementById('flow-story').textContent") or \
        "from step" in browser.js("document.getElementById('flow-story').textContent")
    for name, step, unit in [("forget_gate", 5, 2), ("cell", 17, 0), ("hidden", 60, 5)]:
        seen = hover(browser, name, step, unit)
        assert seen["pointer"][:2] == [name, unit]
        want = trace[0][0][name][0, step, unit].item()
        assert abs(seen["pointer"][2] - want) <= half_step(data, 0, 0, name, unit)
        for n, v in seen["values"].items():              # the selected unit (0), every quantity
            assert abs(v - trace[0][0][n][0, step, 0].item()) <= half_step(data, 0, 0, n, 0), n
    clean(browser)


def select(b: Browser, element: str, value) -> None:
    """Pick a value in a control as a person would: set it and fire its change event."""
    b.js(f"(() => {{ const e = document.getElementById('{element}'); e.value = '{value}';"
         f" e.dispatchEvent(new Event(e.type === 'range' ? 'input' : 'change', {{bubbles: true}})); }})()")


def test_a_selection_changes_the_view(browser, text_page, tmp_path):
    path, data, trace = text_page
    browser.open(path)
    image = "document.querySelector('canvas[data-name=cell]').toDataURL()"
    colours = "[...document.querySelectorAll('#text span')].slice(0, 40).map(s => s.style.backgroundColor).join()"
    before, text_before = browser.js(image), browser.js(colours)
    select(browser, "layer", 1)
    select(browser, "direction", 1)
    select(browser, "unit", 4)
    assert "layer 2, reverse" in browser.js("document.getElementById('unit-title').textContent")
    assert browser.js(image) != before and browser.js(colours) != text_before
    seen = hover(browser, "input_gate", 30, 1)["values"]
    for n, v in seen.items():
        assert abs(v - trace[1][1][n][0, 30, 4].item()) <= half_step(data, 1, 1, n, 4), n
    select(browser, "width", 50)
    select(browser, "scroll", 60)
    assert browser.js("document.getElementById('window-label').textContent").startswith("steps 60–109")
    assert browser.js("document.querySelector('#unit-plot svg').dataset.x0") == "60"
    clean(browser)
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    shot = browser.screenshot(folder / "text_page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_top_units_are_ranked_by_correlation(browser, text_page):
    path, data, _ = text_page
    browser.open(path)
    select(browser, "quantity", "hidden")
    select(browser, "signal", "inside ( )")
    rows = browser.js("[...document.querySelectorAll('#top-table tbody tr')].map(tr => [+tr.dataset.unit, +tr.dataset.r])")
    values = trace_blocks(data)[(0, 0, "hidden")]                       # as the page reads them
    s = np.asarray(data["signals"]["inside ( )"], dtype=float)
    r = np.array([np.corrcoef(values[:, u], s)[0, 1] for u in range(values.shape[1])])
    assert [u for u, _ in rows] == list(np.argsort(-np.abs(r)))
    np.testing.assert_allclose([v for _, v in rows], r[[u for u, _ in rows]], atol=1e-9)
    browser.js("document.querySelector('#top-table tbody tr:nth-child(3)').click()")
    assert browser.js("+document.getElementById('unit').value") == rows[2][0]


def test_series_and_class_pages(browser, tmp_path):
    torch.manual_seed(0)
    gru = rnnkit.GRU(1, 5, batch_first=True)
    x = torch.sin(torch.arange(80.0) / 4).view(1, -1, 1)
    series = {"input": x[0, :, 0].numpy(), "truth": np.r_[x[0, 1:, 0].numpy(), np.nan],
              "forecast": np.linspace(-1, 1, 80)}
    browser.open(page(gru, x, series=series, loss_fn=lambda o: o[0][0, -1].sum()).save(tmp_path / "series.html"))
    clean(browser)
    assert browser.js("[...document.querySelectorAll('#task-plot path[data-name]')].map(p => p.dataset.name)") == \
        ["input", "truth", "forecast"]
    elman = rnnkit.Elman(3, 4, batch_first=True, bidirectional=True)
    probs = torch.softmax(torch.randn(12, 3), -1).numpy()
    xs = torch.randn(1, 12, 3)
    classes = {"names": ["a", "b", "c"], "probs": probs, "label": 1}
    browser.open(page(elman, xs, classes=classes).save(tmp_path / "classes.html"))
    clean(browser)
    assert browser.js("document.querySelectorAll('#task-plot path[data-name]').length") == 3     # inputs
    assert browser.js("[...document.querySelectorAll('#task-plot2 path[data-name]')].map(p => p.dataset.name)") == \
        ["p(a)", "p(b) (true class)", "p(c)"]
    assert "No loss was given" in browser.js("document.getElementById('flow-what').textContent")
    seen = hover(browser, "hidden", 7, 3)
    assert abs(seen["pointer"][2] - elman(xs, return_trace=True)[-1][0][0]["hidden"][0, 7, 3].item()) < 0.01


def test_a_javascript_error_is_caught(browser, tmp_path):
    """The check these tests rely on: a page whose data cannot be read reports the error."""
    p = page(rnnkit.GRU(2, 3, batch_first=True), torch.randn(1, 5, 2))
    broken = tmp_path / "broken.html"
    broken.write_text(p.html.replace('"blob":"', '"blob":"%%%'), encoding="utf-8")
    browser.open(broken)
    assert browser.js("window.rnnkitView.errors.length") > 0
    assert browser.js("document.getElementById('errors').hidden") is False


def test_the_big_page_is_small_and_fast(browser, tmp_path):
    """2,000 characters through a 2-layer LSTM(256), untrained (its values compress worst):
    under 5 MB, and open-to-rendered under 2 s in headless Chromium (median of 3)."""
    alphabet = string.ascii_letters + string.digits + " .,;:'\"()\n"
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(alphabet), 2000))
    ids = torch.tensor([[alphabet.index(c) for c in text]])
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(len(alphabet), 256, num_layers=2, batch_first=True)
    p = page(lstm, F.one_hot(ids, len(alphabet)).float(), text=text,
             loss_fn=lambda out: out[0][0, -1].sum())
    assert p.size < 5_000_000
    path = p.save(tmp_path / "big.html")
    times = []
    for _ in range(3):
        browser.open(path)
        clean(browser)
        times.append(browser.js("window.rnnkitView.renderMs"))
    assert statistics.median(times) < 2000, times
