"""Parameters: torch.nn's initialisation, LSTM forget-gate bias, counts (closed form by hand),
device/dtype factory kwargs."""
import math
import re

import pytest
import torch

import rnnkit
from helpers import CELLS, FORMS, TORCH_CELLS, make, make_torch_pair


@pytest.mark.parametrize("cell", CELLS)
def test_reset_parameters_uniform_in_torch_bound(cell):
    model = make(cell, hidden_size=9, num_layers=2, bidirectional=True)
    bound = 1 / math.sqrt(9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.125)                                        # moved, so that a reset shows
    model.reset_parameters()
    drawn = []
    for name, p in model.named_parameters():
        constant = model.cell.constant_init(re.sub(r"_l\d+(_reverse)?$", "", name))
        if constant is not None:                                 # layer normalisation's gains 1, biases 0
            assert torch.all(p == constant), name
            continue
        assert p.abs().max() <= bound
        assert p.unique().numel() > 1
        drawn.append(p.detach().flatten())
    flat = torch.cat(drawn)
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


def count_by_hand(cell: str, I: int, H: int, O: int, num_layers: int, D: int, bias: bool, P: int = 0,
                  peephole: bool = False, layer_norm: bool = False) -> int:
    """Scalars of a stack, from the equations in the cells' docstrings (not from rnnkit).

    Per layer and direction with K inputs, G gate blocks (Elman 1, GRU 3, LSTM 4):
        W_ih (G*H, K) + W_hh (G*H, H) [+ b_ih, b_hh (G*H) each]      = G*H*(K+H) [+ 2*G*H]
    LSTM with a projection to P: W_hh is (4H, P) and W_hr (P, H) is added; with peepholes w_ch (3H).
    Layer normalisation: gains of the input and recurrent blocks (G*H each), LSTM's cell gain (H)
    [+ its bias (H)].
    Jordan: W_ih (H, K) + W_yh (H, O) + W_hy (O, H) [+ b_ih (H) + b_hy (O)].
    Layer 0 reads the I input features, deeper layers both directions of the layer below: D*S,
    S the emitted width (H; LSTM's P when projected; Jordan O).
    """
    if cell == "jordan":
        def one(K):
            return H * K + H * O + O * H + (H + O if bias else 0)
        S = O
    elif cell in ("elman", "gru", "lstm"):
        G = {"elman": 1, "gru": 3, "lstm": 4}[cell]

        S = P or H

        def one(K):
            ln = 2 * G * H + ((H + (H if bias else 0)) if cell == "lstm" else 0) if layer_norm else 0
            return G * H * (K + S) + (2 * G * H if bias else 0) + P * H + (3 * H if peephole else 0) + ln
    else:
        pytest.fail(f"no closed-form parameter count for the {cell!r} cell: add its equations to count_by_hand")
    return sum(D * one(I if k == 0 else D * S) for k in range(num_layers))


@pytest.mark.parametrize("cell, kw, expected", [
    ("elman", {}, 4 * 3 + 4 * 4 + 2 * 4),
    ("lstm", {"num_layers": 2, "bidirectional": True}, 2 * (16 * 3 + 16 * 4 + 32) + 2 * (16 * 8 + 16 * 4 + 32)),
    ("gru", {"bias": False}, 12 * 3 + 12 * 4),
    ("jordan", {"num_layers": 2}, (4 * 3 + 4 * 2 + 2 * 4 + 4 + 2) + (4 * 2 + 4 * 2 + 2 * 4 + 4 + 2)),
    # P=2: layer 0 W_ih 16x3, W_hh 16x2, biases 32, W_hr 2x4; layer 1 reads D*P = 4 features
    ("lstm", {"num_layers": 2, "bidirectional": True, "P": 2},
     2 * (16 * 3 + 16 * 2 + 32 + 8) + 2 * (16 * 4 + 16 * 2 + 32 + 8)),
    ("lstm", {"peephole": True, "bias": False}, 16 * 3 + 16 * 4 + 12),
    ("lstm", {"layer_norm": True}, 16 * 3 + 16 * 4 + 32 + 16 + 16 + 4 + 4),
    ("gru", {"layer_norm": True, "bias": False}, 12 * 3 + 12 * 4 + 12 + 12),
])
def test_count_by_hand_on_worked_examples(cell, kw, expected):
    """The closed form itself, against numbers worked out on paper (I=3, H=4, O=2)."""
    kw = {"num_layers": 1, "bidirectional": False, "bias": True, "P": 0, "peephole": False, "layer_norm": False, **kw}
    D = 2 if kw["bidirectional"] else 1
    assert count_by_hand(cell, 3, 4, 2, kw["num_layers"], D, kw["bias"], kw["P"], kw["peephole"],
                         kw["layer_norm"]) == expected


@pytest.mark.parametrize("num_layers, bidirectional, bias", [
    (1, False, True), (1, True, False), (3, False, False), (3, True, True)],
    ids=["l1_uni", "l1_bi_nobias", "l3_uni_nobias", "l3_bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_parameter_count(cell, num_layers, bidirectional, bias):
    """I, H and O all differ, so a layer reading the wrong width is counted wrong."""
    entry, form = FORMS[cell]
    I, H, O = 5, 4, form.get("output_size", 0)
    model = make(cell, input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional,
                 bias=bias)
    expected = count_by_hand(entry.name, I, H, O, num_layers, 2 if bidirectional else 1, bias,
                             form.get("proj_size", 0), form.get("peephole", False), form.get("layer_norm", False))
    assert model.parameter_count() == expected
    assert sum(p.numel() for p in model.parameters()) == expected


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
