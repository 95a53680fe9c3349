"""``return_trace=True`` (every gate and state at every step) and ``step`` (streaming).

The trace is checked step by step against the cell equations recomputed here from the parameters,
taking the previous state from the trace itself, and tied to the outputs and final states.
"""
import pytest
import torch

import rnnkit
from conftest import (BACKENDS, CELLS, INPUT_SIZE, assert_all_close, directions, flat, grads, make,
                      randn, random_state, state_size, state_tensors)

T, B = 4, 3
LENGTHS = [4, 2, 3]

TRACE_NAMES = {
    rnnkit.Elman: ("hidden",),
    rnnkit.LSTM: ("input_gate", "forget_gate", "candidate", "output_gate", "cell", "hidden"),
    rnnkit.GRU: ("reset_gate", "update_gate", "candidate", "hidden"),
    rnnkit.Jordan: ("hidden", "output"),
}
# trace names of the carried state, in the order of the returned final state
CARRIED = {rnnkit.Elman: ("hidden",), rnnkit.LSTM: ("hidden", "cell"), rnnkit.GRU: ("hidden",),
           rnnkit.Jordan: ("output",)}
ACT = {"tanh": torch.tanh, "relu": torch.relu}
OUT = {"identity": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
       "softmax": lambda z: torch.softmax(z, -1)}


def recompute_step(model, p, x, prev):
    """The cell's equations for one sequence and one step.

    p: this layer and direction's parameters by name without suffix; x: (I_k,) input;
    prev: the previous carried state by trace name.  Returns every trace quantity.
    """
    def lin(w, v, b):
        return p[w] @ v + (p[b] if b in p else 0)

    if isinstance(model, rnnkit.Jordan):
        h = ACT[model.nonlinearity](lin("weight_ih", x, "bias_ih") + p["weight_yh"] @ prev["output"])
        return {"hidden": h, "output": OUT[model.output_activation](lin("weight_hy", h, "bias_hy"))}
    gx = lin("weight_ih", x, "bias_ih")
    if isinstance(model, rnnkit.Elman):
        return {"hidden": ACT[model.nonlinearity](gx + lin("weight_hh", prev["hidden"], "bias_hh"))}
    if isinstance(model, rnnkit.LSTM):
        i, f, g, o = (gx + lin("weight_hh", prev["hidden"], "bias_hh")).chunk(4)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * prev["cell"] + i * g
        return {"input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o, "cell": c,
                "hidden": o * torch.tanh(c)}
    h = prev["hidden"]
    (xr, xz, xn), (hr, hz, hn) = gx.chunk(3), lin("weight_hh", h, "bias_hh").chunk(3)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    if model.reset_after:
        n = torch.tanh(xn + r * hn)
    else:
        H = model.hidden_size
        b_hn = p["bias_hh"][2 * H:] if "bias_hh" in p else 0
        n = torch.tanh(xn + p["weight_hh"][2 * H:] @ (r * h) + b_hn)
    return {"reset_gate": r, "update_gate": z, "candidate": n, "hidden": (1 - z) * n + z * h}


def check_trace(model, x, hx, lengths, out, finals, trace):
    """x, out and trace tensors time-major (T, B, .); finals: list of (D*L, B, S_k)."""
    D, L = directions(model), model.num_layers
    carried = CARRIED[type(model)]
    h0 = state_tensors(hx) or [torch.zeros(D * L, B, f.shape[-1], dtype=x.dtype) for f in finals]
    layer_in = x
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = {n[:-len(sfx)]: v for n, v in model.named_parameters() if n.endswith(sfx)}
            tr = trace[layer][d]
            for b, n in enumerate(lengths):
                prev = {name: h0[k][layer * D + d, b] for k, name in enumerate(carried)}
                for t in (range(n) if d == 0 else reversed(range(n))):
                    expected = recompute_step(model, p, layer_in[t, b], prev)
                    assert_all_close([tr[k][t, b] for k in expected], list(expected.values()))
                    prev = {name: tr[name][t, b] for name in carried}
                assert_all_close([f[layer * D + d, b] for f in finals], [prev[k] for k in carried])
                assert all(torch.all(v[n:, b] == 0) for v in tr.values())
        layer_in = torch.cat([trace[layer][d][carried[0]] for d in range(D)], dim=-1)
    assert_all_close([out], [layer_in])


@pytest.mark.parametrize("num_layers, bidirectional, batch_first, lengths, with_hx", [
    (1, False, False, None, False),
    (2, True, True, LENGTHS, True),
    (2, False, False, LENGTHS, True),
], ids=["plain", "deep_bi_bfirst_lengths", "deep_lengths"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_values(backend, cell, num_layers, bidirectional, batch_first, lengths, with_hx):
    model = make(cell, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 backend=backend)
    x = randn(T, B, INPUT_SIZE)
    hx = random_state(model, B) if with_hx else None
    tm = (lambda t: t.transpose(0, 1)) if batch_first else (lambda t: t)
    out, state, trace = model(tm(x), hx, lengths=lengths, return_trace=True)
    assert isinstance(trace, rnnkit.Trace)
    assert len(trace) == num_layers and all(len(trace[k]) == directions(model) for k in range(num_layers))
    names = TRACE_NAMES[type(model)]
    for layer in range(num_layers):
        for d in range(directions(model)):
            assert tuple(trace[layer][d]) == names
            for name, v in trace[layer][d].items():
                size = state_size(model) if name == "output" else model.hidden_size
                assert v.shape == tm(torch.empty(T, B, size)).shape
                assert not v.requires_grad
    tm_trace = [[{k: tm(v) for k, v in tr.items()} for tr in lay] for lay in trace.layers]
    check_trace(model, x, hx, lengths or [T] * B, tm(out), state_tensors(state), tm_trace)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_does_not_change_results(backend, cell):
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    x = randn(T, B, INPUT_SIZE, requires_grad=True)
    leaves = [x, *model.parameters()]
    plain = flat(model(x, lengths=LENGTHS))
    traced = flat(model(x, lengths=LENGTHS, return_trace=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, traced))
    assert all(torch.equal(a, b) for a, b in zip(grads(plain, leaves), grads(traced, leaves)))


@pytest.mark.parametrize("cell", ["lstm", "jordan_softmax"])
def test_trace_unbatched_and_packed(cell):
    model = make(cell, bidirectional=True, backend="reference")
    x = randn(T, INPUT_SIZE)
    _, _, trace = model(x, return_trace=True)
    _, _, batched = model(x.unsqueeze(1), return_trace=True)
    for d in range(2):
        for name, v in trace[0][d].items():
            assert torch.equal(v, batched[0][d][name][:, 0])
    packed = torch.nn.utils.rnn.pack_padded_sequence(randn(T, B, INPUT_SIZE), torch.tensor(LENGTHS),
                                                     enforce_sorted=False)
    _, _, from_packed = model(packed, return_trace=True)
    x_padded = torch.nn.utils.rnn.pad_packed_sequence(packed)[0]
    _, _, from_lengths = model(x_padded, lengths=LENGTHS, return_trace=True)
    for d in range(2):
        for name, v in from_packed[0][d].items():
            assert torch.equal(v, from_lengths[0][d][name])


def test_trace_get_and_names():
    model = make("lstm", num_layers=2, bidirectional=True)
    _, _, trace = model(randn(T, B, INPUT_SIZE), return_trace=True)
    assert trace.names == TRACE_NAMES[rnnkit.LSTM]
    assert trace.get("cell") is trace[1][0]["cell"]
    assert trace.get("forget_gate", layer=0, direction=1) is trace[0][1]["forget_gate"]
    with pytest.raises(KeyError, match="name"):
        trace.get("forgot_gate")


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_sequence(cell, num_layers):
    model = make(cell, num_layers=num_layers)
    x = randn(T, B, INPUT_SIZE, requires_grad=True)
    hx = random_state(model, B)
    out, state = model(x, hx)
    outs, s = [], hx
    for t in range(T):
        y_t, s = model.step(x[t], s)
        assert type(s) is type(state)
        outs.append(y_t)
    stepped = [torch.stack(outs)] + state_tensors(s)
    assert_all_close(stepped, flat((out, state)))
    leaves = [x, *state_tensors(hx), *model.parameters()]
    assert_all_close(grads(stepped, leaves), grads(flat((out, state)), leaves))


@pytest.mark.parametrize("cell", CELLS)
def test_step_from_zero_state_and_unbatched(cell):
    model = make(cell, num_layers=2, batch_first=True)
    x = randn(B, T, INPUT_SIZE)
    y_t, s = model.step(x[:, 0])
    out, state = model(x[:, :1])
    assert_all_close([y_t] + state_tensors(s), [out[:, 0]] + state_tensors(state))
    y_u, s_u = model.step(x[0, 0], random_state(model, 1, unbatched=True))
    out_u, state_u = model(x[0, :1], random_state(model, 1, unbatched=True))
    assert y_u.shape == (state_size(model),)
    assert_all_close([y_u] + state_tensors(s_u), [out_u[0]] + state_tensors(state_u))


@pytest.mark.parametrize("cell", CELLS)
def test_step_refuses_bidirectional(cell):
    model = make(cell, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.step(randn(B, INPUT_SIZE))
