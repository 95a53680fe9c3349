"""The backend contract (rnnkit/backends/base.py), called directly, for every registered backend:
``supports`` answers with a reason; ``forward``, ``backward`` and ``step`` return what base.py
says (counts, shapes, None where a parameter is None, padded steps keep the state) and the numbers
of the reference loop (``rnnkit.sequence`` and the cell's step: the Python backends share it, so
for them this pins the shapes; a fused backend must match it).
"""
import pytest
import torch
import torch.nn.functional as F

from rnnkit import backends
from rnnkit.backends.base import Support
from rnnkit.sequence import keep, step_stack
from helpers import CELLS, CPU, cell_of, assert_all_close, cell_backends, make, randn

T, B = 4, 3
LENGTHS = torch.tensor([4, 1, 3])
MASK = (torch.arange(T)[:, None] < LENGTHS[None]).unsqueeze(-1)           # (T, B, 1)


@pytest.mark.parametrize("device, dtype", [(CPU, torch.float64), (CPU, torch.float32), (CPU, torch.bfloat16),
                                           (torch.device("meta"), torch.float32)])
@pytest.mark.parametrize("name", [n for n in backends.BACKENDS if n != "auto"])
def test_supports_answers_with_a_reason(name, device, dtype):
    for form in CELLS:
        answer = backends.get(name).supports(cell_of(form), device, dtype)
        assert isinstance(answer, Support)
        assert answer or (isinstance(answer.reason, str) and answer.reason), (form, answer)


def one_direction(form, bias):
    """(cell, xp (T, B, G*H), state0, params): one layer and direction of a seeded layer, detached."""
    model = make(form, bias=bias)
    w_ih, b_ih, *rec = [None if p is None else p.detach() for p in model.step_parameters()[0]]
    xp = F.linear(randn(T, B, w_ih.shape[1], seed=1), w_ih, b_ih)
    state0 = tuple(randn(B, s, seed=2 + k) for k, s in enumerate(model.cell.state_sizes()))
    return model.cell, xp, state0, tuple(rec)


def reference_forward(cell, xp, state0, params):
    """States after every step by the cell's step (padded steps keep the state), and the saved tensors."""
    state, states, saved = state0, [], []
    for t in range(T):
        new, sv = cell.step(xp[t], state, params)
        state = tuple(keep(MASK[t], n, s) for n, s in zip(new, state))
        states.append(state)
        saved.append(sv)
    return [torch.stack(s) for s in zip(*states)], [torch.stack(s) for s in zip(*saved)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_forward(cell, backend, bias):
    cell, xp, state0, params = one_direction(cell, bias)
    with torch.no_grad():
        states, saved = backends.get(backend).forward(cell, xp, MASK, state0, params, save=True)
    expected_states, expected_saved = reference_forward(cell, xp, state0, params)
    assert [tuple(s.shape) for s in states] == [(T, B, n) for n in cell.state_sizes()]
    assert len(saved) == len(cell.saved_names)
    valid = [s * MASK for s in saved]                          # what padded steps save is unspecified
    assert_all_close(list(states) + valid, expected_states + [s * MASK for s in expected_saved])
    for s in states:                                            # padded steps keep the state
        assert torch.equal(s[1:][~MASK[1:, :, 0]], s[:-1][~MASK[1:, :, 0]])


@pytest.mark.parametrize("cell, backend", [p for p in cell_backends() if backends.get(p.values[1]).differentiable])
def test_differentiable_backends_record_the_graph_themselves(cell, backend):
    """A ``differentiable`` backend's forward is what autograd differentiates (it has no backward)."""
    cell, xp, state0, params = one_direction(cell, True)
    states, _ = backends.get(backend).forward(cell, xp.requires_grad_(), MASK, state0, params, save=True)
    assert all(s.requires_grad for s in states)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell, backend", cell_backends(own_backward=True))
def test_backward(cell, backend, bias):
    """d_xp, d_state0 and d_params of a random loss on the outputs and the final states equal
    autograd's through the reference loop; None exactly where a parameter is None."""
    cell, xp, state0, params = one_direction(cell, bias)
    with torch.no_grad():
        states, saved = backends.get(backend).forward(cell, xp, MASK, state0, params, save=True)
    d_out = randn(T, B, cell.out_size, seed=9) * MASK
    d_final = tuple(randn(B, n, seed=10 + k) for k, n in enumerate(cell.state_sizes()))
    d_xp, d_state0, d_params = backends.get(backend).backward(cell, d_out, d_final, MASK, state0, states,
                                                             saved, params)
    assert tuple(d_xp.shape) == tuple(xp.shape)
    assert [tuple(d.shape) for d in d_state0] == [tuple(s.shape) for s in state0]
    assert [d is None for d in d_params] == [p is None for p in params]

    leaves = [t.clone().requires_grad_() for t in (xp, *state0, *(p for p in params if p is not None))]
    n = len(state0)
    it = iter(leaves[1 + n:])
    ref_states, _ = reference_forward(cell, leaves[0], tuple(leaves[1:1 + n]),
                                      tuple(None if p is None else next(it) for p in params))
    loss = (ref_states[0] * d_out).sum() + sum((s[-1] * d).sum() for s, d in zip(ref_states, d_final))
    expected = torch.autograd.grad(loss, leaves)
    assert_all_close([d_xp, *d_state0, *(d for d in d_params if d is not None)], list(expected))


@pytest.mark.parametrize("cell, backend", cell_backends())
def test_step(cell, backend):
    """One inference step of a 2-layer stack: out (B, S_0) and new states (L, B, S_k)."""
    model = make(cell, num_layers=2)
    layers = [[None if p is None else p.detach() for p in layer] for layer in model.step_parameters()]
    x = randn(B, model.input_size, seed=1)
    state0 = tuple(randn(2, B, n, seed=2 + k) for k, n in enumerate(model.cell.state_sizes()))
    with torch.no_grad():
        out, new = backends.get(backend).step(model.cell, x, state0, layers)
    expected_out, expected_new = step_stack(model.cell, x, state0, layers)
    assert tuple(out.shape) == (B, model.cell.out_size)
    assert [tuple(s.shape) for s in new] == [tuple(s.shape) for s in state0]
    assert_all_close([out, *new], [expected_out, *expected_new])
