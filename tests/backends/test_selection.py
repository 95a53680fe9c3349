"""Backend selection: ``backend=`` argument, else RNNKIT_BACKEND (read at call time, by
``model.step`` too); an unknown name is an error.  ('auto' and the C++ 'cpu' backend's own
selection cases are tested with that backend, tests/test_cpu_backend.py.)

Which backend ran is observed through the hand-derived BPTT: only 'reference' calls
``rnnkit.backends.reference.backward``.
"""
import pytest
import torch

import rnnkit
from rnnkit import backends
from rnnkit.backends import cpu
from helpers import INPUT_SIZE, count_calls, flat, grads, make, needs_cpu, randn


@pytest.fixture
def bptt_calls(monkeypatch):
    """Counts calls of the reference backend's hand-derived backward."""
    return count_calls(monkeypatch, backends.reference, "backward")


def backward_once(model):
    x = randn(3, 2, INPUT_SIZE, requires_grad=True)
    outs = flat(model(x))
    grads(outs, [x])


@pytest.mark.parametrize("argument, env, hand_bptt", [
    ("reference", None, True),
    ("autograd", None, False),
    (None, "reference", True),
    (None, "autograd", False),
    ("autograd", "reference", False),
    ("reference", "autograd", True),
])
def test_selection(monkeypatch, bptt_calls, argument, env, hand_bptt):
    if env is None:
        monkeypatch.delenv("RNNKIT_BACKEND")
    else:
        monkeypatch.setenv("RNNKIT_BACKEND", env)
    backward_once(make("gru", backend=argument))
    assert bool(bptt_calls) == hand_bptt


def test_environment_is_read_at_call_time(monkeypatch, bptt_calls):
    model = make("lstm")
    monkeypatch.setenv("RNNKIT_BACKEND", "autograd")
    backward_once(model)
    assert not bptt_calls
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    backward_once(model)
    assert bptt_calls


@pytest.mark.parametrize("name", ["Reference", "cuda", ""])
def test_unknown_backend_is_an_error(name):
    with pytest.raises(ValueError, match="backend"):
        backends.check_name(name)
    with pytest.raises(ValueError, match="backend"):
        rnnkit.GRU(2, 3, backend=name)


@needs_cpu
def test_step_follows_the_environment(monkeypatch):
    calls = count_calls(monkeypatch, cpu.BACKEND, "step")
    model = make("gru")                                          # backend from RNNKIT_BACKEND
    x = randn(2, INPUT_SIZE)
    with torch.no_grad():
        model.step(x)
        monkeypatch.setenv("RNNKIT_BACKEND", "cpu")
        model.step(x)
        monkeypatch.setenv("RNNKIT_BACKEND", "reference")
        model.step(x)
    assert calls == [1]
    monkeypatch.setenv("RNNKIT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="RNNKIT_BACKEND: expected one of"):
        backends.resolve_cached(None, model.cell, x.device, x.dtype)


def test_import_and_eager_calls_leave_torch_dynamo_unloaded():
    """torch._dynamo costs 1.4 s to import here: a program that never compiles must not pay it
    (the backend choice's constant mark under torch.compile once imported it).  The mark set
    before torch._dynamo was loaded still holds: a later torch.compile(fullgraph=True) traces
    the choice as a constant."""
    import subprocess
    import sys
    code = ("import sys, torch, rnnkit\n"
            "for cls in (rnnkit.LSTM, rnnkit.GRU, rnnkit.Elman):\n"
            "    m = cls(4, 3, num_layers=2)\n"
            "    m(torch.randn(5, 2, 4))[0].sum().backward()\n"
            "    m.step(torch.randn(2, 4))\n"
            "print('torch._dynamo' in sys.modules)\n"
            "x = torch.randn(5, 2, 4)\n"
            "compiled = torch.compile(m, fullgraph=True, backend='eager')\n"
            "print(torch.allclose(compiled(x)[0], m(x)[0]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_constant_mark_is_torch_compilers_own():
    """The mark set without importing torch._dynamo is the one its public decorator sets."""
    def ours():
        return 0

    def public():
        return 0

    backends._constant_result(ours)
    torch.compiler.assume_constant_result(public)
    assert ours.__dict__ == public.__dict__ != {}
    assert backends._resolve_while_tracing.__dict__ == public.__dict__
