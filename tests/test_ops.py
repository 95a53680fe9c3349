"""rnnkit.ops: the inference path (no autograd node when nothing needs a gradient) gives exactly
what the differentiable path gives, trace included."""
import pytest
import torch

from helpers import INPUT_SIZE, cell_backends, flat, make, randn


@pytest.mark.parametrize("cell, backend", cell_backends())
def test_no_grad_path_equals_graph_path(backend, cell):
    model = make(cell, num_layers=2, bidirectional=True, backend=backend)
    x = randn(4, 3, INPUT_SIZE)
    graph = model(x, lengths=[4, 1, 3], return_trace=True)
    assert graph[0].requires_grad
    with torch.no_grad():
        inference = model(x, lengths=[4, 1, 3], return_trace=True)
    assert not inference[0].requires_grad
    assert all(torch.equal(a, b) for a, b in zip(flat(graph), flat(inference)))
    for layer in range(2):
        for d in range(2):
            for name, v in graph[2][layer][d].items():
                assert torch.equal(v, inference[2][layer][d][name])


# -- zero_padded: the padded outputs' zeros --------------------------------------------------------
@pytest.mark.parametrize("shape, mask_shape", [((6, 5, 7), (6, 5, 1)), ((5, 7), (5, 1))])
def test_zero_padded_fills_padded_rows_whatever_they_hold(shape, mask_shape):
    from rnnkit.sequence import zero_padded, zero_padded_
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    t[~mask.expand(shape)] = float("nan")                       # padding may hold anything
    want = torch.where(mask, t, 0.0)
    got = zero_padded(mask, t)
    assert torch.equal(got, want) and got.data_ptr() != t.data_ptr()
    assert torch.isnan(t).any()                                  # the input is left as it was
    inplace = t.clone()
    assert zero_padded_(mask, inplace) is inplace and torch.equal(inplace, want)
    strided = t.clone().transpose(0, -1).contiguous().transpose(0, -1)   # not contiguous: masked_fill_
    assert torch.equal(zero_padded_(mask, strided), want)


def test_zero_padded_stays_differentiable():
    from rnnkit.sequence import zero_padded
    t = torch.randn(4, 3, 2, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)[..., None]
    zero_padded(mask, t).sum().backward()
    assert torch.equal(t.grad, mask.expand(4, 3, 2).to(t.dtype))
