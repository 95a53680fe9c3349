"""``clip_recurrent=x`` on every layer: the gradient of every carried state is clamped to [-x, x]
at every step of backpropagation through time (a biased gradient, not the derivative).

The oracle is written here: the cell's forward step by step under autograd, with a hook on every
carried state after every step that clamps its gradient -- its total, from the output at t and from
step t+1 -- to [-x, x].  The hand-written BPTT of every backend with a backward of its own must give
its gradients, for every cell, with variable lengths; the autograd backend (the same hooks in the
library's loop) must too, in deep bidirectional stacks.  The forward is unchanged.
"""
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit import backends
from helpers import assert_all_close, backends_for, flat, grads, randn, state_tensors

T, B, I, H = 6, 3, 2, 4
CLIP = 0.02                      # small enough to bind at most steps of these small networks
LENGTHS = [6, 2, 4]

FORMS = {
    "elman": (rnnkit.Elman, {"nonlinearity": "tanh"}),
    "jordan": (rnnkit.Jordan, {"output_size": 2, "output_activation": "sigmoid"}),
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj_peephole": (rnnkit.LSTM, {"proj_size": 2, "peephole": True}),
    "gru": (rnnkit.GRU, {}),
    "gru_zoneout": (rnnkit.GRU, {"zoneout": 0.3}),
}


def build(form, clip, backend, **kw):
    cls, extra = FORMS[form]
    torch.manual_seed(0)
    model = cls(I, H, dtype=torch.float64, backend=backend, clip_recurrent=clip, **extra, **kw)
    return model.eval()                  # zoneout's eval math: deterministic


def oracle(model, x, hx, lengths, clip):
    """(output, *final states) of a one-layer unidirectional model by its cell's step, with the
    clamping hooks on every state after every step (padded steps keep the state)."""
    cell = model.cell
    w_ih, b_ih, *rec = [getattr(model, n) for n in model._step_names[0]]
    state = tuple(s[0] for s in model.unpack_state(hx))                     # (B, S_k)
    outs = []
    for t in range(x.shape[0]):
        new, _ = cell.step(F.linear(x[t], w_ih, b_ih), state, tuple(rec))
        valid = (torch.tensor(lengths) > t).unsqueeze(-1)
        state = tuple(torch.where(valid, n, s) for n, s in zip(new, state))
        for s in state:
            s.register_hook(lambda g: g.clamp(-clip, clip))
        outs.append(torch.where(valid, state[0], 0.0))
    return [torch.stack(outs), *(s[None] for s in state)]


def random_hx(model):
    hs = [randn(1, B, s, seed=1 + k, requires_grad=True) for k, s in enumerate(model.cell.state_sizes())]
    return tuple(hs) if len(hs) > 1 else hs[0]


def cases():
    """(form, backend) for every backend with its own backward that runs the form here."""
    return [pytest.param(f, b.values[0], id=f"{b.id}-{f}", marks=b.marks) for f in FORMS
            for b in backends_for(build(f, CLIP, None).cell, own_backward=True)]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("form, backend", cases())
def test_backward_equals_the_hooked_autograd_oracle(form, backend, lengths):
    model = build(form, CLIP, backend)
    x = randn(T, B, I, seed=3, requires_grad=True)
    hx = random_hx(model)
    leaves = [x, *state_tensors(hx), *model.parameters()]
    ours = flat(model(x, hx, lengths=lengths))
    expected = oracle(model, x, hx, lengths or [T] * B, CLIP)
    assert_all_close(ours, expected)
    got, want = grads(ours, leaves), grads(expected, leaves)
    assert_all_close(got, want)
    unclipped = build(form, None, backend)
    plain = grads(flat(unclipped(x, hx, lengths=lengths)), [x, *state_tensors(hx), *unclipped.parameters()])
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(got, plain)), "the clip never bound: test too weak"


@pytest.mark.parametrize("form, backend", cases())
def test_deep_bidirectional_equals_the_autograd_backend(form, backend):
    results = []
    for name in (backend, backends.ORACLE):
        model = build(form, CLIP, name, num_layers=2, bidirectional=True)
        x = randn(T, B, I, seed=3, requires_grad=True)
        outs = flat(model(x, lengths=LENGTHS))
        results.append(outs + grads(outs, [x, *model.parameters()]))
    assert_all_close(results[0], results[1])


def test_forward_unchanged_and_large_bound_is_exact():
    x = randn(T, B, I, seed=3, requires_grad=True)
    clipped, plain, loose = (build("lstm", c, "reference") for c in (CLIP, None, 1e6))
    assert_all_close(flat(clipped(x)), flat(plain(x)))
    assert_all_close(grads(flat(loose(x)), [x, *loose.parameters()]), grads(flat(plain(x)), [x, *plain.parameters()]))


def test_every_state_gradient_is_bounded():
    """Through a long sequence with a large output gradient, the gradient of h and of c that the
    backward loop hands each step stays in [-x, x] (without the clip it does not)."""
    for clip, bounded in ((0.5, True), (None, False)):
        model = build("lstm", clip, "reference")
        seen = []
        step_backward = model.cell.step_backward

        def recording(d_new, *args):
            seen.append(max(float(d.abs().max()) for d in d_new))
            return step_backward(d_new, *args)
        model.cell.step_backward = recording
        out, _ = model(randn(40, B, I, seed=3, requires_grad=True))
        (out * 1e3).sum().backward()
        assert len(seen) == 40
        assert (max(seen) <= 0.5) == bounded


def test_repr_spec_and_conversion():
    model = rnnkit.GRU(I, H, clip_recurrent=1.5)
    assert repr(model) == "GRU(2, 4, clip_recurrent=1.5)" and model.clip_recurrent == 1.5
    assert model.cell.options()["clip_recurrent"] == "1.5"
    with pytest.raises(ValueError, match="clip_recurrent"):
        model.to_torch()
