"""Training in one call (Backend.train; the cpu backend's oneDNN route, CPU._onednn_trains): a plain
float32 LSTM stack whose steps oneDNN's primitive trains faster runs forward and backward there,
as torch.nn does, in torch's own graph, with torch.nn's outputs and gradients; a backward with
create_graph=True runs torch's differentiable backward, so second-order gradients stay exact;
every other call keeps our kernels."""
import pytest
import torch

import rnnkit
from helpers import layer_by_layer, needs_cpu
from rnnkit.backends import cpu

T, B, I, H = 7, 3, 5, 6
THRESHOLDS = ("ONEDNN_TRAIN_ROWS", "ONEDNN_TRAIN_STEP_MACS", "ONEDNN_TRAIN_CALL_MACS", "ONEDNN_CALL_ROWS")

pytestmark = [needs_cpu, pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                            reason="torch was built without oneDNN")]


@pytest.fixture
def every_size(monkeypatch):
    """Every size counts as one the route takes."""
    for name in THRESHOLDS:
        monkeypatch.setattr(cpu.CPU, name, 1)
    for name in ("ONEDNN_TRAIN_MAX_STEP_MACS", "ONEDNN_TRAIN_MAX_CELLS"):
        monkeypatch.setattr(cpu.CPU, name, 1 << 40)


def ran_onednn(out) -> bool:
    """Whether oneDNN's LSTM primitive is in out's graph (torch's node of its layer's backward)."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.startswith("MkldnnRnnLayer"):
            return True
        todo.extend(f for f, _ in node.next_functions)
    return False


def routed(model, *args):
    """The model's output, state and whether the training route ran it."""
    out, state = model(*args)
    return out, state, ran_onednn(out)


def _loss(out, state):
    return out.square().sum() + state[0].sum() + state[1].square().sum()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_plain_lstm_training_runs_on_onednn_with_torchs_gradients(every_size, bias, with_hx, bidirectional):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, bias=bias, bidirectional=bidirectional)
    model = rnnkit.convert.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, I, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = tuple(torch.randn(2 * D, B, H, requires_grad=True) for _ in range(2)) if with_hx else None
    leaves = [x, *(hx or ())]
    out, state, took = routed(model, x, hx)
    assert took
    got = torch.autograd.grad(_loss(out, state), leaves + list(model.parameters()))
    want_out, want_state = ref(x, hx)
    want = torch.autograd.grad(_loss(want_out, want_state), leaves + list(ref.parameters()))
    mine_out, mine_state = layer_by_layer(model, x, hx)
    mine = torch.autograd.grad(_loss(mine_out, mine_state), leaves + list(model.parameters()))
    torch.testing.assert_close(out, want_out)
    for a, b, c in zip(got, want, mine):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)              # our kernels, other rounding


def test_second_order_gradients_are_recomputed_exactly(every_size):
    """create_graph=True (a gradient penalty): the same as through our own kernels' graph path."""
    torch.manual_seed(0)
    model = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, backend="cpu")
    x = torch.randn(T, B, I, requires_grad=True)

    def penalty_grads(run):
        out, _ = run(model, x)
        g, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(model.parameters()))
    assert routed(model, x)[2]
    for a, b in zip(penalty_grads(lambda m, v: m(v)), penalty_grads(layer_by_layer)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_only_the_state_or_a_parametrized_weight_requiring_grad(every_size):
    """Frozen weights with an initial state to differentiate, and a weight_norm parametrization:
    the gradients reach them as through our kernels."""
    torch.manual_seed(0)
    model = rnnkit.LSTM(I, H, backend="cpu").requires_grad_(False)
    x = torch.randn(T, B, I)
    hx = (torch.randn(1, B, H, requires_grad=True), torch.randn(1, B, H))
    out, state, took = routed(model, x, hx)
    assert took
    got, = torch.autograd.grad(_loss(out, state), hx[0])
    mine, = torch.autograd.grad(_loss(*layer_by_layer(model, x, hx)), hx[0])
    torch.testing.assert_close(got, mine, atol=1e-5, rtol=1e-4)
    model.requires_grad_(True)
    torch.nn.utils.parametrizations.weight_norm(model, "weight_hh_l0")
    out, state, took = routed(model, x)
    assert took
    got = torch.autograd.grad(_loss(out, state), list(model.parameters()))
    mine = torch.autograd.grad(_loss(*layer_by_layer(model, x)), list(model.parameters()))
    for a, b in zip(got, mine):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_retain_graph_allows_a_second_backward(every_size):
    model = rnnkit.LSTM(I, H, backend="cpu")
    out, state, took = routed(model, torch.randn(T, B, I))
    assert took
    loss = _loss(out, state)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    loss.backward()
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)


@pytest.mark.parametrize("case", ["variant", "float64", "dropout", "lengths", "trace", "onednn_off", "no_graph"])
def test_other_training_keeps_our_kernels(every_size, monkeypatch, case):
    """The route takes only what oneDNN's primitive trains the same: a plain float32 LSTM, oneDNN
    on, no lengths, no trace, no dropout draws; and only calls that record a graph."""
    taken = []
    original = cpu.CPU._onednn_trains

    def spy(self, *a, **kw):
        found = original(self, *a, **kw)
        taken.append(found)
        return found
    monkeypatch.setattr(cpu.CPU, "_onednn_trains", spy)
    model = rnnkit.LSTM(I, H, num_layers=2, backend="cpu", peephole=case == "variant",
                        dropout=0.5 if case == "dropout" else 0.0)
    x = torch.randn(T, B, I, requires_grad=True)
    if case == "float64":
        model, x = model.double(), x.double()
    kwargs = {"lengths": torch.tensor([T, 2, 4])} if case == "lengths" else {}
    if case == "trace":
        kwargs["return_trace"] = True
    with torch.backends.mkldnn.flags(enabled=case != "onednn_off"), torch.set_grad_enabled(case != "no_graph"):
        out = model(x, **kwargs)[0]
    assert not any(taken)
    assert out.grad_fn is None or not ran_onednn(out)
    if case == "no_graph":                                      # the same call with a graph takes it
        assert routed(rnnkit.LSTM(I, H, num_layers=2, backend="cpu"), x)[2]


def test_training_route_thresholds():
    """Measured crossovers (cpu.py): (8, 128) at T = 128 on one thread, not on two (too small a
    step per thread); (16, 256) on both; never with a large workspace (many rows at T = 128),
    small steps or short runs."""
    def takes(T, B, H, threads):
        original = torch.get_num_threads
        torch.get_num_threads = lambda: threads
        try:
            return cpu.BACKEND._onednn_trains(rnnkit.LSTM(H, H).cell, torch.empty(T, B, H))
        finally:
            torch.get_num_threads = original
    on = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    assert takes(128, 8, 128, 1) == on and not takes(128, 8, 128, 2)
    assert takes(128, 16, 256, 1) == on and takes(128, 16, 256, 2) == on
    assert not takes(128, 64, 128, 1) and not takes(128, 32, 256, 1)      # many rows, large steps
    assert not takes(128, 8, 64, 1) and not takes(16, 8, 128, 1)          # a small step, a short run
    assert not takes(8, 16, 256, 1) and takes(16, 16, 256, 1) == on       # the weights' reorders: T * B rows
    assert takes(32, 64, 128, 2) == on and not takes(128, 64, 128, 2)     # its workspace: T * B * H
