"""Argument validation: clear errors that name the argument, raised before any computation;
non-finite values in valid inputs propagate to the outputs (nothing is silently cleaned)."""
import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import registry
from helpers import (CELLS, FORMS, INPUT_SIZE, TORCH_CELLS, cell_backends, flat, make, make_torch_pair,
                     randn, random_state)

T, B, H = 4, 2, 4


def raises_naming(exc, name):
    return pytest.raises(exc, match=re.escape(name))


@pytest.mark.parametrize("build, exc, name", [
    pytest.param(lambda: rnnkit.Elman(3, 4, nonlinearity="sigmoid"), ValueError, "nonlinearity",
                 id="elman_nonlinearity"),
    pytest.param(lambda: rnnkit.Jordan(3, 4, 2, nonlinearity="sigmoid"), ValueError, "nonlinearity",
                 id="jordan_nonlinearity"),
    pytest.param(lambda: rnnkit.Jordan(3, 4, 2, output_activation="relu"), ValueError,
                 "output_activation", id="output_activation"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, backend="fortran"), ValueError, "backend", id="backend"),
    pytest.param(lambda: rnnkit.GRU(3, 4, dropout=-0.1), ValueError, "dropout", id="dropout_negative"),
    pytest.param(lambda: rnnkit.GRU(3, 4, dropout=1.01), ValueError, "dropout", id="dropout_above_one"),
    pytest.param(lambda: rnnkit.GRU(3, 4, dropout="0.5"), ValueError, "dropout", id="dropout_str"),
    pytest.param(lambda: rnnkit.Elman(0, 4), ValueError, "input_size", id="input_size_zero"),
    pytest.param(lambda: rnnkit.Elman(3.0, 4), ValueError, "input_size", id="input_size_float"),
    pytest.param(lambda: rnnkit.LSTM(3, -1), ValueError, "hidden_size", id="hidden_size_negative"),
    pytest.param(lambda: rnnkit.GRU(3, True), ValueError, "hidden_size", id="hidden_size_bool"),
    pytest.param(lambda: rnnkit.GRU(3, 4, num_layers=0), ValueError, "num_layers", id="num_layers"),
    pytest.param(lambda: rnnkit.Jordan(3, 4, 0), ValueError, "output_size", id="output_size"),
    pytest.param(lambda: rnnkit.Jordan(3, 0, 2), ValueError, "hidden_size", id="jordan_hidden_size"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, proj_size=4), ValueError, "proj_size", id="proj_size_not_smaller"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, proj_size=-1), ValueError, "proj_size", id="proj_size_negative"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, proj_size=2.0), TypeError, "proj_size", id="proj_size_float"),
    pytest.param(lambda: rnnkit.GRU(3, 4, proj_size=2), ValueError, "proj_size", id="proj_size_gru"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, peephole=1), TypeError, "peephole", id="peephole_type"),
    pytest.param(lambda: rnnkit.Jordan(3, 4, 2, zoneout=0.1), ValueError, "zoneout", id="zoneout_jordan"),
    pytest.param(lambda: rnnkit.GRU(3, 4, zoneout=1.0), ValueError, "zoneout", id="zoneout_one"),
    pytest.param(lambda: rnnkit.Elman(3, 4, zoneout=-0.1), ValueError, "zoneout", id="zoneout_negative"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, recurrent_dropout=1.0), ValueError, "recurrent_dropout",
                 id="recurrent_dropout_one"),
    pytest.param(lambda: rnnkit.Jordan(3, 4, 2, recurrent_dropout="0.5"), ValueError, "recurrent_dropout",
                 id="recurrent_dropout_str"),
    pytest.param(lambda: rnnkit.Elman(3, 4, clip_recurrent=0), ValueError, "clip_recurrent", id="clip_zero"),
    pytest.param(lambda: rnnkit.GRU(3, 4, clip_recurrent=float("inf")), ValueError, "clip_recurrent",
                 id="clip_inf"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, bias=False, forget_bias=1.0), ValueError, "forget_bias",
                 id="forget_bias_without_bias"),
    pytest.param(lambda: rnnkit.LSTM(3, 4, forget_bias="1"), TypeError, "forget_bias",
                 id="forget_bias_type"),
    pytest.param(lambda: rnnkit.GRU(3, 4, reset_after=1), TypeError, "reset_after", id="reset_after"),
])
def test_constructor_errors(build, exc, name):
    with raises_naming(exc, name):
        build()


@pytest.fixture
def no_compute(monkeypatch):
    """Any computation fails the test: validation must have raised first."""
    def computed(*args, **kwargs):
        raise AssertionError("computation started before the argument error")
    monkeypatch.setattr(rnnkit.ops, "run_direction", computed)
    for entry in registry.CELLS.values():
        monkeypatch.setattr(entry.cell, "step", computed)


@pytest.mark.parametrize("call", [lambda m: m(x3), lambda m: m.step(x3[0])], ids=["forward", "step"])
def test_no_compute_fixture_catches_computation(no_compute, call):
    with pytest.raises(AssertionError, match="computation started"):
        call(make("lstm", hidden_size=H))


def lstm_state(h_shape=(1, B, H), c_shape=(1, B, H), dtype=torch.float64):
    return torch.zeros(h_shape, dtype=dtype), torch.zeros(c_shape, dtype=dtype)


x3 = randn(T, B, INPUT_SIZE)
packed = pack_padded_sequence(x3, torch.tensor([T, 2]))


@pytest.mark.parametrize("cell, kw, call, exc, name", [
    pytest.param("gru", {}, lambda m: m(randn(T)), ValueError, "input", id="input_1d"),
    pytest.param("gru", {}, lambda m: m(randn(T, B, 1, INPUT_SIZE)), ValueError, "input", id="input_4d"),
    pytest.param("elman_tanh", {}, lambda m: m(randn(T, B, INPUT_SIZE + 1)), ValueError, "input",
                 id="input_features"),
    pytest.param("lstm", {}, lambda m: m(x3.float()), TypeError, "input", id="input_dtype"),
    pytest.param("lstm", {}, lambda m: m([[0.0] * INPUT_SIZE]), TypeError, "input", id="input_list"),
    pytest.param("gru", {}, lambda m: m(randn(0, B, INPUT_SIZE)), ValueError, "input", id="input_empty"),
    pytest.param("gru", {"num_layers": 2}, lambda m: m(x3, torch.zeros(1, B, H, dtype=torch.float64)),
                 ValueError, "hx", id="hx_layers"),
    pytest.param("elman_relu", {"bidirectional": True},
                 lambda m: m(x3, torch.zeros(1, B, H, dtype=torch.float64)), ValueError, "hx",
                 id="hx_directions"),
    pytest.param("gru", {}, lambda m: m(x3, torch.zeros(1, B + 1, H, dtype=torch.float64)),
                 ValueError, "hx", id="hx_batch"),
    pytest.param("gru", {}, lambda m: m(x3, torch.zeros(1, B, H + 1, dtype=torch.float64)),
                 ValueError, "hx", id="hx_hidden"),
    pytest.param("gru", {}, lambda m: m(x3, torch.zeros(1, B, H)), TypeError, "hx", id="hx_dtype"),
    pytest.param("gru", {}, lambda m: m(x3[:, 0], torch.zeros(1, B, H, dtype=torch.float64)),
                 ValueError, "hx", id="hx_batched_for_unbatched_input"),
    pytest.param("lstm", {}, lambda m: m(x3, torch.zeros(1, B, H, dtype=torch.float64)), TypeError, "hx",
                 id="lstm_hx_tensor"),
    pytest.param("lstm", {}, lambda m: m(x3, lstm_state() + lstm_state()[:1]), TypeError, "hx",
                 id="lstm_hx_triple"),
    pytest.param("lstm", {}, lambda m: m(x3, lstm_state(c_shape=(1, B, H + 1))), ValueError, "hx[1]",
                 id="lstm_c0_shape"),
    pytest.param("lstm", {}, lambda m: m(x3, (lstm_state()[0], lstm_state()[1].float())), TypeError,
                 "hx[1]", id="lstm_c0_dtype"),
    pytest.param("jordan_tanh", {}, lambda m: m(x3, torch.zeros(1, B, H, dtype=torch.float64)),
                 ValueError, "y0", id="jordan_y0_shape"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=torch.tensor([[T, T]])), TypeError, "lengths",
                 id="lengths_2d"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=torch.tensor([4.0, 2.0])), TypeError, "lengths",
                 id="lengths_float_tensor"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=[4.0, 2.0]), TypeError, "lengths",
                 id="lengths_float_list"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=torch.tensor([True, True])), TypeError, "lengths",
                 id="lengths_bool"),
    pytest.param("gru", {}, lambda m: m(x3, lengths="44"), TypeError, "lengths", id="lengths_str"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=[T + 1, 2]), ValueError, "lengths",
                 id="lengths_above_T"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=[T, 0]), ValueError, "lengths", id="lengths_zero"),
    pytest.param("jordan_tanh", {}, lambda m: m(x3, lengths=[T, -1]), ValueError, "lengths",
                 id="lengths_negative"),
    pytest.param("gru", {}, lambda m: m(x3, lengths=[T, 2, 1]), ValueError, "lengths", id="lengths_count"),
    pytest.param("gru", {"batch_first": True}, lambda m: m(x3, lengths=[T, 2]), ValueError, "lengths",
                 id="lengths_count_batch_first"),
    pytest.param("lstm", {}, lambda m: m(packed, lengths=[T, 2]), ValueError, "lengths",
                 id="lengths_with_packed"),
    pytest.param("gru", {}, lambda m: m.step(x3), ValueError, "input", id="step_input_3d"),
    pytest.param("gru", {}, lambda m: m.step(randn(B, INPUT_SIZE + 1)), ValueError, "input",
                 id="step_input_features"),
    pytest.param("lstm", {}, lambda m: m.step(x3[0], torch.zeros(1, B, H, dtype=torch.float64)),
                 TypeError, "hx", id="step_lstm_hx_tensor"),
    pytest.param("jordan_tanh", {}, lambda m: m.step(x3[0], torch.zeros(1, B, H, dtype=torch.float64)),
                 ValueError, "y0", id="step_y0_shape"),
])
def test_forward_errors(no_compute, cell, kw, call, exc, name):
    model = make(cell, hidden_size=H, **kw)
    with raises_naming(exc, name):
        call(model)


def test_unknown_backend_from_environment(no_compute, monkeypatch):
    model = make("gru")
    monkeypatch.setenv("RNNKIT_BACKEND", "fortran")
    with raises_naming(ValueError, "RNNKIT_BACKEND"):
        model(x3)


devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("cell", ["lstm", "jordan_tanh"])
def test_state_on_another_device(no_compute, cell, device):
    model = make(cell, hidden_size=H)
    hx = random_state(model, B)
    hx = tuple(h.detach().to(device) for h in hx) if isinstance(hx, tuple) else hx.detach().to(device)
    with raises_naming(ValueError, "y0" if cell.startswith("jordan") else "hx"):
        model(x3, hx)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_nan_in_valid_input_propagates(cell, backend, bidirectional):
    model = make(cell, num_layers=2, bidirectional=bidirectional, backend=backend)
    x = randn(T, B, INPUT_SIZE)
    x[1, 0, 0] = float("nan")
    out, *finals = flat(model(x, lengths=[T, 3]))
    assert torch.isfinite(out[:, 1]).all() and all(torch.isfinite(f[:, 1]).all() for f in finals)
    assert torch.isnan(out[1:, 0]).all()
    if bidirectional:
        assert torch.isnan(out[:, 0]).all()
    else:
        assert torch.isfinite(out[:1, 0]).all()
    assert all(torch.isnan(f[:, 0]).all() for f in finals)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS))
def test_nonfinite_input_as_torch(cell, backend, value):
    ref, ours = make_torch_pair(cell, backend=backend, num_layers=2, bidirectional=True)
    x = randn(T, B, INPUT_SIZE)
    x[2, 1, 1] = value
    got, expected = flat(ours(x)), flat(ref(x))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("where", ["input", "output_grad"])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS))
def test_nan_gradients_as_torch(cell, backend, where):
    """A NaN in the input (with a finite dL/dy) or in dL/dy reaches the same input and weight
    gradients as in torch.nn: relu's gradient is zero only where its output is <= 0, so it passes
    where the output is NaN and stops a NaN where the unit is off."""
    ref, ours = make_torch_pair(cell, backend=backend, num_layers=2, bidirectional=True)
    x = randn(T, B, INPUT_SIZE)
    if where == "input":
        x[1, 0, 0] = float("nan")
    grads = []
    for model in (ours, ref):
        xi = x.clone().requires_grad_()
        out = flat(model(xi))[0]
        g = randn(*out.shape, seed=3)
        if where == "output_grad":
            g[2, 1, 3] = float("nan")
        out.backward(g)
        grads.append({"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for name, e in grads[1].items():
        torch.testing.assert_close(grads[0][name], e, atol=1e-10, rtol=1e-10, equal_nan=True, msg=name)
