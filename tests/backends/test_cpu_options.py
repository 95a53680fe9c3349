"""The cell options inside the fused CPU kernels (issue 11): clip_recurrent, recurrent dropout and
zoneout on every cell (zoneout not on Jordan), peepholes and the projection (proj_size) on the LSTM,
layer normalisation on the LSTM and on the GRU's torch form.

The shared matrices (tests/layers/test_noise.py, test_clip_recurrent.py, the registry's forms) run
the cpu backend once it ``supports`` a form; here the backend itself is held to the reference
backend with the same noise tensors -- states, saved tensors, the gradients of xp, of the initial
states and of every recurrent parameter, with lengths, in float64 (the portable loops) and float32
(on AVX-512 machines the fused LSTM, GRU and Elman loops, at block and tile edges, on 1 and 2 threads) -- and to
gradcheck in float64 with the masks held; ``step`` and ``stream`` (eval: zoneout's expected value)
to the reference's; bad noise is a clear error; the options the kernels do not take are declined.
"""
import pytest
import torch

import rnnkit
from helpers import assert_all_close, needs_cpu
from rnnkit.backends import cpu, reference
from rnnkit.cells import ElmanCell, GRUCell, JordanCell, LSTMCell

CPU = torch.device("cpu")
OPTIONS = {
    "clip": {"clip_recurrent": 0.3},
    "dropout": {"recurrent_dropout": 0.3},
    "zoneout": {"zoneout": 0.3},
    "all": {"recurrent_dropout": 0.2, "zoneout": 0.25, "clip_recurrent": 0.5},
}
CELLS = {
    "elman": lambda H, **kw: ElmanCell(H, **kw),
    "elman_relu": lambda H, **kw: ElmanCell(H, "relu", **kw),
    "jordan": lambda H, **kw: JordanCell(H, 3, output_activation="tanh", **kw),
    "jordan_softmax": lambda H, **kw: JordanCell(H, 3, output_activation="softmax", **kw),
    "lstm": lambda H, **kw: LSTMCell(H, **kw),
    "lstm_peephole": lambda H, **kw: LSTMCell(H, peephole=True, **kw),
    "lstm_proj": lambda H, **kw: LSTMCell(H, proj_size=3, **kw),
    "lstm_proj_peephole": lambda H, **kw: LSTMCell(H, proj_size=H + 2, peephole=True, **kw),
    "lstm_ln": lambda H, **kw: LSTMCell(H, layer_norm=True, **kw),
    "lstm_ln_peephole": lambda H, **kw: LSTMCell(H, peephole=True, layer_norm=True, **kw),
    "lstm_ln_proj_peephole": lambda H, **kw: LSTMCell(H, proj_size=3, peephole=True, layer_norm=True, **kw),
    "gru": lambda H, **kw: GRUCell(H, **kw),
    "gru_cho": lambda H, **kw: GRUCell(H, reset_after=False, **kw),
    "gru_ln": lambda H, **kw: GRUCell(H, layer_norm=True, **kw),
}


def cases():
    found = [pytest.param(cell, kw, id=f"{cell}-{opt}") for cell in CELLS for opt, kw in OPTIONS.items()
             if not (cell.startswith("jordan") and "zoneout" in kw)]
    alone = ("lstm_peephole", "lstm_proj", "lstm_proj_peephole", "lstm_ln", "lstm_ln_peephole", "lstm_ln_proj_peephole",
             "gru_ln")
    return found + [pytest.param(c, {}, id=f"{c}-alone") for c in alone]


def inputs(cell, T, B, dtype, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = cell.hidden_size
    shapes = dict(cell.param_shapes(5, True))
    rec = tuple(torch.randn(shapes[n], generator=g, dtype=dtype) * 0.5 for n in cell.rec_params)
    xp = torch.randn(T, B, cell.n_gates * H, generator=g, dtype=dtype)
    mask = None if lengths is None else (torch.arange(T)[:, None] < torch.tensor(lengths)[None]).unsqueeze(-1)
    state0 = tuple(torch.randn(B, s, generator=g, dtype=dtype) for s in cell.state_sizes())
    d_out = torch.randn(T, B, cell.out_size, generator=g, dtype=dtype) * 3       # large enough to clip
    d_final = tuple(torch.randn(B, s, generator=g, dtype=dtype) * 3 for s in cell.state_sizes())
    if mask is not None:
        d_out = d_out * mask
    torch.manual_seed(seed)
    return xp, mask, state0, rec, d_out, d_final


def both(cell, T, B, dtype, lengths, train):
    """(reference, cpu) results: (states, saved on valid rows, d_xp, d_state0, d_rec)."""
    xp, mask, state0, rec, d_out, d_final = inputs(cell, T, B, dtype, lengths)
    noise = cell.draw_noise(T, B, xp) if train else None
    valid = torch.ones(T, B, 1, dtype=torch.bool) if mask is None else mask
    found = []
    for backend in (reference.BACKEND, cpu.BACKEND):
        states, saved = backend.forward(cell, xp, mask, state0, rec, True, noise)
        d_xp, d_state0, d_rec = backend.backward(cell, d_out, d_final, mask, state0, states, saved, rec, noise)
        found.append([*states, *(s * valid for s in saved), d_xp, *d_state0, *d_rec])
    return found


@needs_cpu
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("name, options", cases())
def test_float64_equals_the_reference_with_the_same_noise(name, options, lengths, train):
    cell = CELLS[name](4, **options)
    assert cpu.BACKEND.supports(cell, CPU, torch.float64)
    ref, got = both(cell, 6, 3, torch.float64, lengths, train)
    assert_all_close(got, ref, torch.float64)


# Lengths of 9 sequences as a user gives them, and longest first as the layers run them: then a
# step's finished sequences are its last rows, whose tiles skip the recurrent products (a step of
# 9 rows with 4 live: a tile of 4 live rows, then padded tiles of 4 and 1).
LENGTHS_9 = {"unsorted": [7, 3, 7, 1, 5, 2, 7, 4, 2], "longest_first": [7, 7, 7, 5, 4, 3, 2, 2, 1]}


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("order", list(LENGTHS_9))
@pytest.mark.parametrize("name, options", [p for p in cases() if p.values[0].startswith("lstm")])
def test_float32_lstm_loops_at_block_and_tile_edges(name, options, order, threads):
    """H = 20 (a block of 16 units and a tail of 4), B = 9 (two tiles of 4 rows and one), T = 7:
    the fused float32 loops where the CPU has AVX-512, with lengths and training noise."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got = both(CELLS[name](20, **options), 7, 9, torch.float32, LENGTHS_9[order], True)
    finally:
        torch.set_num_threads(old)
    # Both float32 results are rounded: with a projection (P = 22 here) the gradients reach 45 and
    # each side lies up to 2e-4 from the float64 result (which the kernels match to 1e-13 in
    # float64), so the two may differ by that much.
    tol = 5e-4 if "proj" in name else 2e-5
    assert_all_close(got, ref, torch.float32, atol=tol, rtol=tol)


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("split, H, lengths", [
    ("rows", 52, [6, 3, 6, 1, 5, 2, 6, 4, 2, 6, 6, 5, 3]),
    ("rows", 52, [6, 6, 6, 6, 6, 5, 5, 4, 3, 3, 2, 2, 1]),
    ("units", 84, [6, 3, 6, 1, 5, 2, 4]),
    ("units", 84, [6, 6, 5, 4, 3, 2, 1])], ids=["rows", "rows_longest_first", "units", "units_longest_first"])
@pytest.mark.parametrize("name, options", [p for p in cases() if p.values[0] in ("lstm_ln", "lstm_ln_peephole")])
def test_float32_layer_norm_lstm_split_over_threads(name, options, split, H, lengths, threads):
    """Layer norm's fused float32 loops run a step in phases; on 2 threads a step of T = 6 has the
    work to be split (B * 4H * H >= 2**17).  B = 13 rows (a tile of 4 for each thread) and
    H = 52 (three blocks of 16 units and a tail of 4): threads own rows, each its own sums of
    the gains' gradients, added up after the loop.  B = 7 (fewer than a tile per thread) and
    H = 84 (five blocks and a tail of 4): threads own units, each computing the row statistics
    of all units and writing its own, with a wait between phases (one thread's units depend on
    the other's)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref, got = both(CELLS[name](H, **options), 6, len(lengths), torch.float32, lengths, True)
    finally:
        torch.set_num_threads(old)
    assert_all_close(got, ref, torch.float32, atol=2e-5, rtol=2e-5)


def float32_against_float64(cell, T, lengths, threads, tol, scale_rec=1.0):
    """The cpu backend in float32 against the reference in float64 on the same inputs and noise
    (forward with save, then backward) on ``threads`` threads: states, saved tensors on valid rows,
    d_xp, d_state0, d_rec, each within ``tol`` of its largest magnitude (float32's error grows with
    the magnitudes summed) and ``tol`` relative."""
    xp, mask, state0, rec, d_out, d_final = inputs(cell, T, len(lengths), torch.float64, lengths)
    rec = tuple(r * scale_rec for r in rec)
    noise = cell.draw_noise(T, len(lengths), xp)
    valid = mask.to(torch.float64)
    found = []
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for backend, dtype in ((reference.BACKEND, torch.float64), (cpu.BACKEND, torch.float32)):
            xp_, mask_, state0_, rec_, d_out_, d_final_, noise_ = _cast(
                [xp, mask, list(state0), list(rec), d_out, list(d_final), noise], dtype)
            states, saved = backend.forward(cell, xp_, mask_, state0_, rec_, True, noise_)
            d_xp, d_state0, d_rec = backend.backward(cell, d_out_, d_final_, mask_, state0_, states, saved, rec_,
                                                     noise_)
            found.append([t.double() for t in [*states, *(s * valid for s in saved), d_xp, *d_state0, *d_rec]])
    finally:
        torch.set_num_threads(old)
    for k, (got, want) in enumerate(zip(found[1], found[0])):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, atol=tol * scale, rtol=tol, msg=lambda m, k=k: f"tensor {k}: {m}")


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("split, H, P, lengths", [
    ("rows", 84, 37, [6, 3, 6, 1, 5, 2, 6, 4, 2, 6, 6, 5, 3]),
    ("rows", 84, 37, [6, 6, 6, 6, 6, 5, 5, 4, 3, 3, 2, 2, 1]),
    ("units", 100, 45, [6, 3, 6, 1, 5, 2, 4]),
    ("units", 100, 45, [6, 6, 5, 4, 3, 2, 1]),
    ("units", 752, 5, [6, 3, 6, 1, 5, 2, 4])],
    ids=["rows", "rows_longest_first", "units", "units_longest_first", "units_one_block_of_p"])
@pytest.mark.parametrize("options", [{}, {"peephole": True}, *OPTIONS.values(), {"peephole": True, **OPTIONS["all"]}],
                         ids=["plain", "peephole", *OPTIONS, "peephole_all"])
def test_float32_projected_lstm_split_over_threads(options, split, H, P, lengths, threads):
    """The projected LSTM's fused float32 loop (gates, then h = m W_hr^T) against the reference in
    float64 on the same inputs and noise, T = 6.  On 2 threads: B = 13 rows, H = 84 (five blocks
    of 16 units and a tail of 4), P = 37 (two blocks and a tail of 5): threads own rows; B = 7 and
    H = 100, P = 45: threads own units, the second phase taking the same share of P's blocks, a
    wait after each phase; H = 752, P = 5: P's single block has one owner (the other thread's
    first and last phases have none of it).  The gradients reach thousands here; the kernels'
    float32 lies up to 1.3e-4 of a tensor's largest magnitude from float64 (the reference's own
    float32 7.2e-5; measured), so the tolerance scales with that magnitude."""
    float32_against_float64(LSTMCell(H, proj_size=P, **options), 6, lengths, threads, 4e-4)


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("split, H, O, lengths", [
    ("one", 20, 7, [7, 2, 5, 7, 1, 6, 3, 7, 4]),
    ("rows", 100, 45, [7, 3, 7, 1, 5, 2, 7, 4, 2, 6, 7, 5, 3, 7, 6, 1, 2]),
    ("rows", 100, 45, [7, 7, 7, 7, 7, 6, 6, 5, 5, 5, 4, 4, 3, 3, 2, 2, 1]),
    ("units", 164, 50, [7, 3, 7, 1, 5, 2, 4, 6, 7]),
    ("units", 164, 50, [7, 7, 6, 5, 4, 3, 2, 1, 1]),
    ("units", 1040, 7, [7, 3, 7, 1, 5, 2, 4, 6, 7])],
    ids=["one", "rows", "rows_longest_first", "units", "units_longest_first", "units_one_block_of_o"])
@pytest.mark.parametrize("out", ["identity", "tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("hidden, options", [("tanh", {}), ("relu", {}), ("tanh", OPTIONS["dropout"]),
                                             ("relu", OPTIONS["all"] | {"zoneout": 0.0})],
                         ids=["tanh", "relu", "tanh_dropout", "relu_all"])
def test_float32_jordan_loop_at_block_and_tile_edges(hidden, options, out, split, H, O, lengths, threads):
    """Jordan's fused float32 forward (hidden units, then outputs; softmax keeps the GEMM path) with
    the backward reading what it saved, against the reference in float64, T = 7.  H and O end in
    a tail of a block of 16 (20, 7; 100, 45; 164, 50).  On 2 threads a step of these has the work
    to split (B * 2HO >= 2**17): 17 rows (two tiles of 8 and one), threads own rows; 9 rows (a
    tile of 8 and one: fewer than a tile for each thread), threads own units, the second phase
    taking the same share of O's blocks, a wait after each phase; H = 1040, O = 7: O's single block
    has one owner (the backward's output phases run on one thread, its hidden phase on both)."""
    cell = JordanCell(H, O, nonlinearity=hidden, output_activation=out, **options)
    float32_against_float64(cell, 7, lengths, threads, 4e-4, (8 / H) ** 0.5)


# Hidden sizes at the fused loops' edges: the GRU's blocks of 16 units (with and without layer
# norm; 72: four and a tail of 8;
# 96: six whole ones); Elman's groups of two blocks (152: four whole groups and one of a block
# and a tail of 8; 176: five and one of a single block), large enough that a step of 9 rows (all
# but the GRU at 72 also 6) has the work to split over 2 threads: with 17 rows (a tile of 8 for
# each) threads own rows (owned_rows), with fewer units (owned_blocks).
EDGE_H = {"gru": (72, 96), "gru_ln": (72, 96), "elman": (152, 176), "elman_relu": (152, 176)}


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("edge", [0, 1], ids=["tail", "blocks"])
@pytest.mark.parametrize("lengths", [LENGTHS_9["unsorted"], LENGTHS_9["longest_first"], [7, 2, 5, 7, 1, 6],
                                     [7, 7, 7, 7, 7, 6, 6, 5, 5, 5, 4, 4, 3, 3, 2, 2, 1]],
                         ids=["B9", "B9_longest_first", "B6", "B17_longest_first"])
@pytest.mark.parametrize("options", [{}, *OPTIONS.values()], ids=["plain", *OPTIONS])
@pytest.mark.parametrize("name", list(EDGE_H))
def test_float32_gru_and_elman_loops_at_block_and_tile_edges(name, options, lengths, edge, threads):
    """The GRU's torch form and Elman (tanh, relu) in float32: on AVX-512 machines the fused loops
    (T = 7 steps; B = 9: a tile of 8 rows and one of 1, B = 6: one of 6, or B = 17: two of 8 and
    one; H of EDGE_H), on 2 threads split where a step has the work, with lengths and training
    noise.  The
    oracle is the reference backend in float64 on the same inputs and noise (two float32 results
    may differ by more than their distance to the exact one): with 3H terms in a row of dh_{t-1}
    and 63 in dW_hh, the GRU's GEMM path's float32 lies up to 1.9e-4 from it (measured, dW_hh
    under dropout; dh_0 5e-5), the fused loops' up to 1.5e-4.  Elman's W_hh is scaled by
    sqrt(8 / H): at inputs' 0.5 its tanh saturates (1 - h^2 keeps few digits in float32) and its
    relu under dropout grows to thousands, and both of its paths lie up to 5e-2 from float64
    (measured); scaled, both lie within 2.5e-4 (dW_hh, relu with dropout).  With 17 rows dW_hh
    sums 119 terms: the GRU's float32 under dropout lies up to 5.1e-4 from float64 (measured, on
    one thread as on two).  Some draws of the masks make the gradients reach hundreds (dropout's
    1/(1-q) through the recurrence): there both float32 results lie up to 6.5e-5 of the tensor's
    largest magnitude from float64 (measured; the reference's own float32 2.4e-5), so the absolute
    tolerance scales with that magnitude."""
    H = EDGE_H[name][edge]
    scale = (8 / H) ** 0.5 if name.startswith("elman") else 1.0
    float32_against_float64(CELLS[name](H, **options), 7, lengths, threads, 4e-4 if len(lengths) < 17 else 7e-4,
                            scale)


@needs_cpu
@pytest.mark.parametrize("layout", ["dense", "expanded", "strided"])
def test_float32_gru_reads_the_output_gradient_in_place(layout):
    """The fused float32 backward reads d_out as it comes: dense, expanded (what out.sum() hands
    backward: stride 0 everywhere) or with a feature stride of 2 (a view); the same results as
    the float64 reference given a dense copy."""
    cell = CELLS["gru"](20)
    xp, mask, state0, rec, _, d_final = inputs(cell, 7, 5, torch.float64, [7, 3, 7, 1, 5])
    dense = torch.randn(7, 5, 20, generator=torch.Generator().manual_seed(3))
    if layout == "expanded":
        d_out = torch.tensor(0.7).expand(7, 5, 20)
    elif layout == "strided":
        d_out = torch.zeros(7, 5, 40)
        d_out[..., ::2] = dense
        d_out = d_out[..., ::2]
    else:
        d_out = dense
    found = []
    for backend, dtype, d in ((reference.BACKEND, torch.float64, d_out.double().contiguous()),
                              (cpu.BACKEND, torch.float32, d_out)):
        xp_, state0_, rec_, d_final_ = _cast([xp, list(state0), list(rec), list(d_final)], dtype)
        states, saved = backend.forward(cell, xp_, mask, state0_, rec_, True, None)
        d_xp, d_state0, d_rec = backend.backward(cell, d, d_final_, mask, state0_, states, saved, rec_, None)
        found.append([t.double() for t in [d_xp, *d_state0, *d_rec]])
    assert_all_close(found[1], found[0], torch.float64, atol=4e-4, rtol=4e-4)


def _cast(value, dtype):
    """Floating tensors (in nested lists) in dtype; everything else as it is."""
    if isinstance(value, (list, tuple)):
        return [_cast(v, dtype) for v in value]
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


@needs_cpu
@pytest.mark.parametrize("name, options", cases())
def test_gradcheck_with_the_noise_held(name, options):
    """The kernels' backward is the derivative of their forward (float64, the noise drawn once and
    held).  A binding clip_recurrent is a biased gradient by design (its parity test is above), so
    the clip runs here with a bound the gradients stay inside: the clipping code runs, exactly."""
    options = {**options, **({"clip_recurrent": 100.0} if "clip_recurrent" in options else {})}
    cell = CELLS[name](3, **options)
    xp, mask, state0, rec, _, _ = inputs(cell, 4, 2, torch.float64, [4, 2])
    noise = cell.draw_noise(4, 2, xp)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 2, generator=g, dtype=torch.float64)
    w_ih = torch.randn(cell.n_gates * cell.hidden_size, 2, generator=g, dtype=torch.float64)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w_ih, *state0, *rec)]
    n = len(state0)

    def fn(x, w_ih, *rest):
        out, finals, _ = rnnkit.ops.run_direction(cell, cpu.BACKEND, x, mask, rest[:n], w_ih, None, rest[n:],
                                                  False, noise)
        return (out, *finals)
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@needs_cpu
@pytest.mark.parametrize("form, kw", [
    ("lstm_peephole", {"peephole": True}),
    ("lstm_zoneout", {"zoneout": 0.3, "recurrent_dropout": 0.2}),
    ("lstm_peephole_zoneout", {"peephole": True, "zoneout": 0.3, "clip_recurrent": 1.0}),
    ("lstm_proj_zoneout", {"proj_size": 2, "zoneout": 0.3, "peephole": True}),
    ("lstm_ln_peephole_zoneout", {"layer_norm": True, "peephole": True, "zoneout": 0.3}),
    ("lstm_ln_proj", {"layer_norm": True, "proj_size": 2, "recurrent_dropout": 0.2}),
    ("gru_ln_zoneout", {"layer_norm": True, "zoneout": 0.3}),
    ("gru_zoneout", {"zoneout": 0.3}),
    ("gru_cho_zoneout", {"zoneout": 0.3, "reset_after": False}),
    ("elman_zoneout", {"zoneout": 0.3, "nonlinearity": "relu"}),
    ("jordan_dropout", {"recurrent_dropout": 0.3, "output_size": 2}),
])
def test_step_and_stream_equal_the_reference_in_eval(form, kw):
    """Inference (eval): no dropout mask, zoneout by its probability; the fused step and stream
    of a 2-layer stack give the reference backend's outputs and states, step after step."""
    layer = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "elman": rnnkit.Elman, "jordan": rnnkit.Jordan}[form.split("_")[0]]
    torch.manual_seed(0)
    models = {b: layer(3, 5, num_layers=2, backend=b, dtype=torch.float64, **kw).eval() for b in ("reference", "cpu")}
    models["cpu"].load_state_dict(models["reference"].state_dict())
    xs = torch.randn(4, 2, 3, dtype=torch.float64)
    streams = {b: m.stream(batch_size=2) for b, m in models.items()}
    hx = {b: None for b in models}
    with torch.no_grad():
        for x in xs:
            outs = {}
            for b, m in models.items():
                out, hx[b] = m.step(x, hx[b])
                outs[b] = [out.clone(), *(h.clone() for h in (hx[b] if isinstance(hx[b], tuple) else (hx[b],))),
                           streams[b](x).clone()]
            assert_all_close(outs["cpu"], outs["reference"], torch.float64)
        full = {b: m(xs)[0] for b, m in models.items()}
    assert_all_close([full["cpu"]], [full["reference"]], torch.float64)


@needs_cpu
def test_bad_noise_is_a_clear_error():
    cell = LSTMCell(4, zoneout=0.2, recurrent_dropout=0.1)
    xp, mask, state0, rec, _, _ = inputs(cell, 3, 2, torch.float64, None)
    spec, ext = cpu.BACKEND._lookup(cell), cpu.extension()
    noise = list(cell.draw_noise(3, 2, xp))
    with pytest.raises(RuntimeError, match=r"noise: expected 3 tensors for the 'lstm' cell, got 2"):
        ext.forward(spec, xp, mask, list(state0), list(rec), True, noise[:2])
    with pytest.raises(RuntimeError, match=r"noise\[1\]: expected shape \(3, 2, 4\)"):
        ext.forward(spec, xp, mask, list(state0), list(rec), True, [noise[0], noise[1][:, :1], noise[2]])
    with pytest.raises(TypeError, match=r"noise\[2\]: expected dtype torch.float64"):
        ext.forward(spec, xp, mask, list(state0), list(rec), True, [noise[0], noise[1], noise[2].float()])
    plain = cpu.BACKEND._lookup(LSTMCell(4))
    with pytest.raises(RuntimeError, match=r"noise: expected none"):
        ext.forward(plain, xp, mask, list(state0), list(rec[:2]), True, noise)


@needs_cpu
def test_peephole_weights_are_checked_by_name():
    cell = LSTMCell(4, peephole=True)
    xp, mask, state0, rec, _, _ = inputs(cell, 3, 2, torch.float64, None)
    with pytest.raises(RuntimeError, match=r"weight_ch: expected shape \(12,\) \(3\*H; H = 4"):
        cpu.extension().forward(cpu.BACKEND._lookup(cell), xp, mask, list(state0), [*rec[:2], rec[2][:8]], True)


@needs_cpu
@pytest.mark.parametrize("name", ["lstm_ln", "lstm_ln_proj_peephole", "gru_ln"])
def test_layer_norm_without_biases_equals_the_reference(name):
    """bias=False: bias_hh and the LSTM's bias_ln_c are None (the kernels add zeros, return None)."""
    cell = CELLS[name](4, zoneout=0.2)
    xp, mask, state0, rec, d_out, d_final = inputs(cell, 5, 3, torch.float64, [5, 2, 4])
    rec = tuple(None if n in ("bias_hh", "bias_ln_c") else p for n, p in zip(cell.rec_params, rec))
    noise = cell.draw_noise(5, 3, xp)
    found = []
    for backend in (reference.BACKEND, cpu.BACKEND):
        states, saved = backend.forward(cell, xp, mask, state0, rec, True, noise)
        d_xp, d_state0, d_rec = backend.backward(cell, d_out, d_final, mask, state0, states, saved, rec, noise)
        assert [d is None for d in d_rec] == [p is None for p in rec]
        found.append([*states, *(s * mask for s in saved), d_xp, *d_state0, *(d for d in d_rec if d is not None)])
    assert_all_close(found[1], found[0], torch.float64)


@needs_cpu
def test_layer_norm_gains_are_checked_by_name():
    cell = LSTMCell(4, layer_norm=True)
    xp, mask, state0, rec, _, _ = inputs(cell, 3, 2, torch.float64, None)
    with pytest.raises(RuntimeError, match=r"weight_ln_c: expected shape \(4,\) \(H; H = 4"):
        cpu.extension().forward(cpu.BACKEND._lookup(cell), xp, mask, list(state0), [*rec[:4], rec[4][:3], rec[5]], True)


@needs_cpu
@pytest.mark.parametrize("cell, word", [
    (GRUCell(4, reset_after=False, layer_norm=True), "layer_norm"),
    (JordanCell(4, 2, zoneout=0.1), "zoneout"),
])
def test_options_without_a_kernel_are_declined_with_the_reason(cell, word):
    found = cpu.BACKEND.supports(cell, CPU, torch.float32)
    assert not found and word in found.reason


@needs_cpu
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "lengths"])
def test_clip_is_the_same_on_the_oracle_the_reference_and_the_kernels(lengths):
    """An LSTM's c_t also feeds its h_t inside the step: the clamp bounds only the gradient that
    reaches c_t from the output and from step t+1 (the reference's BPTT), also on the autograd
    oracle over full-length sequences, where the step's own tensor is the carried state."""
    found = {}
    for backend in ("autograd", "reference", "cpu"):
        torch.manual_seed(0)
        model = rnnkit.LSTM(3, 4, clip_recurrent=0.01, backend=backend, dtype=torch.float64)
        x = torch.randn(5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        model(x, lengths=lengths)[0].sum().backward()
        found[backend] = [x.grad, *(p.grad for p in model.parameters())]
    assert_all_close(found["autograd"], found["reference"], torch.float64)
    assert_all_close(found["cpu"], found["reference"], torch.float64)


LAYERS = {
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True}),
    "lstm_proj_peephole": (rnnkit.LSTM, {"peephole": True, "proj_size": 2}),
    "lstm_ln_peephole": (rnnkit.LSTM, {"layer_norm": True, "peephole": True}),
    "lstm_ln_proj": (rnnkit.LSTM, {"layer_norm": True, "proj_size": 2}),
    "gru": (rnnkit.GRU, {}),
    "gru_cho": (rnnkit.GRU, {"reset_after": False}),
    "gru_ln": (rnnkit.GRU, {"layer_norm": True}),
    "elman": (rnnkit.Elman, {}),
    "elman_relu": (rnnkit.Elman, {"nonlinearity": "relu"}),
    "jordan": (rnnkit.Jordan, {"output_size": 3, "output_activation": "softmax"}),
}


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("form", LAYERS)
def test_deep_bidirectional_training_with_every_option_equals_the_oracle(form, dtype):
    """Two layers, both directions, lengths, training noise (the same seed on both sides), every
    option the cell takes at once: outputs, final states and the gradients of the input, the
    initial state and every parameter against the autograd oracle (the plain loop)."""
    cls, kw = LAYERS[form]
    kw = {**kw, "recurrent_dropout": 0.3, "clip_recurrent": 0.05, **({} if form == "jordan" else {"zoneout": 0.3})}
    found = {}
    for backend in ("autograd", "cpu"):
        torch.manual_seed(0)
        model = cls(3, 5, num_layers=2, bidirectional=True, backend=backend, dtype=dtype, **kw)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(6, 4, 3, dtype=dtype, generator=g, requires_grad=True)
        hx = [torch.randn(4, 4, s, dtype=dtype, generator=g, requires_grad=True) for s in model.cell.state_sizes()]
        torch.manual_seed(2)                                      # the noise of this forward
        out, state = model(x, tuple(hx) if len(hx) > 1 else hx[0], lengths=[6, 2, 5, 1])
        finals = list(state) if isinstance(state, tuple) else [state]
        (out.sum() + sum((f * f).sum() for f in finals)).backward()
        found[backend] = [out, *finals, x.grad, *(h.grad for h in hx), *(p.grad for p in model.parameters())]
    tol = {} if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    assert_all_close(found["cpu"], found["autograd"], dtype, **tol)


@needs_cpu
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkl_packed"])
@pytest.mark.parametrize("name", ["lstm", "gru_cho", "jordan"])
def test_float32_step_gemms_over_the_live_rows(name, onednn):
    """The per-step GEMM path (B = 20 rows, too many for the fused loops at this width on one
    thread) with the batch longest first: each step multiplies only its live rows, through
    oneDNN's GEMM or MKL's packed weights (those were packed for all 20 rows, so fewer take the
    plain GEMM).  Against the reference backend in float64 on the same inputs."""
    cell = CELLS[name](256)
    lengths = [5] * 6 + [4] * 5 + [3] * 4 + [2] * 3 + [1] * 2
    T, B = 5, len(lengths)
    xp, mask, state0, rec, d_out, d_final = inputs(cell, T, B, torch.float64, lengths)
    rec = tuple(r / 16 for r in rec)                           # W ~ 0.5 / sqrt(H): unsaturated gates
    valid = mask.to(torch.float64)
    found = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=onednn):
            for backend, dtype in ((reference.BACKEND, torch.float64), (cpu.BACKEND, torch.float32)):
                args = [xp, mask, list(state0), list(rec), d_out, list(d_final)]
                xp_, mask_, state0_, rec_, d_out_, d_final_ = _cast(args, dtype)
                states, saved = backend.forward(cell, xp_, mask_, state0_, rec_, True, None)
                d_xp, d_state0, d_rec = backend.backward(cell, d_out_, d_final_, mask_, state0_, states, saved, rec_)
                found.append([t.double() for t in [*states, *(s * valid for s in saved), d_xp, *d_state0, *d_rec]])
    finally:
        torch.set_num_threads(old)
    assert_all_close(found[1], found[0], torch.float64, atol=5e-4, rtol=5e-4)
