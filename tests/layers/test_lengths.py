"""Variable lengths: ``lengths=`` and PackedSequence input, on every registered backend that supports the case.

Oracles: torch.nn on a PackedSequence (Elman, LSTM, GRU), and for every cell each sequence run
alone, unpadded.  Padding is filled with NaN (or huge values): valid outputs, final states and
every gradient must be unaffected and finite; padded outputs are zero.
"""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import (INPUT_SIZE, TORCH_CELLS, assert_all_close, cell_backends, cotangents, flat, grads, make,
                     make_torch_pair, randn, random_state, state_size, state_tensors)

T = 5
LENGTHS = [3, 5, 1]           # unsorted on purpose
SORTED_LENGTHS = [5, 3, 1]
B = len(LENGTHS)


def padded_input(lengths, batch_first=False, pad=float("nan")):
    """Leaf (T, B, I) (or (B, T, I)) with `pad` at every step past a sequence's length."""
    x = randn(T, len(lengths), INPUT_SIZE)
    for b, n in enumerate(lengths):
        x[n:, b] = pad
    return (x.transpose(0, 1).contiguous() if batch_first else x).requires_grad_()


def state_slice(hx, b):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(h[:, b:b + 1] for h in hx)
    return hx[:, b:b + 1]


def assert_padding_zero_and_finite(out, lengths, batch_first=False):
    out = out.transpose(0, 1) if batch_first else out
    assert torch.isfinite(out).all()
    for b, n in enumerate(lengths):
        assert torch.all(out[n:, b] == 0)


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_hx", "hx"])
@pytest.mark.parametrize("as_packed", ["lengths", "packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first", [
    (1, False, False), (1, True, True), (2, True, False), (3, True, True)])
@pytest.mark.parametrize("cell, backend", cell_backends(TORCH_CELLS))
def test_matches_torch_packed(backend, cell, num_layers, bidirectional, batch_first, as_packed, with_hx):
    ref, ours = make_torch_pair(cell, backend=backend, num_layers=num_layers,
                                bidirectional=bidirectional, batch_first=batch_first)
    lengths = SORTED_LENGTHS if as_packed == "packed_sorted" else LENGTHS
    x = padded_input(lengths, batch_first)
    hx = random_state(ours, B) if with_hx else None
    def pack():
        return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                    enforce_sorted=as_packed == "packed_sorted")
    packed = pack()
    expected = flat(ref(pack(), hx), total_length=T)
    if as_packed == "lengths":
        res = ours(x, hx, lengths=lengths)
        assert_padding_zero_and_finite(res[0], lengths, batch_first)
        got = flat(res)
        if batch_first:
            got[0] = got[0].transpose(0, 1)
    else:
        res = ours(packed, hx)
        assert torch.equal(res[0].batch_sizes, packed.batch_sizes)
        assert res[0].sorted_indices is packed.sorted_indices or \
            torch.equal(res[0].sorted_indices, packed.sorted_indices)
        got = flat(res, total_length=T)
    assert_all_close(got, expected)
    leaves = [x, *state_tensors(hx)]
    g = grads(got, leaves + list(ours.parameters()))
    assert all(torch.isfinite(t).all() for t in g)
    assert_all_close(g, grads(expected, leaves + list(ref.parameters())))


@pytest.mark.parametrize("lengths", [LENGTHS, [2, 4, 1]], ids=["longest_is_T", "all_shorter"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (1, True), (2, True)])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_matches_each_sequence_alone(backend, cell, num_layers, bidirectional, batch_first, lengths):
    """Batched with lengths == every sequence run alone on its valid steps: values and gradients."""
    model = make(cell, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                 backend=backend)
    x = padded_input(lengths, batch_first)
    hx = random_state(model, B)
    out, *finals = flat(model(x, hx, lengths=torch.tensor(lengths)))
    assert_padding_zero_and_finite(out, lengths, batch_first)
    tm = (lambda t: t.transpose(0, 1)) if batch_first else (lambda t: t)
    cot_out, *cot_finals = cotangents([out, *finals])
    loss_alone = 0
    for b, n in enumerate(lengths):
        x_b = tm(tm(x)[:n, b:b + 1])
        out_b, *finals_b = flat(model(x_b, state_slice(hx, b)))
        assert_all_close([tm(out_b)[:, 0]] + [f[:, 0] for f in finals_b],
                         [tm(out)[:n, b]] + [f[:, b] for f in finals])
        loss_alone = loss_alone + (tm(out_b)[:, 0] * tm(cot_out)[:n, b]).sum() + \
            sum((f[:, 0] * c[:, b]).sum() for f, c in zip(finals_b, cot_finals))
    loss = (out * cot_out).sum() + sum((f * c).sum() for f, c in zip(finals, cot_finals))
    leaves = [x, *state_tensors(hx), *model.parameters()]
    g = torch.autograd.grad(loss, leaves)
    assert all(torch.isfinite(t).all() for t in g)
    assert_all_close(g, torch.autograd.grad(loss_alone, leaves))


@pytest.mark.parametrize("pad", [float("nan"), float("inf"), 1e30], ids=["nan", "inf", "huge"])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_padding_values_do_not_matter(cell, backend, pad):
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    leaves = list(model.parameters())
    results = []
    for value in [0.0, pad]:
        x = padded_input(LENGTHS, pad=value)
        outs = flat(model(x, lengths=LENGTHS))
        results.append(outs + grads(outs, [x] + leaves))
    for t in results[1]:
        assert torch.isfinite(t).all()
    assert_all_close(results[1], results[0])


@pytest.mark.parametrize("pad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("cell, backend", cell_backends())
def test_padding_values_do_not_matter_without_a_graph(cell, backend, pad):
    """Inference (no graph) does not zero the padding first: every backend must leave the padded
    rows' projections unread, in the trace too."""
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    results = []
    with torch.no_grad():
        for value in [0.0, pad]:
            out, state, trace = model(padded_input(LENGTHS, pad=value), lengths=LENGTHS, return_trace=True)
            results.append(flat((out, state)) + [v for lay in trace for d in lay for v in d.values()])
    for t in results[1]:
        assert torch.isfinite(t).all()
    assert_all_close(results[1], results[0])


@pytest.mark.parametrize("cell, backend", cell_backends())
def test_packed_output_and_full_lengths(cell, backend):
    """Packed in, packed out (for cells torch.nn lacks); lengths all == T is the plain call."""
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    x = padded_input(LENGTHS)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    assert_all_close(flat(model(packed), total_length=T), flat(model(x, lengths=LENGTHS)))
    x_full = randn(T, B, INPUT_SIZE)
    assert_all_close(flat(model(x_full, lengths=[T] * B)), flat(model(x_full)))


@pytest.mark.parametrize("cell, backend", cell_backends(["lstm", "jordan_tanh"]))
def test_reverse_direction_starts_at_own_last_step(cell, backend):
    """Reverse-direction output at the last valid step depends only on that step (and the state)."""
    model = make(cell, bidirectional=True, backend=backend)
    S = state_size(model)
    x = padded_input(LENGTHS)
    out = model(x, lengths=LENGTHS)[0]
    for b, n in enumerate(LENGTHS):
        alone = model(x[n - 1:n, b:b + 1])[0]
        assert_all_close([out[n - 1, b, S:]], [alone[0, 0, S:]])
