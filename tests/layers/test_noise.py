"""Recurrent dropout (Gal & Ghahramani 2016) and zoneout (Krueger et al. 2017) on every layer, in training.

The masks are drawn once per forward from torch's RNG (so a seed reproduces them) and handed to
the time loop, whose backward reuses them: the hand-written BPTT of every backend that has one
equals autograd through the loop with the same draws; gradcheck in float64 with the masks held
fixed; the outputs equal a loop written here with torch.nn's cells and the masks the layer drew;
eval is deterministic (no mask, zoneout's expected value); ``step`` draws as a forward over one
step does.
"""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import rnnkit
from rnnkit import backends
from helpers import assert_all_close, backends_for, flat, grads, randn, state_tensors

T, B, I, H = 5, 3, 2, 4
LENGTHS = [5, 2, 4]

FORMS = {
    "elman": (rnnkit.Elman, {"recurrent_dropout": 0.3, "zoneout": 0.3}),
    "jordan": (rnnkit.Jordan, {"output_size": 2, "output_activation": "tanh", "recurrent_dropout": 0.3}),
    "lstm": (rnnkit.LSTM, {"recurrent_dropout": 0.3, "zoneout": 0.3}),
    "lstm_proj_peephole": (rnnkit.LSTM, {"proj_size": 2, "peephole": True, "recurrent_dropout": 0.3,
                                         "zoneout": 0.3}),
    "gru": (rnnkit.GRU, {"recurrent_dropout": 0.3, "zoneout": 0.3}),
    "gru_cho": (rnnkit.GRU, {"reset_after": False, "recurrent_dropout": 0.3, "zoneout": 0.3}),
}


def build(form, backend=None, seed=0, **kw):
    cls, extra = FORMS[form]
    torch.manual_seed(seed)
    return cls(I, H, dtype=torch.float64, backend=backend, **{**extra, **kw})


def cases(forms=FORMS):
    return [pytest.param(f, b.values[0], id=f"{b.id}-{f}", marks=b.marks) for f in forms
            for b in backends_for(build(f).cell, own_backward=True)]


def run(model, x, hx=None, lengths=None, seed=11):
    torch.manual_seed(seed)                        # the masks of this forward
    return flat(model(x, hx, lengths=lengths))


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("form, backend", cases())
def test_backward_equals_autograd_with_the_same_masks(form, backend, lengths):
    results = []
    for name in (backend, backends.ORACLE):
        model = build(form, name, num_layers=2, bidirectional=True)
        x = randn(T, B, I, seed=3, requires_grad=True)
        outs = run(model, x, lengths=lengths)
        results.append(outs + grads(outs, [x, *model.parameters()]))
    assert_all_close(results[0], results[1])


@pytest.mark.parametrize("form, backend", cases(["elman", "jordan", "lstm_proj_peephole", "gru_cho"]))
def test_gradcheck_with_the_masks_held(form, backend, monkeypatch):
    model = build(form, backend, num_layers=2, bidirectional=True)
    draws, calls, draw = [], [0], model.cell.draw_noise

    def held(*args):                     # the first forward's 4 draws (2 layers x 2 directions), again and again
        k = calls[0] % 4
        calls[0] += 1
        if len(draws) <= k:
            draws.append(draw(*args))
        return draws[k]
    monkeypatch.setattr(model.cell, "draw_noise", held)
    names = [n for n, _ in model.named_parameters()]
    x = randn(T, B, I, seed=3, requires_grad=True)

    def fn(x, *params):
        return tuple(flat(functional_call(model, dict(zip(names, params)), (x,), {"lengths": LENGTHS})))

    inputs = (x, *(p.detach().clone().requires_grad_() for p in model.parameters()))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def captured(model, monkeypatch):
    """The noise every draw of the model returned, in order."""
    seen = []
    draw = model.cell.draw_noise

    def spy(*args):
        seen.append(draw(*args))
        return seen[-1]
    monkeypatch.setattr(model.cell, "draw_noise", spy)
    return seen


@pytest.mark.parametrize("form", ["elman", "lstm", "gru"])
def test_outputs_equal_torch_cells_with_the_drawn_masks(form, monkeypatch):
    """One layer: h_{t-1} * m into the recurrence (one m per sequence), then zoneout per unit and
    step: s_t = z s_{t-1} + (1 - z) cell(s_{t-1}); the GRU's carry keeps the unmasked h."""
    model = build(form)
    seen = captured(model, monkeypatch)
    x = randn(T, B, I, seed=3)
    out, *_ = run(model, x)
    m, *zs = seen[0]
    twin = {"elman": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[form](I, H, dtype=torch.float64)
    twin.load_state_dict({k[:-3]: v for k, v in model.state_dict().items()})
    state = [torch.zeros(B, H, dtype=torch.float64) for _ in zs]
    expected = []
    with torch.no_grad():
        for t in range(T):
            assert torch.equal(m[t], m[0])
            h_in = state[0] * m[t]
            if form == "lstm":
                new = list(twin(x[t], (h_in, state[1])))
            elif form == "gru":
                r_z_n = twin(x[t], h_in)               # carry z * (h * m): put back z * h
                z = torch.sigmoid(x[t] @ twin.weight_ih[H:2 * H].T + twin.bias_ih[H:2 * H]
                                  + h_in @ twin.weight_hh[H:2 * H].T + twin.bias_hh[H:2 * H])
                new = [r_z_n + z * (state[0] - h_in)]
            else:
                new = [twin(x[t], h_in)]
            state = [z[t] * s + (1 - z[t]) * n for z, s, n in zip(zs, state, new)]
            expected.append(state[0])
    assert_all_close([out], [torch.stack(expected)])


@pytest.mark.parametrize("form", FORMS)
def test_seeded_training_is_reproducible_and_eval_deterministic(form):
    model = build(form, num_layers=2)
    x = randn(T, B, I, seed=3)
    first, again, other = run(model, x, seed=1), run(model, x, seed=1), run(model, x, seed=2)
    assert_all_close(first, again)
    assert (first[0] - other[0]).abs().max() > 1e-6
    model.eval()
    assert_all_close(run(model, x, seed=1), run(model, x, seed=2))


@pytest.mark.parametrize("form", FORMS)
def test_eval_is_the_expected_value(form):
    """Eval: recurrent dropout off (E[m] = 1) and zoneout by its probability: the same numbers as a
    layer without recurrent dropout (whose zoneout runs its eval math too)."""
    model = build(form).eval()
    plain = build(form, recurrent_dropout=0.0).eval()
    plain.load_state_dict(model.state_dict())
    x = randn(T, B, I, seed=3)
    assert_all_close(run(model, x), run(plain, x))
    if model.zoneout:                                  # (1 - p) * new + p * old, against p = 0
        no_zoneout = build(form, recurrent_dropout=0.0, zoneout=0.0)
        no_zoneout.load_state_dict(model.state_dict())
        assert (run(model, x)[0] - run(no_zoneout, x)[0]).abs().max() > 1e-6


@pytest.mark.parametrize("form", FORMS)
def test_step_draws_as_a_one_step_forward(form):
    model = build(form, num_layers=2)
    x = randn(B, I, seed=3)
    torch.manual_seed(4)
    y, state = model.step(x)
    torch.manual_seed(4)
    out, full = model(x[None])
    assert_all_close([y, *state_tensors(state)], [out[0], *state_tensors(full)])


def test_masks_differ_per_sequence_layer_and_direction(monkeypatch):
    model = build("lstm", num_layers=2, bidirectional=True)
    seen = captured(model, monkeypatch)
    run(model, randn(T, B, I, seed=3))
    assert len(seen) == 4                              # one draw per layer and direction
    masks = [s[0][0] for s in seen]
    assert all(not torch.equal(a, b) for k, a in enumerate(masks) for b in masks[k + 1:])
    assert not torch.equal(masks[0][0], masks[0][1])   # per sequence
