"""rnnkit.ElmanCell (RNNCell), LSTMCell, GRUCell, JordanCell: torch.nn's Cell modules' surface and numbers.

Against torch.nn.RNNCell/LSTMCell/GRUCell (state_dict both ways; outputs and every gradient,
float64, batched and unbatched, with and without a state, with and without biases), and against
the layers' own step (the same cell math): a cell module holding a one-layer layer's weights
(without the ``_l0`` suffix) gives what ``layer.step`` gives.
"""
import io

import pytest
import torch
from torch import nn

import rnnkit
from helpers import assert_all_close, grads, needs_cpu, randn

I, H, O, B = 3, 4, 2, 2

# name -> (rnnkit module, torch.nn module, constructor kwargs)
TWINS = {
    "rnn_tanh": (rnnkit.RNNCell, nn.RNNCell, {}),
    "rnn_relu": (rnnkit.ElmanCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTMCell, nn.LSTMCell, {}),
    "gru": (rnnkit.GRUCell, nn.GRUCell, {}),
}


def pair(name, bias=True):
    ours_cls, torch_cls, kw = TWINS[name]
    torch.manual_seed(0)
    ref = torch_cls(I, H, bias=bias, dtype=torch.float64, **kw)
    ours = ours_cls(I, H, bias=bias, dtype=torch.float64, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def state_of(name, unbatched, seed=1):
    shape = (H,) if unbatched else (B, H)
    hs = [randn(*shape, seed=seed + k, requires_grad=True) for k in range(2 if name == "lstm" else 1)]
    return tuple(hs) if name == "lstm" else hs[0]


def as_list(result):
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", TWINS)
def test_matches_torch_cell(name, bias, unbatched, with_hx):
    ref, ours = pair(name, bias)
    x = randn(*((I,) if unbatched else (B, I)), requires_grad=True)
    hx = state_of(name, unbatched) if with_hx else None
    out_ref, out = as_list(ref(x, hx)), as_list(ours(x, hx))
    assert type(ours(x, hx)) is type(ref(x, hx))
    assert [o.shape for o in out] == [o.shape for o in out_ref]
    assert_all_close(out, out_ref)
    leaves = [x] + (as_list(hx) if with_hx else [])
    assert_all_close(grads(out, leaves + list(ours.parameters())), grads(out_ref, leaves + list(ref.parameters())))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", TWINS)
def test_parameters_state_dict_and_repr_as_torch(name, bias):
    ref, ours = pair(name, bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert (ours.bias_ih is None) == (ref.bias_ih is None) and (ours.bias_hh is None) == (ref.bias_hh is None)
    assert repr(ours).partition("(")[2] == repr(ref).partition("(")[2]
    torch.manual_seed(5)
    ours.reset_parameters()
    ref.load_state_dict(ours.state_dict())                     # rnnkit -> torch.nn
    x = randn(B, I)
    assert_all_close(as_list(ref(x)), as_list(ours(x)))


# cell module -> (its layer, layer kwargs, the module's kwargs)
LAYERS = {
    "elman_relu": (rnnkit.ElmanCell, rnnkit.Elman, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTMCell, rnnkit.LSTM, {}),
    "gru_cho": (rnnkit.GRUCell, rnnkit.GRU, {"reset_after": False}),
    "jordan_softmax": (rnnkit.JordanCell, rnnkit.Jordan, {"output_size": O, "output_activation": "softmax"}),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("form", LAYERS)
def test_same_math_as_the_layer_step(form, bias):
    cell_cls, layer_cls, kw = LAYERS[form]
    torch.manual_seed(0)
    layer = layer_cls(I, H, bias=bias, dtype=torch.float64, backend="reference", **kw)
    cell = cell_cls(I, H, bias=bias, dtype=torch.float64, **kw)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in layer.state_dict().items()})
    x = randn(B, I, requires_grad=True)
    state = layer.unpack_state(layer(x[None])[1])              # some non-zero state (D*L=1, B, S_k)
    state = tuple(s.detach()[0].requires_grad_() for s in state)
    hx = state if len(state) > 1 else state[0]
    out = as_list(cell(x, hx))
    _, h_n = layer.step(x, tuple(s[None] for s in state) if len(state) > 1 else state[0][None])
    expected = [s[0] for s in layer.unpack_state(h_n)]
    assert_all_close(out, expected)
    leaves = [x, *state, *cell.parameters()]
    assert_all_close(grads(out, leaves), grads(expected, [x, *state, *layer.parameters()]))


@needs_cpu
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("form", ["rnn_tanh", *LAYERS])
def test_no_grad_step_on_the_cpu_backend(form, bias, with_hx):
    """Without a graph to record, a step runs on the backend (the C++ kernels, without the checks
    in Python): the same numbers as the cell's Python step."""
    cell_cls, _, kw = LAYERS.get(form, (rnnkit.RNNCell, None, {}))
    torch.manual_seed(0)
    fused = cell_cls(I, H, bias=bias, dtype=torch.float64, backend="cpu", **kw)
    python = cell_cls(I, H, bias=bias, dtype=torch.float64, backend="reference", **kw)
    python.load_state_dict(fused.state_dict())
    x = randn(B, I)
    hx = as_list(fused(x)) if with_hx else None                # some non-zero state
    hx = (tuple(hx) if len(hx) > 1 else hx[0]) if with_hx else None
    with torch.no_grad():
        assert fused._unchecked(x, hx) is not None and python._unchecked(x, hx) is None
        assert_all_close(as_list(fused(x, hx)), as_list(python(x, hx)))
    assert fused._unchecked(x, hx) is None                     # grad mode: the Python step, differentiable


def test_jordan_cell_surface():
    cell = rnnkit.JordanCell(I, H, O, dtype=torch.float64)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_yh", "bias_ih", "weight_hy", "bias_hy"]
    y = cell(randn(B, I))
    assert y.shape == (B, O)
    assert cell(randn(I), y=randn(O)).shape == (O,)
    assert repr(rnnkit.JordanCell(2, 3, 4, bias=False, output_activation="tanh")) == \
        "JordanCell(2, 3, 4, bias=False, output_activation='tanh')"
    nobias = rnnkit.JordanCell(I, H, O, bias=False)
    assert nobias.bias_ih is None and nobias.bias_hy is None


def test_names():
    assert rnnkit.RNNCell is rnnkit.ElmanCell
    assert rnnkit.LSTMCell is not rnnkit.cells.LSTMCell            # the module, not the math class
    assert isinstance(rnnkit.LSTMCell(I, H).cell, rnnkit.cells.LSTMCell)


@pytest.mark.parametrize("build, call, exc, name", [
    (lambda: rnnkit.LSTMCell(I, H), lambda c: c(torch.randn(1, B, I)), ValueError, "input"),
    (lambda: rnnkit.GRUCell(I, H), lambda c: c(torch.randn(B, I + 1)), ValueError, "input"),
    (lambda: rnnkit.GRUCell(I, H), lambda c: c(torch.randn(B, I, dtype=torch.float64)), TypeError, "dtype"),
    (lambda: rnnkit.RNNCell(I, H), lambda c: c(torch.randn(B, I), torch.randn(B + 1, H)), RuntimeError, "hx"),
    (lambda: rnnkit.RNNCell(I, H), lambda c: c(torch.randn(I), torch.randn(B, H)), ValueError, "hx"),
    (lambda: rnnkit.LSTMCell(I, H), lambda c: c(torch.randn(B, I), torch.randn(B, H)), TypeError, "hx"),
    (lambda: rnnkit.LSTMCell(I, H), lambda c: c(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, 1))),
     ValueError, "hx[1]"),
    (lambda: rnnkit.JordanCell(I, H, O), lambda c: c(torch.randn(B, I), torch.randn(B, H)), ValueError,
     "JordanCell: y: expected shape"),
])
@pytest.mark.parametrize("backend", [None, pytest.param("cpu", marks=needs_cpu)])
def test_bad_input_is_a_clear_error(build, call, exc, name, backend):
    """The same errors on the cpu backend's unchecked steps (no_grad): what its C++ rejects is
    checked again in Python, whose message names the argument."""
    cell = build()
    cell.backend = backend
    with torch.set_grad_enabled(backend is None), pytest.raises(exc, match=name.replace("[", r"\[").replace("]", r"\]")):
        call(cell)


@pytest.mark.parametrize("build, name", [
    (lambda: rnnkit.RNNCell(I, H, nonlinearity="sigmoid"), "nonlinearity"),
    (lambda: rnnkit.GRUCell(0, H), "input_size"),
    (lambda: rnnkit.LSTMCell(I, 0), "hidden_size"),
    (lambda: rnnkit.JordanCell(I, H, 0), "output_size"),
    (lambda: rnnkit.GRUCell(I, H, reset_after=1), "reset_after"),
    (lambda: rnnkit.LSTMCell(I, H, backend="fused"), "backend"),
])
def test_bad_arguments_are_clear_errors(build, name):
    with pytest.raises((ValueError, TypeError), match=name):
        build()


def test_whole_module_save_and_weights_only_load():
    cell = rnnkit.LSTMCell(I, H)
    buf = io.BytesIO()
    torch.save(cell, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    x = torch.randn(B, I)
    assert_all_close(list(loaded(x)), list(cell(x)), torch.float32)
