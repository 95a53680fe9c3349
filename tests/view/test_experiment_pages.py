"""The committed pages of docs/experiments.md in headless Chromium: each opens from disk through
the report's link without a JavaScript error, on the view the link names, and the LSTM page's
memory cell reads off the page as the values its data block holds.  Skipped where Chromium is
not installed."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from test_view_browser import browser  # noqa: F401  (the module's headless Chromium, skipped without one)
from view_helpers import page_data, trace_blocks

DOCS = Path(__file__).resolve().parents[2] / "docs"
LINK = re.compile(r"\]\((experiments/[^)#\s]+\.html)#([^)]*)\)")
SCREENSHOTS = os.environ.get("RNNKIT_VIEW_SCREENSHOTS")


def links() -> dict:
    """{page file: {fragment key: value}} of every page link in docs/experiments.md."""
    text = (DOCS / "experiments.md").read_text(encoding="utf-8")
    return {DOCS / ref: dict(kv.split("=") for kv in frag.split("&")) for ref, frag in LINK.findall(text)}


def test_every_committed_page_opens_on_its_linked_view(browser):  # noqa: F811
    found = links()
    assert len(found) >= 4
    for path, view in found.items():
        browser.open(path, "#" + "&".join(f"{k}={v}" for k, v in view.items()))
        assert browser.exceptions == [] and browser.js("window.rnnkitView.errors") == [], path.name
        assert browser.js("document.getElementById('quantity').value") == view["quantity"], path.name
        if "unit" in view:
            assert browser.js("+document.getElementById('unit').value") == int(view["unit"]), path.name
        assert browser.js("document.querySelectorAll('#flow-plot path[data-name]').length") >= 1, path.name


def test_the_lstm_page_shows_its_memory_cell(browser, tmp_path):  # noqa: F811
    """Hover the linked cell unit at a few steps: the pointer reads the page's own numbers."""
    path = DOCS / "experiments" / "adding_lstm.html"
    view = links()[path]
    assert view["quantity"] == "cell"                  # the report sends the reader to the memory cell
    data = page_data(path.read_text(encoding="utf-8"))
    cell = trace_blocks(data)[(0, 0, "cell")]
    unit, T = int(view["unit"]), data["steps"]
    browser.open(path, f"#quantity={view['quantity']}&unit={unit}")
    canvas = "document.querySelector('canvas[data-name=cell]')"
    browser.js(f"{canvas}.scrollIntoView({{block: 'center'}})")
    left, top, width = browser.js(f"(() => {{ const r = {canvas}.getBoundingClientRect();"
                                  f" return [r.left, r.top, r.width]; }})()")
    start, shown = browser.js("[window.rnnkitView.state.start, window.rnnkitView.state.width]")
    end = min(start + shown, T)
    row = browser.js(f"{canvas}.height") / data["model"]["units"]["cell"]
    for step in (start, (start + end) // 2, end - 1):
        browser.call("Input.dispatchMouseEvent", type="mouseMoved",
                     x=left + (step - start + 0.5) * width / (end - start), y=top + (unit + 0.5) * row)
        name, got_unit, value = browser.js("(() => { const p = document.getElementById('pointer');"
                                           " return [p.dataset.name, +p.dataset.unit, +p.dataset.value]; })()")
        assert (name, got_unit) == ("cell", unit)
        assert value == pytest.approx(cell[step, unit], abs=1e-5)
    assert browser.exceptions == []
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    shot = browser.screenshot(folder / "adding_lstm.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
