"""Inference in one call with lengths (the cpu backend's C++ ``infer`` with ``lengths``): the run's
order, mask and the copies back into the user's rows are made in C++ (RunOrder, csrc/varlen.h)
instead of a dozen tensor ops, in one direction or both (the backward one reads each row's valid
steps from its last).  The results are the layer-by-layer path's (the same kernels) and torch.nn's
packed results: zeros on padded steps, each row's state after its last valid step (the backward
direction's after its first)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from helpers import needs_cpu
from rnnkit.backends import cpu
from test_cpu_infer import FORMS, calls, layer_by_layer

T, B, I, H = 7, 5, 5, 6
LENGTHS = {
    "unsorted": [3, 7, 1, 7, 5],
    "sorted": [7, 6, 6, 2, 1],
    "full": [7, 7, 7, 7, 7],
    "ties": [4, 2, 4, 2, 4],
}


def states(h):
    return h if isinstance(h, tuple) else (h,)


def assert_same(got, want, **tol):
    (out, h_n), (want_out, want_h) = got, want
    assert out.shape == want_out.shape
    torch.testing.assert_close(out, want_out, **tol)
    for a, b in zip(states(h_n), states(want_h)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("form", list(FORMS))
def test_one_call_with_lengths_equals_the_layer_by_layer_path(form, bidirectional, lengths, with_hx, batch_first,
                                                              dtype):
    torch.manual_seed(0)
    model = FORMS[form](num_layers=2, batch_first=batch_first, bidirectional=bidirectional,
                        backend="cpu").to(dtype).eval()
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)
    hx = layer_by_layer(model, x)[1] if with_hx else None
    n = torch.tensor(LENGTHS[lengths])
    with torch.no_grad():
        assert calls(model, x, hx, lengths=n) == 1
        got = model(x, hx, lengths=n)
        want = layer_by_layer(model, x, hx, lengths=n)
    assert_same(got, want)
    out = got[0] if not batch_first else got[0].transpose(0, 1)
    for b, steps in enumerate(LENGTHS[lengths]):                  # padded steps are zeros
        assert torch.count_nonzero(out[steps:, b]) == 0


@needs_cpu
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lengths_and_packed_input_give_torch_nn_packed_results(cell, with_hx, bidirectional):
    torch.manual_seed(1)
    ref = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H, num_layers=2,
                                                                                bidirectional=bidirectional)
    model = rnnkit.from_torch(ref, backend="cpu").eval()
    x, n = torch.randn(T, B, I), torch.tensor(LENGTHS["unsorted"])
    D = 2 if bidirectional else 1
    hx = torch.randn(2 * D, B, H) if with_hx else None
    if hx is not None and cell == "lstm":
        hx = (hx, torch.randn(2 * D, B, H))
    packed = pack_padded_sequence(x, n, enforce_sorted=False)
    with torch.no_grad():
        want_packed, want_h = ref(packed, hx)
        want_out, _ = pad_packed_sequence(want_packed, total_length=T)
        assert calls(model, x, hx, lengths=n) == 1
        assert_same(model(x, hx, lengths=n), (want_out, want_h))
        assert calls(model, packed, hx) == 1
        got_packed, got_h = model(packed, hx)
    assert torch.equal(got_packed.batch_sizes, want_packed.batch_sizes)
    assert torch.equal(got_packed.unsorted_indices, want_packed.unsorted_indices)
    assert_same((got_packed.data, got_h), (want_packed.data, want_h))


@needs_cpu
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_rows_projected_per_sequence_in_the_one_call(monkeypatch, layers, batch_first, bidirectional):
    """With every size counting as large (ROW_PROJECTION_MACS = 1), each layer projects one
    sequence at a time over its valid steps, the first from x's rows where they are: the results
    stay the layer-by-layer path's, and x's padded steps are never read (NaN there stays out)."""
    monkeypatch.setattr(cpu.CPU, "ROW_PROJECTION_MACS", 1)
    torch.manual_seed(2)
    model = rnnkit.GRU(I, H, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional,
                       backend="cpu").eval()
    n = torch.tensor(LENGTHS["unsorted"])
    x = torch.randn(T, B, I)
    for b, steps in enumerate(n.tolist()):
        x[steps:, b] = float("nan")
    if batch_first:
        x = x.transpose(0, 1)                                        # a strided view: read in place
    with torch.no_grad():
        assert calls(model, x, lengths=n) == 1
        got = model(x, lengths=n)
        want = layer_by_layer(model, torch.nan_to_num(x), lengths=n)
    assert not torch.isnan(got[0]).any()
    assert_same(got, want)


@needs_cpu
@pytest.mark.parametrize("row_macs, calls_expected", [(1 << 40, 0), (1, 1)])
def test_a_large_batch_with_lengths_leaves_the_one_call_unless_its_rows_are_projected(monkeypatch, row_macs,
                                                                                       calls_expected):
    """Above INFER_MAX_MACS a projection over all T*B rows runs faster on the layer path's oneDNN
    GEMM, so the one call is declined; a layer projected per sequence does not need it."""
    monkeypatch.setattr(cpu.CPU, "INFER_MAX_MACS", 1)
    monkeypatch.setattr(cpu.CPU, "ROW_PROJECTION_MACS", row_macs)
    model = rnnkit.RNN(I, H, num_layers=2, backend="cpu").eval()
    x, n = torch.randn(T, B, I), torch.tensor(LENGTHS["unsorted"])
    with torch.no_grad():
        assert calls(model, x, lengths=n) == calls_expected
        assert_same(model(x, lengths=n), layer_by_layer(model, x, lengths=n))


@needs_cpu
def test_the_one_call_with_lengths_returns_new_tensors_and_leaves_its_inputs_alone():
    model = rnnkit.LSTM(I, H, backend="cpu").eval()
    x, n = torch.randn(T, B, I), torch.tensor(LENGTHS["unsorted"])
    hx = (torch.randn(1, B, H), torch.randn(1, B, H))
    keep = (x.clone(), n.clone(), hx[0].clone(), hx[1].clone())
    with torch.no_grad():
        out, (h, c) = model(x, hx, lengths=n)
        out2, _ = model(x, hx, lengths=n)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    for a, b in zip((x, n, *hx), keep):
        assert torch.equal(a, b)
    for b, steps in enumerate(n.tolist()):                         # h_n: the last valid step's output
        torch.testing.assert_close(h[0, b], out[steps - 1, b], rtol=0, atol=0)
    out.add_(1.0)


@needs_cpu
@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([3, 7, 0, 7, 5]), r"lengths.*\[1, 7\].*0 at row 2"),
    (torch.tensor([3, 7, 8, 7, 5]), r"lengths.*\[1, 7\].*8 at row 2"),
    (torch.tensor([3, 7, 7]), r"lengths: expected \(5,\)"),
    (torch.tensor([3.0, 7, 1, 7, 5]), r"lengths: expected a 1-D int64"),
])
def test_the_kernel_names_bad_lengths(lengths, match):
    """The C++ entry checks what it is handed (the layers check first, with their own words)."""
    ext = cpu.extension()
    model = rnnkit.RNN(I, H, backend="cpu")
    spec = cpu.CPU()._spec(model.cell)
    layers = model.step_parameters()
    with pytest.raises(ValueError, match=match):
        ext.infer(spec, torch.randn(T, B, I), [], layers, lengths, 0)


@needs_cpu
def test_an_empty_batch_with_lengths():
    model = rnnkit.GRU(I, H, backend="cpu").eval()
    with torch.no_grad():
        out, h = model(torch.randn(T, 0, I), lengths=torch.zeros(0, dtype=torch.long))
    assert out.shape == (T, 0, H) and h.shape == (1, 0, H)


@needs_cpu
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("form", list(FORMS))
def test_a_packed_sequence_runs_in_one_call_on_its_packed_rows(form, bidirectional, with_hx, enforce_sorted):
    """A PackedSequence goes to the one call as it is (its data unpacked and the output packed
    again in C++): the same data, batch sizes and indices as the layer-by-layer path's."""
    torch.manual_seed(3)
    model = FORMS[form](num_layers=2, bidirectional=bidirectional, backend="cpu").eval()
    x = torch.randn(T, B, I)
    n = torch.tensor(LENGTHS["sorted" if enforce_sorted else "unsorted"])
    packed = pack_padded_sequence(x, n, enforce_sorted=enforce_sorted)
    hx = layer_by_layer(model, x)[1] if with_hx else None
    with torch.no_grad():
        assert calls(model, packed, hx) == 1
        got, got_h = model(packed, hx)
        want, want_h = layer_by_layer(model, packed, hx)
    for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None and b is None) or torch.equal(a, b)
    assert_same((got.data, got_h), (want.data, want_h))


@needs_cpu
@pytest.mark.parametrize("batch_sizes, rows, lengths, match", [
    (torch.tensor([3, 4, 1]), 8, None, r"batch_sizes: expected non-increasing.*4 after 3 at step 1"),
    (torch.tensor([3, 2, 0]), 5, None, r"batch_sizes: expected non-increasing sizes of at least 1"),
    (torch.tensor([], dtype=torch.long), 0, None, r"batch_sizes: expected a non-empty 1-D int64"),
    (torch.tensor([3, 2]), 6, None, r"x: expected a PackedSequence's CPU data \(5, I\)"),
    (torch.tensor([3, 2]), 5, torch.tensor([2, 2, 1]), r"lengths: expected None with batch_sizes"),
])
def test_the_kernel_names_bad_batch_sizes(batch_sizes, rows, lengths, match):
    ext = cpu.extension()
    model = rnnkit.GRU(I, H, backend="cpu")
    with pytest.raises(ValueError, match=match):
        ext.infer(cpu.CPU()._spec(model.cell), torch.randn(rows, I), [], model.step_parameters(), lengths, 0,
                  batch_sizes)


@needs_cpu
@pytest.mark.parametrize("form", ["lstm", "gru"])
def test_an_unbatched_sequence_with_a_length_list(form):
    model = FORMS[form](num_layers=2, backend="cpu").eval()
    x = torch.randn(T, I)
    with torch.no_grad():
        assert calls(model, x, None, [4]) == 1
        got = model(x, None, [4])
        want = layer_by_layer(model, x, None, [4])
    assert got[0].shape == (T, H)
    assert torch.count_nonzero(got[0][4:]) == 0
    assert_same(got, want)
