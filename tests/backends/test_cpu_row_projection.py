"""A batch with lengths, forward without a graph on the layer-by-layer path (a trace, noise in
training mode; the one-call inference does the same in C++: test_cpu_infer_lengths.py): the first
layer's input projection reads the user's rows where they are (``Backend.row_projection``; the cpu
backend's C++ ``project_rows``) instead of copying the batch into the run's order, and skips the
padded steps.  Outputs and final states equal those of the path that copies (to float rounding:
the GEMMs are blocked otherwise); every other call keeps that path."""
import pytest
import torch

import rnnkit
from helpers import needs_cpu
from rnnkit.backends import cpu

T, B, I, H = 9, 5, 4, 6
LENGTHS = torch.tensor([3, 9, 1, 6, 9])                  # unsorted, with ties and a length-1 row
FORMS = {
    "rnn": lambda **kw: rnnkit.RNN(I, H, **kw),
    "jordan": lambda **kw: rnnkit.Jordan(I, H, output_size=3, **kw),
    "lstm": lambda **kw: rnnkit.LSTM(I, H, **kw),
    "lstm_proj_ln": lambda **kw: rnnkit.LSTM(I, H, proj_size=2, layer_norm=True, **kw),
    "gru": lambda **kw: rnnkit.GRU(I, H, **kw),
    "gru_zoneout": lambda **kw: rnnkit.GRU(I, H, zoneout=0.3, **kw),
}


@pytest.fixture
def used(monkeypatch):
    """How many row projections the forwards asked for and got (the spy counts the C++ calls);
    the size rule lowered so that these small cases take it, and the one-call inference off (its
    own projection is C++'s, tested apart)."""
    monkeypatch.setattr(cpu.CPU, "ROW_PROJECTION_MACS", 1)
    monkeypatch.setattr(cpu.CPU, "infer", lambda self, *a, **kw: None)
    seen = []
    original = cpu.CPU.row_projection

    def spy(self, *a):
        project = original(self, *a)
        if project is None:
            return None

        def counted(*b):
            seen.append(1)
            return project(*b)
        return counted

    monkeypatch.setattr(cpu.CPU, "row_projection", spy)
    return seen


def copying(model, *args, **kwargs):
    """The model's forward on the path that copies the batch into the run's order."""
    original = cpu.CPU.row_projection
    cpu.CPU.row_projection = lambda self, *a: None
    try:
        return model(*args, **kwargs)
    finally:
        cpu.CPU.row_projection = original


def flat(result):
    out, state = result[:2]
    return [out, *(state if isinstance(state, tuple) else (state,))]


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("form", list(FORMS))
def test_rows_projected_in_place_give_the_copying_paths_results(used, form, batch_first, dtype):
    torch.manual_seed(0)
    model = FORMS[form](num_layers=2, batch_first=batch_first, backend="cpu").to(dtype).eval()
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    with torch.no_grad():
        ours = flat(model(x, None, LENGTHS))
        assert len(used) == 1                                  # the first layer only
        want = flat(copying(model, x, None, LENGTHS))
    for a, b in zip(ours, want):                               # one GEMM per row: other roundings
        torch.testing.assert_close(a, b)


@needs_cpu
@pytest.mark.parametrize("form", ["lstm", "gru"])
def test_a_packed_batch_skips_its_padded_steps_with_the_same_results(used, form):
    torch.manual_seed(1)
    model = FORMS[form](backend="cpu").eval()
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I), LENGTHS, enforce_sorted=False)
    with torch.no_grad():
        out, state = model(packed)
        assert len(used) == 1
        want_out, want_state = copying(model, packed)
    torch.testing.assert_close(out.data, want_out.data)
    for a, b in zip(state, want_state):
        torch.testing.assert_close(a, b)


@needs_cpu
def test_sorted_lengths_skip_their_padded_steps_too(used):
    model = rnnkit.GRU(I, H, backend="cpu").eval()
    x, lengths = torch.randn(T, B, I), LENGTHS.sort(descending=True).values
    with torch.no_grad():
        ours = flat(model(x, None, lengths))
        assert len(used) == 1
        want = flat(copying(model, x, None, lengths))
    for a, b in zip(ours, want):
        torch.testing.assert_close(a, b)


@needs_cpu
def test_padded_steps_are_never_read(used):
    """NaN on every padded step of the input: the outputs are those of a zero padding."""
    model = rnnkit.LSTM(I, H, backend="cpu").eval()
    x = torch.randn(T, B, I)
    pad = torch.arange(T)[:, None] >= LENGTHS[None, :]           # (T, B)
    with torch.no_grad():
        dirty = model(x.masked_fill(pad[..., None], float("nan")), None, LENGTHS)
        clean = model(x.masked_fill(pad[..., None], 0.0), None, LENGTHS)
    assert len(used) == 2
    for a, b in zip(flat(dirty), flat(clean)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_cpu
@pytest.mark.parametrize("case", ["graph", "hx graph", "bidirectional", "full lengths", "no lengths",
                                  "autograd backend"])
def test_other_calls_copy_or_need_no_order(used, case):
    model = rnnkit.GRU(I, H, bidirectional=case == "bidirectional",
                       backend="autograd" if case == "autograd backend" else "cpu").eval()
    x = torch.randn(T, B, I)
    lengths = torch.full((B,), T) if case == "full lengths" else LENGTHS
    hx = torch.randn(2 if case == "bidirectional" else 1, B, H, requires_grad=case == "hx graph")
    with torch.set_grad_enabled(case in ("graph", "hx graph")):
        if case == "no lengths":
            model(x, hx)
        else:
            model(x, hx, lengths)
    assert used == []
    cell = model.cell
    assert cpu.CPU().row_projection(cell, x, torch.arange(B), LENGTHS) is not None    # a positive control
    assert cpu.CPU().row_projection(cell, x[:, :1].expand(T, B, I), torch.arange(B), LENGTHS) is None


@needs_cpu
@pytest.mark.parametrize("T_, B_, H_, taken", [(8, 64, 256, True), (12, 128, 64, False), (4, 512, 128, False)])
def test_one_gemm_per_sequence_only_where_a_sequences_product_is_large(T_, B_, H_, taken):
    """The rule measured on Elman: a sequence's mean valid steps x I x G*H of at least 2^19."""
    cell = rnnkit.RNN(H_, H_).cell
    lengths = torch.full((B_,), T_)
    project = cpu.CPU().row_projection(cell, torch.randn(T_, B_, H_), torch.arange(B_), lengths)
    assert (project is not None) == taken


@needs_cpu
@pytest.mark.parametrize("order, lengths, match", [
    ([0, 1, 5], [3, 2, 1], r"order\[2\] = 5 is not a row of x"),
    ([0, 1, -1], [3, 2, 1], r"order\[2\] = -1 is not a row of x"),
    ([0, 1, 2], [3, 9, 1], r"lengths\[1\] = 9 is outside \[0, 3\]"),
    ([0, 1], [3, 2], r"order and lengths: expected contiguous \(3\) int64"),
])
def test_the_kernel_checks_its_indices(order, lengths, match):
    x, w = torch.randn(3, 3, I), torch.randn(2 * H, I)
    with pytest.raises(RuntimeError, match=match):
        cpu.extension().project_rows(x, torch.tensor(order), torch.tensor(lengths), w, None)
