"""The triton backend against the reference backend: every cell form it runs, directions, stacks,
lengths, initial states and clip_recurrent, outputs and every gradient; a float64 gradcheck per cell.
Besides the registry's forms, the matrix runs the layer-normalised LSTM with a projection (alone, and
with every other option and no biases).

Runs where Triton can run kernels: on a CUDA device, or on CPU tensors in Triton's interpreter,
which must be switched on before Triton is imported (``make test`` runs this folder a second time
with TRITON_INTERPRET=1; in the main run these tests skip, saying so).  Sizes are tiny (the
interpreter runs each program's every operation in numpy) but cross tile edges: H = 20 and B = 18
exceed the interpreter's 16-wide tiles, so several tiles, K chunks and masked edges are exercised.
"""
from __future__ import annotations

import pytest
import torch

import rnnkit
from helpers import FORMS as REGISTRY_FORMS, cotangents, flat, grads, random_state, randn
from rnnkit import backends

TRITON = backends.get("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUNS = TRITON.available().ok and (DEVICE.type == "cuda" or __import__("rnnkit.backends.triton",
                                                                     fromlist=["interpreting"]).interpreting())
pytestmark = pytest.mark.skipif(not RUNS, reason="needs a CUDA device, or TRITON_INTERPRET=1 set before Triton "
                                                 "is imported (`make test` runs tests/triton that way)")

I = 3
# the registry's forms and layer norm together with a projection (P below every H of CASES; the
# combined tests below take P across a tile edge)
FORMS = {**REGISTRY_FORMS,
         "lstm_layer_norm_proj": (REGISTRY_FORMS["lstm"][0], dict(layer_norm=True, proj_size=2)),
         "lstm_layer_norm_proj_all": (REGISTRY_FORMS["lstm"][0],
                                      dict(layer_norm=True, proj_size=3, peephole=True, recurrent_dropout=0.25,
                                           zoneout=0.25, clip_recurrent=0.05, bias=False))}
# (layers, bidirectional, lengths, H, B): one plain case, one stacked bidirectional with lengths,
# one whose H and B cross the interpreter's tile edges
CASES = [(1, False, False, 4, 3), (2, True, True, 5, 4), (1, True, True, 20, 18)]
FORMS_RUN = [f for f, (entry, kw) in FORMS.items()
             if TRITON.supports(entry.layer(I, 4, **kw).cell, DEVICE, torch.float64).ok or not RUNS]


def _pair(form, layers, bidirectional, H, dtype):
    entry, kw = FORMS[form]
    torch.manual_seed(0)
    ref = entry.layer(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, backend="reference", **kw)
    tri = entry.layer(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype, backend="triton", **kw)
    with torch.no_grad():                     # layer norm's gains start as ones and its biases as zeros:
        for p in ref.parameters():            # made distinct, a kernel that reads the wrong one fails
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.add_(0.2 * torch.randn_like(p))
    tri.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), tri.to(DEVICE)


def _run(model, x, h0, lengths):
    torch.manual_seed(11)                     # forms with noise: both models draw the same masks
    out = flat(model(x, h0, lengths))
    leaves = [x, *(h for h in (h0 if isinstance(h0, tuple) else (h0,)) if h is not None), *model.parameters()]
    return out + grads(out, leaves)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers, bidirectional, varlen, H, B", CASES)
@pytest.mark.parametrize("form", FORMS_RUN)
def test_matches_reference(form, layers, bidirectional, varlen, H, B, dtype):
    if dtype == torch.float32 and (layers, H) != (2, 5):
        pytest.skip("float32: the stacked case only (the others are float64's)")
    ref, tri = _pair(form, layers, bidirectional, H, dtype)
    T = 5
    x = randn(T, B, I, dtype=dtype, requires_grad=True).to(DEVICE).detach().requires_grad_()
    h0 = random_state(ref, B)
    h0 = tuple(h.to(DEVICE).detach().requires_grad_() for h in h0) if isinstance(h0, tuple) \
        else h0.to(DEVICE).detach().requires_grad_()
    lengths = torch.tensor([T, 2, 4, 1] * (B // 4) + [3] * (B % 4)) if varlen else None
    want = _run(ref, x, h0, lengths)
    got = _run(tri, x, h0, lengths)
    # float32 layer norm: the reference's own float32 result lies up to ~9e-5 from float64 (1/std of
    # small blocks), so two float32 implementations differ by about 1e-4 (the cpu kernels' tests too)
    f32 = 1e-4 if "layer_norm" in form else 2e-5
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=f32, rtol=f32)
    for k, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, k=k: f"{form}: tensor {k}: {m}")


NOISY_FORMS = [f for f in FORMS_RUN if FORMS[f][0].layer(I, 4, **FORMS[f][1]).cell.noise_names]


@pytest.mark.parametrize("layers, bidirectional, varlen, H, B", CASES[1:])
@pytest.mark.parametrize("form", NOISY_FORMS or [pytest.param(None, marks=pytest.mark.skip(reason="no noisy form"))])
def test_noise_in_eval_matches_reference(form, layers, bidirectional, varlen, H, B):
    """Recurrent dropout and zoneout in eval mode: no mask, zoneout's expected value (its own path
    in the kernels: a constant z instead of a drawn tensor)."""
    ref, tri = _pair(form, layers, bidirectional, H, torch.float64)
    ref.eval(), tri.eval()
    x = randn(5, B, I, requires_grad=True).to(DEVICE).detach().requires_grad_()
    lengths = torch.tensor([5, 2, 4, 1] * (B // 4) + [3] * (B % 4)) if varlen else None
    want, got = _run(ref, x, None, lengths), _run(tri, x, None, lengths)
    for k, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10, msg=lambda m, k=k: f"{form}: tensor {k}: {m}")


# option combinations the registry's forms do not hold (one form per code path there)
COMBINED = [("Elman", dict(recurrent_dropout=0.3, zoneout=0.2)), ("Elman", dict(recurrent_dropout=0.3, nonlinearity="relu")),
            ("LSTM", dict(recurrent_dropout=0.3)), ("LSTM", dict(peephole=True, recurrent_dropout=0.3, zoneout=0.2)),
            ("LSTM", dict(peephole=True, clip_recurrent=0.05)), ("LSTM", dict(proj_size=7)),
            ("LSTM", dict(proj_size=17, zoneout=0.2)),
            ("LSTM", dict(proj_size=13, peephole=True, recurrent_dropout=0.3, zoneout=0.2, clip_recurrent=0.05)), ("GRU", dict(recurrent_dropout=0.3, zoneout=0.2)),
            ("LSTM", dict(layer_norm=True, peephole=True, recurrent_dropout=0.3, zoneout=0.2, clip_recurrent=0.05)),
            ("LSTM", dict(layer_norm=True, bias=False)), ("LSTM", dict(layer_norm=True, proj_size=7)),
            ("LSTM", dict(layer_norm=True, proj_size=17, peephole=True, recurrent_dropout=0.3, zoneout=0.2,
                          clip_recurrent=0.05, bias=False)),
            ("GRU", dict(layer_norm=True, recurrent_dropout=0.3, zoneout=0.2, clip_recurrent=0.05)),
            ("GRU", dict(layer_norm=True, bias=False)),
            ("GRU", dict(recurrent_dropout=0.3, zoneout=0.2, reset_after=False)),
            ("GRU", dict(recurrent_dropout=0.3, reset_after=False, clip_recurrent=0.05)),
            ("Jordan", dict(output_size=3, recurrent_dropout=0.3)),
            ("Jordan", dict(output_size=3, recurrent_dropout=0.3, output_activation="softmax"))]


@pytest.mark.parametrize("layer, kw", COMBINED, ids=[f"{n}-{'-'.join(k)}" for n, k in COMBINED])
def test_combined_options_match_reference(layer, kw):
    """Training mode (the same drawn masks on both sides), stacked, both directions, lengths."""
    cls = getattr(rnnkit, layer)
    if not TRITON.supports(cls(I, 20, **kw).cell, DEVICE, torch.float64):
        pytest.skip(f"the triton backend does not run {kw} here")
    torch.manual_seed(0)
    ref = cls(I, 20, num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference", **kw)
    tri = cls(I, 20, num_layers=2, bidirectional=True, dtype=torch.float64, backend="triton", **kw)
    tri.load_state_dict(ref.state_dict())
    ref, tri = ref.to(DEVICE), tri.to(DEVICE)
    x = randn(5, 18, I, requires_grad=True).to(DEVICE).detach().requires_grad_()
    lengths = torch.tensor([5, 2, 4, 1] * 4 + [3, 3])
    want, got = _run(ref, x, None, lengths), _run(tri, x, None, lengths)
    for k, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10, msg=lambda m, k=k: f"{kw}: tensor {k}: {m}")


def test_layer_norm_with_projection_is_supported():
    """The layer-normalised LSTM kernels take a projection: the matrix above leaves out (and the
    combined test skips) what ``supports`` declines, so a refusal would pass there unnoticed."""
    for kw in (dict(proj_size=7), dict(proj_size=17, peephole=True, zoneout=0.2, bias=False)):
        cell = rnnkit.LSTM(I, 20, layer_norm=True, **kw).cell
        assert TRITON.supports(cell, DEVICE, torch.float32), kw
    assert "lstm_layer_norm_proj" in FORMS_RUN and "lstm_layer_norm_proj_all" in NOISY_FORMS


GRADCHECK_FORMS = ["elman_relu", "jordan_softmax", "lstm", "gru_cho", "lstm_peephole", "lstm_dropout_zoneout",
                   "elman_zoneout", "gru_clip", "lstm_proj", "lstm_layer_norm", "gru_layer_norm"]


@pytest.mark.parametrize("form", GRADCHECK_FORMS)
def test_gradcheck_float64(form):
    """The kernels' backward against finite differences of their own forward (input, state, weights)."""
    if DEVICE.type == "cuda":
        pytest.skip("float64 runs in the interpreter only (the GPU declines float64: tl.dot has no float64 here)")
    entry, kw = FORMS[form]
    torch.manual_seed(0)
    m = entry.layer(2, 3, dtype=torch.float64, backend="triton", **kw)
    x = randn(3, 2, 2, requires_grad=True)
    h0 = random_state(m, 2)
    h0 = h0 if isinstance(h0, tuple) else (h0,)
    params = list(m.parameters())

    def f(x, *rest):
        state = rest[:len(h0)]
        torch.manual_seed(5)                  # the same recurrent dropout and zoneout masks every call
        return flat(m(x, state if len(state) > 1 else state[0], torch.tensor([3, 2])))

    assert torch.autograd.gradcheck(f, (x, *h0, *params), eps=1e-6, atol=1e-7)


HALF = [torch.bfloat16, torch.float16]
# 16-bit tensors, float32 states: the stored values are rounded to 16 bits (each step's state, the
# gate gradients feeding the weight products), so each tensor is compared by its largest error
# relative to its largest value; measured at T=5, H=20: bf16 <= 1.2e-2, fp16 <= 8e-4 (the reference
# backend run in 16 bits: 1.0e-2 and 1.1e-3)
HALF_TOL = {torch.bfloat16: 3e-2, torch.float16: 3e-3}
HALF_FORMS = ["elman_tanh", "jordan_sigmoid", "lstm", "gru", "gru_cho"]


def _half_pair(form, amp):
    """(float32 reference model, triton model in ``amp``) with the same (16-bit-rounded) weights."""
    entry, kw = FORMS[form]
    torch.manual_seed(0)
    tri = entry.layer(I, 20, bidirectional=True, dtype=amp, backend="triton", **kw).to(DEVICE)
    ref = entry.layer(I, 20, bidirectional=True, backend="reference", **kw).to(DEVICE)
    ref.load_state_dict({k: v.float() for k, v in tri.state_dict().items()})
    return ref, tri


def _half_run(model, x, lengths):
    """Outputs and gradients for the same float32 cotangents whatever the model's dtype (random
    numbers drawn in 16 bits are not the float32 ones rounded)."""
    out = flat(model(x, None, lengths))
    cots = [c.to(t.dtype) for c, t in zip(cotangents([t.float() for t in out]), out)]
    return out + list(torch.autograd.grad(out, [x, *model.parameters()], cots))


@pytest.mark.parametrize("amp", HALF, ids=str)
@pytest.mark.parametrize("form", [f for f in HALF_FORMS if f in FORMS_RUN])
def test_16bit_matches_float32_reference(form, amp):
    """bfloat16/float16 tensors: outputs and every gradient near a float32 run of the same rounded
    weights (states kept in float32 inside the kernels; a 16-bit state would drift further)."""
    ref, tri = _half_pair(form, amp)
    x = randn(5, 18, I).to(amp).to(DEVICE)
    lengths = torch.tensor([5, 2, 4, 1] * 4 + [3, 3])
    xr, xt = x.float().requires_grad_(), x.clone().requires_grad_()
    want, got = (_half_run(m, x, lengths) for m, x in ((ref, xr), (tri, xt)))
    assert got[0].dtype == amp
    for k, (a, e) in enumerate(zip(got, want)):
        err, scale = (a.float() - e).abs().max().item(), e.abs().max().item()
        assert err <= HALF_TOL[amp] * scale, f"{form}: tensor {k}: largest error {err:.3g}, largest value {scale:.3g}"


@pytest.mark.parametrize("amp", HALF, ids=str)
@pytest.mark.parametrize("form", [f for f in ["lstm", "gru", "elman_tanh"] if f in FORMS_RUN])
def test_autocast_runs_the_kernels_in_the_autocast_dtype(form, amp):
    """Under autocast a float32 model runs the triton kernels on 16-bit tensors (as cuDNN does): the
    same numbers as the model cast to that dtype, and float32 gradients for the float32 weights."""
    entry, kw = FORMS[form]
    torch.manual_seed(0)
    m = entry.layer(I, 20, backend="triton", **kw).to(DEVICE)
    half = entry.layer(I, 20, dtype=amp, backend="triton", **kw).to(DEVICE)
    half.load_state_dict({k: v.to(amp) for k, v in m.state_dict().items()})
    x = randn(5, 18, I, dtype=torch.float32).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=amp):
        out, _ = m(x)
    want, _ = half(x.to(amp))
    # torch.nn's dtypes (tests/test_torch_workflows.py): its GRU on the CPU returns float32
    assert out.dtype == (torch.float32 if DEVICE.type == "cpu" and form == "gru" else amp)
    torch.testing.assert_close(out.to(amp), want, atol=0, rtol=0)
    full, _ = m(x)
    assert (out.float() - full).abs().max() > 0, "autocast ran the recurrence in float32"
    out.float().square().sum().backward()
    want.float().square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), half.parameters()):
        assert p.grad.dtype == torch.float32, name
        torch.testing.assert_close(p.grad, q.grad.float(), atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("where", ["input", "output_grad"])
@pytest.mark.parametrize("form", [f for f in ["elman_relu", "jordan_relu", "gru_clip"] if f in FORMS_RUN])
def test_nan_travels_as_in_the_reference(form, where):
    """A NaN in the input (and a finite dL/dy), or one in dL/dy, reaches what it reaches on the
    reference backend: relu and clip_recurrent keep NaN (as torch's relu and clamp), and relu's
    gradient passes where its output is NaN (torch's: zero only where y <= 0)."""
    ref, tri = _pair(form, 1, True, 5, torch.float64)
    x = randn(4, 3, I).to(DEVICE)
    if where == "input":
        x[1, 0, 0] = float("nan")
    results = []
    for model in (ref, tri):
        xi = x.clone().requires_grad_()
        out = flat(model(xi))[0]
        g = randn(*out.shape, seed=5).to(DEVICE)
        if where == "output_grad":
            g[2, 2, 1] = float("nan")
        out.backward(g)
        results.append([out, xi.grad, *(p.grad for p in model.parameters())])
    for k, (a, e) in enumerate(zip(results[1], results[0])):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-10, equal_nan=True, msg=lambda m, k=k: f"tensor {k}: {m}")
