"""``model.stream()`` (rnnkit.Stream): equal to ``model.step`` and to ``forward`` for every cell, depth
and dtype, on the fused kernels and on the Python fallback; in-place state, reset, input errors,
parameters changed after creation; and the caches behind ``model.step``.
"""
import pytest
import torch

import rnnkit
from conftest import CELLS, INPUT_SIZE, make, randn, random_state, state_tensors
from rnnkit import backends
from rnnkit.backends import cpu

needs_cpu = pytest.mark.skipif(cpu.extension() is None, reason="the C++ kernels did not build")
T, B = 4, 2
EXACT = {torch.float32: dict(atol=1e-6, rtol=0), torch.float64: dict(atol=1e-12, rtol=0)}


def close(actual, expected, dtype=torch.float64):
    for a, e in zip(state_tensors(actual), state_tensors(expected)):
        torch.testing.assert_close(a, e, **EXACT[dtype])


def run_stream(stream, x):
    """Outputs of every step (cloned: each call overwrites the stream's output buffer)."""
    return torch.stack([stream(x_t).clone() for x_t in x])


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_stream_matches_step_and_forward(cell, num_layers, dtype, backend):
    model = make(cell, num_layers=num_layers, dtype=dtype, backend=backend)
    x, hx = randn(T, B, INPUT_SIZE, dtype=dtype), random_state(model, B)
    hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
    stream = model.stream(B, hx)
    assert stream.backend == backend
    with torch.no_grad():
        out, h_n = model(x, hx)
        state, steps = hx, []
        for x_t in x:
            y_t, state = model.step(x_t, state)
            steps.append(y_t)
    ys = run_stream(stream, x)
    close(ys, out, dtype)
    close(ys, torch.stack(steps), dtype)
    close(stream.state, h_n, dtype)


@needs_cpu
def test_output_buffer_and_state_semantics():
    model = make("lstm", num_layers=2, backend="cpu")
    stream = model.stream(B)
    x = randn(T, B, INPUT_SIZE)
    y0 = stream(x[0])
    y1 = stream(x[1])
    assert y1 is y0 and not y1.requires_grad                     # one buffer, overwritten in place
    h, c = stream.state
    assert h.shape == c.shape == (2, B, model.hidden_size)
    h.zero_()                                                    # a copy: the stream is untouched
    close(stream.state[0], model(x[:2])[1][0].detach())


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), "reference"])
def test_reset_and_unbatched(backend):
    model = make("gru", num_layers=2, backend=backend)
    x = randn(T, 1, INPUT_SIZE)
    stream = model.stream()
    first = run_stream(stream, x)
    stream.reset()
    close(run_stream(stream, x), first)
    hx = random_state(model, 1, unbatched=True).detach()        # (L, S): forward's unbatched format
    stream.reset(hx)
    y = torch.stack([stream(x_t[0]).clone() for x_t in x])      # (I,) in, (S,) out
    with torch.no_grad():
        out, h_n = model(x[:, 0], hx)
    close(y, out)
    close(stream.state, h_n.unsqueeze(1))


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), "reference"])
def test_bad_input_errors(backend):
    model = make("lstm", backend=backend)
    stream = model.stream(B)
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\) \(batch_size, input_size\), got \(2, 5\)"):
        stream(randn(B, 5))
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\).*got \(3, 3\)"):
        stream(randn(3, INPUT_SIZE))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        stream(randn(INPUT_SIZE))                                 # unbatched needs batch_size=1
    with pytest.raises(TypeError, match="expected dtype torch.float64"):
        stream(randn(B, INPUT_SIZE, dtype=torch.float32))
    with pytest.raises(ValueError, match="input requires grad.*model.step"):
        stream(randn(B, INPUT_SIZE, requires_grad=True))
    with torch.no_grad():
        stream(randn(B, INPUT_SIZE, requires_grad=True))


def test_creation_errors():
    with pytest.raises(ValueError, match="LSTM.stream: bidirectional"):
        make("lstm", bidirectional=True).stream()
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        make("gru").stream(0)
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 2, 4\)"):
        make("gru").stream(B, randn(1, 3, 4))
    with pytest.raises(TypeError, match=r"expected a tuple \(h_0, c_0\)"):
        make("lstm").stream(B, randn(1, B, 4))


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), "reference"])
def test_parameters_changed_after_creation(backend):
    """Documented: in-place changes are seen, a replaced Parameter object is not."""
    model = make("gru", num_layers=2, backend=backend)
    stream = model.stream(B)
    x = randn(B, INPUT_SIZE)
    other = make("gru", num_layers=2, backend=backend, seed=5)
    model.load_state_dict(other.state_dict())                   # copies in place
    with torch.no_grad():
        model.weight_hh_l1.mul_(0.5)
        expected = model.step(x)[0]
    close(stream(x), expected)
    old = model.weight_ih_l0.detach().clone()
    model.weight_ih_l0 = torch.nn.Parameter(torch.zeros_like(old))
    stream.reset()
    model.weight_ih_l0 = torch.nn.Parameter(old)                 # the value the stream still holds
    with torch.no_grad():
        expected = model.step(x)[0]
    model.weight_ih_l0 = torch.nn.Parameter(torch.zeros_like(old))
    close(stream(x), expected)


@needs_cpu
def test_converted_module_is_an_error():
    model = make("lstm", dtype=torch.float32, backend="cpu")
    stream = model.stream(B)
    model.double()
    with pytest.raises(RuntimeError, match="create a new stream"):
        stream(randn(B, INPUT_SIZE, dtype=torch.float32))


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu), "reference"])
def test_no_dropout_even_in_training_mode(backend):
    model = make("lstm", num_layers=3, dropout=0.5, backend=backend)
    assert model.training
    x = randn(T, B, INPUT_SIZE)
    ys = run_stream(model.stream(B), x)
    with torch.no_grad():
        close(ys, model.eval()(x)[0])


# -- the caches behind model.step ---------------------------------------------------------------------
@needs_cpu
def test_step_sees_replaced_and_converted_parameters():
    model = make("elman_tanh", dtype=torch.float32, backend="cpu")
    x = randn(B, INPUT_SIZE, dtype=torch.float32)
    with torch.no_grad():
        model.step(x)                                            # fills the parameter cache
        model.weight_hh_l0 = torch.nn.Parameter(torch.zeros_like(model.weight_hh_l0))
        model.bias_hh_l0 = torch.nn.Parameter(torch.zeros_like(model.bias_hh_l0))
        h = torch.ones(1, B, model.hidden_size)
        expected = torch.tanh(x @ model.weight_ih_l0.T + model.bias_ih_l0)
        close(model.step(x, h)[0], expected, torch.float32)
        model.double()
        y, _ = model.step(x.double(), h.double())
    assert y.dtype == torch.float64
    close(y, expected.double(), torch.float32)


@needs_cpu
def test_step_follows_the_environment(monkeypatch):
    calls = []
    original = cpu.BACKEND.step
    monkeypatch.setattr(cpu.BACKEND, "step", lambda *a: calls.append(1) or original(*a))
    model = make("gru")                                          # backend from RNNKIT_BACKEND
    x = randn(B, INPUT_SIZE)
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


def test_stream_is_exported():
    assert rnnkit.Stream is type(make("gru").stream())
