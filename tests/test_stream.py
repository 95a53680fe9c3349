"""``model.stream()`` (rnnkit.Stream): equal to ``model.step`` and to ``forward`` for every cell, depth
and dtype, on every registered backend that supports the case; in-place state, reset, input errors,
parameters changed after creation.  (The caches behind ``model.step``: layers/test_trace_step.py.)
"""
import pytest
import torch

import rnnkit
from helpers import (CELLS, INPUT_SIZE, backends_for, cell_backends, detached, make, needs_cpu, randn,
                     random_state, state_tensors)

T, B = 4, 2
EXACT = {torch.float32: dict(atol=1e-6, rtol=0), torch.float64: dict(atol=1e-12, rtol=0)}
DTYPES = {"f32": torch.float32, "f64": torch.float64}


def close(actual, expected, dtype=torch.float64):
    for a, e in zip(state_tensors(actual), state_tensors(expected)):
        torch.testing.assert_close(a, e, **EXACT[dtype])


def run_stream(stream, x):
    """Outputs of every step (cloned: each call overwrites the stream's output buffer)."""
    return torch.stack([stream(x_t).clone() for x_t in x])


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell, backend, dtype", [
    pytest.param(*p.values, dtype, id=f"{p.id}-{name}", marks=p.marks)
    for name, dtype in DTYPES.items() for p in cell_backends(CELLS, dtype)])
def test_stream_matches_step_and_forward(cell, backend, dtype, num_layers):
    model = make(cell, num_layers=num_layers, dtype=dtype, backend=backend)
    x, hx = randn(T, B, INPUT_SIZE, dtype=dtype), detached(random_state(model, B))
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


@pytest.mark.parametrize("backend", backends_for("lstm"))
def test_output_buffer_and_state_semantics(backend):
    model = make("lstm", num_layers=2, backend=backend)
    stream = model.stream(B)
    x = randn(T, B, INPUT_SIZE)
    y0 = stream(x[0])
    y1 = stream(x[1])
    assert y1 is y0 and not y1.requires_grad                     # one buffer, overwritten in place
    h, c = stream.state
    assert h.shape == c.shape == (2, B, model.hidden_size)
    h.zero_()                                                    # a copy: the stream is untouched
    close(stream.state[0], model(x[:2])[1][0].detach())


@pytest.mark.parametrize("backend", backends_for("gru"))
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


@pytest.mark.parametrize("backend", backends_for("lstm"))
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


@pytest.mark.parametrize("backend", backends_for("gru"))
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


@pytest.mark.parametrize("backend", backends_for("lstm"))
def test_no_dropout_even_in_training_mode(backend):
    model = make("lstm", num_layers=3, dropout=0.5, backend=backend)
    assert model.training
    x = randn(T, B, INPUT_SIZE)
    ys = run_stream(model.stream(B), x)
    with torch.no_grad():
        close(ys, model.eval()(x)[0])


def test_stream_is_exported():
    assert rnnkit.Stream is type(make("gru").stream())


CHANGES = [
    pytest.param(lambda m: setattr(m.weight_ih_l0, "data", torch.randn(40, 7, dtype=torch.float64)),
                 r"weight_ih_l0 changed since the stream was created: it is now \(40, 7\).*made for \(16, 3\)",
                 id="resized"),
    pytest.param(lambda m: setattr(m.bias_hh_l1, "data", torch.zeros(0, dtype=torch.float64)),
                 r"bias_hh_l1 changed.*\(0,\)", id="emptied"),
    pytest.param(lambda m: setattr(m.weight_hh_l1, "data", m.weight_hh_l1.data.float()),
                 r"weight_hh_l1 changed.*torch\.float32", id="dtype"),
]


def _held_changes():
    """(change, words, backend): every change on every stream; non-contiguous weights only on the
    C++ stream, which reads raw pointers (the Python stepper's products take any layout)."""
    cases = [pytest.param(*c.values, *b.values, id=f"{b.id}-{c.id}", marks=[*b.marks, *c.marks])
             for b in backends_for("lstm") for c in CHANGES]
    cases += [pytest.param(lambda m: setattr(m.weight_hh_l0, "data", m.weight_hh_l0.data.t().contiguous().t()),
                           r"weight_hh_l0 changed.*non-contiguous", *b.values, id=f"{b.id}-non-contiguous", marks=b.marks)
              for b in backends_for("lstm") if b.values == ("cpu",)]
    return cases


@pytest.mark.parametrize("change, words, backend", _held_changes())
def test_held_parameter_changed_under_the_stream_is_an_error(change, words, backend):
    """The stream holds the module's tensors: ``p.data = t`` changes them in place, and the next
    step checks them (sizes, dtype, layout) before reading a pointer, naming the parameter that
    changed instead of failing inside a matrix product."""
    model = make("lstm", num_layers=2, backend=backend)
    stream = model.stream(B)
    x = randn(B, INPUT_SIZE)
    stream(x)
    change(model)
    with pytest.raises(RuntimeError, match=words + ".*create a new stream"):
        stream(x)


def prune_one(m):
    torch.nn.utils.prune.random_unstructured(m, "weight_hh_l0", amount=0.5)


def weight_norm_param(m):
    torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l1")


def weight_norm_hook(m):
    torch.nn.utils.weight_norm(m, "weight_ih_l0")


def non_contiguous(m):
    m.weight_ih_l1.data = m.weight_ih_l1.data.t().contiguous().t()


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
@pytest.mark.parametrize("surgery", [prune_one, weight_norm_param, weight_norm_hook, non_contiguous],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", backends_for("gru"))
def test_parametrized_and_pruned_streams_read_every_step(surgery, backend):
    """Parametrized, pruned (forward pre-hook) or non-contiguous parameters: the stream reads them
    from the module (running the pruning / weight_norm hooks) at every step, so an optimiser step
    on the original weights after the stream was made is seen."""
    import torch.nn.utils.parametrizations  # noqa: F401 - registers the submodules used above
    import torch.nn.utils.prune  # noqa: F401
    model = make("gru", num_layers=2, backend=backend)
    assert not model.stream(B).reads_every_step
    surgery(model)
    stream = model.stream(B)
    assert stream.reads_every_step
    x = randn(T, B, INPUT_SIZE)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x)[0].square().sum().backward()
    opt.step()
    ys = run_stream(stream, x)
    with torch.no_grad():
        close(ys, model(x)[0])
