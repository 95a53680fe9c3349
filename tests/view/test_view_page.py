"""rnnkit.view.page without a browser: the page holds the model's numbers (trace to the stated
quantisation, gradient flow), for every cell; its caps, its errors and its file."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import registry
from rnnkit.view import Page, encode, page, signals
from rnnkit.view import build as page_module

from view_helpers import page_data, trace_blocks

X = torch.randn(3, 9, 4, generator=torch.Generator().manual_seed(0))
LENGTHS = torch.tensor([9, 6, 9])


def _layer(entry, kw, bidirectional=True):
    torch.manual_seed(1)
    layer = entry.layer(4, 5, num_layers=2, batch_first=True, bidirectional=bidirectional, **kw)
    return layer.eval() if layer.cell.noise_names else layer       # noise: random in training (helpers.make)


class _Head(nn.Module):
    """A model around an rnnkit layer: (x, lengths) -> (per-step logits, state)."""

    def __init__(self, rnn, calls: int = 1):
        super().__init__()
        self.rnn, self.head, self.calls = rnn, nn.Linear(rnn.hidden_size * 2, 3), calls

    def forward(self, x, lengths=None):
        for _ in range(self.calls):
            out, state = self.rnn(x, None, lengths=lengths)
        return self.head(out), state


@pytest.mark.parametrize("form", sorted(registry.forms()))
def test_page_holds_every_trace_quantity_of_the_cell(form):
    """Sample 1 (6 valid steps): every block, read back as the page reads it, equals the
    layer's own trace within half a quantisation step."""
    entry, kw = registry.forms()[form]
    rnn = _layer(entry, kw)
    data = page_data(page(rnn, (X, None, LENGTHS), sample=1).html)
    assert data["model"]["names"] == list(entry.trace_names)
    assert data["steps"] == 6 and data["model"]["layers"] == 2 and data["model"]["directions"] == 2
    _, _, trace = rnn(X, lengths=LENGTHS, return_trace=True)
    got = trace_blocks(data)
    for (l, d, name), values in got.items():
        want = trace[l][d][name][1, :6].numpy()
        assert values.shape == want.shape
        bound = _half_steps(data, l, d, name)
        assert np.all(np.abs(values - want) <= bound + 1e-6), (l, d, name)


def _half_steps(data, l, d, name):
    """(H,) half quantisation steps of one block, as the page states them."""
    m = data["model"]
    k = (l * m["directions"] + d) * len(m["names"]) + m["names"].index(name)
    return np.asarray(data["trace"]["blocks"][k]["step"]) / 2


def test_gradient_flow_is_rnnkits_for_this_input():
    rnn = _layer(registry.get("lstm"), {})
    model = _Head(rnn)
    loss = lambda out: out[0][:, -1].sum()  # noqa: E731
    data = page_data(page(model, (X, LENGTHS), loss_fn=loss, loss_label="sum", sample=0).html)
    want = rnnkit.gradient_flow(model, (X, LENGTHS), loss)
    assert data["flow"]["states"] == ["h", "c"]
    for k in range(2):
        np.testing.assert_allclose(np.asarray(data["flow"]["norms"][k], dtype=float),
                                   want.norms["rnn"][k].numpy(), rtol=1e-3, atol=1e-30)
    assert data["flow"]["loss"] == pytest.approx(want.loss)
    assert len(data["flow"]["story"]) == 2 and all(len(s) == 2 for s in data["flow"]["story"])


def test_no_loss_no_gradient_panel():
    assert page_data(page(_layer(registry.get("gru"), {}), X).html)["flow"] is None


def test_quantisation_is_within_half_a_step():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(size=(50, 4)) * [1, 10, 1e-3, 0], np.full((50, 1), 3.0)], 1)
    for bits in encode.BITS:
        q, lo, step = encode.quantise(a, bits)
        assert q.shape == (5, 50) and q.max() <= 2 ** bits - 1
        err = np.abs(encode.dequantise(q, lo, step) - a)
        assert np.all(err <= step / 2 + 1e-6 * np.abs(a).max(0) + 1e-12)
        assert np.all(encode.dequantise(q, lo, step)[:, 3:] == a[:, 3:])     # constant units exact


def test_fewer_bits_past_the_budget():
    blocks = [np.random.default_rng(1).normal(size=(400, 32))]
    assert encode.pack(blocks, 10 ** 9)["bits"] == 8
    small = encode.pack(blocks, 14000)
    assert small["bits"] < 8 and len(small["blob"]) <= 14000
    assert encode.pack(blocks, 10)["bits"] == encode.BITS[-1]
    back = encode.unpack(small, 400)[0]
    assert np.all(np.abs(back - blocks[0]) <= np.asarray(small["blocks"][0]["step"]) / 2 + 1e-6)


def test_a_small_budget_still_makes_a_page_and_says_its_bits():
    text = "ab" * 200
    ids = torch.tensor([[i % 2 for i in range(400)]])
    model = _Head(rnnkit.LSTM(2, 16, batch_first=True, bidirectional=True))
    x = nn.functional.one_hot(ids, 2).float()
    full = page(model, (x,), text=text)
    p = page(model, (x,), text=text, budget=full.size - 1)
    assert full.bits == 8 and p.bits < 8 and p.size < full.size
    assert page_data(p.html)["trace"]["bits"] == p.bits


def test_input_longer_than_the_cap_is_refused(monkeypatch):
    rnn = _layer(registry.get("elman"), {})
    with pytest.raises(ValueError, match="9 steps, more than the page's cap of 5 steps"):
        page(rnn, X, max_steps=5)
    monkeypatch.setattr(page_module, "VALUES_CAP", 2 * 2 * 5 * 4)        # L*D*H values a step: 4 steps
    with pytest.raises(ValueError, match="cap of 4 steps"):
        page(rnn, X)


@pytest.mark.parametrize("view, message", [
    ({"text": "short"}, "text: expected 9 steps"),
    ({"series": {"input": np.zeros(4)}}, "series\\['input'\\]: expected 9 steps"),
    ({"classes": {"names": ["a", "b"], "probs": np.zeros((9, 3))}}, "expected \\(T, 2\\)"),
    ({"text": "x" * 9, "series": {"input": np.zeros(9)}}, "give one view"),
    ({"signals": {"s": [1, 2]}}, "signals\\['s'\\]: expected 9 steps"),
])
def test_views_must_fit_the_sequence(view, message):
    with pytest.raises(ValueError, match=message):
        page(_layer(registry.get("gru"), {}), X, **view)


def test_the_model_around_the_layer():
    rnn = _layer(registry.get("lstm"), {})
    assert page_data(page(_Head(rnn), (X,), layer="rnn").html)["steps"] == 9
    with pytest.raises(ValueError, match="ran 2 times"):
        page(_Head(rnn, calls=2), (X,))
    with pytest.raises(ValueError, match="layer: expected one of \\['rnn'\\]"):
        page(_Head(rnn), (X,), layer="other")
    with pytest.raises(TypeError, match="rnnkit layer"):
        page(nn.Linear(4, 4), X)


def test_jordan_units_per_quantity():
    rnn = rnnkit.Jordan(4, 5, output_size=2, batch_first=True)
    units = page_data(page(rnn, X).html)["model"]["units"]
    assert units == {"hidden": 5, "output": 2}


def test_the_page_is_self_contained_and_its_data_safe():
    text = 'x</script><script>alert(1)</script>"' + "y" * 11
    ids = torch.zeros(1, len(text), 4)
    p = page(rnnkit.GRU(4, 3, batch_first=True), ids, text=text, title="<b>t</b>")
    assert page_data(p.html)["text"] == text
    assert p.html.count("</script>") == 2 and "<title>&lt;b&gt;t&lt;/b&gt;</title>" in p.html
    for pattern in (r"<script[^>]+src=", r"<link", r"@import", r"url\(", r"https?://(?!www\.w3\.org/2000/svg)"):
        assert not re.search(pattern, p.html), pattern


def test_save_is_atomic_and_repr_html_is_an_iframe(tmp_path):
    p = page(rnnkit.GRU(4, 3, batch_first=True), X)
    out = p.save(tmp_path / "view.html")
    assert out.read_text(encoding="utf-8") == p.html and p.size == out.stat().st_size
    assert sorted(f.name for f in tmp_path.iterdir()) == ["view.html"]
    with pytest.raises(FileNotFoundError):
        p.save(tmp_path / "missing" / "view.html")
    assert not (tmp_path / "missing").exists()
    shown = p._repr_html_()
    assert shown.startswith("<iframe srcdoc=\"") and "<script" not in shown


@pytest.mark.parametrize("g, direction, verdict", [
    (np.array([1e-6, 1e-4, 1e-2, 1.0]), 0, "x1e-06 (x0.01 per step): vanishing"),
    (np.array([1e3, 1e2, 10, 1.0]), 0, "exploding"),
    (np.array([0.5, 0.7, 1.0, 0.0]), 0, "from step 2 back to step 0"),
    (np.array([1e-6, 1e-3, 1.0, 0.0]), 1, "largest at step 2 (1), smallest at step 0 (1e-06): x1e-06 over 2 steps"),
    (np.zeros(4), 1, "no gradient reaches"),
    (np.array([0.0, 2.0, 0.0]), 0, "reaches step 1 only"),
])
def test_story(g, direction, verdict):
    assert verdict in page_module.story(g, direction)


def test_text_signals():
    s = signals.text_signals('a"bc"(d(e)f)\ng')
    assert s["inside double quotes"].tolist()[:6] == [0, 0, 1, 1, 0, 0]
    assert s["inside ( )"].tolist()[5:12] == [0, 1, 1, 1, 1, 1, 0]
    assert s["position in line"].tolist()[-3:] == [12, 0, 1]
    assert s["next is space"].tolist()[11] == 1
