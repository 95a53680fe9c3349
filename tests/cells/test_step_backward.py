"""Each cell's hand-derived ``step_backward`` against autograd through its ``step``, one step at a time.

For every registered form (rnnkit.registry.forms()), in float64: a random input projection, previous
state, recurrent parameters (with and without biases) and incoming gradient of the new state; the
gradients of the input projection, of every previous state and of every recurrent parameter must
equal autograd's.  (The whole-sequence BPTT built on it: tests/backends/test_gradcheck.py.)
"""
import pytest
import torch

from helpers import CELLS, assert_all_close, make, randn

B = 3


def random_step(form: str, bias: bool):
    """(cell, xp (B, G*H), prev state, recurrent params, d_new): random, float64, none requiring grad."""
    model = make(form, bias=bias)
    cell = model.cell
    w_ih, _, *rec = model.step_parameters()[0]
    seeds = iter(range(100))
    rand = lambda *shape: randn(*shape, seed=next(seeds))       # noqa: E731
    xp = rand(B, w_ih.shape[0])
    prev = tuple(rand(B, s) for s in cell.state_sizes())
    params = tuple(None if p is None else rand(*p.shape) for p in rec)
    d_new = tuple(rand(B, s) for s in cell.state_sizes())
    return cell, xp, prev, params, d_new


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELLS)
def test_step_backward_matches_autograd(cell, bias):
    cell, xp, prev, params, d_new = random_step(cell, bias)
    present = [p for p in params if p is not None]
    leaves = [t.clone().requires_grad_() for t in (xp, *prev, *present)]
    x_, prev_, it = leaves[0], tuple(leaves[1:1 + len(prev)]), iter(leaves[1 + len(prev):])
    new, _ = cell.step(x_, prev_, tuple(None if p is None else next(it) for p in params))
    expected = torch.autograd.grad(new, leaves, d_new)

    with torch.no_grad():
        new, saved = cell.step(xp, prev, params)
        d_xp, d_prev, d_params = cell.step_backward(d_new, saved, prev, new, params)
    assert len(d_prev) == len(prev) and len(d_params) == len(params)
    assert [d is None for d in d_params] == [p is None for p in params]
    assert_all_close([d_xp, *d_prev, *(d for d in d_params if d is not None)], list(expected))

