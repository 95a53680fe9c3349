"""The cpu backend's differentiated single step (csrc/cell_step.cpp): a Cell module's step with a
graph to record as one autograd node.

Against torch.nn's Cell modules (outputs and every gradient, float64 and float32, any subset of
the outputs used), gradcheck and gradgradcheck of the node itself with and without biases and
states, double backward (create_graph) against torch.nn's, a training loop over steps, and the
cases that must leave the node for the cell's Python step (torch.func, forward AD, tracing,
autocast, unbatched input, the forms the node lacks) or name a bad argument as before.
"""
import pytest
import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

import rnnkit
from helpers import assert_all_close, count_calls, grads, needs_cpu, randn

pytestmark = needs_cpu

I, H, B = 3, 4, 2

# form -> (rnnkit module, torch.nn module, kwargs, csrc kind)
TWINS = {
    "rnn_tanh": (rnnkit.RNNCell, nn.RNNCell, {}, 0),
    "rnn_relu": (rnnkit.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}, 1),
    "lstm": (rnnkit.LSTMCell, nn.LSTMCell, {}, 2),
    "gru": (rnnkit.GRUCell, nn.GRUCell, {}, 3),
}


def pair(form, bias=True, dtype=torch.float64):
    ours_cls, torch_cls, kw, _ = TWINS[form]
    torch.manual_seed(0)
    ref = torch_cls(I, H, bias=bias, dtype=dtype, **kw)
    ours = ours_cls(I, H, bias=bias, dtype=dtype, backend="cpu", **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def state(form, batch=B, dtype=torch.float64, seed=1):
    hs = [randn(batch, H, dtype=dtype, seed=seed + k, requires_grad=True) for k in range(2 if form == "lstm" else 1)]
    return tuple(hs) if form == "lstm" else hs[0]


def listed(result):
    return list(result) if isinstance(result, tuple) else [result]


def one_node(result) -> bool:
    return "CellStep" in listed(result)[0].grad_fn.name()


def ext():
    from rnnkit.backends import cpu
    return cpu.extension()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("form", TWINS)
def test_one_node_matches_torch_cell(form, bias, with_hx, batch, dtype):
    ref, ours = pair(form, bias, dtype)
    x = randn(batch, I, dtype=dtype, requires_grad=True)
    hx = state(form, batch, dtype) if with_hx else None
    out = ours(x, hx)
    assert one_node(out)
    out, out_ref = listed(out), listed(ref(x, hx))
    assert_all_close(out, out_ref, dtype)
    leaves = [x] + (listed(hx) if with_hx else [])
    assert_all_close(grads(out, leaves + list(ours.parameters())), grads(out_ref, leaves + list(ref.parameters())),
                     dtype)


@pytest.mark.parametrize("used", [0, 1], ids=["h_only", "c_only"])
def test_lstm_with_one_output_used(used):
    """An unused output's gradient is undefined, not zeros: the other's still flows everywhere."""
    ref, ours = pair("lstm")
    x, hx = randn(B, I, requires_grad=True), state("lstm")
    out, out_ref = ours(x, hx)[used], ref(x, hx)[used]
    leaves = [x, *hx]
    assert_all_close(grads([out], leaves + list(ours.parameters())), grads([out_ref], leaves + list(ref.parameters())))


@pytest.mark.parametrize("form", TWINS)
def test_only_the_inputs_asked_for_get_gradients(form):
    ref, ours = pair(form)
    for p in ours.parameters():
        p.requires_grad_(False)
    x, hx = randn(B, I, requires_grad=True), state(form)
    out = ours(x, hx)
    assert one_node(out)
    leaves = [x, *listed(hx)]
    assert_all_close(grads(listed(out), leaves), grads(listed(ref(x, hx)), leaves))


@pytest.mark.parametrize("biases", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["both", "b_ih", "b_hh", "none"])
@pytest.mark.parametrize("with_h", [True, False], ids=["h", "zero_h"])
@pytest.mark.parametrize("form", TWINS)
def test_gradcheck_and_gradgradcheck(form, with_h, biases):
    """First and second derivatives of the node against finite differences, every input."""
    kind, G = TWINS[form][3], {"lstm": 4, "gru": 3}.get(form, 1)
    x = randn(B, I, seed=2, requires_grad=True)
    w_ih, w_hh = randn(G * H, I, seed=3, requires_grad=True), randn(G * H, H, seed=4, requires_grad=True)
    b_ih = randn(G * H, seed=5, requires_grad=True) if biases[0] else None
    b_hh = randn(G * H, seed=6, requires_grad=True) if biases[1] else None
    h = randn(B, H, seed=7, requires_grad=True) if with_h else None
    c = randn(B, H, seed=8, requires_grad=True) if with_h and form == "lstm" else None
    if form == "rnn_relu":                               # keep pre-activations away from relu's kink
        x = (x.detach() + 0.5).requires_grad_()
    inputs = [t for t in (x, h, c, w_ih, w_hh, b_ih, b_hh) if t is not None]

    def step(*given):
        it = iter(given)
        args = [t if t is None else next(it) for t in (x, h, c, w_ih, w_hh, b_ih, b_hh)]
        return tuple(ext().cell_step(kind, *args[:3], *args[3:]))
    assert torch.autograd.gradcheck(step, inputs)
    assert torch.autograd.gradgradcheck(step, inputs)


@pytest.mark.parametrize("form", TWINS)
def test_double_backward_matches_torch(form):
    """A gradient penalty (create_graph=True) takes the same second derivatives as torch.nn's."""
    ref, ours = pair(form)
    x, hx = randn(B, I, requires_grad=True), state(form)

    def penalty(module):
        out = listed(module(x, hx))
        params = list(module.parameters())
        g = torch.autograd.grad(sum((o * o).sum() for o in out), [x, *params], create_graph=True)
        return torch.autograd.grad(sum((t * t).sum() for t in g), [x, *listed(hx), *params])
    assert one_node(ours(x, hx))
    assert_all_close(penalty(ours), penalty(ref))


@pytest.mark.parametrize("form", TWINS)
def test_training_loop_over_steps(form):
    """Backpropagation through a loop of steps, the loss on every state: torch.nn's gradients."""
    ref, ours = pair(form)
    xs = randn(5, B, I, seed=3)
    for module in (ref, ours):
        hx, loss = None, 0
        for x in xs:
            hx = module(x, hx)
            loss = loss + listed(hx)[0].square().sum()
        loss.backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert_all_close([p.grad], [q.grad])


def test_a_parametrized_weight_gets_its_gradient_through_the_node():
    ref, ours = pair("lstm")

    class Scaled(nn.Module):
        def forward(self, w):
            return 2.0 * w
    for module in (ref, ours):
        parametrize.register_parametrization(module, "weight_hh", Scaled())
    x, hx = randn(B, I), state("lstm")
    out = ours(x, hx)
    assert one_node(out)
    leaves = [ours.parametrizations.weight_hh.original]
    assert_all_close(grads(listed(out), leaves), grads(listed(ref(x, hx)), [ref.parametrizations.weight_hh.original]))


@pytest.mark.parametrize("form", TWINS)
def test_torch_func_and_forward_ad_take_the_python_step(form):
    """torch.func and forward-mode AD need torch's ops (the node has no jvp or batching rule)."""
    ref, ours = pair(form)
    x, hx = randn(B, I), state(form)
    params = dict(ours.named_parameters())

    def loss(p, module, names):
        return sum(o.sum() for o in listed(torch.func.functional_call(module, {n: p[k] for k, n in names}, (x, hx))))
    names = list(enumerate(params))
    got = torch.func.grad(loss)([p.detach() for p in params.values()], ours, names)
    want = torch.func.grad(loss)([p.detach() for p in ref.parameters()], ref, names)
    assert_all_close(list(got), list(want))
    import torch.autograd.forward_ad as fwAD
    tangent = randn(B, I, seed=9)
    with fwAD.dual_level():
        x_dual = fwAD.make_dual(x, tangent)
        jvp = [fwAD.unpack_dual(o).tangent for o in listed(ours(x_dual, hx))]
        jvp_ref = [fwAD.unpack_dual(o).tangent for o in listed(ref(x_dual, hx))]
    assert_all_close(jvp, jvp_ref)


@pytest.mark.parametrize("form", TWINS)
def test_cases_without_the_node_still_match(form):
    """Unbatched input, autocast, the reference backend: the cell's step under autograd."""
    ref, ours = pair(form)
    x, hx = randn(I, requires_grad=True), tuple(t[0] for t in listed(state(form)))
    hx = hx if form == "lstm" else hx[0]
    out = ours(x, hx)
    assert not one_node(out)
    assert_all_close(listed(out), listed(ref(x, hx)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not one_node(ours(randn(B, I), None))
    ours.backend = "reference"
    assert not one_node(ours(randn(B, I), None))


@pytest.mark.parametrize("build", [lambda: rnnkit.JordanCell(I, H, 2, backend="cpu"),
                                   lambda: rnnkit.GRUCell(I, H, reset_after=False, backend="cpu")],
                         ids=["jordan", "gru_cho"])
def test_forms_without_the_node_run_the_python_step(build):
    out = build()(torch.randn(B, I))
    assert not one_node(out) and out.grad_fn is not None


@pytest.mark.parametrize("call, exc, name", [
    (lambda c: c(torch.randn(B, I), torch.randn(B + 1, H)), RuntimeError, "hx"),
    (lambda c: c(torch.randn(B, I + 1)), ValueError, "input"),
    (lambda c: c(torch.randn(B, I, dtype=torch.float64)), TypeError, "dtype"),
])
def test_bad_input_names_the_argument_with_grad(call, exc, name):
    """What the node's C++ rejects goes through the module's checks, whose message names it."""
    with pytest.raises(exc, match=name):
        call(rnnkit.RNNCell(I, H, backend="cpu"))


def test_the_node_checks_its_own_arguments():
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    with pytest.raises(ValueError, match="w_hh: expected shape"):
        ext().cell_step(2, torch.randn(B, I), None, None, w_ih, w_hh[:5], None, None)
    with pytest.raises(ValueError, match="c: expected None"):
        ext().cell_step(0, torch.randn(B, I), None, torch.randn(B, H), w_ih[:H], w_hh[:H], None, None)
    with pytest.raises(ValueError, match="b_hh"):
        ext().cell_step(2, torch.randn(B, I), None, None, w_ih, w_hh, None, torch.randn(4 * H).double())


def test_the_choice_follows_the_environment(monkeypatch):
    """backend=None: RNNKIT_BACKEND as it is at each call (set, changed, unset: auto)."""
    cell, x = rnnkit.LSTMCell(I, H), torch.randn(B, I)
    monkeypatch.setenv("RNNKIT_BACKEND", "cpu")
    assert one_node(cell(x))
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    assert not one_node(cell(x))
    monkeypatch.delenv("RNNKIT_BACKEND")
    assert one_node(cell(x))                                   # auto: the C++ kernels here


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["plain", "dropout"])
@pytest.mark.parametrize("layer_cls, kw", [(rnnkit.LSTM, {}), (rnnkit.GRU, {}), (rnnkit.Elman, {"nonlinearity": "relu"})],
                         ids=["lstm", "gru", "elman_relu"])
def test_layer_step_in_training_runs_one_node_per_layer(layer_cls, kw, dropout):
    """``model.step`` with a graph: each layer's step is the node; numbers and gradients as the
    reference backend's Python step (the same dropout draws between the layers)."""
    torch.manual_seed(0)
    ours = layer_cls(I, H, num_layers=2, dropout=dropout, dtype=torch.float64, backend="cpu", **kw)
    ref = layer_cls(I, H, num_layers=2, dropout=dropout, dtype=torch.float64, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    x, hx = randn(B, I, requires_grad=True), None
    results = []
    for model in (ours, ref):
        torch.manual_seed(1)
        out, h_n = model.step(x, hx)
        results.append([out, *listed(h_n)])
    assert "CellStep" in results[0][0].grad_fn.name() and "CellStep" not in results[1][0].grad_fn.name()
    assert_all_close(results[0], results[1])
    assert_all_close(grads(results[0], [x, *ours.parameters()]), grads(results[1], [x, *ref.parameters()]))


def test_layer_step_with_recurrent_noise_keeps_the_python_step():
    model = rnnkit.LSTM(I, H, recurrent_dropout=0.3, backend="cpu")
    out, _ = model.step(torch.randn(B, I))
    assert "CellStep" not in out.grad_fn.name()


@pytest.mark.parametrize("form", TWINS)
def test_no_grad_step_is_the_node_without_a_graph(form, monkeypatch):
    """Under no_grad the node is the cheapest call (no Python checks, no streaming kernel): no graph,
    torch.nn's numbers."""
    from rnnkit.backends import cpu
    calls = count_calls(monkeypatch, cpu.BACKEND, "step")
    ref, ours = pair(form)
    x, hx = randn(B, I), tuple(t.detach() for t in listed(state(form)))
    hx = hx if form == "lstm" else hx[0]
    with torch.no_grad():
        out = ours(x, hx)
        assert all(o.grad_fn is None for o in listed(out))
        assert_all_close(listed(out), listed(ref(x, hx)))
    assert calls == []                                         # not the streaming kernel


@pytest.mark.parametrize("form", TWINS)
def test_strided_inputs_and_larger_sizes_match_torch(form):
    """Non-contiguous x, state and weight (the ATen path) and a batch and width past the small
    kernels' (the loops' path), float32: torch.nn's numbers and gradients."""
    ours_cls, torch_cls, kw, _ = TWINS[form]
    torch.manual_seed(0)
    for batch, width, strided in ((3, H, True), (17, 33, False)):
        ref = torch_cls(width, width, **kw)
        ours = ours_cls(width, width, backend="cpu", **kw)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(width, batch).t() if strided else torch.randn(batch, width)
        hs = [torch.randn(width, batch).t() if strided else torch.randn(batch, width) for _ in range(2)]
        hx = tuple(hs) if form == "lstm" else hs[0]
        assert x.is_contiguous() is not strided
        out, out_ref = listed(ours(x, hx)), listed(ref(x, hx))
        assert "CellStep" in out[0].grad_fn.name()
        assert_all_close(out, out_ref, torch.float32)
        assert_all_close(grads(out, list(ours.parameters())), grads(out_ref, list(ref.parameters())), torch.float32)


@pytest.mark.parametrize("call, exc, name", [
    (lambda m: m.step(torch.randn(B, I), torch.randn(1, B, H)), ValueError, "hx"),          # one layer short
    (lambda m: m.step(torch.randn(B, I), torch.randn(2, B + 1, H)), ValueError, "hx"),
    (lambda m: m.step(torch.randn(B, I + 1)), ValueError, "input"),
])
def test_layer_step_with_a_graph_names_a_bad_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call(rnnkit.GRU(I, H, num_layers=2, backend="cpu"))


def test_layer_step_with_a_parametrized_weight_takes_the_checked_path():
    torch.manual_seed(0)
    ours = rnnkit.LSTM(I, H, num_layers=2, dtype=torch.float64, backend="cpu")
    ref = rnnkit.LSTM(I, H, num_layers=2, dtype=torch.float64, backend="reference")
    ref.load_state_dict(ours.state_dict())

    class Scaled(nn.Module):
        def forward(self, w):
            return 0.5 * w
    for model in (ours, ref):
        parametrize.register_parametrization(model, "weight_hh_l1", Scaled())
    x = randn(B, I)
    out, out_ref = ours.step(x)[0], ref.step(x)[0]
    assert_all_close([out], [out_ref])
    leaves = [ours.parametrizations.weight_hh_l1.original]
    assert_all_close(grads([out], leaves), grads([out_ref], [ref.parametrizations.weight_hh_l1.original]))
