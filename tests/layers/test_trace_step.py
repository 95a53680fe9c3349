"""``return_trace=True`` (every gate and state at every step) and ``step`` (streaming).

The trace is checked step by step against the cell equations recomputed here from the parameters,
taking the previous state from the trace itself, and tied to the outputs and final states.  The
names come from the cell registry (an entry's ``trace_names``; the trace entry that holds each
carried state is found by running the cell's step once), for every registered backend that
supports the case.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit import registry
from helpers import (CELLS, INPUT_SIZE, assert_all_close, cell_backends, detached, directions, flat, grads,
                     make, randn, random_state, state_size, state_tensors)

T, B = 4, 3
LENGTHS = [4, 2, 3]

ACT = {"tanh": torch.tanh, "relu": torch.relu}
OUT = {"identity": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
       "softmax": lambda z: torch.softmax(z, -1)}


@functools.lru_cache(maxsize=None)
def carried(form: str):
    """The trace name of each carried state, in the order of the returned final state: the trace
    entry that equals that state after one step of the cell (random input and state)."""
    model = make(form)
    cell = model.cell
    w_ih, b_ih, *rec = model.step_parameters()[0]
    prev = tuple(randn(1, s, seed=k + 1) for k, s in enumerate(cell.state_sizes()))
    with torch.no_grad():
        new, saved = cell.step(randn(1, w_ih.shape[0]), prev, tuple(rec))
        trace = cell.trace(tuple(s[None] for s in saved), tuple(s[None] for s in new))
    return tuple(next(n for n in cell.trace_names if torch.equal(trace[n][0], s)) for s in new)


def recompute_step(model, p, x, prev):
    """The cell's equations for one sequence and one step.

    p: this layer and direction's parameters by name without suffix; x: (I_k,) input;
    prev: the previous carried state by trace name.  Returns every trace quantity.
    """
    def lin(w, v, b):
        return p[w] @ v + (p[b] if b in p else 0)

    cell = registry.of_layer(model).name
    if cell == "jordan":
        h = ACT[model.nonlinearity](lin("weight_ih", x, "bias_ih") + p["weight_yh"] @ prev["output"])
        return {"hidden": h, "output": OUT[model.output_activation](lin("weight_hy", h, "bias_hy"))}
    gx = lin("weight_ih", x, "bias_ih")
    if cell == "elman":
        return zoned(model, prev, {"hidden": ACT[model.nonlinearity](gx + lin("weight_hh", prev["hidden"], "bias_hh"))})
    if cell == "lstm" and model.layer_norm:                  # Ba et al.; haste's placements
        pre = (p["weight_ln_ih"] * blocks_normed(gx, 4) + p["weight_ln_hh"] * blocks_normed(p["weight_hh"] @ prev["hidden"], 4)
               + p.get("bias_hh", 0))
        i, f, g, o = pre.chunk(4)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * prev["cell"] + i * g
        h = o * torch.tanh(p["weight_ln_c"] * blocks_normed(c, 1) + p.get("bias_ln_c", 0))
        return zoned(model, prev, {"input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o, "cell": c,
                                   "hidden": p["weight_hr"] @ h if model.proj_size else h})
    if cell == "lstm":
        i, f, g, o = (gx + lin("weight_hh", prev["hidden"], "bias_hh")).chunk(4)
        w_ci, w_cf, w_co = p["weight_ch"].chunk(3) if model.peephole else (0, 0, 0)    # Gers & Schmidhuber
        i, f, g = torch.sigmoid(i + w_ci * prev["cell"]), torch.sigmoid(f + w_cf * prev["cell"]), torch.tanh(g)
        c = f * prev["cell"] + i * g
        o = torch.sigmoid(o + w_co * c)
        h = o * torch.tanh(c)
        return zoned(model, prev, {"input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o, "cell": c,
                                   "hidden": p["weight_hr"] @ h if model.proj_size else h})
    assert cell == "gru", f"recompute_step has no equations for the {cell!r} cell"
    h = prev["hidden"]
    (xr, xz, xn), (hr, hz, hn) = gx.chunk(3), lin("weight_hh", h, "bias_hh").chunk(3)
    if model.layer_norm:
        (xr, xz, xn) = (p["weight_ln_ih"] * blocks_normed(gx, 3)).chunk(3)
        (hr, hz, hn) = (p["weight_ln_hh"] * blocks_normed(p["weight_hh"] @ h, 3) + p.get("bias_hh", 0)).chunk(3)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    if model.reset_after:
        n = torch.tanh(xn + r * hn)
    else:
        H = model.hidden_size
        b_hn = p["bias_hh"][2 * H:] if "bias_hh" in p else 0
        n = torch.tanh(xn + p["weight_hh"][2 * H:] @ (r * h) + b_hn)
    return zoned(model, prev, {"reset_gate": r, "update_gate": z, "candidate": n, "hidden": (1 - z) * n + z * h})


def blocks_normed(v, blocks):
    """torch.nn.functional.layer_norm over each of ``blocks`` equal parts of a vector."""
    return torch.cat([F.layer_norm(b, b.shape) for b in v.chunk(blocks)])


def zoned(model, prev, found):
    """Zoneout in eval (the expected value): every carried state is (1-p) * computed + p * previous."""
    for name in prev:
        found[name] = (1 - model.zoneout) * found[name] + model.zoneout * prev[name]
    return found


def check_trace(form, model, x, hx, lengths, out, finals, trace):
    """x, out and trace tensors time-major (T, B, .); finals: list of (D*L, B, S_k)."""
    D, L = directions(model), model.num_layers
    names = carried(form)
    h0 = state_tensors(hx) or [torch.zeros(D * L, B, f.shape[-1], dtype=x.dtype) for f in finals]
    layer_in = x
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = {n[:-len(sfx)]: v for n, v in model.named_parameters() if n.endswith(sfx)}
            tr = trace[layer][d]
            for b, n in enumerate(lengths):
                prev = {name: h0[k][layer * D + d, b] for k, name in enumerate(names)}
                for t in (range(n) if d == 0 else reversed(range(n))):
                    expected = recompute_step(model, p, layer_in[t, b], prev)
                    assert_all_close([tr[k][t, b] for k in expected], list(expected.values()))
                    prev = {name: tr[name][t, b] for name in names}
                assert_all_close([f[layer * D + d, b] for f in finals], [prev[k] for k in names])
                assert all(torch.all(v[n:, b] == 0) for v in tr.values())
        layer_in = torch.cat([trace[layer][d][names[0]] for d in range(D)], dim=-1)
    assert_all_close([out], [layer_in])


@pytest.mark.parametrize("num_layers, bidirectional, batch_first, lengths, with_hx", [
    (1, False, False, None, False),
    (2, True, True, LENGTHS, True),
    (2, False, False, LENGTHS, True),
], ids=["plain", "deep_bi_bfirst_lengths", "deep_lengths"])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_trace_values(backend, cell, num_layers, bidirectional, batch_first, lengths, with_hx):
    model = make(cell, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 backend=backend)
    x = randn(T, B, INPUT_SIZE)
    hx = random_state(model, B) if with_hx else None
    tm = (lambda t: t.transpose(0, 1)) if batch_first else (lambda t: t)
    out, state, trace = model(tm(x), hx, lengths=lengths, return_trace=True)
    assert isinstance(trace, rnnkit.Trace)
    assert len(trace) == num_layers and all(len(trace[k]) == directions(model) for k in range(num_layers))
    sizes = dict(zip(carried(cell), model.cell.state_sizes()))      # the others are H wide
    for layer in range(num_layers):
        for d in range(directions(model)):
            assert tuple(trace[layer][d]) == registry.of_layer(model).trace_names
            for name, v in trace[layer][d].items():
                assert v.shape == tm(torch.empty(T, B, sizes.get(name, model.hidden_size))).shape
                assert not v.requires_grad
    tm_trace = [[{k: tm(v) for k, v in tr.items()} for tr in lay] for lay in trace.layers]
    check_trace(cell, model, x, hx, lengths or [T] * B, tm(out), state_tensors(state), tm_trace)


@pytest.mark.parametrize("cell, backend", cell_backends())
def test_trace_does_not_change_results(backend, cell):
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    x = randn(T, B, INPUT_SIZE, requires_grad=True)
    leaves = [x, *model.parameters()]
    plain = flat(model(x, lengths=LENGTHS))
    traced = flat(model(x, lengths=LENGTHS, return_trace=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, traced))
    assert all(torch.equal(a, b) for a, b in zip(grads(plain, leaves), grads(traced, leaves)))


@pytest.mark.parametrize("cell, backend", cell_backends(["lstm", "jordan_softmax"]))
def test_trace_unbatched_and_packed(cell, backend):
    model = make(cell, bidirectional=True, backend=backend)
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
    assert trace.names == ("input_gate", "forget_gate", "candidate", "output_gate", "cell", "hidden")
    assert trace.get("cell") is trace[1][0]["cell"]
    assert trace.get("forget_gate", layer=0, direction=1) is trace[0][1]["forget_gate"]
    with pytest.raises(KeyError, match="name"):
        trace.get("forgot_gate")


# -- step ------------------------------------------------------------------------------------------
def run_steps(model, x, hx):
    """[outputs (T, B, S), *final states] of model.step over the steps of x (T, B, I)."""
    outs, s = [], hx
    for x_t in x:
        y_t, s = model.step(x_t, s)
        assert type(s) is type(hx)
        outs.append(y_t)
    return [torch.stack(outs)] + state_tensors(s)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_step_matches_sequence(cell, backend, num_layers):
    """With a graph (the differentiable Python step) and without one (the backend's ``step``)."""
    model = make(cell, num_layers=num_layers, backend=backend)
    x = randn(T, B, INPUT_SIZE, requires_grad=True)
    hx = random_state(model, B)
    expected = flat(model(x, hx))
    stepped = run_steps(model, x, hx)
    assert_all_close(stepped, expected)
    leaves = [x, *state_tensors(hx), *model.parameters()]
    assert_all_close(grads(stepped, leaves), grads(expected, leaves))
    with torch.no_grad():
        assert_all_close(run_steps(model, x, detached(hx)), expected)


@pytest.mark.parametrize("cell, backend", cell_backends())
def test_step_from_zero_state_and_unbatched(cell, backend):
    model = make(cell, num_layers=2, batch_first=True, backend=backend)
    x = randn(B, T, INPUT_SIZE)
    y_t, s = model.step(x[:, 0])
    out, state = model(x[:, :1])
    assert_all_close([y_t] + state_tensors(s), [out[:, 0]] + state_tensors(state))
    y_u, s_u = model.step(x[0, 0], random_state(model, 1, unbatched=True))
    out_u, state_u = model(x[0, :1], random_state(model, 1, unbatched=True))
    assert y_u.shape == (state_size(model),)
    assert_all_close([y_u] + state_tensors(s_u), [out_u[0]] + state_tensors(state_u))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_step_output_is_not_the_state(cell, backend, grad):
    """Editing the step's output in place (a mask, a residual) leaves the returned state alone,
    as with torch.nn's separate output and h_n."""
    model = make(cell, num_layers=2, backend=backend)
    with torch.set_grad_enabled(grad):
        y_t, s = model.step(randn(B, INPUT_SIZE), random_state(model, B))
        kept = [t.clone() for t in state_tensors(s)]
        y_t.detach().fill_(7.0)
    assert_all_close(state_tensors(s), kept)


@pytest.mark.parametrize("cell", CELLS)
def test_step_refuses_bidirectional(cell):
    model = make(cell, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.step(randn(B, INPUT_SIZE))


@pytest.mark.parametrize("cell, backend", cell_backends(["elman_tanh"], torch.float32))
def test_step_sees_replaced_and_converted_parameters(cell, backend):
    """The parameter cache behind model.step follows replaced Parameters and dtype conversion."""
    model = make(cell, dtype=torch.float32, backend=backend)
    x = randn(B, INPUT_SIZE, dtype=torch.float32)
    with torch.no_grad():
        model.step(x)                                            # fills the parameter cache
        model.weight_hh_l0 = torch.nn.Parameter(torch.zeros_like(model.weight_hh_l0))
        model.bias_hh_l0 = torch.nn.Parameter(torch.zeros_like(model.bias_hh_l0))
        h = torch.ones(1, B, model.hidden_size)
        expected = torch.tanh(x @ model.weight_ih_l0.T + model.bias_ih_l0)
        torch.testing.assert_close(model.step(x, h)[0], expected)
        model.double()
        y, _ = model.step(x.double(), h.double())
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected.double(), atol=1e-6, rtol=1e-6)
