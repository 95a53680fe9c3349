"""The options of issue 11 as layer arguments: LSTM's projection (torch.nn.LSTM's state shapes),
peepholes, and the options of every layer.  The fused kernels run the projection, peepholes,
clip_recurrent, recurrent dropout, zoneout and layer normalisation (``auto`` picks the cpu
backend, and the shared matrices run it on the registry's layer_norm forms); a form the cpu
backend declines runs on the reference backend under ``auto``.

(Numbers: the shared matrices run the registry's forms lstm_proj, lstm_peephole, elman_zoneout,
lstm_dropout_zoneout, gru_clip, lstm_layer_norm and gru_layer_norm; test_clip_recurrent.py,
test_noise.py and test_onnx_parity.py the rest.)
"""
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit import backends
from rnnkit.backends import cpu
from helpers import assert_all_close, backends_for, flat, randn

I, H, P, B, T = 3, 5, 2, 2, 4

LAYER_NORM = {
    "lstm_layer_norm": lambda **kw: rnnkit.LSTM(I, H, layer_norm=True, **kw),
    "gru_layer_norm": lambda **kw: rnnkit.GRU(I, H, layer_norm=True, **kw),
}
FUSED = {
    **LAYER_NORM,
    "proj": lambda **kw: rnnkit.LSTM(I, H, proj_size=P, **kw),
    "peephole": lambda **kw: rnnkit.LSTM(I, H, peephole=True, **kw),
    "clip": lambda **kw: rnnkit.Elman(I, H, clip_recurrent=1.0, **kw),
    "recurrent_dropout": lambda **kw: rnnkit.Jordan(I, H, 2, recurrent_dropout=0.2, **kw),
    "zoneout": lambda **kw: rnnkit.GRU(I, H, zoneout=0.2, **kw),
}
BUILT = cpu.extension() is not None


@pytest.mark.skipif(not BUILT, reason="the C++ kernels did not build")
@pytest.mark.parametrize("variant", LAYER_NORM)
def test_a_declined_form_runs_on_the_reference_under_auto(variant, monkeypatch):
    """Every layer form has a kernel now; the cpu backend is made to decline one (its memo of the
    kernels' answer) to hold the fallback: ``auto`` runs the reference, ``backend='cpu'`` says why not."""
    monkeypatch.delenv("RNNKIT_BACKEND")
    model = LAYER_NORM[variant]()
    monkeypatch.setitem(cpu.BACKEND._specs, model.cell.key, "its kernel does not take layer_norm (planted)")
    monkeypatch.setattr(backends, "_resolved", {})                 # the layers' memo of earlier answers
    ok = backends.get("cpu").supports(model.cell, torch.device("cpu"), torch.float32)
    assert not ok and "does not take" in ok.reason
    assert model.backend_for(torch.empty(0)).name == "reference"
    with pytest.raises(RuntimeError, match="cannot run"):
        LAYER_NORM[variant](backend="cpu")(torch.randn(T, B, I))
    assert backends.get("cpu").supports(rnnkit.LSTM(I, H).cell, torch.device("cpu"), torch.float32)


@pytest.mark.skipif(not BUILT, reason="the C++ kernels did not build")
@pytest.mark.parametrize("form", LAYER_NORM)
def test_the_shared_matrices_run_layer_norm_on_the_cpu_backend(form):
    assert "cpu" in [p.values[0] for p in backends_for(form)]
    assert "cpu" in [p.values[0] for p in backends_for(form, torch.float32, own_backward=True)]


@pytest.mark.skipif(not BUILT, reason="the C++ kernels did not build")
@pytest.mark.parametrize("variant", FUSED)
def test_auto_runs_the_fused_kernels(variant, monkeypatch):
    monkeypatch.delenv("RNNKIT_BACKEND")
    model = FUSED[variant]()
    assert backends.get("cpu").supports(model.cell, torch.device("cpu"), torch.float32)
    assert model.backend_for(torch.empty(0)).name == "cpu"


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_projected_state_shapes_as_torch(num_layers, bidirectional):
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=P, dtype=torch.float64)
    ours = rnnkit.from_torch(ref, backend="reference")
    assert ours.proj_size == P and repr(ours) == repr(ref)
    assert ours.weight_hr_l0.shape == (P, H) and ours.weight_hh_l0.shape == (4 * H, P)
    if num_layers > 1:
        assert ours.weight_ih_l1.shape == (4 * H, D * P)
    h0 = randn(D * num_layers, B, P, seed=1)
    c0 = randn(D * num_layers, B, H, seed=2)
    x = randn(T, B, I)
    out, (h_n, c_n) = ours(x, (h0, c0))
    assert out.shape == (T, B, D * P) and h_n.shape == (D * num_layers, B, P) and c_n.shape == (D * num_layers, B, H)
    assert_all_close(flat(ours(x, (h0, c0))), flat(ref(x, (h0, c0))))
    back = ours.to_torch()
    assert back.proj_size == P
    assert_all_close(flat(back(x, (h0, c0))), flat(ref(x, (h0, c0))))
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape"):
        ours(x, (c0, c0))                                # h_0 of size H where P is expected
    y, (h1, c1) = ours.step(x[0], (h0, c0)) if not bidirectional else (None, (h0, c0))
    if not bidirectional:
        assert y.shape == (B, P) and h1.shape == h0.shape and c1.shape == c0.shape


def test_peephole_parameters_and_repr():
    model = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, peephole=True, proj_size=P)
    names = [n for n, _ in model.named_parameters()]
    assert names[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0", "weight_ch_l0"]
    assert "weight_ch_l1_reverse" in names and model.weight_ch_l1_reverse.shape == (3 * H,)
    assert repr(model) == "LSTM(3, 5, proj_size=2, num_layers=2, bidirectional=True, peephole=True)"
    assert rnnkit.LSTM(I, H, peephole=True, bias=False).weight_ch_l0.shape == (3 * H,)


def test_options_repr_and_attributes():
    model = rnnkit.LSTM(I, H, recurrent_dropout=0.25, zoneout=0.1, clip_recurrent=2)
    assert repr(model) == "LSTM(3, 5, recurrent_dropout=0.25, zoneout=0.1, clip_recurrent=2.0)"
    assert (model.recurrent_dropout, model.zoneout, model.clip_recurrent) == (0.25, 0.1, 2.0)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        model.to_torch()
    assert repr(rnnkit.Jordan(I, H, 2, recurrent_dropout=0.5)) == "Jordan(3, 5, 2, recurrent_dropout=0.5)"


def test_trainer_flags_reach_the_layer_through_the_registry():
    """--proj-size, --peephole, --recurrent-dropout, --zoneout, --clip-recurrent: Config fields read
    by the registry's ``build``; an option a cell does not read is refused by name."""
    import argparse

    from rnnkit.train import config
    from rnnkit.train.commands import add_config_flags, overrides
    from rnnkit.train.errors import UserError
    from rnnkit.train.model import build_rnn

    p = argparse.ArgumentParser()
    add_config_flags(p)
    args = p.parse_args(["--cell", "lstm", "--hidden", "8", "--proj-size", "3", "--peephole",
                         "--recurrent-dropout", "0.25", "--zoneout", "0.1", "--clip-recurrent", "2"])
    cfg = config.Config(**overrides(args))
    config.validate(cfg)
    rnn = build_rnn(cfg, 4)
    assert (rnn.proj_size, rnn.peephole, rnn.recurrent_dropout, rnn.zoneout, rnn.clip_recurrent) == \
        (3, True, 0.25, 0.1, 2.0)
    for bad, name in [({"cell": "jordan", "zoneout": 0.1}, "zoneout"), ({"cell": "gru", "peephole": True}, "peephole"),
                      ({"proj_size": 32}, "proj_size"), ({"recurrent_dropout": 1.0}, "recurrent_dropout"),
                      ({"clip_recurrent": -1.0}, "clip_recurrent")]:
        with pytest.raises(UserError, match=name):
            config.validate(config.Config(**bad))


def test_trainer_layer_norm_flag():
    from rnnkit.train import config
    from rnnkit.train.errors import UserError
    from rnnkit.train.model import build_rnn

    for cell in ("lstm", "gru"):
        cfg = config.Config(cell=cell, hidden=8, layer_norm=True)
        config.validate(cfg)
        assert build_rnn(cfg, 3).layer_norm
    for bad in ({"cell": "elman", "layer_norm": True}, {"cell": "gru", "layer_norm": True, "reset_after": False}):
        with pytest.raises(UserError, match="layer_norm"):
            config.validate(config.Config(**bad))
