"""Inference in one call (Backend.infer; the cpu backend's C++ ``infer``): a layer's forward without
autograd and no random draws runs its whole stack in one C++ call, one direction or both (with
lengths too: test_cpu_infer_lengths.py).  It returns what the layer-by-layer path returns (the
same kernels), and every other call keeps that path: a graph to record, a trace, noise in
training, another backend."""
import pytest
import torch

import rnnkit
from helpers import needs_cpu, without_cpu
from rnnkit.backends import cpu

T, B, I, H = 7, 3, 5, 6
ROUTE_THRESHOLDS = ("ONEDNN_ROWS", "ONEDNN_STEP_MACS", "ONEDNN_CALL_MACS", "ONEDNN_CALL_ROWS")   # CPU._onednn_pays
FORMS = {
    "rnn_relu": lambda **kw: rnnkit.RNN(I, H, nonlinearity="relu", **kw),
    "jordan": lambda **kw: rnnkit.Jordan(I, H, output_size=4, output_activation="sigmoid", **kw),
    "lstm": lambda **kw: rnnkit.LSTM(I, H, **kw),
    "lstm_proj_peephole": lambda **kw: rnnkit.LSTM(I, H, proj_size=4, peephole=True, **kw),
    "lstm_ln": lambda **kw: rnnkit.LSTM(I, H, layer_norm=True, **kw),
    "gru": lambda **kw: rnnkit.GRU(I, H, **kw),
    "gru_options": lambda **kw: rnnkit.GRU(I, H, zoneout=0.2, recurrent_dropout=0.3, clip_recurrent=0.5, **kw),
}


def layer_by_layer(model, *args, **kwargs):
    """The model's forward with the one-call path switched off."""
    return without_cpu("infer", model, *args, **kwargs)


def calls(model, *args, **kwargs):
    """How many times the forward took the backend's one-call path (asked, and it answered)."""
    seen = []
    original = cpu.CPU.infer

    def spy(self, *a, **kw):
        found = original(self, *a, **kw)
        if found is not None:
            seen.append(a)
        return found
    cpu.CPU.infer = spy
    try:
        model(*args, **kwargs)
    finally:
        cpu.CPU.infer = original
    return len(seen)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("form", list(FORMS))
def test_one_call_equals_the_layer_by_layer_path(form, bidirectional, with_hx, layout, dtype):
    torch.manual_seed(0)
    model = FORMS[form](num_layers=3, batch_first=layout == "batch_first", dropout=0.4,
                        bidirectional=bidirectional, backend="cpu").to(dtype).eval()
    x = torch.randn((T, I) if layout == "unbatched" else (B, T, I) if layout == "batch_first" else (T, B, I),
                    dtype=dtype)
    hx = None
    if with_hx:
        _, hx = layer_by_layer(model, x)                 # a state of the right form, nonzero
    with torch.no_grad():
        assert calls(model, x, hx) == 1
        out, h_n = model(x, hx)
        ref_out, ref_h = layer_by_layer(model, x, hx)
    assert out.shape == ref_out.shape                         # the same kernels; the projection's
    torch.testing.assert_close(out, ref_out)                  # sums may round in another order
    for got, want in zip(*(h if isinstance(h, tuple) else (h,) for h in (h_n, ref_h))):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


@needs_cpu
def test_the_one_call_outputs_are_new_tensors_and_the_state_is_left_alone():
    model = rnnkit.LSTM(I, H, num_layers=2, backend="cpu").eval()
    x, h0, c0 = torch.randn(T, B, I), torch.randn(2, B, H), torch.randn(2, B, H)
    keep = (h0.clone(), c0.clone())
    with torch.no_grad():
        out, (h, c) = model(x, (h0, c0))
        out2, _ = model(x, (h0, c0))
    torch.testing.assert_close(out, out2, rtol=0, atol=0)     # the second call did not write into the first's
    assert torch.equal(h0, keep[0]) and torch.equal(c0, keep[1])
    torch.testing.assert_close(h[-1], out[-1], rtol=0, atol=0)
    out.add_(1.0)                                             # an ordinary tensor, writable
    assert h.resize_(0).numel() == 0                         # and resizable


@needs_cpu
@pytest.mark.parametrize("case", ["grad", "bidirectional_grad", "lengths_grad", "lengths_bidirectional_grad",
                                  "trace", "training_noise", "training_dropout", "reference"])
def test_every_other_call_keeps_the_layer_by_layer_path(case):
    kw = {"num_layers": 2, "backend": "reference" if case == "reference" else "cpu"}
    if "bidirectional" in case:
        kw["bidirectional"] = True
    if case == "training_noise":
        kw["zoneout"] = 0.3
    if case == "training_dropout":
        kw["dropout"] = 0.3
    model = rnnkit.GRU(I, H, **kw)
    model.train(case.startswith("training"))
    x = torch.randn(T, B, I)
    args, kwargs = (x,), {}
    if case.startswith("lengths"):
        kwargs["lengths"] = torch.tensor([T, 2, 4])
    if case == "trace":
        kwargs["return_trace"] = True
    with torch.set_grad_enabled(case.endswith("grad")):
        assert calls(model, *args, **kwargs) == 0


@needs_cpu
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_bidirectional_stack_in_one_call_matches_torch(cell):
    """Both directions of every layer in one C++ call: torch.nn's output and final states, with
    and without an initial state (3 layers, the upper ones reading both directions' states)."""
    torch.manual_seed(0)
    ref = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, num_layers=3,
                                                                                bidirectional=True)
    model = rnnkit.convert.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, I)
    h0 = torch.randn(6, B, H)
    hx = (h0, torch.randn(6, B, H)) if cell == "lstm" else h0
    with torch.no_grad():
        for state in (None, hx):
            assert calls(model, x, state) == 1
            got, want = model(x, state), ref(x, state)
            torch.testing.assert_close(got[0], want[0])
            for g, w in zip(*(h if isinstance(h, tuple) else (h,) for h in (got[1], want[1]))):
                torch.testing.assert_close(g, w)


@needs_cpu
def test_the_kernels_name_what_a_bidirectional_call_gets_wrong():
    """The C++ entry point checks a two-direction stack itself: an odd number of layer entries,
    and an upper layer whose input is not both directions' states."""
    model = rnnkit.GRU(I, H, num_layers=2, bidirectional=True, backend="cpu")
    spec = cpu.BACKEND._spec(model.cell)
    x = torch.randn(T, B, I)
    layers = []
    for k in range(2):
        for d in range(2):
            w_ih, b_ih, rec = model._direction_params(k, d, x)
            layers.append([w.detach() for w in (w_ih, b_ih, *rec)])
    ext = cpu.extension()
    with pytest.raises(RuntimeError, match="one entry per layer and direction"):
        ext.infer(spec, x, [], layers[:3], None, 0, None, True)
    bad = [list(layer) for layer in layers]
    bad[2][0] = torch.randn(3 * H, H)                       # reads one direction's states only
    with pytest.raises(RuntimeError, match=r"weight_ih_l2: expected shape \(18, 12\)"):
        ext.infer(spec, x, [], bad, None, 0, None, True)


@needs_cpu
def test_training_without_noise_and_frozen_weights_take_the_one_call_path():
    """No graph is needed when nothing requires grad, in training mode too (no random draws)."""
    model = rnnkit.LSTM(I, H, num_layers=2, backend="cpu").train()
    model.requires_grad_(False)
    assert calls(model, torch.randn(T, B, I)) == 1


@needs_cpu
def test_bad_initial_state_is_named_before_the_one_call():
    model = rnnkit.GRU(I, H, num_layers=2, backend="cpu").eval()
    with torch.no_grad(), pytest.raises(Exception, match="hx"):
        model(torch.randn(T, B, I), torch.randn(1, B, H))


# -- plain LSTM inference on oneDNN's primitive (CPU._onednn_pays) -----------------------------
def onednn_calls(monkeypatch):
    """The list that records each call of the oneDNN route."""
    seen = []
    original = cpu._onednn_lstm

    def spy(*a):
        seen.append(a)
        return original(*a)
    monkeypatch.setattr(cpu, "_onednn_lstm", spy)
    return seen


@needs_cpu
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_large_plain_lstm_inference_runs_on_onednn_with_torchs_results(monkeypatch, bias, with_hx, bidirectional):
    for name in ROUTE_THRESHOLDS:   # every size counts as large
        monkeypatch.setattr(cpu.CPU, name, 1)
    seen = onednn_calls(monkeypatch)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=3, bias=bias, bidirectional=bidirectional)
    model = rnnkit.convert.from_torch(ref, backend="cpu").eval()
    x = torch.randn(T, B, I)
    D = 2 if bidirectional else 1
    hx = (torch.randn(3 * D, B, H), torch.randn(3 * D, B, H)) if with_hx else None
    with torch.no_grad():
        out, (h_n, c_n) = model(x, hx)
        want_out, (want_h, want_c) = ref(x, hx)
        mine_out, (mine_h, mine_c) = layer_by_layer(model, x, hx)
    assert len(seen) == 1
    for got, want, mine in ((out, want_out, mine_out), (h_n, want_h, mine_h), (c_n, want_c, mine_c)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got, mine, atol=1e-5, rtol=1e-4)   # our kernels, other rounding


@needs_cpu
@pytest.mark.parametrize("case", ["small", "variant", "float64", "onednn_off", "training_graph"])
def test_other_lstm_inference_keeps_our_kernels(monkeypatch, case):
    """The route takes only what oneDNN's primitive computes the same and faster: a plain float32
    LSTM with large steps, oneDNN switched on, no graph."""
    if case != "small":
        for name in ROUTE_THRESHOLDS:
            monkeypatch.setattr(cpu.CPU, name, 1)
    seen = onednn_calls(monkeypatch)
    model = rnnkit.LSTM(I, H, num_layers=2, backend="cpu", peephole=case == "variant").eval()
    x = torch.randn(T, B, I)
    if case == "float64":
        model, x = model.double(), x.double()
    if case == "training_graph":
        model(x)[0].sum().backward()
    elif case == "onednn_off":
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            model(x)
    else:
        with torch.no_grad():
            assert calls(model, x) == 1                       # the one-call path, our kernels
    assert seen == []


@needs_cpu
def test_onednn_route_thresholds_follow_the_threads(monkeypatch):
    """(8, 128) at T = 128: large on one thread, ours on two (too few rows per thread); ours
    with few rows, on short calls and on small steps."""
    cell = rnnkit.LSTM(128, 128).cell
    x = torch.empty(128, 8, 128)
    found = {}
    for n in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=n: n)
        found[n] = cpu.BACKEND._onednn_pays(cell, x)
    assert found == {1: torch.backends.mkldnn.is_available(), 2: False}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not cpu.BACKEND._onednn_pays(rnnkit.LSTM(256, 256).cell, torch.empty(128, 2, 256))
    assert not cpu.BACKEND._onednn_pays(cell, torch.empty(8, 8, 128))      # a short call
    large = rnnkit.LSTM(512, 512).cell                # its weights' reorder outweighs a few rows
    assert not cpu.BACKEND._onednn_pays(large, torch.empty(1, 64, 512))
    assert cpu.BACKEND._onednn_pays(large, torch.empty(4, 64, 512)) == torch.backends.mkldnn.is_available()
    assert not cpu.BACKEND._onednn_pays(rnnkit.LSTM(64, 64).cell, torch.empty(128, 8, 64))
