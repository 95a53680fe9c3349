"""The hand-written backward of every registered backend that has one (the reference backend's
hand-derived BPTT, the fused kernels ...): torch.autograd.gradcheck in float64, and equality with
autograd through the plain loop (the oracle backend, ``rnnkit.backends.ORACLE``), for every cell,
direction, layer count and length pattern.  Gradients flow to the input, the initial state and
every parameter.
"""
import pytest
import torch
from torch.func import functional_call

from rnnkit import backends
from helpers import assert_all_close, cell_backends, flat, grads, make, randn, random_state, state_tensors

T, B, I, H = 4, 3, 2, 3
LENGTH_PATTERNS = {"full": None, "mixed": [4, 1, 3]}

pytestmark = pytest.mark.parametrize("lengths", list(LENGTH_PATTERNS), ids=list(LENGTH_PATTERNS))
configs = pytest.mark.parametrize(
    "num_layers, bidirectional, bias",
    [(1, False, True), (1, True, False), (2, False, False), (2, True, True)],
    ids=["l1_uni", "l1_bi_nobias", "l2_uni_nobias", "l2_bi"])


def setup(cell, num_layers, bidirectional, bias, backend):
    model = make(cell, input_size=I, hidden_size=H, num_layers=num_layers,
                 bidirectional=bidirectional, bias=bias, backend=backend)
    x = randn(T, B, I, seed=3, requires_grad=True)
    hx = random_state(model, B)
    return model, x, hx


@configs
@pytest.mark.parametrize("cell, backend", cell_backends(own_backward=True))
def test_gradcheck(cell, backend, num_layers, bidirectional, bias, lengths):
    model, x, hx = setup(cell, num_layers, bidirectional, bias, backend)
    names = [n for n, _ in model.named_parameters()]
    n_state = len(state_tensors(hx))

    def fn(x, *rest):
        state = rest[:n_state]
        params = dict(zip(names, rest[n_state:]))
        hx_ = tuple(state) if n_state == 2 else state[0]
        return tuple(flat(functional_call(model, params, (x, hx_), {"lengths": LENGTH_PATTERNS[lengths]})))

    inputs = (x, *state_tensors(hx), *(p.detach().clone().requires_grad_() for p in model.parameters()))
    # The full Jacobian for the one-layer unidirectional case; the others compare random projections
    # of it (fast mode), their full gradients being compared with the oracle's below.
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=num_layers > 1 or bidirectional)


@configs
@pytest.mark.parametrize("cell, backend", cell_backends(own_backward=True))
def test_backward_equals_autograd(cell, backend, num_layers, bidirectional, bias, lengths):
    results = []
    for name in [backend, backends.ORACLE]:
        model, x, hx = setup(cell, num_layers, bidirectional, bias, name)
        outs = flat(model(x, hx, lengths=LENGTH_PATTERNS[lengths]))
        results.append(outs + grads(outs, [x, *state_tensors(hx), *model.parameters()]))
    assert_all_close(results[0], results[1])


@pytest.mark.parametrize("cell, backend",
                         cell_backends(["elman_relu", "lstm", "gru_cho", "jordan_softmax"], own_backward=True))
def test_each_output_alone(cell, backend, lengths):
    """Backward with gradient flowing into only one output (the others get none)."""
    results = []
    for name in [backend, backends.ORACLE]:
        model, x, hx = setup(cell, 2, True, True, name)
        leaves = [x, *state_tensors(hx), *model.parameters()]
        results.append([])
        for k in range(1 + len(state_tensors(hx))):
            outs = flat(model(x, hx, lengths=LENGTH_PATTERNS[lengths]))
            results[-1] += grads(outs[k:k + 1], leaves)
    assert_all_close(results[0], results[1])
