"""Backend selection between the Python backends: ``backend=`` argument, else RNNKIT_BACKEND;
an unknown name is an error.  ('auto' and the C++ 'cpu' backend are tested with that backend.)

Which backend ran is observed through the hand-derived BPTT: only 'reference' calls
``rnnkit.backends.reference.backward``.
"""
import pytest

import rnnkit
from rnnkit import backends
from conftest import INPUT_SIZE, flat, grads, make, randn


@pytest.fixture
def bptt_calls(monkeypatch):
    """Counts calls of the reference backend's hand-derived backward."""
    calls = []
    original = backends.reference.backward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(backends.reference, "backward", counting)
    return calls


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
