"""Training of a whole stack as one autograd node (the cpu backend's _FusedTraining over the
extension's train_forward / train_backward): every cell form with a kernel, one direction, no
noise, no lengths.  Its outputs and every gradient equal the layer-by-layer path's (the same
kernels, one node per layer); gradcheck and gradgradcheck in float64 (the second order through
the oracle's recomputation); the route's reach; the C++ entry points' own checks."""
import pytest
import torch

import rnnkit
from helpers import CELLS, INPUT_SIZE, detached, flat, layer_by_layer, make, needs_cpu, random_state, state_tensors
from rnnkit.backends import cpu

pytestmark = needs_cpu
T, B = 5, 3


def _has_kernel(form: str) -> bool:
    from helpers import cell_of
    return bool(cpu.BACKEND.supports(cell_of(form), torch.device("cpu"), torch.float64))


FORMS = [form for form in CELLS if _has_kernel(form)]


def fused_node(out) -> bool:
    """Whether out comes from the one node (through batch_first's transpose)."""
    fn = out.grad_fn
    while fn is not None and type(fn).__name__ == "TransposeBackward0":
        fn = fn.next_functions[0][0]
    return type(fn).__name__ == "_FusedTrainingBackward"


def _grads(model, x, hx, result):
    """Every gradient of a loss that reads the output and each final state."""
    out, *finals = flat(result)
    loss = out.square().sum() + sum((k + 2) * f.sum() for k, f in enumerate(finals))
    leaves = [x, *state_tensors(hx), *model.parameters()]
    return torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("num_layers, with_hx, batch_first", [(1, False, False), (2, True, False), (2, False, True)])
def test_one_node_matches_the_layer_by_layer_path(form, num_layers, with_hx, batch_first):
    model = make(form, num_layers=num_layers, backend="cpu", batch_first=batch_first)
    x = torch.randn(B, T, INPUT_SIZE, dtype=torch.float64, requires_grad=True) if batch_first else \
        torch.randn(T, B, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    hx = random_state(model, B) if with_hx else None
    got = model(x, hx)
    assert fused_node(flat(got)[0])
    expected = layer_by_layer(model, x, hx)
    assert not fused_node(flat(expected)[0])
    for g, e in zip(flat(got), flat(expected)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    for g, e in zip(_grads(model, x, hx, got), _grads(model, x, hx, expected)):
        assert g is not None and e is not None
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("steps, dtype", [(1, torch.float64), (3, torch.float64), (1, torch.float32)])
def test_a_state_that_needs_no_gradient_leaves_every_other_gradient_exact(form, steps, dtype):
    """An initial state given without grad: the backward leaves out step 0's recurrent products,
    which reach only its gradient (train_backward's need_state0; at T = 1 the only ones), and
    every gradient asked for stays the layer-by-layer path's."""
    model = make(form, num_layers=2, backend="cpu").to(dtype)
    x = torch.randn(steps, B, INPUT_SIZE, dtype=dtype, requires_grad=True)
    hx = detached(random_state(model, B))
    got, expected = model(x, hx), layer_by_layer(model, x, hx)
    assert fused_node(flat(got)[0])
    leaves = [x, *model.parameters()]

    def grads(result):
        out, *finals = flat(result)
        return torch.autograd.grad(out.square().sum() + sum((k + 2) * f.sum() for k, f in enumerate(finals)), leaves)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for g, e in zip(grads(got), grads(expected)):
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.parametrize("form", ["elman_tanh", "lstm", "gru", "jordan_softmax", "lstm_proj"])
def test_gradcheck_and_gradgradcheck(form):
    """First order: the C++ backward; second order: the oracle's recomputation (create_graph)."""
    model = make(form, num_layers=2, backend="cpu", hidden_size=3)
    layers = model.step_parameters()
    params = [p.detach().clone().requires_grad_() if p is not None else None for layer in layers for p in layer]
    n = len(layers[0])
    x = torch.randn(3, 2, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    state0 = tuple(s.detach().requires_grad_() for s in state_tensors(random_state(model, 2)))
    present = [p for p in params if p is not None]

    def run(x, *rest):
        s0, ps = rest[:len(state0)], iter(rest[len(state0):])
        filled = [None if p is None else next(ps) for p in params]
        out, h_n = cpu.BACKEND.train(model.cell, x, s0, [filled[k:k + n] for k in range(0, len(filled), n)])
        assert fused_node(out)
        return (out, *h_n)

    inputs = (x, *state0, *present)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


def test_only_a_final_state_or_only_the_output_reaches_the_loss():
    model = make("lstm", num_layers=2, backend="cpu")
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    for pick in (lambda out, state: state[1].sum(), lambda out, state: out.sum()):
        out, state = model(x)
        assert fused_node(out)
        got = torch.autograd.grad(pick(out, state), [x, *model.parameters()])
        expected = torch.autograd.grad(pick(*layer_by_layer(model, x)), [x, *model.parameters()])
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_a_retained_graph_runs_the_node_again():
    model = make("gru", num_layers=2, backend="cpu")
    out, _ = model(torch.randn(T, B, INPUT_SIZE, dtype=torch.float64))       # x without grad: no dx made
    assert fused_node(out)
    out.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    out.sum().backward()
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)


@pytest.mark.parametrize("case", ["bidirectional", "lengths", "noise", "trace", "no_graph", "large"])
def test_route_reach(case, monkeypatch):
    """Only one direction, no lengths, no draws, no trace, a graph to record, and a projection under
    the BLAS bound (FUSED_TRAIN_MAX_MACS) take it; the others run layer by layer."""
    kw = {"bidirectional": True} if case == "bidirectional" else {}
    model = make("lstm_dropout_zoneout" if case == "noise" else "gru", backend="cpu", **kw)
    if case == "noise":
        model.train()
    if case == "large":
        monkeypatch.setattr(cpu.CPU, "FUSED_TRAIN_MAX_MACS", 1)
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64, requires_grad=True)
    args = {"lengths": torch.tensor([T, 2, 4])} if case == "lengths" else {}
    if case == "trace":
        args["return_trace"] = True
    with torch.set_grad_enabled(case != "no_graph"):
        out = model(x, **args)[0]
    assert out.grad_fn is None or not fused_node(out)
    monkeypatch.undo()
    assert fused_node(make("gru", backend="cpu")(x)[0])


def test_entry_points_check_their_arguments():
    model = make("lstm", num_layers=2, backend="cpu")
    ext, spec = cpu.extension(), cpu.BACKEND._spec(model.cell)
    layers = model.step_parameters()
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    state0 = [torch.zeros(2, B, 4, dtype=torch.float64) for _ in range(2)]
    out, h_n, keep = ext.train_forward(spec, x, state0, layers)
    with pytest.raises(RuntimeError, match="keep"):
        ext.train_backward(spec, torch.ones_like(out), [None, None], x, state0, layers, keep[:-1], True)
    with pytest.raises(RuntimeError, match="d_out"):
        ext.train_backward(spec, torch.ones(T + 1, B, 4, dtype=torch.float64), [None, None], x, state0, layers, keep,
                           True)
    with pytest.raises(RuntimeError, match="state0"):
        ext.train_forward(spec, x, [s[:, :1] for s in state0], layers)
    with pytest.raises(TypeError, match="dtype|float"):
        ext.train_forward(spec, x.float(), state0, layers)
    dx, d_state0, d_layers = ext.train_backward(spec, torch.ones_like(out), [None, None], x, state0, layers, keep,
                                                False)
    assert dx is None and len(d_state0) == 2 and len(d_layers) == 2


def test_float32_call_takes_the_node():
    torch.manual_seed(0)
    ref = torch.nn.GRU(INPUT_SIZE, 4, num_layers=2)
    model = rnnkit.convert.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, INPUT_SIZE, requires_grad=True)
    out, h = model(x)
    assert fused_node(out)
    expected, eh = ref(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h, eh)
    g = torch.autograd.grad(out.square().sum() + h.sum(), [x, *model.parameters()])
    e = torch.autograd.grad(expected.square().sum() + eh.sum(), [x, *ref.parameters()])
    for a, b in zip(g, e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_training_bound():
    """Measured (cpu.py): the one node up to FUSED_TRAIN_MAX_MACS in a layer's projection, e.g. an
    LSTM at (T, B, H) = (128, 8, 128); the layer path's oneDNN GEMMs from (128, 32, 256) on."""
    assert cpu.BACKEND._fused_trains(rnnkit.LSTM(128, 128).cell, torch.empty(128, 8, 128))
    assert not cpu.BACKEND._fused_trains(rnnkit.GRU(256, 256).cell, torch.empty(128, 32, 256))
    assert not cpu.BACKEND._fused_trains(rnnkit.GRU(4, 4).cell, torch.empty(5, 3, 4, dtype=torch.float16))


def test_trains_declines_what_train_would():
    """Asked before the layers gather their weights: two directions are not the one node's."""
    x = torch.randn(T, B, INPUT_SIZE)
    cell = rnnkit.GRU(INPUT_SIZE, 4).cell
    assert cpu.BACKEND.trains(cell, x) and not cpu.BACKEND.trains(cell, x, bidirectional=True)
    assert cpu.BACKEND.train(cell, x, None, [], bidirectional=True) is None
