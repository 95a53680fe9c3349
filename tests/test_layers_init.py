"""Parameters: torch.nn's initialisation, LSTM forget-gate bias, counts, device/dtype factory kwargs."""
import math

import pytest
import torch

import rnnkit
from conftest import CELLS, TORCH_CELLS, make, make_torch_pair


@pytest.mark.parametrize("cell", CELLS)
def test_reset_parameters_uniform_in_torch_bound(cell):
    model = make(cell, hidden_size=9, num_layers=2, bidirectional=True)
    bound = 1 / math.sqrt(9)
    before = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()
    for old, p in zip(before, model.parameters()):
        assert p.abs().max() <= bound
        assert p.unique().numel() > 1
        assert not torch.equal(old, p)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert flat.max() > 0.8 * bound and flat.min() < -0.8 * bound


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_same_seed_same_init_as_torch(cell):
    """Drop-in: code seeded for torch.nn gets the same initial weights (same draws, same order)."""
    ref, _ = make_torch_pair(cell, backend="reference", num_layers=2, bidirectional=True, seed=3)
    ours = make(cell, num_layers=2, bidirectional=True, seed=3)
    for (n, a), (m, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n == m and torch.equal(a, b)


@pytest.mark.parametrize("forget_bias", [1.0, 2, -0.5])
def test_lstm_forget_bias(forget_bias):
    H = 3
    model = rnnkit.LSTM(2, H, num_layers=2, bidirectional=True, forget_bias=forget_bias)
    for _ in range(2):
        for name, p in model.named_parameters():
            if name.startswith("bias_ih"):
                assert torch.all(p[H:2 * H] == forget_bias)
            if name.startswith("bias_hh"):
                assert torch.all(p[H:2 * H] == 0)
            if name.startswith("bias"):
                rest = torch.cat([p[:H], p[2 * H:]])
                assert rest.abs().max() <= 1 / math.sqrt(H) and rest.unique().numel() > 1
        model.reset_parameters()


def test_lstm_without_forget_bias_is_plain_uniform():
    model = rnnkit.LSTM(2, 3)
    assert not torch.all(model.bias_hh_l0[3:6] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_count(cell):
    model = make(cell, num_layers=2, bidirectional=True)
    assert model.parameter_count() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kw", [{}, {"num_layers": 3, "bidirectional": True}, {"bias": False}])
def test_gru_has_three_quarters_of_lstm_parameters(kw):
    lstm, gru = rnnkit.LSTM(5, 7, **kw), rnnkit.GRU(5, 7, **kw)
    assert 4 * gru.parameter_count() == 3 * lstm.parameter_count()
    assert gru.parameter_count() == rnnkit.GRU(5, 7, reset_after=False, **kw).parameter_count()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cell", ["elman_tanh", "lstm", "gru_cho", "jordan_softmax"])
def test_dtype_factory_kwarg(cell, dtype):
    model = make(cell, dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("cell", ["elman_tanh", "lstm", "gru_cho", "jordan_softmax"])
def test_device_factory_kwarg(cell):
    model = make(cell, device="meta", num_layers=2, bidirectional=True)
    assert all(p.device.type == "meta" for p in model.parameters())
