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
