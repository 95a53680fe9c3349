"""The fused C++ backend ('cpu'): parity with torch.nn and with the reference backend on outputs,
final states, every gradient and the trace; gradcheck in float64; the streaming step; selection.

The kernels are compiled on first use (about a minute, once per machine; cached afterwards).
"""
import itertools
import struct
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import (CELLS, INPUT_SIZE, TORCH_CELLS, assert_all_close, flat, grads, make, make_torch_pair,
                      needs_cpu, randn, random_state, state_tensors)
from helpers import detached
from rnnkit import backends, noise, sequence
from rnnkit.backends import _build, cpu
from rnnkit.cells import NONLINEARITIES, OUTPUT_ACTIVATIONS, LSTMCell

BUILT = cpu.extension() is not None
T, B = 5, 3
LENGTHS = [5, 2, 4]


def _has_kernel(form: str) -> bool:
    from helpers import cell_of
    return not BUILT or bool(cpu.BACKEND.supports(cell_of(form), torch.device("cpu"), torch.float64))


# The forms the kernels run; the others (options without a kernel yet) are declined, so auto runs
# them on the reference backend (tests/layers/test_variants.py).
CELLS = [form for form in CELLS if _has_kernel(form)]
TORCH_CELLS = [form for form in TORCH_CELLS if _has_kernel(form)]


def test_extension_builds():
    assert BUILT, f"the C++ kernels did not build: {_build.error()}"
    assert "cpu" in backends.available()


def test_the_native_build_is_the_one_loaded():
    """The -march=native build (the fused AVX-512 loops where the CPU has them) is what runs: a
    compile error in it would otherwise fall back to the portable build and pass every test."""
    assert BUILT
    assert _build.native_error() is None, f"the native build failed: {_build.native_error()}"


def test_a_failing_native_build_is_reported(monkeypatch):
    def compile_(native, verbose):
        if native:
            raise RuntimeError("error: planted\nexit status 1")
        return "portable module"
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "_compile", compile_)
    monkeypatch.setattr(noise, "_cpu_fill", noise._cpu_fill)       # restored after the planted module
    monkeypatch.setattr(sequence, "_cpu_empty", sequence._cpu_empty)
    monkeypatch.setattr(sequence, "_cpu_rows", sequence._cpu_rows)
    monkeypatch.setattr(sequence, "_cpu_packing", sequence._cpu_packing)
    assert _build.load() == "portable module"
    assert "RuntimeError: exit status 1" in _build.native_error()


# -- against torch.nn (the full dense matrix is in test_layers_parity.py) --------------------
def check_torch(cell, dtype, *, num_layers=1, bidirectional=False, batch_first=False, bias=True,
                with_hx=False, lengths=None):
    ref, ours = make_torch_pair(cell, backend="cpu", dtype=dtype, num_layers=num_layers,
                                bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    x = randn(*((B, T, INPUT_SIZE) if batch_first else (T, B, INPUT_SIZE)), dtype=dtype, requires_grad=True)
    hx = random_state(ours, B) if with_hx else None
    if lengths is None:
        res_ref, res = ref(x, hx), ours(x, hx)
    else:
        def pack():     # one graph per model: each is differentiated separately
            return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
        res_ref, res = ref(pack(), hx), ours(pack(), hx)
    outs_ref, outs = flat(res_ref, T), flat(res, T)
    assert_all_close(outs, outs_ref, dtype)
    leaves = [x, *state_tensors(hx)]
    assert_all_close(grads(outs, leaves + list(ours.parameters())),
                     grads(outs_ref, leaves + list(ref.parameters())), dtype)


def onednn_on_and_off():
    """Yields twice, inside torch.backends.mkldnn.flags(enabled=True), then enabled=False: the
    kernels' oneDNN paths, then the same calls on MKL."""
    for onednn in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # flags() warns about TF32 on Intel GPUs
            with torch.backends.mkldnn.flags(enabled=onednn):
                yield


def check_training_both_ways(ref, ours, x, tol):
    """ours' outputs and every gradient (x and the weights) match ref's, with oneDNN on and off."""
    Tn = x.shape[0]
    expected = flat(ref(x), Tn)
    expected = expected + grads(expected, [x, *ref.parameters()])
    for _ in onednn_on_and_off():
        outs = flat(ours(x), Tn)
        assert_all_close(outs + grads(outs, [x, *ours.parameters()]), expected, torch.float32, **tol)


@needs_cpu
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("cell", ["elman_tanh", "lstm", "gru"])
def test_onednn_gemms_match_torch(cell, monkeypatch):
    """Large float32 steps (B >= 16, every recurrent weight >= 256K entries) run the step GEMMs on
    oneDNN, and the input projections too past ops._DNNL_MIN_MACS (lowered here); with oneDNN
    disabled the same model runs on MKL.  Both match torch.nn."""
    from rnnkit import ops
    monkeypatch.setattr(ops, "_DNNL_MIN_MACS", 0)
    ref, ours = make_torch_pair(cell, backend="cpu", dtype=torch.float32, input_size=8, hidden_size=512)
    check_training_both_ways(ref, ours, randn(3, 16, 8, dtype=torch.float32, requires_grad=True),
                             dict(atol=1e-4, rtol=1e-4))


@needs_cpu
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("cell, Tn, Bn", [("elman_tanh", 256, 16), ("lstm", 384, 4), ("gru", 128, 16)])
def test_large_products_on_onednns_matmul_match_torch(cell, Tn, Bn):
    """Products of 2^26 multiply-adds and more with A as it is run on oneDNN's matmul straight into
    the kernels' buffers (gemm.cpp), with oneDNN off on MKL; training matches torch.nn either way.
    Here the one-node training's input projection and dx, T * B x G*H x I = 2^26-2^26.6 (B = 4
    keeps the LSTM off oneDNN's LSTM primitive)."""
    ref, ours = make_torch_pair(cell, backend="cpu", dtype=torch.float32, input_size=128, hidden_size=128)
    x = randn(Tn, Bn, 128, dtype=torch.float32, requires_grad=True)
    assert Tn * Bn * ours.cell.n_gates * 128 * 128 >= 1 << 26 and cpu.BACKEND.trains(ours.cell, x)
    check_training_both_ways(ref, ours, x, dict(atol=2e-4, rtol=2e-4))


@needs_cpu
@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_large_weight_gradients_are_the_same_bits_on_one_and_two_threads(name):
    """Every product splits rows and columns among the threads, never a sum: a Cell step over
    65,536 rows gives the same output and gradients on one thread and on two.  Its input weight's
    gradient sums G*H x I = 32 x 32 (per gate) over those rows, 2^26 multiply-adds and more: oneDNN's
    matmul would split that sum between the threads (the last bits then differed, by up to 1.2e-3),
    so such products stay on MKL."""
    import rnnkit
    torch.manual_seed(0)
    cell = getattr(rnnkit, name)(32, 32, backend="cpu")
    x = randn(1 << 16, 32, dtype=torch.float32, requires_grad=True)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = cell(x)
            h = out[0] if isinstance(out, tuple) else out
            results.append([h, *grads([h], [x, *cell.parameters()])])
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@needs_cpu
@pytest.mark.parametrize("cell", ["elman_tanh", "gru"])
def test_inference_with_a_projection_past_the_mmap_threshold_runs_in_one_call(cell):
    """A layer's input projection of more than LAYER_MAX_PROJECTION_BYTES (which the layer path
    would allocate afresh and fault in on every call) goes to the one-call infer, its pooled
    workspace and oneDNN's matmul (the bias's rows added in as C), and matches the reference
    backend, with oneDNN on and off; one just under the bound, past INFER_MAX_MACS, stays on the
    layer path."""
    model = make(cell, backend="cpu", dtype=torch.float32, input_size=64, hidden_size=64)
    oracle = make(cell, backend="reference", dtype=torch.float32, input_size=64, hidden_size=64)
    G = model.cell.n_gates
    over = cpu.CPU.LAYER_MAX_PROJECTION_BYTES // (16 * G * 64 * 4) + 1       # steps of B = 16 rows
    layer = [model.weight_ih_l0, model.bias_ih_l0, model.weight_hh_l0, model.bias_hh_l0]
    with torch.no_grad():
        for Tn, one_call in ((over - 1, False), (over, True)):      # x: the second
            x = randn(Tn, 16, 64, dtype=torch.float32)
            assert Tn * 16 * G * 64 * 64 >= cpu.CPU.INFER_MAX_MACS
            assert (cpu.BACKEND.infer(model.cell, x, None, [layer]) is not None) == one_call
        expected = flat(oracle(x), Tn)
        for _ in onednn_on_and_off():
            found = cpu.BACKEND.infer(model.cell, x, None, [layer])
            assert_all_close([found[0], *found[1]], expected, torch.float32, atol=1e-5, rtol=1e-5)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_packed_sequence_matches_torch(cell, bidirectional, dtype):
    check_torch(cell, dtype, num_layers=2, bidirectional=bidirectional, with_hx=True, lengths=LENGTHS)


# -- against the reference backend: every cell, lengths, trace ---------------------------------
# Layer normalisation divides by a block's deviation, small over blocks of a few features: in
# float32 the two rounded results lie up to 9e-5 (reference) and 3e-5 (kernels) from the float64
# result (lstm_layer_norm, H = 4, 2 layers, measured), so they may differ by 1e-4.
LAYER_NORM_F32 = dict(atol=1e-4, rtol=1e-4)


def run_with_trace(model, x, hx, lengths):
    out, state, trace = model(x, hx, lengths=lengths, return_trace=True)
    outs = [out, *state_tensors(state)]
    traced = [t for layer in trace.layers for d in layer for t in d.values()]
    return outs, traced


@needs_cpu
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, dtype, bidirectional, lengths):
    results = {}
    for backend in ("reference", "cpu"):
        model = make(cell, dtype=dtype, num_layers=2, bidirectional=bidirectional, backend=backend)
        x = randn(T, B, INPUT_SIZE, dtype=dtype, requires_grad=True)
        hx = random_state(model, B)
        outs, traced = run_with_trace(model, x, hx, lengths)
        leaves = [x, *state_tensors(hx), *model.parameters()]
        results[backend] = outs + traced + grads(outs, leaves)
    tol = LAYER_NORM_F32 if dtype == torch.float32 and "layer_norm" in cell else {}
    assert_all_close(results["cpu"], results["reference"], dtype, **tol)


@needs_cpu
@pytest.mark.parametrize("cell", CELLS)
def test_inference_path_matches_training_path(cell):
    model = make(cell, num_layers=2, bidirectional=True, backend="cpu")
    x = randn(T, B, INPUT_SIZE)
    trained = flat(model(x, lengths=LENGTHS))
    with torch.no_grad():
        inferred = flat(model(x, lengths=LENGTHS))
    assert_all_close(inferred, [t.detach() for t in trained])


@needs_cpu
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    model = make(cell, hidden_size=3, num_layers=2, bidirectional=True, backend="cpu")
    names = [n for n, _ in model.named_parameters()]
    x = randn(4, 2, INPUT_SIZE, requires_grad=True)
    hx = random_state(model, 2)

    def f(x, *rest):
        n = len(state_tensors(hx))
        state = tuple(rest[:n]) if n > 1 else rest[0]
        params = dict(zip(names, rest[n:]))
        out, h_n = torch.func.functional_call(model, params, (x, state), {"lengths": [4, 2]})
        return (out, *state_tensors(h_n))

    inputs = (x, *state_tensors(hx), *[p.detach().requires_grad_() for p in model.parameters()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8)


# -- streaming step ------------------------------------------------------------------------------
@needs_cpu
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_reference(cell, unbatched):
    model = make(cell, num_layers=2, backend="reference")
    x = randn(INPUT_SIZE) if unbatched else randn(B, INPUT_SIZE)
    hx = random_state(model, B, unbatched=unbatched)
    hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
    with torch.no_grad():
        expected = flat(model.step(x, hx))
        model.backend = "cpu"
        fused = flat(model.step(x, hx))
    assert_all_close(fused, expected)


@needs_cpu
def test_step_with_grad_stays_differentiable():
    model = make("lstm", backend="cpu")
    out, (h, c) = model.step(randn(B, INPUT_SIZE))
    assert out.requires_grad
    out.sum().backward()
    assert model.weight_hh_l0.grad is not None



def _step_case(form="lstm"):
    model = make(form, num_layers=2, backend="cpu").eval()
    hx = random_state(model, B)
    hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
    return model, randn(B, INPUT_SIZE), hx


@needs_cpu
def test_unchecked_step_runs_only_plain_inference():
    """Under no_grad in eval, a step on the cpu backend (whose C++ checks every tensor) skips the
    layer's checks in Python; with random draws, autocast, no state or an unbatched input it does
    not.  With a graph to record, each layer's step is the backend's one-node step (its C++
    checks its arguments), and on a backend without one the checked path runs."""
    model, x, hx = _step_case()
    with torch.no_grad():
        assert model._unchecked_step(x, hx) is not None
        assert model._unchecked_step(x, None) is None
        assert model._unchecked_step(x[0], tuple(h[:, 0] for h in hx)) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model._unchecked_step(x, hx) is None
        model.train()                                                 # no random draws: the same step
        assert model._unchecked_step(x, hx) is not None
        model.dropout = 0.5                                           # dropout between its two layers
        assert model._unchecked_step(x, hx) is None
        noisy, x1, hx1 = _step_case("lstm_dropout_zoneout")        # recurrent dropout and zoneout draw
        assert noisy._unchecked_step(x1, hx1) is not None
        assert noisy.train()._unchecked_step(x1, hx1) is None
    model.eval()
    out, _ = model._unchecked_step(x, hx)                             # grad mode: the node, per layer
    assert "CellStep" in out.grad_fn.name()
    model.backend = "reference"
    assert model._unchecked_step(x, hx) is None
    with torch.no_grad():
        assert model._unchecked_step(x, hx) is None


@needs_cpu
@pytest.mark.parametrize("form", CELLS)
def test_unchecked_step_matches_forward(form):
    model, x, hx = _step_case(form)
    with torch.no_grad():
        expected = flat(model(x[None], hx))
        got = flat(model.step(x, hx))
    assert_all_close(got[0], expected[0][0])
    assert_all_close(got[1:], expected[1:])


@needs_cpu
@pytest.mark.parametrize("spoil, match", [
    (lambda m, x, hx: (x, (hx[0][:, :1], hx[1])), r"hx\[0\]"),
    (lambda m, x, hx: (x, (hx[0], hx[1].float())), r"hx\[1\]"),
    (lambda m, x, hx: (x, hx[0]), r"hx"),
    (lambda m, x, hx: (randn(B, INPUT_SIZE + 1), hx), r"LSTM.step: input"),
    (lambda m, x, hx: (x.float(), hx), r"LSTM.step: input"),
    (lambda m, x, hx: (setattr(m.weight_hh_l1, "data", randn(8, 4)) or x, hx), r"weight_hh_l1: expected shape"),
], ids=["hx-rows", "c-dtype", "no-tuple", "input-size", "input-dtype", "rebound-weight"])
def test_unchecked_step_errors_name_the_argument(spoil, match):
    """What the C++ step rejects is rejected with the layer's own message, naming the argument."""
    model, x, hx = _step_case()
    x, hx = spoil(model, x, hx)
    with torch.no_grad(), pytest.raises((RuntimeError, TypeError, ValueError), match=match):
        model.step(x, hx)


@needs_cpu
def test_unchecked_step_reads_parametrized_parameters():
    """A parametrized bias is not among the module's own parameters: the step must not run it as
    absent (it would, were the gathered Nones not counted against the absent biases)."""
    import torch.nn.utils.parametrize as parametrize

    class Double(torch.nn.Module):
        def forward(self, b):
            return 2 * b

    for name in ("bias_hh_l1", "weight_hh_l1"):
        model, x, hx = _step_case()
        parametrize.register_parametrization(model, name, Double())
        with torch.no_grad():
            expected = flat(model(x[None], hx))
            got = flat(model.step(x, hx))
        assert_all_close(got[0], expected[0][0])
        assert_all_close(got[1:], expected[1:])


def _infer_case(form="lstm", batch_first=False):
    model = make(form, num_layers=2, backend="cpu", batch_first=batch_first).eval()
    hx = detached(random_state(model, B))
    x = randn(B, T, INPUT_SIZE) if batch_first else randn(T, B, INPUT_SIZE)
    return model, x, hx


@needs_cpu
def test_unchecked_infer_runs_only_plain_inference():
    """Under no_grad a forward on the cpu backend (whose C++ checks every tensor) skips the layer's
    checks in Python; with a graph to record, random draws, autocast, an unbatched input, two
    directions, a PackedSequence, a parametrized weight or a backend that does not check its own
    arguments, the checked path runs."""
    import torch.nn.utils.parametrize as parametrize
    model, x, hx = _infer_case()
    with torch.no_grad():
        assert model._unchecked_infer(x, hx) is not None
        assert model._unchecked_infer(x, None) is not None
        assert model._unchecked_infer(x[:, 0], tuple(h[:, 0] for h in hx)) is None
        assert model._unchecked_infer(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), hx) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model._unchecked_infer(x, hx) is None
        model.train()                                                 # no random draws: the same call
        assert model._unchecked_infer(x, hx) is not None
        model.dropout = 0.5                                           # dropout between its two layers
        assert model._unchecked_infer(x, hx) is None
        noisy, x1, hx1 = _infer_case("lstm_dropout_zoneout")
        assert noisy._unchecked_infer(x1, hx1) is not None
        assert noisy.train()._unchecked_infer(x1, hx1) is None
        two_way = make("lstm", bidirectional=True, backend="cpu").eval()
        assert two_way._unchecked_infer(x, None) is None
    model.eval()
    assert model._unchecked_infer(x, hx) is None                      # grad mode
    with torch.no_grad():
        model.backend = "reference"
        assert model._unchecked_infer(x, hx) is None
        model.backend = "cpu"
        parametrize.register_parametrization(model, "weight_hh_l1", torch.nn.Identity())
        assert model._unchecked_infer(x, hx) is None


@needs_cpu
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("form", CELLS)
def test_unchecked_infer_matches_checked_forward(form, batch_first):
    """The same tensors, bit for bit, as the checked path (``_forward``) gives, with and without
    a given state, in either layout."""
    model, x, hx = _infer_case(form, batch_first)
    with torch.no_grad():
        for state in (hx, None):
            got = flat(model(x, state))
            expected = flat(model._forward(x, state, None, False))
            assert all(torch.equal(g, e) for g, e in zip(got, expected)) and len(got) == len(expected)


@needs_cpu
def test_unchecked_infer_on_a_layer_pickled_before_its_shapes_were_kept():
    model, x, hx = _infer_case()
    model.__dict__.pop("_step_shapes", None)
    with torch.no_grad():
        assert model._unchecked_infer(x, hx) is not None
    assert model._step_shapes == [[(16, 3), (16,), (16, 4), (16,)], [(16, 4), (16,), (16, 4), (16,)]]


@needs_cpu
def test_unchecked_infer_is_the_no_grad_forward(monkeypatch):
    """A plain no_grad forward never enters the checked path."""
    model, x, hx = _infer_case()

    def checked(*args):
        raise AssertionError("the checked path ran")
    monkeypatch.setattr(model, "_forward", checked)
    with torch.no_grad():
        model(x, hx), model(x)


@needs_cpu
@pytest.mark.parametrize("spoil, match", [
    (lambda m, x, hx: (x, (hx[0][:, :1], hx[1])), r"hx\[0\]"),
    (lambda m, x, hx: (x, (hx[0], hx[1].float())), r"hx\[1\]"),
    (lambda m, x, hx: (x, hx[0]), r"hx"),
    (lambda m, x, hx: (randn(T, B, INPUT_SIZE + 1), hx), r"LSTM: input"),
    (lambda m, x, hx: (x.float(), hx), r"LSTM: input"),
    (lambda m, x, hx: (x[:0], hx), r"LSTM: input"),
    (lambda m, x, hx: (setattr(m.weight_hh_l1, "data", randn(8, 4)) or x, hx), r"weight_hh_l1: expected shape"),
    (lambda m, x, hx: (setattr(m.weight_ih_l0, "data", m.weight_ih_l0.float()) or x, hx), r"LSTM: input: expected dtype torch.float32"),
], ids=["hx-rows", "c-dtype", "no-tuple", "input-size", "input-dtype", "no-steps", "rebound-weight",
        "weight-dtype"])
def test_unchecked_infer_errors_name_the_argument(spoil, match):
    """What the C++ inference rejects is rejected with the layer's own message, naming the argument."""
    model, x, hx = _infer_case()
    x, hx = spoil(model, x, hx)
    with torch.no_grad(), pytest.raises((RuntimeError, TypeError, ValueError), match=match):
        model(x, hx)


# -- selection --------------------------------------------------------------------------------------
@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the fused backend's kernels: its forward per layer, or its training of a
    whole stack in one node (train, where it takes the call)."""
    calls = []
    forward, train = cpu.BACKEND.forward, cpu.BACKEND.train

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    def counting_train(*args, **kwargs):
        found = train(*args, **kwargs)
        if found is not None:
            calls.append(1)
        return found
    monkeypatch.setattr(cpu.BACKEND, "forward", counting)
    monkeypatch.setattr(cpu.BACKEND, "train", counting_train)
    return calls


@needs_cpu
@pytest.mark.parametrize("env, argument, fused", [
    ("cpu", None, True), ("auto", None, True), ("reference", None, False),
    ("reference", "cpu", True), ("cpu", "reference", False), ("cpu", "auto", True),
])
def test_env_and_argument_choose(monkeypatch, kernel_calls, env, argument, fused):
    monkeypatch.setenv("RNNKIT_BACKEND", env)
    make("gru", backend=argument)(randn(T, B, INPUT_SIZE))
    assert bool(kernel_calls) == fused


@needs_cpu
def test_auto_skips_cpu_for_other_dtypes(monkeypatch, kernel_calls):
    monkeypatch.setenv("RNNKIT_BACKEND", "auto")
    cell = make("lstm").cell
    assert backends.resolve(None, cell, torch.device("cpu"), torch.bfloat16).name == "reference"
    assert backends.resolve(None, cell, torch.device("cpu"), torch.float32).name == "cpu"


@pytest.fixture
def unbuildable(monkeypatch):
    """The extension as on a machine where it failed to build."""
    monkeypatch.setattr(_build, "_state", {"error": "CalledProcessError: no compiler"})
    monkeypatch.setattr(backends, "_warned", set())


def test_auto_falls_back_with_one_warning(monkeypatch, unbuildable):
    monkeypatch.setenv("RNNKIT_BACKEND", "auto")
    cell = make("lstm").cell
    with pytest.warns(RuntimeWarning, match="not available.*no compiler.*reference"):
        assert backends.resolve(None, cell, "cpu", torch.float32).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve(None, cell, "cpu", torch.float32).name == "reference"
    assert "cpu" not in backends.available()


@pytest.mark.parametrize("how", ["argument", "env"])
def test_forcing_unavailable_cpu_is_an_error(monkeypatch, unbuildable, how):
    if how == "env":
        monkeypatch.setenv("RNNKIT_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="'cpu' is not available.*no compiler"):
        if how == "env":
            make("lstm")(randn(T, B, INPUT_SIZE))
        else:
            make("lstm", backend="cpu")


@needs_cpu
def test_cached_build_is_reused():
    """A second load in a fresh process finds the cached library and does not compile."""
    import subprocess
    import sys
    code = ("import sys, rnnkit.backends._build as b; m = b.load(); "
            "sys.exit(0 if m is not None else 1)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "compiling" not in res.stderr


@needs_cpu
@pytest.mark.parametrize("cell", CELLS)
def test_expanded_output_gradient(cell):
    """out.sum() hands backward an expanded (stride 0) gradient, read in place by the kernels."""
    got = {}
    for backend in ("reference", "cpu"):
        model = make(cell, backend=backend)
        model(randn(T, B, INPUT_SIZE))[0].sum().backward()
        got[backend] = [p.grad for p in model.parameters()]
    assert_all_close(got["cpu"], got["reference"])


# -- the cell table and the spec (make_spec, cells) -------------------------------------------
# The spec as rnnkit/backends/cpu.py numbered it before make_spec: [kind, nonlinearity,
# output_activation, reset_after], then the cell options' slots (peephole, recurrent_dropout,
# zoneout, clip_recurrent, proj_size, layer_norm: 0 = off).  make_spec must give the same numbers.
KIND = {"elman": 0, "jordan": 1, "lstm": 2, "gru": 3}
ACT = {"tanh": 0, "relu": 1, "identity": 2, "sigmoid": 3, "softmax": 4}
CELL_OPTIONS = {"elman": {"nonlinearity": NONLINEARITIES},
                "jordan": {"nonlinearity": NONLINEARITIES, "output_activation": OUTPUT_ACTIVATIONS},
                "lstm": {},
                "gru": {"reset_after": (True, False)}}


def spec_cases():
    for name, options in CELL_OPTIONS.items():
        for values in itertools.product(*options.values()):
            yield name, dict(zip(options, values))


@needs_cpu
def test_cells_are_the_four_in_id_order():
    assert cpu.extension().cells() == ["elman", "jordan", "lstm", "gru"]


@needs_cpu
@pytest.mark.parametrize("name, options", list(spec_cases()), ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={v}" for k, v in v.items()) or "defaults")
def test_make_spec_matches_the_python_encoding(name, options):
    expected = [KIND[name], ACT[options.get("nonlinearity", "tanh")],
                ACT[options.get("output_activation", "identity")], int(options.get("reset_after", True)),
                0, 0, 0, 0, 0, 0]
    as_strings = {k: str(int(v)) if isinstance(v, bool) else v for k, v in options.items()}
    assert cpu.extension().make_spec(name, as_strings) == expected


@needs_cpu
def test_make_spec_defaults():
    ext = cpu.extension()
    assert ext.make_spec("gru") == ext.make_spec("gru", {}) == [3, 0, 2, 1, 0, 0, 0, 0, 0, 0]
    assert ext.make_spec("jordan", {"nonlinearity": "relu"}) == [1, 1, 2, 1, 0, 0, 0, 0, 0, 0]


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


@needs_cpu
def test_make_spec_carries_the_real_options_as_their_doubles_bits():
    """recurrent_dropout, zoneout and clip_recurrent travel in the int spec as the bit pattern of
    the double (exact: the value the Python cell holds), peephole and layer_norm as 1, proj_size as itself."""
    cell = LSTMCell(4, peephole=True, recurrent_dropout=0.1, zoneout=1 / 3, clip_recurrent=2.5e-3, proj_size=3,
                    layer_norm=True)
    spec = cpu.extension().make_spec("lstm", cell.options())
    assert spec == [2, 0, 2, 1, 1, _bits(0.1), _bits(1 / 3), _bits(2.5e-3), 3, 1]


@needs_cpu
@pytest.mark.parametrize("name, options, words", [
    ("fortran", {}, ["cell", "'elman', 'jordan', 'lstm', 'gru'", "'fortran'"]),
    ("elman", {"nonlinearity": "sigmoid"}, ["nonlinearity", "'tanh', 'relu'", "'sigmoid'"]),
    ("jordan", {"output_activation": "relu"},
     ["output_activation", "'identity', 'tanh', 'sigmoid', 'softmax'", "'relu'"]),
    ("gru", {"reset_after": "True"}, ["reset_after", "'1', '0'", "'True'"]),
    ("gru", {"reset_before": "1"}, ["option", "'nonlinearity', 'output_activation', 'reset_after', 'peephole', "
                                    "'recurrent_dropout', 'zoneout', 'clip_recurrent', 'proj_size', 'layer_norm'",
                                    "'reset_before'"]),
    ("lstm", {"peephole": "yes"}, ["peephole", "'0', '1'", "'yes'"]),
    ("gru", {"peephole": "1"}, ["option 'peephole'", "'lstm'", "'gru'"]),
    ("jordan", {"zoneout": "0.1"}, ["option 'zoneout'", "'elman', 'lstm', 'gru'", "'jordan'"]),
    ("elman", {"recurrent_dropout": "1.0"}, ["recurrent_dropout", "a number in [0, 1)", "'1.0'"]),
    ("elman", {"zoneout": "-0.1"}, ["zoneout", "a number in [0, 1)", "'-0.1'"]),
    ("gru", {"zoneout": "0.1x"}, ["zoneout", "a number in [0, 1)", "'0.1x'"]),
    ("lstm", {"clip_recurrent": "0"}, ["clip_recurrent", "a positive finite number", "'0'"]),
    ("lstm", {"clip_recurrent": "inf"}, ["clip_recurrent", "a positive finite number", "'inf'"]),
    ("lstm", {"clip_recurrent": "nan"}, ["clip_recurrent", "a positive finite number", "'nan'"]),
    ("lstm", {"proj_size": "0"}, ["proj_size", "a positive integer", "'0'"]),
    ("lstm", {"proj_size": "2.0"}, ["proj_size", "a positive integer", "'2.0'"]),
    ("lstm", {"proj_size": "99999999999"}, ["proj_size", "a positive integer", "'99999999999'"]),
    ("gru", {"proj_size": "2"}, ["option 'proj_size'", "'lstm'", "'gru'"]),
    ("elman", {"layer_norm": "1"}, ["option 'layer_norm'", "'lstm', 'gru'", "'elman'"]),
    ("gru", {"reset_after": "0", "layer_norm": "1"}, ["layer_norm", "torch's form", "reset_after '0'"]),
], ids=["cell", "nonlinearity", "output_activation", "reset_after", "option", "peephole-value", "peephole-gru",
        "zoneout-jordan", "dropout-one", "zoneout-negative", "zoneout-text", "clip-zero", "clip-inf", "clip-nan",
        "proj-zero", "proj-real", "proj-huge", "proj-gru", "layer_norm-elman",
        "layer_norm-gru-original"])
def test_make_spec_rejects_unknown_names_and_values(name, options, words):
    with pytest.raises(ValueError) as err:
        cpu.extension().make_spec(name, options)
    for word in words:
        assert word in str(err.value)


# -- padded steps: every saved row is written ----------------------------------------------------
def kernel_forms():
    return [f for f in CELLS if cpu.BACKEND.supports(make(f).cell, torch.device("cpu"), torch.float64)] if BUILT else []


@needs_cpu
@pytest.mark.parametrize("form", kernel_forms())
def test_saved_tensors_of_padded_steps_are_zero_and_reproducible(form):
    """The saved tensors' rows of padded steps are zeros, not whatever memory held: two identical
    runs, each after freeing memory filled with a different pattern, are bit-identical."""
    cell = make(form).cell
    g = torch.Generator().manual_seed(0)
    Tn, Bn, H = 6, 3, cell.hidden_size
    xp = torch.randn(Tn, Bn, cell.n_gates * H, generator=g)
    mask = (torch.arange(Tn)[:, None] < torch.tensor([6, 2, 4])[None]).unsqueeze(-1)
    state0 = [torch.randn(Bn, s, generator=g) for s in cell.state_sizes()]
    params = [torch.randn(shape, generator=g) for name, shape in cell.param_shapes(INPUT_SIZE, True)
              if name in cell.rec_params]
    runs = []
    for fill in (float("nan"), 12345.0):
        garbage = [torch.full((Tn * Bn * n + 64,), fill) for n in cell.saved_sizes() * 4]
        del garbage                                                 # freed: the next allocations may reuse it
        states, saved = torch.ops.rnnkit.sequence_forward("cpu", cell.spec, xp, mask, state0, params, True, [])
        runs.append([t.clone() for t in saved])
    for a, b in zip(*runs):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
        assert not a.masked_select(~mask).any()


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B, lengths", [(9, None), (9, [6, 3, 6, 1, 5, 2, 6, 4, 2]), (7, [6, 3, 6, 1, 5, 2, 4])],
                         ids=["full", "lengths", "B7_lengths"])
@pytest.mark.parametrize("form", kernel_forms())
def test_float32_time_loops_at_block_and_tile_edges(form, B, lengths, threads):
    """The float32 kernels (fused, split over threads where a step has the work) at sizes past
    their register tiles: H = 72 (4 blocks of 16 units and a tail of 8), B = 9 (two tiles of 4
    rows and one; on 2 threads the LSTM's threads own rows) or 7 (they own units), T = 6;
    outputs, final states, trace and every gradient against the reference."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = {}
        for backend in ("reference", "cpu"):
            model = make(form, dtype=torch.float32, input_size=5, hidden_size=72, backend=backend)
            x = randn(6, B, 5, dtype=torch.float32, requires_grad=True)
            hx = random_state(model, B)
            outs, traced = run_with_trace(model, x, hx, lengths)
            leaves = [x, *state_tensors(hx), *model.parameters()]
            results[backend] = outs + traced + grads(outs, leaves)
    finally:
        torch.set_num_threads(old)
    tol = LAYER_NORM_F32 if "layer_norm" in form else dict(atol=2e-5, rtol=2e-5)
    assert_all_close(results["cpu"], results["reference"], torch.float32, **tol)


def _few_rows_against_reference(form, Tn, B, I, H):
    results = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(0)
        model = make(form, dtype=torch.float32, input_size=I, hidden_size=H, num_layers=2, backend=backend)
        x = randn(Tn, B, I, dtype=torch.float32, requires_grad=True)
        hx = random_state(model, B)
        out, state = model(x, hx)
        outs = [out, *state_tensors(state)]
        result = outs + grads(outs, [x, *state_tensors(hx), *model.parameters()])
        model.eval()
        with torch.no_grad():
            result += flat(model(x, hx)) + flat(model.step(x[0], hx))
            result.append(model.stream(B, hx)(x[0]).clone())
        results[backend] = result
    tol = LAYER_NORM_F32 if "layer_norm" in form else dict(atol=2e-5, rtol=2e-5)
    assert_all_close(results["cpu"], results["reference"], torch.float32, **tol)


@needs_cpu
@pytest.mark.parametrize("Tn, B", [(1, 1), (1, 3), (2, 4), (3, 5), (1, 8), (1, 9)])
@pytest.mark.parametrize("form", kernel_forms())
def test_float32_few_rows_against_reference(form, Tn, B):
    """Calls of fewer than 4 steps run the plain loops (not the fused ones), whose products of a
    few rows (up to 8: a step, a short call's projection, its backward) run on gemm.cpp's
    small-row loops rather than BLAS.  At I = 21 and H = 37 (vectors of 16 with tails): outputs,
    final states, every gradient, the inference path, ``step`` and a stream against the
    reference backend in float32."""
    _few_rows_against_reference(form, Tn, B, 21, 37)


@needs_cpu
@pytest.mark.parametrize("B", [3, 8])
@pytest.mark.parametrize("form", ["elman_tanh", "lstm", "gru"])
def test_float32_few_rows_split_over_threads(form, B):
    """On two threads the small-row loops split their outputs in blocks of 64 once a thread gets
    2^17 multiply-adds: I = H = 200 (the LSTM's 800 outputs in 13 blocks, the last one partial)."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _few_rows_against_reference(form, 1, B, 200, 200)
    finally:
        torch.set_num_threads(old)
