"""Shared helpers for the core tests.

Everything is tiny on purpose (T <= 5, B <= 3, H <= 4): the suite checks math, not speed.

    CELLS            every recurrent cell rnnkit has, by name -> constructor(input_size, hidden_size, **kw)
    TORCH_CELLS      the cells with a torch.nn twin -> (rnnkit class, torch.nn class, shared kwargs)
    make / make_torch_pair   build a seeded layer (and its torch.nn twin with the same weights)
    random_state     an initial state in the layer's own format (tensor or (h, c)), requiring grad
    flat             (output, state) -> list of tensors; PackedSequence outputs padded to full length
    grads            gradients of a fixed random projection of some outputs w.r.t. some leaves
    assert_all_close list-wise comparison with the per-dtype tolerance of the project
"""
from __future__ import annotations

from typing import List, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

import rnnkit

BACKENDS = ("reference", "autograd")


def _cpu_built() -> bool:
    from rnnkit.backends import cpu
    return cpu.extension() is not None


# Building the C++ kernels (about a minute, once per machine) happens when this is first evaluated.
needs_cpu = pytest.mark.skipif(not _cpu_built(), reason="the C++ kernels did not build (see test_extension_builds)")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}

INPUT_SIZE, HIDDEN_SIZE, OUTPUT_SIZE = 3, 4, 2

TORCH_CELLS = {
    "elman_tanh": (rnnkit.Elman, nn.RNN, {"nonlinearity": "tanh"}),
    "elman_relu": (rnnkit.Elman, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, nn.LSTM, {}),
    "gru": (rnnkit.GRU, nn.GRU, {}),
}


def _jordan(output_activation: str, nonlinearity: str = "tanh"):
    def build(input_size, hidden_size, **kw):
        return rnnkit.Jordan(input_size, hidden_size, OUTPUT_SIZE, nonlinearity=nonlinearity,
                             output_activation=output_activation, **kw)
    return build


CELLS = {
    "elman_tanh": lambda i, h, **kw: rnnkit.Elman(i, h, nonlinearity="tanh", **kw),
    "elman_relu": lambda i, h, **kw: rnnkit.Elman(i, h, nonlinearity="relu", **kw),
    "lstm": lambda i, h, **kw: rnnkit.LSTM(i, h, **kw),
    "gru": lambda i, h, **kw: rnnkit.GRU(i, h, **kw),
    "gru_cho": lambda i, h, **kw: rnnkit.GRU(i, h, reset_after=False, **kw),
    "jordan_identity": _jordan("identity"),
    "jordan_tanh": _jordan("tanh"),
    "jordan_sigmoid": _jordan("sigmoid"),
    "jordan_softmax": _jordan("softmax"),
    "jordan_relu": _jordan("identity", nonlinearity="relu"),
}


def make(cell: str, *, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE,
         dtype=torch.float64, seed: int = 0, **kw) -> nn.Module:
    """A seeded rnnkit layer of the named cell."""
    torch.manual_seed(seed)
    return CELLS[cell](input_size, hidden_size, dtype=dtype, **kw)


def make_torch_pair(cell: str, *, backend: str, dtype=torch.float64, seed: int = 0,
                    input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE, **kw):
    """(torch.nn module, rnnkit module) with the same weights (torch's state_dict loaded into ours)."""
    ours_cls, torch_cls, extra = TORCH_CELLS[cell]
    torch.manual_seed(seed)
    ref = torch_cls(input_size, hidden_size, dtype=dtype, **extra, **kw)
    ours = ours_cls(input_size, hidden_size, dtype=dtype, backend=backend, **extra, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def directions(model) -> int:
    return 2 if model.bidirectional else 1


def state_size(model) -> int:
    """Features of the carried state: H, or O for a Jordan network."""
    return getattr(model, "output_size", model.hidden_size)


def is_lstm(model) -> bool:
    return isinstance(model, (rnnkit.LSTM, nn.LSTM))


def randn(*shape, dtype=torch.float64, seed: int = 0, requires_grad: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def random_state(model, batch: int, *, seed: int = 1, unbatched: bool = False):
    """Random initial state in the layer's format: (h_0, c_0) for an LSTM, else one tensor."""
    shape = (directions(model) * model.num_layers,) + (() if unbatched else (batch,)) + (state_size(model),)
    dtype = next(model.parameters()).dtype
    hs = [randn(*shape, dtype=dtype, seed=seed + k, requires_grad=True) for k in range(1 + is_lstm(model))]
    return tuple(hs) if is_lstm(model) else hs[0]


def state_tensors(state) -> List[Tensor]:
    if state is None:
        return []
    return list(state) if isinstance(state, (tuple, list)) else [state]


def flat(result, total_length=None) -> List[Tensor]:
    """(output, state) -> [output, *state tensors]; a PackedSequence output is padded (time-major)."""
    out, state = result[0], result[1]
    if isinstance(out, PackedSequence):
        out = pad_packed_sequence(out, total_length=total_length)[0]
    return [out] + state_tensors(state)


def cotangents(tensors: Sequence[Tensor], seed: int = 7) -> List[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]


def grads(outputs: Sequence[Tensor], leaves: Sequence[Tensor], seed: int = 7) -> List[Tensor]:
    """d <c, outputs> / d leaves for fixed random cotangents c (the same for equal shapes and seed)."""
    return list(torch.autograd.grad(list(outputs), list(leaves), cotangents(outputs, seed)))


def assert_all_close(actual: Sequence[Tensor], expected: Sequence[Tensor], dtype=torch.float64,
                     **kw) -> None:
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **{**TOL[dtype], **kw}, msg=lambda m, k=k: f"tensor {k}: {m}")


@pytest.fixture(autouse=True)
def _python_backend_by_default(monkeypatch):
    """Layers built without ``backend=`` run the 'reference' backend here, whatever the caller's shell
    says: the core suite checks the Python backends and must not build the C++ kernels by accident
    ('auto' may pick 'cpu', which has its own tests)."""
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy machine every parallel region
    waits for a descheduled thread (a 10x slowdown of softmax-heavy tests was measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
