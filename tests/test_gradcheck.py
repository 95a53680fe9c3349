"""The hand-derived BPTT of the 'reference' backend: torch.autograd.gradcheck in float64, and
equality with autograd through the plain loop ('autograd' backend), for every cell, direction,
layer count and length pattern.  Gradients flow to the input, the initial state and every parameter.
"""
import pytest
import torch
from torch.func import functional_call

from conftest import (CELLS, assert_all_close, flat, grads, make, randn, random_state,
                      state_tensors)

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
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_reference_backend(cell, num_layers, bidirectional, bias, lengths):
    model, x, hx = setup(cell, num_layers, bidirectional, bias, "reference")
    names = [n for n, _ in model.named_parameters()]
    n_state = len(state_tensors(hx))

    def fn(x, *rest):
        state = rest[:n_state]
        params = dict(zip(names, rest[n_state:]))
        hx_ = tuple(state) if n_state == 2 else state[0]
        return tuple(flat(functional_call(model, params, (x, hx_), {"lengths": LENGTH_PATTERNS[lengths]})))

    inputs = (x, *state_tensors(hx), *(p.detach().clone().requires_grad_() for p in model.parameters()))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=num_layers > 1)


@configs
@pytest.mark.parametrize("cell", CELLS)
def test_reference_backend_equals_autograd(cell, num_layers, bidirectional, bias, lengths):
    results = []
    for backend in ["reference", "autograd"]:
        model, x, hx = setup(cell, num_layers, bidirectional, bias, backend)
        outs = flat(model(x, hx, lengths=LENGTH_PATTERNS[lengths]))
        results.append(outs + grads(outs, [x, *state_tensors(hx), *model.parameters()]))
    assert_all_close(results[0], results[1])


@pytest.mark.parametrize("cell", ["elman_relu", "lstm", "gru_cho", "jordan_softmax"])
def test_each_output_alone(cell, lengths):
    """Backward with gradient flowing into only one output (the others get none)."""
    results = []
    for backend in ["reference", "autograd"]:
        model, x, hx = setup(cell, 2, True, True, backend)
        leaves = [x, *state_tensors(hx), *model.parameters()]
        results.append([])
        for k in range(1 + len(state_tensors(hx))):
            outs = flat(model(x, hx, lengths=LENGTH_PATTERNS[lengths]))
            results[-1] += grads(outs[k:k + 1], leaves)
    assert_all_close(results[0], results[1])
