"""rnnkit.Elman/LSTM/GRU against torch.nn.RNN/LSTM/GRU: surface, values and every gradient.

Full configuration matrix in float64 (tolerance 1e-10), a slimmer float32 subset (1e-5), for every
registered backend that supports the case (helpers.cell_backends).  Conversion: test_convert.py.
"""
import pytest
import torch

import rnnkit
from helpers import (INPUT_SIZE, TORCH_CELLS, assert_all_close, cell_backends, flat, grads, make_torch_pair,
                     randn, random_state, state_tensors)

T, B = 4, 2


def check_parity(cell, backend, dtype, *, num_layers=1, bidirectional=False, batch_first=False,
                 bias=True, with_hx=False, unbatched=False):
    ref, ours = make_torch_pair(cell, backend=backend, dtype=dtype, num_layers=num_layers,
                                bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    shape = (T, INPUT_SIZE) if unbatched else ((B, T, INPUT_SIZE) if batch_first else (T, B, INPUT_SIZE))
    x = randn(*shape, dtype=dtype, requires_grad=True)
    hx = random_state(ours, B, unbatched=unbatched) if with_hx else None
    res_ref, res = ref(x, hx), ours(x, hx)
    assert type(res) is type(res_ref) and type(res[1]) is type(res_ref[1])
    outs_ref, outs = flat(res_ref), flat(res)
    assert [o.shape for o in outs] == [o.shape for o in outs_ref]
    assert_all_close(outs, outs_ref, dtype)
    leaves = [x, *state_tensors(hx)]
    assert_all_close(grads(outs, leaves + list(ours.parameters())),
                     grads(outs_ref, leaves + list(ref.parameters())), dtype)


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS, torch.float64))
def test_matches_torch_float64(backend, cell, num_layers, bidirectional, batch_first, bias, with_hx):
    check_parity(cell, backend, torch.float64, num_layers=num_layers, bidirectional=bidirectional,
                 batch_first=batch_first, bias=bias, with_hx=with_hx)


@pytest.mark.parametrize("num_layers, bidirectional, batch_first, bias, with_hx", [
    (1, False, False, True, False),
    (2, True, True, True, True),
    (3, True, False, False, True),
])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS, torch.float32))
def test_matches_torch_float32(backend, cell, num_layers, bidirectional, batch_first, bias, with_hx):
    check_parity(cell, backend, torch.float32, num_layers=num_layers, bidirectional=bidirectional,
                 batch_first=batch_first, bias=bias, with_hx=with_hx)


@pytest.mark.parametrize("bidirectional, batch_first, with_hx", [
    (False, False, False), (True, False, True), (True, True, False), (False, True, True)])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS))
def test_unbatched_matches_torch(backend, cell, bidirectional, batch_first, with_hx):
    check_parity(cell, backend, torch.float64, num_layers=2, bidirectional=bidirectional,
                 batch_first=batch_first, with_hx=with_hx, unbatched=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_parameter_names_and_shapes_match_torch(cell, bias):
    ref, ours = make_torch_pair(cell, backend="reference", num_layers=2, bidirectional=True, bias=bias)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    assert [[p.shape for p in ws] for ws in ours.all_weights] == \
        [[p.shape for p in ws] for ws in ref.all_weights]


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_load_state_dict_from_rnnkit_into_torch(cell):
    ref, ours = make_torch_pair(cell, backend="reference", num_layers=2, bidirectional=True)
    torch.manual_seed(5)
    ours.reset_parameters()
    ref.load_state_dict(ours.state_dict())
    x = randn(T, B, INPUT_SIZE)
    assert_all_close(flat(ref(x)), flat(ours(x)))


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_keyword_arguments_as_torch(cell):
    ref, ours = make_torch_pair(cell, backend="reference")
    x = randn(T, B, INPUT_SIZE)
    hx = random_state(ours, B)
    assert_all_close(flat(ours(input=x, hx=hx)), flat(ref(input=x, hx=hx)))


def test_rnn_is_elman():
    assert rnnkit.RNN is rnnkit.Elman


@pytest.mark.parametrize("cell", ["elman_tanh", "lstm", "gru"])
@pytest.mark.parametrize("kw", [
    {},
    {"num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.5, "bidirectional": True},
])
def test_repr_matches_torch(cell, kw):
    ref, ours = make_torch_pair(cell, backend="reference", **kw)
    assert repr(ours).partition("(")[2] == repr(ref).partition("(")[2]


@pytest.mark.parametrize("module, expected", [
    (lambda: rnnkit.Elman(2, 3, nonlinearity="relu"), "Elman(2, 3, nonlinearity='relu')"),
    (lambda: rnnkit.GRU(2, 3, reset_after=False), "GRU(2, 3, reset_after=False)"),
    (lambda: rnnkit.Jordan(2, 3, 4, num_layers=2, nonlinearity="relu", output_activation="softmax"),
     "Jordan(2, 3, 4, num_layers=2, nonlinearity='relu', output_activation='softmax')"),
])
def test_repr_of_rnnkit_only_options(module, expected):
    assert repr(module()) == expected


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_dropout_between_layers_only_in_training(cell):
    ref, ours = make_torch_pair(cell, backend="reference", num_layers=2, dropout=0.5)
    x = randn(T, B, INPUT_SIZE)
    ours.eval()
    ref.eval()
    assert_all_close(flat(ours(x)), flat(ref(x)))
    assert torch.equal(ours(x)[0], ours(x)[0])
    ours.train()
    torch.manual_seed(0)
    first = ours(x)[0]
    second = ours(x)[0]
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, ref(x)[0].detach())


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_no_dropout_training_equals_eval(cell):
    _, ours = make_torch_pair(cell, backend="reference", num_layers=2)
    x = randn(T, B, INPUT_SIZE)
    assert torch.equal(ours.train()(x)[0], ours.eval()(x)[0])


def test_dropout_with_one_layer_warns_and_has_no_effect():
    with pytest.warns(UserWarning, match="dropout"):
        model = rnnkit.LSTM(INPUT_SIZE, 3, dropout=0.5, dtype=torch.float64)
    x = randn(T, B, INPUT_SIZE)
    assert torch.equal(model.train()(x)[0], model.eval()(x)[0])
