"""Training with lengths: the batch goes into the run's row order with zeros on padded steps in one
pass, and its gradient back into the user's order (the cpu kernels' rows_to_run / rows_to_user,
sequence.rows_to_run), where torch's index_select and torch.where with its backward took two
passes each way; a PackedSequence is padded and its output packed again the same way (unpack_rows
/ pack_rows, sequence.unpacked / packed_data) instead of pad_packed_sequence and
pack_padded_sequence.  The results are those of the torch ops, bit for bit (copies and zeros)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from helpers import needs_cpu
from rnnkit import sequence
from rnnkit.backends import cpu

T, B, I, H = 7, 5, 4, 6
LENGTHS = {"unsorted": [3, 7, 1, 7, 5], "sorted": [7, 7, 5, 3, 1]}


def torch_ops(f, *args):
    """f(*args) with the one-pass copies switched off (the torch ops instead)."""
    kept = sequence._cpu_rows, sequence._cpu_packing
    sequence._cpu_rows = sequence._cpu_packing = None
    try:
        return f(*args)
    finally:
        sequence._cpu_rows, sequence._cpu_packing = kept


def both_ways(copy, x, *args):
    """copy(x, *args) and its gradient through the kernels' one-pass copies and through the torch
    ops, asserted equal bit for bit and free of NaN (x's padding holds NaN): (out, dx)."""
    grad = torch.randn(x.shape, dtype=x.dtype)
    results = []
    for run in (lambda f, *a: f(*a), torch_ops):
        xg = x.clone().requires_grad_()
        out = run(copy, xg, *args)
        out.backward(grad)
        results.append((out, xg.grad))
    (out, dx), (want, want_dx) = results
    assert torch.equal(out, want) and not torch.isnan(out).any()
    assert torch.equal(dx, want_dx)
    return out, dx


def spied(monkeypatch):
    seen = []
    original = sequence._Rows.apply

    def spy(*a):
        if not a[3] and torch.is_grad_enabled():              # into the run, in a forward (not a backward's)
            seen.append(1)
        return original(*a)
    monkeypatch.setattr(sequence._Rows, "apply", spy)
    return seen


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_rows_to_run_equals_the_torch_ops_both_ways(lengths, strided, dtype):
    cpu.extension()                                           # registers the kernels' copies
    n = torch.tensor(LENGTHS[lengths])
    order = sequence.longest_first(n)
    run_n = n if order is None else n[order]
    mask, _ = sequence.length_mask(run_n, T, "cpu", reversal=False)
    x = torch.randn(B, T, I, dtype=dtype).transpose(0, 1) if strided else torch.randn(T, B, I, dtype=dtype)
    for b, steps in enumerate(n.tolist()):                    # padding that must not leak
        x[steps:, b] = float("nan")
    both_ways(sequence.rows_to_run, x, order, run_n, mask)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_rows_to_user_equals_the_torch_ops_both_ways(lengths, dtype):
    """A layer's output leaves the kernels in the run's order with the carried state (here NaN:
    it must not leak) on padded steps; rows_to_user puts it in the user's rows with zeros there."""
    cpu.extension()
    n = torch.tensor(LENGTHS[lengths])
    order = sequence.longest_first(n)
    run_n = n if order is None else n[order]
    mask, _ = sequence.length_mask(run_n, T, "cpu", reversal=False)
    t = torch.randn(T, B, H, dtype=dtype)
    for i, steps in enumerate(run_n.tolist()):
        t[steps:, i] = float("nan")
    out, dt = both_ways(sequence.rows_to_user, t, order, run_n, mask)
    for b, steps in enumerate(n.tolist()):                    # the user's row b, zero past its length
        assert (out[steps:, b] == 0).all() and not (out[:steps, b] == 0).all()
    assert (dt[~mask.expand_as(dt)] == 0).all()               # no gradient into the padded steps


@needs_cpu
def test_rows_to_user_gradcheck():
    cpu.extension()
    t = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    order, n = torch.tensor([2, 0, 3, 1]), torch.tensor([6, 4, 4, 1])
    mask, _ = sequence.length_mask(n, 6, "cpu", reversal=False)
    assert torch.autograd.gradcheck(lambda a: sequence.rows_to_user(a, order, n, mask), (t,))
    assert torch.autograd.gradgradcheck(lambda a: sequence.rows_to_user(a, order, n, mask), (t,))


@needs_cpu
def test_rows_to_run_gradcheck():
    cpu.extension()
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    order, n = torch.tensor([2, 0, 3, 1]), torch.tensor([6, 4, 4, 1])
    assert torch.autograd.gradcheck(lambda t: sequence._Rows.apply(t, order, n, False), (x,))
    assert torch.autograd.gradgradcheck(lambda t: sequence._Rows.apply(t, order, n, False), (x,))   # create_graph


@needs_cpu
@pytest.mark.parametrize("form", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("lengths", list(LENGTHS) + ["packed"])
def test_training_with_lengths_takes_one_pass_with_the_same_gradients(monkeypatch, form, lengths):
    torch.manual_seed(0)
    model = {"rnn": rnnkit.RNN, "gru": rnnkit.GRU, "lstm": rnnkit.LSTM}[form](I, H, num_layers=2, backend="cpu")
    model = model.double()
    n = torch.tensor(LENGTHS["unsorted" if lengths == "packed" else lengths])
    x = torch.randn(T, B, I, dtype=torch.float64)
    for b, steps in enumerate(n.tolist()):
        x[steps:, b] = float("nan")

    def step():
        model.zero_grad()
        xg = x.clone().requires_grad_()
        if lengths == "packed":
            out, h = model(pack_padded_sequence(xg, n, enforce_sorted=False))
            out = out.data
        else:
            out, h = model(xg, None, n)
        loss = out.pow(2).sum() + sum(s.sum() for s in (h if isinstance(h, tuple) else (h,)))
        loss.backward()
        return [out.detach(), xg.grad] + [p.grad.clone() for p in model.parameters()]

    seen = spied(monkeypatch)
    ours = step()
    assert len(seen) == (0 if lengths == "packed" else 1)     # a packed batch comes zero-padded already
    want = torch_ops(step)
    for a, b in zip(ours, want):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_cpu
def test_a_forward_without_a_graph_does_not_copy_for_zeros(monkeypatch):
    seen = spied(monkeypatch)
    model = rnnkit.GRU(I, H, backend="cpu")
    with torch.no_grad():
        model(torch.randn(T, B, I), None, torch.tensor(LENGTHS["unsorted"]))
        model(torch.randn(T, B, I), None, torch.tensor(LENGTHS["unsorted"]), return_trace=True)
    assert seen == []


@needs_cpu
@pytest.mark.parametrize("order, lengths, match", [
    ([0, 0, 1], [3, 2, 1], r"order: expected a permutation of 0 \.\. 2, got 0 at 1"),
    ([0, 1, 3], [3, 2, 1], r"order: expected a permutation of 0 \.\. 2, got 3 at 2"),
    ([0, 1, 2], [2, 3, 1], r"lengths: expected non-increasing lengths in \[1, 4\], got 3 at 1"),
    ([0, 1, 2], [5, 3, 1], r"lengths: expected non-increasing lengths in \[1, 4\], got 5 at 0"),
    ([0, 1, 2], [3, 2], r"order and lengths: expected two \(B,\) int64 CPU tensors"),
])
def test_the_kernels_name_a_bad_run(order, lengths, match):
    ext = cpu.extension()
    for f in (ext.rows_to_run, ext.rows_to_user):
        with pytest.raises(ValueError, match=match):
            f(torch.randn(4, 3, 2), torch.tensor(order), torch.tensor(lengths))


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_unpacked_and_packed_data_equal_torchs_both_ways(lengths, dtype):
    cpu.extension()
    n = torch.tensor(LENGTHS[lengths])
    packed = pack_padded_sequence(torch.randn(T, B, I, dtype=dtype), n, enforce_sorted=False)
    grad_x, grad_p = torch.randn(T, B, I, dtype=dtype), torch.randn(packed.data.shape[0], 3, dtype=dtype)
    w = torch.randn(I, 3, dtype=dtype)
    results = []
    for run in (lambda f, *a: f(*a), torch_ops):
        data = packed.data.clone().requires_grad_()
        x, got_n = run(sequence.unpacked, data, packed.batch_sizes)
        y = x @ w                                             # (T, B, 3): a differentiable step between
        out = run(sequence.packed_data, y, got_n, packed.batch_sizes)
        torch.autograd.backward([x, out], [grad_x, grad_p])
        results.append((x.detach(), got_n, out.detach(), data.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_cpu
def test_unpacked_and_packed_data_gradcheck():
    cpu.extension()
    batch_sizes = torch.tensor([4, 3, 3, 1])
    data = torch.randn(11, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: sequence._Unpacked.apply(d, batch_sizes)[0], (data,))
    t = torch.randn(4, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: sequence._Packed.apply(u, batch_sizes), (t,))
    assert torch.autograd.gradgradcheck(lambda d: sequence._Unpacked.apply(d, batch_sizes)[0], (data,))
    assert torch.autograd.gradgradcheck(lambda u: sequence._Packed.apply(u, batch_sizes), (t,))


@needs_cpu
def test_the_kernels_name_bad_packed_shapes():
    ext = cpu.extension()
    with pytest.raises(ValueError, match=r"unpack: expected \(7, F\) data"):
        ext.unpack_rows(torch.randn(6, 2), torch.tensor([3, 3, 1]))
    with pytest.raises(ValueError, match=r"pack: expected a \(3, 3, S\) tensor"):
        ext.pack_rows(torch.randn(3, 2, 2), torch.tensor([3, 3, 1]))
