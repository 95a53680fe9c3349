"""The options every cell has, one step at a time: ``step_backward`` with the training noise
(recurrent dropout's mask, zoneout's z) against autograd through ``step`` with the same noise, and
the forward against the equations of rnnkit/cells/base.py recomputed here.

Cells: every cell (Jordan: recurrent dropout only -- zoneout is refused for it), with the LSTM's
projection and peepholes and both cells' layer normalisation too, float64, with and without biases.
"""
import pytest
import torch

from rnnkit.cells import ElmanCell, GRUCell, JordanCell, LSTMCell
from helpers import assert_all_close, randn

B, H, O = 3, 4, 2

CELLS = {
    "elman": lambda **kw: ElmanCell(H, "relu", **kw),
    "jordan": lambda **kw: JordanCell(H, O, "tanh", "softmax", **{k: v for k, v in kw.items() if k != "zoneout"}),
    "lstm": lambda **kw: LSTMCell(H, **kw),
    "lstm_proj_peephole": lambda **kw: LSTMCell(H, proj_size=2, peephole=True, **kw),
    "gru": lambda **kw: GRUCell(H, True, **kw),
    "gru_cho": lambda **kw: GRUCell(H, False, **kw),
    "lstm_layer_norm": lambda **kw: LSTMCell(H, proj_size=2, peephole=True, layer_norm=True, **kw),
    "gru_layer_norm": lambda **kw: GRUCell(H, True, layer_norm=True, **kw),
}
OPTIONS = {"dropout": {"recurrent_dropout": 0.4}, "zoneout": {"zoneout": 0.3},
           "both": {"recurrent_dropout": 0.4, "zoneout": 0.3}}


def case(form, options, bias, seed=0):
    """(cell, xp, prev, params, noise, d_new): random, float64, none requiring grad."""
    cell = CELLS[form](**OPTIONS[options])
    seeds = iter(range(seed, seed + 100))
    rand = lambda *shape: randn(*shape, seed=next(seeds))       # noqa: E731
    shapes = dict(cell.param_shapes(5, bias))
    params = tuple(rand(*shapes[n]) if n in shapes else None for n in cell.rec_params)
    prev = tuple(rand(B, s) for s in cell.state_sizes())
    torch.manual_seed(seed)
    noise = cell.draw_noise(1, B, prev[0])
    noise = None if noise is None else tuple(n[0] for n in noise)
    return cell, rand(B, cell.n_gates * H), prev, params, noise, tuple(rand(B, s) for s in cell.state_sizes())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("form", CELLS)
def test_step_backward_with_noise_matches_autograd(form, options, bias):
    cell, xp, prev, params, noise, d_new = case(form, options, bias)
    present = [p for p in params if p is not None]
    leaves = [t.clone().requires_grad_() for t in (xp, *prev, *present)]
    x_, prev_, it = leaves[0], tuple(leaves[1:1 + len(prev)]), iter(leaves[1 + len(prev):])
    new, _ = cell.step(x_, prev_, tuple(None if p is None else next(it) for p in params), noise)
    expected = torch.autograd.grad(new, leaves, d_new)
    with torch.no_grad():
        new, saved = cell.step(xp, prev, params, noise)
        assert [s.shape[-1] for s in saved] == list(cell.saved_sizes())
        d_xp, d_prev, d_params = cell.step_backward(d_new, saved, prev, new, params, noise)
    assert_all_close([d_xp, *d_prev, *(d for d in d_params if d is not None)], list(expected))


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("form", ["elman", "lstm", "gru"])
def test_noise_acts_as_the_equations_say(form, options):
    """Recurrent dropout: the step of the plain cell with state[0] * m where it enters the
    recurrence (GRU: only in its matrix products; the carry z * h keeps h); zoneout:
    z * previous + (1 - z) * computed; eval: no mask, and z = p."""
    cell, xp, prev, params, noise, _ = case(form, options, True)
    plain = CELLS[form]()
    drop = noise[0] if cell.recurrent_dropout else None
    zones = noise[1:] if cell.recurrent_dropout else noise
    masked = prev if drop is None else (prev[0] * drop,) + prev[1:]
    computed, _ = plain.step(xp, masked, params)
    if form == "gru" and drop is not None:             # the carry z * h uses h itself
        z = plain.step(xp, masked, params)[1][0].chunk(3, dim=1)[1]
        computed = (computed[0] + z * (prev[0] - masked[0]),)
    if cell.zoneout:
        computed = tuple(z * p + (1 - z) * c for z, p, c in zip(zones, prev, computed))
    assert_all_close(list(cell.step(xp, prev, params, noise)[0]), list(computed))
    # eval: the expected values
    eval_plain, _ = plain.step(xp, prev, params)
    p = cell.zoneout
    assert_all_close(list(cell.step(xp, prev, params)[0]), [(1 - p) * c + p * s for c, s in zip(eval_plain, prev)])


def test_draw_noise_shapes_and_distributions():
    cell = LSTMCell(H, proj_size=2, recurrent_dropout=0.25, zoneout=0.5)
    assert cell.noise_names == ("recurrent_mask", "zoneout_h", "zoneout_c") and cell.noise_sizes() == (2, 2, H)
    torch.manual_seed(0)
    like = torch.empty(0, dtype=torch.float64)
    mask, z_h, z_c = cell.draw_noise(400, 500, like)
    assert mask.shape == (400, 500, 2) and z_h.shape == (400, 500, 2) and z_c.shape == (400, 500, H)
    assert torch.equal(mask[0], mask[-1]) and mask.stride(0) == 0           # one mask per sequence
    assert set(mask.unique().tolist()) == {0.0, 1 / 0.75}
    assert abs(mask[0].mean().item() - 1.0) < 0.05                            # inverted dropout: E[m] = 1
    assert set(z_c.unique().tolist()) == {0.0, 1.0} and abs(z_c.mean().item() - 0.5) < 0.01
    assert not torch.equal(z_h[0], z_h[1])                                    # per step
    assert LSTMCell(H).draw_noise(3, 2, like) is None


def test_options_are_in_the_spec_only_when_set():
    assert LSTMCell(H).options() == {} and LSTMCell(H).spec == LSTMCell(H, zoneout=0.0, clip_recurrent=None).spec
    cell = GRUCell(H, recurrent_dropout=0.25, zoneout=0.1, clip_recurrent=2.0)
    assert cell.options() == {"reset_after": "1", "recurrent_dropout": "0.25", "zoneout": "0.1",
                              "clip_recurrent": "2.0"}
    again = type(cell).from_spec(cell.spec)
    assert again.key == cell.key and again.noise_names == cell.noise_names
