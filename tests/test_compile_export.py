"""torch.compile(fullgraph=True), torch.export, whole-model save/load and TorchScript's refusal.

The backends' time loops are torch custom operators (rnnkit/backends/library.py): their fake
implementations must give the real outputs' shapes and dtypes for every cell form and backend
(torch.library.opcheck), and compiled or exported models must give eager's numbers.
"""
from __future__ import annotations

import io

import pytest
import torch

import rnnkit
from rnnkit import backends, registry
from rnnkit.cells.base import Cell

T, B, I, H = 4, 2, 3, 4
FORMS = registry.forms()
HAND = [n for n in backends.BACKENDS if n != "auto" and not backends.get(n).differentiable and backends.get(n).available()]


def _layer(form: str, **kw):
    entry, kwargs = FORMS[form]
    torch.manual_seed(0)
    layer = entry.layer(I, H, **kwargs, **kw)
    return layer.eval() if layer.cell.noise_names else layer       # noise: random in training (helpers.make)


def _op_args(cell: Cell, backend: str, lengths: bool):
    g = torch.Generator().manual_seed(0)
    GH = cell.n_gates * cell.hidden_size
    xp = torch.randn(T, B, GH, generator=g)
    mask = (torch.arange(T)[:, None] < torch.tensor([T, 2])[None]).unsqueeze(-1) if lengths else None
    state0 = [torch.randn(B, s, generator=g) for s in cell.state_sizes()]
    params = [torch.randn(shape, generator=g) for name, shape in cell.param_shapes(I, True)
              if name in cell.rec_params]
    return xp, mask, state0, params


@pytest.mark.parametrize("backend", HAND)
@pytest.mark.parametrize("form", list(FORMS))
def test_operators_fake_implementations_match(form, backend):
    cell = _layer(form).cell
    if not backends.get(backend).supports(cell, torch.device("cpu"), torch.float32):
        pytest.skip(f"{backend} does not run {form}")
    # With a mask: the kernels write the saved rows of padded steps too (zeros), so that runs are
    # reproducible, as opcheck's eager-against-traced comparison needs.
    xp, mask, state0, params = _op_args(cell, backend, lengths=True)
    noise = list(cell.draw_noise(T, B, xp) or ())               # training's noise (recurrent dropout, zoneout)
    torch.library.opcheck(torch.ops.rnnkit.sequence_forward.default,
                          (backend, cell.spec, xp, mask, state0, params, True, noise))
    states, saved = torch.ops.rnnkit.sequence_forward(backend, cell.spec, xp, mask, state0, params, True, noise)
    assert [s.shape[-1] for s in saved] == list(cell.saved_sizes())
    d_out = torch.randn_like(states[0])
    torch.library.opcheck(torch.ops.rnnkit.sequence_backward.default,
                          (backend, cell.spec, d_out, [None] * len(state0), mask, state0, states, saved, params, noise))


def test_cell_spec_round_trips():
    for form in FORMS:
        cell = _layer(form).cell
        again = Cell.from_spec(cell.spec)
        assert type(again) is type(cell) and again.key == cell.key and again.state_sizes() == cell.state_sizes()


# One form per cell: compiling is slow (seconds per graph).
ONE_PER_CELL = [next(f for f, (e, _) in FORMS.items() if e is entry) for entry in registry.CELLS.values()]


@pytest.mark.parametrize("form", ONE_PER_CELL)
def test_compile_fullgraph_gives_eager_numbers_and_gradients(form):
    torch._dynamo.reset()
    model = _layer(form, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, requires_grad=True)
    out, state = model(x)
    expected = [out, *model.unpack_state(state), *torch.autograd.grad(out.sum(), [x, *model.parameters()])]
    compiled = torch.compile(model, fullgraph=True)
    out, state = compiled(x)
    got = [out, *model.unpack_state(state), *torch.autograd.grad(out.sum(), [x, *model.parameters()])]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("form", ONE_PER_CELL)
def test_export_produces_a_program_that_runs(form):
    model = _layer(form, num_layers=2, batch_first=True)
    x = torch.randn(B, T, I)
    program = torch.export.export(model, (x,))
    x2 = torch.randn(B, T, I)
    for a, b in zip(program.module()(x2), model(x2)):
        for u, v in zip(model.unpack_state(a) if not isinstance(a, torch.Tensor) else [a],
                        model.unpack_state(b) if not isinstance(b, torch.Tensor) else [b]):
            torch.testing.assert_close(u, v)


@pytest.mark.parametrize("form", list(FORMS))
def test_whole_model_save_and_weights_only_load(form):
    model = _layer(form, num_layers=2)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf)                                  # torch's default: weights_only=True
    x = torch.randn(T, B, I)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_torchscript_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.compile"):
        torch.jit.script(rnnkit.LSTM(I, H))


TWINS = [f for f in FORMS if _layer(f).torch_twin is not None and not _layer(f)._not_in_torch()
         and getattr(_layer(f), "reset_after", True)]


def _save_load(traced):
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    return torch.jit.load(buf)


class _Padded(torch.nn.Module):
    """A layer on a padded batch and its lengths through a PackedSequence, as traced code packs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        out, _ = self.layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(out)[0]


class _Step(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h, c):
        y, (h, c) = self.layer.step(x, (h, c))
        return y, h, c


@pytest.mark.parametrize("form", TWINS)
def test_jit_trace_records_torchs_op_for_any_length_and_batch(form):
    """torch.jit.trace of a layer torch.nn has records torch's RNN op: the saved and reloaded
    trace gives the layer's outputs and states at other T and B, with an initial state, and on a
    PackedSequence (the tracer cannot see the kernels: they once gave stale buffers)."""
    model = _layer(form, num_layers=2, bidirectional=True).eval()
    D, L = 2, 2
    state = lambda b: tuple(torch.randn(D * L, b, s) for s in model.cell.state_sizes())
    pack = lambda st: st if len(st) > 1 else st[0]
    with torch.no_grad():
        traced = _save_load(torch.jit.trace(model, (torch.randn(T, B, I), pack(state(B)))))
        for t, b in ((T, B), (9, 5), (1, 1)):
            x, h = torch.randn(t, b, I), pack(state(b))
            for got, want in zip(traced(x, h), model(x, h)):
                for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                    torch.testing.assert_close(g, w)
        padded = _Padded(model)
        traced = _save_load(torch.jit.trace(padded, (torch.randn(6, 3, I), torch.tensor([6, 4, 2]))))
        x, lengths = torch.randn(8, 4, I), torch.tensor([8, 3, 5, 1])
        torch.testing.assert_close(traced(x, lengths), padded(x, lengths))


@pytest.mark.parametrize("form", [f for f in FORMS if f not in TWINS])
def test_jit_trace_of_a_layer_torch_lacks_is_a_clear_error(form):
    with pytest.raises(RuntimeError, match="torch.jit.trace .* torch.export"):
        torch.jit.trace(_layer(form), (torch.randn(T, B, I),))


def test_jit_trace_of_cells_and_step_records_the_steps_math():
    """A Cell module's and model.step's trace is torch's ops of one step: right at another B."""
    cell, model = rnnkit.GRUCell(I, H).eval(), rnnkit.LSTM(I, H, num_layers=2).eval()
    h = (torch.randn(2, B, H), torch.randn(2, B, H))
    with torch.no_grad():
        traced_cell = _save_load(torch.jit.trace(cell, (torch.randn(B, I),)))
        traced_step = _save_load(torch.jit.trace(_Step(model), (torch.randn(B, I), *h)))
        x, h5 = torch.randn(5, I), (torch.randn(2, 5, H), torch.randn(2, 5, H))
        torch.testing.assert_close(traced_cell(x), cell(x))
        torch.testing.assert_close(traced_step(x, *h5), _Step(model)(x, *h5))


def test_jit_trace_refuses_lengths_and_trace():
    model = rnnkit.GRU(I, H)
    with pytest.raises(ValueError, match="lengths: .*PackedSequence"):
        torch.jit.trace(lambda x: model(x, lengths=torch.tensor([T, 2]))[0], (torch.randn(T, B, I),))
    with pytest.raises(ValueError, match="return_trace"):
        torch.jit.trace(lambda x: model(x, return_trace=True)[0], (torch.randn(T, B, I),))


def test_flat_weights_follow_torch():
    ours, ref = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True), torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert all(a is getattr(ours, n) for a, n in zip(ours._flat_weights, ours._flat_weights_names))


def test_compiled_training_draws_the_eager_masks(monkeypatch):
    """Recurrent dropout and zoneout under torch.compile(fullgraph=True): the masks come from
    rnnkit.noise's torch-ops form there (the C++ fill outside), with the same keys from torch's
    generator, so a seed gives the eager numbers (inductor told to keep torch's random ops)."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    from rnnkit import noise
    from rnnkit.backends import cpu
    assert cpu.extension() is None or noise._cpu_fill is not None     # eager draws with the C++ fill
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = rnnkit.LSTM(I, H, num_layers=2, recurrent_dropout=0.3, zoneout=0.2).train()
    x = torch.randn(T, B, I, requires_grad=True)
    torch.manual_seed(7)
    out, state = model(x)
    expected = [out, *model.unpack_state(state), *torch.autograd.grad(out.sum(), [x, *model.parameters()])]
    compiled = torch.compile(model, fullgraph=True)
    torch.manual_seed(7)
    out, state = compiled(x)
    got = [out, *model.unpack_state(state), *torch.autograd.grad(out.sum(), [x, *model.parameters()])]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    torch.manual_seed(8)
    assert not torch.equal(compiled(x)[0], got[0])               # another seed, other masks
