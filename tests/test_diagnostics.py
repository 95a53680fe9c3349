"""gradient_flow and spectral_radius against independent computations."""
import pytest
import torch

import rnnkit
from rnnkit.diagnostics import gradient_flow, spectral_radius


def _manual_elman_grads(m, x, loss_of_last):
    """dL/dh_t by an explicit loop with retain_grad on every h_t (one layer, forward only)."""
    h = torch.zeros(x.shape[1], m.hidden_size, dtype=x.dtype)
    hs = []
    for t in range(x.shape[0]):
        h = torch.tanh(x[t] @ m.weight_ih_l0.T + m.bias_ih_l0 + h @ m.weight_hh_l0.T + m.bias_hh_l0)
        h.retain_grad()
        hs.append(h)
    loss_of_last(torch.stack(hs)).backward()
    return torch.stack([h.grad.norm() for h in hs])


def test_elman_matches_explicit_loop():
    torch.manual_seed(0)
    m = rnnkit.Elman(3, 5, dtype=torch.float64)
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    loss = lambda out: (out[-1] ** 2).sum() + out[2].sum()  # noqa: E731
    flow = gradient_flow(m, x, lambda res: loss(res[0]))
    expected = _manual_elman_grads(m, x, loss)
    torch.testing.assert_close(flow.hidden()[0, 0], expected)


@pytest.mark.parametrize("cls,kwargs", [(rnnkit.LSTM, {}), (rnnkit.GRU, {}), (rnnkit.Elman, {}),
                                        (rnnkit.Jordan, {"output_size": 2})])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True)])
def test_shapes_restore_and_vanishing(cls, kwargs, layers, bidir):
    torch.manual_seed(1)
    m = cls(3, 4, num_layers=layers, bidirectional=bidir, **kwargs)
    cell, backend = m.cell, m.backend
    x = torch.randn(12, 2, 3)
    before = m(x)[0]
    flow = gradient_flow(m, x, lambda res: res[0][-1].sum())
    D = 2 if bidir else 1
    norms = flow.norms[next(iter(flow.norms))]
    assert len(norms) == len(m.cell.state_names)
    assert norms[0].shape == (layers, D, 12)
    assert torch.isfinite(norms[0]).all()
    # The loss reads only the last step: the last layer's forward direction gets its largest
    # gradient at the last step and less further back.
    fwd = norms[0][-1, 0]
    assert fwd[-1] > fwd[0]
    assert m.cell is cell and m.backend == backend
    torch.testing.assert_close(m(x)[0], before)
    assert all(p.grad is None for p in m.parameters())


def test_finds_layers_inside_a_model_and_rejects_others():
    model = torch.nn.Sequential()
    model.add_module("rnn", rnnkit.GRU(3, 4))
    flow = gradient_flow(model, torch.randn(5, 1, 3), lambda res: res[0].sum())
    assert set(flow.norms) == {"rnn"}
    with pytest.raises(TypeError, match="model"):
        gradient_flow(torch.nn.Linear(2, 2), torch.randn(1, 2), lambda y: y.sum())
    with pytest.raises(ValueError, match="loss_fn"):
        gradient_flow(rnnkit.GRU(3, 4), torch.randn(5, 1, 3), lambda res: res[0])


def test_spectral_radius():
    m = rnnkit.Elman(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        m.weight_hh_l1_reverse.copy_(torch.diag(torch.tensor([0.5, -2.0, 1.0])))
    rho = spectral_radius(m)
    assert rho.shape == (2, 2)
    assert rho[1, 1].item() == pytest.approx(2.0)
    j = rnnkit.Jordan(2, 3, 2)
    assert spectral_radius(j).shape == (1, 1)
    with pytest.raises(TypeError, match="layer"):
        spectral_radius(rnnkit.LSTM(2, 3))
