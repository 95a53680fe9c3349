"""torch.nn's own RNN behaviours (the RNN/LSTM/GRU tests of PyTorch's test/test_nn.py) as a
contract: every test runs against torch.nn -- which proves the test right -- and against rnnkit,
which must behave the same, down to the exception types a caller catches.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils
from torch import nn

import rnnkit

PAIRS = {"rnn": (nn.RNN, rnnkit.Elman), "lstm": (nn.LSTM, rnnkit.LSTM), "gru": (nn.GRU, rnnkit.GRU)}
IMPLS = ("torch", "rnnkit")


def cls(cell: str, impl: str):
    return PAIRS[cell][IMPLS.index(impl)]


def state(cell: str, *shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(*shape, dtype=dtype, generator=g, requires_grad=True)
    return (h, torch.randn(*shape, dtype=dtype, generator=g, requires_grad=True)) if cell == "lstm" else h


def pair(cell: str, **kw):
    """(torch.nn module, rnnkit module) with the same weights, float64."""
    torch.manual_seed(0)
    ref = PAIRS[cell][0](3, 4, dtype=torch.float64, **kw)
    ours = PAIRS[cell][1](3, 4, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def outputs(result):
    out, h = result
    return [out, *(h if isinstance(h, tuple) else (h,))]


# -- argument checks: the same exception types as torch.nn --------------------------------------
BAD_ARGS = [
    ("hidden_size 0", dict(hidden_size=0), ValueError),
    ("hidden_size -1", dict(hidden_size=-1), ValueError),
    ("hidden_size float", dict(hidden_size=4.0), TypeError),
    ("num_layers 0", dict(num_layers=0), ValueError),
    ("dropout -0.1", dict(dropout=-0.1), ValueError),
    ("dropout 1.5", dict(dropout=1.5), ValueError),
    ("dropout str", dict(dropout="a"), ValueError),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", PAIRS)
@pytest.mark.parametrize("what, kwargs, error", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_constructor_arguments(impl, cell, what, kwargs, error):
    args = dict(input_size=3, hidden_size=4, num_layers=2)
    with pytest.raises(error):
        cls(cell, impl)(**{**args, **kwargs})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_proj_size_is_an_lstm_option(impl, cell):
    with pytest.raises(ValueError):
        cls(cell, impl)(3, 4, proj_size=2)


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_nonlinearity(impl):
    with pytest.raises(ValueError):
        cls("rnn", impl)(3, 4, nonlinearity="sigmoid")


BAD_INPUTS = [
    ("seq_len 0", lambda c: (torch.randn(0, 2, 3, dtype=torch.float64),), RuntimeError),
    ("wrong input_size", lambda c: (torch.randn(5, 2, 2, dtype=torch.float64),), RuntimeError),
    ("4-D input", lambda c: (torch.randn(1, 5, 2, 3, dtype=torch.float64),), ValueError),
    ("1-D input", lambda c: (torch.randn(3, dtype=torch.float64),), ValueError),
    ("hx batch mismatch", lambda c: (torch.randn(5, 2, 3, dtype=torch.float64), state(c, 1, 3, 4)), RuntimeError),
    ("hx layers mismatch", lambda c: (torch.randn(5, 2, 3, dtype=torch.float64), state(c, 2, 2, 4)), RuntimeError),
    ("unbatched hx, batched input", lambda c: (torch.randn(5, 2, 3, dtype=torch.float64), state(c, 1, 4)),
     RuntimeError),
    ("dtype mismatch", lambda c: (torch.randn(5, 2, 3, dtype=torch.float32),), ValueError),
    ("integer input", lambda c: (torch.ones(5, 2, 3, dtype=torch.long),), ValueError),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", PAIRS)
@pytest.mark.parametrize("what, make_args, error", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs(impl, cell, what, make_args, error):
    model = cls(cell, impl)(3, 4, dtype=torch.float64)
    with pytest.raises(error):
        model(*make_args(cell))


# -- behaviours: rnnkit's numbers equal torch.nn's ------------------------------------------------
@pytest.mark.parametrize("cell", PAIRS)
def test_dropout_one_zeroes_the_inputs_of_upper_layers_in_training(cell):
    ref, ours = pair(cell, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for train in (True, False):
        ref.train(train), ours.train(train)
        for a, b in zip(outputs(ours(x)), outputs(ref(x))):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", PAIRS)
def test_initial_states_unbatched_and_batch_first(cell):
    ref, ours = pair(cell, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    h = state(cell, 2, 2, 4)
    for a, b in zip(outputs(ours(x, h)), outputs(ref(x, h))):
        torch.testing.assert_close(a, b)
    h1 = state(cell, 2, 4)
    for a, b in zip(outputs(ours(x[0], h1)), outputs(ref(x[0], h1))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", PAIRS)
def test_weight_norm_old_and_new_api(cell):
    for apply in (lambda m: torch.nn.utils.weight_norm(m, "weight_hh_l0"),
                  lambda m: torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")):
        ref, ours = pair(cell)
        apply(ref), apply(ours)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        a, b = outputs(ours(x)), outputs(ref(x))
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v)
        ga = torch.autograd.grad(a[0].sum(), [x, *ours.parameters()])
        gb = torch.autograd.grad(b[0].sum(), [x, *ref.parameters()])
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", PAIRS)
def test_grad_and_gradgrad(impl, cell):
    model = cls(cell, impl)(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h = state(cell, 4, 2, 3)
    hs = list(h) if isinstance(h, tuple) else [h]

    def f(x, *hs):
        return tuple(outputs(model(x, tuple(hs) if cell == "lstm" else hs[0])))
    assert torch.autograd.gradcheck(f, (x, *hs))
    assert torch.autograd.gradgradcheck(f, (x, *hs))


@pytest.mark.parametrize("cell", PAIRS)
def test_differentiable_backward_of_an_input_that_needs_no_grad(cell):
    """Inputs that require grad mixed with ones that do not (the initial state here)."""
    ref, ours = pair(cell)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h = state(cell, 1, 2, 4)
    h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
    ga = torch.autograd.grad(ours(x, h)[0].sum(), x)
    gb = torch.autograd.grad(ref(x, h)[0].sum(), x)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("cell", PAIRS)
def test_non_contiguous_inputs(cell):
    ref, ours = pair(cell, batch_first=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64).transpose(0, 1)       # (B, T, I), not contiguous
    assert not x.is_contiguous()
    for a, b in zip(outputs(ours(x)), outputs(ref(x))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", PAIRS)
def test_single_step_single_unit(cell):
    torch.manual_seed(0)
    ref = PAIRS[cell][0](1, 1, dtype=torch.float64)
    ours = PAIRS[cell][1](1, 1, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 1, dtype=torch.float64)
    for a, b in zip(outputs(ours(x)), outputs(ref(x))):
        torch.testing.assert_close(a, b)
