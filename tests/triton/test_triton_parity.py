"""The triton backend against the reference backend: every cell form it runs, directions, stacks,
lengths, initial states and clip_recurrent, outputs and every gradient; a float64 gradcheck per cell.

Runs where Triton can run kernels: on a CUDA device, or on CPU tensors in Triton's interpreter,
which must be switched on before Triton is imported (``make test`` runs this folder a second time
with TRITON_INTERPRET=1; in the main run these tests skip, saying so).  Sizes are tiny (the
interpreter runs each program's every operation in numpy) but cross tile edges: H = 20 and B = 18
exceed the interpreter's 16-wide tiles, so several tiles, K chunks and masked edges are exercised.
"""
from __future__ import annotations

import pytest
import torch

from helpers import FORMS, flat, grads, random_state, randn
from rnnkit import backends

TRITON = backends.get("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUNS = TRITON.available().ok and (DEVICE.type == "cuda" or __import__("rnnkit.backends.triton",
                                                                     fromlist=["interpreting"]).interpreting())
pytestmark = pytest.mark.skipif(not RUNS, reason="needs a CUDA device, or TRITON_INTERPRET=1 set before Triton "
                                                 "is imported (`make test` runs tests/triton that way)")

I = 3
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
    tri.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), tri.to(DEVICE)


def _run(model, x, h0, lengths):
    out = flat(model(x, h0, lengths))
    leaves = [x, *(h0 if isinstance(h0, tuple) else (h0,)), *model.parameters()]
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
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    for k, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, k=k: f"{form}: tensor {k}: {m}")


GRADCHECK_FORMS = ["elman_relu", "jordan_softmax", "lstm", "gru_cho"]


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
        return flat(m(x, state if len(state) > 1 else state[0], torch.tensor([3, 2])))

    assert torch.autograd.gradcheck(f, (x, *h0, *params[:2]), eps=1e-6, atol=1e-7)
