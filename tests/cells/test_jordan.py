"""rnnkit.Jordan against an independent per-sequence loop written here (torch.nn has no Jordan network),
on every registered backend that runs the cell.

Per layer k and direction:  h_t = act(W_ih x_t + b_ih + W_yh y_{t-1}),  y_t = act_out(W_hy h_t + b_hy);
layer k+1 reads layer k's y, both directions concatenated.
"""
import math

import pytest
import torch

import rnnkit
from rnnkit.cells import JordanCell
from helpers import INPUT_SIZE, OUTPUT_SIZE, assert_all_close, backends_for, flat, grads, randn, random_state

T, B, H = 5, 3, 4
ACT = {"tanh": torch.tanh, "relu": torch.relu}
OUT = {"identity": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
       "softmax": lambda z: torch.exp(z) / torch.exp(z).sum()}


def backends_of(nonlinearity="tanh", output_activation="identity", **kw):
    """The registered backends that run this Jordan cell (helpers.backends_for)."""
    return backends_for(JordanCell(H, OUTPUT_SIZE, nonlinearity, output_activation), **kw)


def jordan_oracle(model, x, y0, lengths):
    """Explicit loops over sequences and steps, one vector at a time. x (T, B, I) -> (y (T, B, D*O), y_n)."""
    p = dict(model.named_parameters())
    D = 2 if model.bidirectional else 1
    O = model.output_size
    act, out = ACT[model.nonlinearity], OUT[model.output_activation]
    seqs = [[x[t, b] for t in range(lengths[b])] for b in range(x.shape[1])]
    finals = [[None] * x.shape[1] for _ in range(D * model.num_layers)]
    for layer in range(model.num_layers):
        per_dir = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_yh, w_hy = p["weight_ih" + sfx], p["weight_yh" + sfx], p["weight_hy" + sfx]
            b_ih = p.get("bias_ih" + sfx, torch.zeros(model.hidden_size, dtype=x.dtype))
            b_hy = p.get("bias_hy" + sfx, torch.zeros(O, dtype=x.dtype))
            ys = []
            for b, seq in enumerate(seqs):
                y = y0[layer * D + d, b] if y0 is not None else torch.zeros(O, dtype=x.dtype)
                order = range(len(seq)) if d == 0 else reversed(range(len(seq)))
                y_seq = [None] * len(seq)
                for t in order:
                    h = act(w_ih @ seq[t] + b_ih + w_yh @ y)
                    y = out(w_hy @ h + b_hy)
                    y_seq[t] = y
                ys.append(y_seq)
                finals[layer * D + d][b] = y
            per_dir.append(ys)
        seqs = [[torch.cat([per_dir[d][b][t] for d in range(D)]) for t in range(len(seqs[b]))]
                for b in range(len(seqs))]
    y = torch.zeros(x.shape[0], x.shape[1], D * O, dtype=x.dtype)
    for b, seq in enumerate(seqs):
        for t, v in enumerate(seq):
            y[t, b] = v
    return y, torch.stack([torch.stack(f) for f in finals])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_parameter_names_and_shapes(num_layers, bidirectional, bias):
    model = rnnkit.Jordan(INPUT_SIZE, H, OUTPUT_SIZE, num_layers=num_layers,
                          bidirectional=bidirectional, bias=bias)
    D = 2 if bidirectional else 1
    expected = []
    for k in range(num_layers):
        in_k = INPUT_SIZE if k == 0 else D * OUTPUT_SIZE
        for sfx in [f"_l{k}", f"_l{k}_reverse"][:D]:
            expected += [("weight_ih" + sfx, (H, in_k)), ("weight_yh" + sfx, (H, OUTPUT_SIZE))]
            expected += [("bias_ih" + sfx, (H,))] if bias else []
            expected += [("weight_hy" + sfx, (OUTPUT_SIZE, H))]
            expected += [("bias_hy" + sfx, (OUTPUT_SIZE,))] if bias else []
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == expected


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "mixed"])
@pytest.mark.parametrize("with_y0", [False, True], ids=["zero_y0", "y0"])
@pytest.mark.parametrize("num_layers, bidirectional, bias", [
    (1, False, True), (1, True, False), (2, False, False), (2, True, True)])
@pytest.mark.parametrize("nonlinearity, output_activation, backend", [
    pytest.param(act, out, *b.values, id=f"{b.id}-{act}-{out}", marks=b.marks)
    for act, out in [("tanh", "identity"), ("tanh", "tanh"), ("tanh", "sigmoid"), ("tanh", "softmax"),
                     ("relu", "identity"), ("relu", "softmax")]
    for b in backends_of(act, out)])
def test_matches_oracle(backend, nonlinearity, output_activation, num_layers, bidirectional, bias,
                        with_y0, lengths):
    torch.manual_seed(0)
    model = rnnkit.Jordan(INPUT_SIZE, H, OUTPUT_SIZE, num_layers=num_layers, bias=bias,
                          bidirectional=bidirectional, nonlinearity=nonlinearity,
                          output_activation=output_activation, dtype=torch.float64, backend=backend)
    x = randn(T, B, INPUT_SIZE)
    y0 = random_state(model, B) if with_y0 else None
    y, y_n = model(x, y0, lengths=lengths)
    assert y.shape == (T, B, model._D * OUTPUT_SIZE) and y_n.shape == (model._D * num_layers, B, OUTPUT_SIZE)
    assert_all_close([y, y_n], list(jordan_oracle(model, x, y0, lengths or [T] * B)))


@pytest.mark.parametrize("output_activation, backend", [
    pytest.param(out, *b.values, id=f"{b.id}-{out}", marks=b.marks)
    for out in ["identity", "tanh", "sigmoid", "softmax"]
    for b in backends_of(output_activation=out, own_backward=True)])
def test_gradients_match_oracle(output_activation, backend):
    """Gradients of the hand-derived BPTT equal autograd through the oracle."""
    torch.manual_seed(0)
    model = rnnkit.Jordan(INPUT_SIZE, H, OUTPUT_SIZE, num_layers=2, bidirectional=True,
                          output_activation=output_activation, dtype=torch.float64, backend=backend)
    x = randn(T, B, INPUT_SIZE, requires_grad=True)
    y0 = random_state(model, B)
    lengths = [5, 2, 4]
    leaves = [x, y0, *model.parameters()]
    assert_all_close(grads(flat(model(x, y0, lengths=lengths)), leaves),
                     grads(list(jordan_oracle(model, x, y0, lengths)), leaves))


@pytest.mark.parametrize("backend", backends_of())
def test_batch_first_and_unbatched(backend):
    torch.manual_seed(0)
    model = rnnkit.Jordan(INPUT_SIZE, H, OUTPUT_SIZE, batch_first=True, dtype=torch.float64, backend=backend)
    x = randn(T, B, INPUT_SIZE)
    y, y_n = model(x.transpose(0, 1))
    y_ref, y_n_ref = jordan_oracle(model, x, None, [T] * B)
    assert_all_close([y, y_n], [y_ref.transpose(0, 1), y_n_ref])
    y1, y1_n = model(x[:, 0])
    assert_all_close([y1, y1_n], [y_ref[:, 0], y_n_ref[:, 0]])


@pytest.mark.parametrize("backend", backends_of(output_activation="sigmoid"))
def test_known_values_scalar_network(backend):
    """H = O = I = 1 with hand-set weights: every number checked against math on floats."""
    model = rnnkit.Jordan(1, 1, 1, output_activation="sigmoid", dtype=torch.float64, backend=backend)
    with torch.no_grad():
        for name, v in [("weight_ih_l0", 0.5), ("weight_yh_l0", -2.0), ("bias_ih_l0", 0.1),
                        ("weight_hy_l0", 3.0), ("bias_hy_l0", -1.0)]:
            getattr(model, name).fill_(v)
    xs, y, expected = [1.0, -0.5, 2.0], 0.25, []
    for x in xs:
        h = math.tanh(0.5 * x + 0.1 - 2.0 * y)
        y = 1.0 / (1.0 + math.exp(-(3.0 * h - 1.0)))
        expected.append(y)
    out, y_n = model(torch.tensor(xs, dtype=torch.float64).view(3, 1, 1),
                     torch.full((1, 1, 1), 0.25, dtype=torch.float64))
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-14)
    assert y_n.item() == pytest.approx(expected[-1], abs=1e-14)


def test_softmax_output_is_a_distribution():
    torch.manual_seed(0)
    model = rnnkit.Jordan(INPUT_SIZE, H, 3, num_layers=2, output_activation="softmax",
                          dtype=torch.float64)
    y, _ = model(randn(T, B, INPUT_SIZE))
    assert torch.all(y > 0)
    torch.testing.assert_close(y.sum(-1), torch.ones(T, B, dtype=torch.float64))
