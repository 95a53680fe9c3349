"""LayerNorm LSTM and GRU (Ba et al. 2016) with haste's LayerNormLSTM placements, against a loop
written here with torch.nn.functional.layer_norm: each gate block of the input pre-activation
x W_ih^T + b_ih and of the recurrent one h W_hh^T normalised on its own and scaled by its gain,
b_hh added after; the LSTM's cell normalised (gain and bias) before the output tanh.  Outputs,
final states and the gradients of input, initial state and every parameter (gains included), in
float64, for every backend with a hand-written backward (the shared matrices add gradcheck, the
trace, lengths and directions through the registry's lstm_layer_norm and gru_layer_norm forms).
"""
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from helpers import assert_all_close, backends_for, grads, randn

T, B, I, H, P = 5, 3, 2, 4, 3


def normed(v, blocks, gain):
    """F.layer_norm over each of ``blocks`` equal parts of the last dimension, then the gain."""
    return torch.cat([F.layer_norm(b, b.shape[-1:]) for b in v.chunk(blocks, dim=-1)], dim=-1) * gain


def lstm_oracle(m, x, h, c):
    outs = []
    for x_t in x:
        pre = (normed(x_t @ m.weight_ih_l0.T + m.bias_ih_l0, 4, m.weight_ln_ih_l0)
               + normed(h @ m.weight_hh_l0.T, 4, m.weight_ln_hh_l0) + m.bias_hh_l0)
        i, f, g, o = pre.chunk(4, dim=-1)
        w_ci, w_cf, w_co = m.weight_ch_l0.chunk(3)
        i, f, g = torch.sigmoid(i + w_ci * c), torch.sigmoid(f + w_cf * c), torch.tanh(g)
        c = f * c + i * g
        o = torch.sigmoid(o + w_co * c)
        h = (o * torch.tanh(F.layer_norm(c, (H,), m.weight_ln_c_l0, m.bias_ln_c_l0))) @ m.weight_hr_l0.T
        outs.append(h)
    return [torch.stack(outs), h[None], c[None]]


def gru_oracle(m, x, h):
    outs = []
    for x_t in x:
        xr, xz, xn = normed(x_t @ m.weight_ih_l0.T + m.bias_ih_l0, 3, m.weight_ln_ih_l0).chunk(3, dim=-1)
        hr, hz, hn = (normed(h @ m.weight_hh_l0.T, 3, m.weight_ln_hh_l0) + m.bias_hh_l0).chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return [torch.stack(outs), h[None]]


def build(kind, backend):
    torch.manual_seed(0)
    if kind == "lstm":
        model = rnnkit.LSTM(I, H, proj_size=P, peephole=True, layer_norm=True, dtype=torch.float64, backend=backend)
    else:
        model = rnnkit.GRU(I, H, layer_norm=True, dtype=torch.float64, backend=backend)
    with torch.no_grad():                     # gains and biases away from their initial 1 and 0
        for name, p in model.named_parameters():
            if "_ln_" in name:
                p.add_(torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    return model


@pytest.mark.parametrize("kind, backend", [(k, b.values[0]) for k in ("lstm", "gru")
                                           for b in backends_for(build(k, None).cell, own_backward=True)])
def test_matches_a_layer_norm_loop(kind, backend):
    model = build(kind, backend)
    x = randn(T, B, I, seed=3, requires_grad=True)
    h0 = randn(1, B, P if kind == "lstm" else H, seed=4, requires_grad=True)
    if kind == "lstm":
        c0 = randn(1, B, H, seed=5, requires_grad=True)
        out, (h_n, c_n) = model(x, (h0, c0))
        ours, expected, states = [out, h_n, c_n], lstm_oracle(model, x, h0[0], c0[0]), [h0, c0]
    else:
        out, h_n = model(x, h0)
        ours, expected, states = [out, h_n], gru_oracle(model, x, h0[0]), [h0]
    assert_all_close(ours, expected)
    leaves = [x, *states, *model.parameters()]
    assert_all_close(grads(ours, leaves), grads(expected, leaves))


def test_initial_gains_biases_and_forget_bias():
    model = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, forget_bias=1.0)
    for name, p in model.named_parameters():
        if name.startswith("weight_ln"):
            assert torch.all(p == 1), name
        if name.startswith("bias_ln"):
            assert torch.all(p == 0), name
    # under layer normalisation the gates' shift is bias_hh (bias_ih is inside the normalisation)
    assert torch.all(model.bias_hh_l1_reverse[H:2 * H] == 1) and torch.all(model.bias_ih_l1_reverse[H:2 * H] == 0)
    names = [n for n, _ in rnnkit.GRU(I, H, layer_norm=True, bias=False).named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "weight_ln_ih_l0", "weight_ln_hh_l0"]
    assert [n for n, _ in rnnkit.LSTM(I, H, layer_norm=True, bias=False).named_parameters()][-3:] == \
        ["weight_ln_ih_l0", "weight_ln_hh_l0", "weight_ln_c_l0"]


def test_surface_and_errors():
    assert repr(rnnkit.GRU(I, H, layer_norm=True)) == "GRU(2, 4, layer_norm=True)"
    assert repr(rnnkit.LSTM(I, H, layer_norm=True)) == "LSTM(2, 4, layer_norm=True)"
    with pytest.raises(ValueError, match="layer_norm"):
        rnnkit.GRU(I, H, layer_norm=True, reset_after=False)
    with pytest.raises(TypeError, match="layer_norm"):
        rnnkit.LSTM(I, H, layer_norm=1)
    with pytest.raises(ValueError, match="layer_norm"):
        rnnkit.LSTM(I, H, layer_norm=True).to_torch()
    with pytest.raises(TypeError):
        rnnkit.Elman(I, H, layer_norm=True)
