"""Shared helpers for the core tests, imported as ``helpers`` from any folder under tests/.

(tests/conftest.py re-exports them; new test modules import from here, since tests/train has a
conftest.py of its own and ``from conftest import`` would depend on which one pytest loaded last.)

Everything is tiny on purpose (T <= 5, B <= 3, H <= 4): the suite checks math, not speed.
The tables read the cell registry and the backend registry, so a new cell form or a new backend
joins every matrix without a test edit.

    FORMS            every form of every cell (rnnkit.registry.forms()): id -> (entry, layer kwargs)
                     (options included: projection, peepholes, clip_recurrent, recurrent dropout, zoneout)
    CELLS            form id -> constructor(input_size, hidden_size, **kw)
    TORCH_CELLS      the forms torch.nn can build too -> (rnnkit class, torch.nn class, shared kwargs)
    backends_for / cell_backends   the registered backends that run a form here, as pytest params
    make / make_torch_pair   build a seeded layer (and its torch.nn twin with the same weights)
    random_state     an initial state in the layer's own format (tensor or (h, c)), requiring grad
    flat             (output, state) -> list of tensors; PackedSequence outputs padded to full length
    grads            gradients of a fixed random projection of some outputs w.r.t. some leaves
    assert_all_close list-wise comparison with the per-dtype tolerance of the project
"""
from __future__ import annotations

import functools
from typing import List, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from rnnkit import backends, registry

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
INPUT_SIZE, HIDDEN_SIZE, OUTPUT_SIZE = 3, 4, 2
CPU = torch.device("cpu")

FORMS = registry.forms()
CELLS = {form: functools.partial(entry.layer, **kw) for form, (entry, kw) in FORMS.items()}
TORCH_CELLS = {form: (entry.layer, entry.torch_twin, kw) for form, (entry, kw) in registry.twin_forms().items()}


def _cpu_built() -> bool:
    from rnnkit.backends import cpu
    return cpu.extension() is not None


# Building the C++ kernels (about a minute, once per machine) happens when this is first evaluated.
needs_cpu = pytest.mark.skipif(not _cpu_built(), reason="the C++ kernels did not build (see test_extension_builds)")


# -- which backends a parity test runs -----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cell_of(form: str):
    return CELLS[form](INPUT_SIZE, HIDDEN_SIZE, device="meta").cell


def backends_for(form, dtype=torch.float64, *, own_backward: bool = False) -> list:
    """The registered backends a parity test of ``form`` (a form id, or a Cell) on CPU tensors of
    ``dtype`` runs, as pytest params: each backend that ``supports`` the case; a skipped param (with
    its reason) for each that cannot run on this machine at all; backends that run here but not this
    case are left out.

    own_backward: only the backends with a hand-written backward (not the differentiable oracle),
    for the tests that compare a backward with autograd's.
    """
    params = []
    for name in backends.BACKENDS:
        if name == "auto":
            continue
        backend = backends.get(name)
        if own_backward and backend.differentiable:
            continue
        here = backend.available()
        if not here:
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(reason=f"{name!r}: {here.reason}")))
        elif backend.supports(cell_of(form) if isinstance(form, str) else form, CPU, dtype):
            params.append(pytest.param(name, id=name))
    return params


def cell_backends(forms=CELLS, dtype=torch.float64, *, own_backward: bool = False) -> list:
    """(form, backend) params for ``parametrize("cell, backend", ...)``: every form with every
    backend of ``backends_for``; ids 'backend-form'."""
    return [pytest.param(form, b.values[0], id=f"{b.id}-{form}", marks=b.marks)
            for form in forms for b in backends_for(form, dtype, own_backward=own_backward)]


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` (a function or method) so that every call appends to the returned list."""
    calls, original = [], getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, counting)
    return calls


# -- models and data -----------------------------------------------------------------------------
def make(cell: str, *, input_size: int = INPUT_SIZE, hidden_size: int = HIDDEN_SIZE,
         dtype=torch.float64, seed: int = 0, **kw) -> nn.Module:
    """A seeded rnnkit layer of the named cell form.

    Forms with noise (recurrent dropout, zoneout) come in eval mode: in training they are random
    (a new mask at every forward), so the shared matrices check their deterministic eval math
    (zoneout's expected value); their training has its own tests (tests/layers/test_noise.py).
    """
    torch.manual_seed(seed)
    model = CELLS[cell](input_size, hidden_size, dtype=dtype, **kw)
    return model.eval() if model.cell.noise_names else model


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


def state_sizes(model) -> tuple:
    """Features of every carried state (torch.nn or rnnkit module): (H,), LSTM (P or H, H), Jordan (O,)."""
    if hasattr(model, "cell"):
        return model.cell.state_sizes()
    if isinstance(model, nn.LSTM):
        return (model.proj_size or model.hidden_size, model.hidden_size)
    return (model.hidden_size,)


def state_size(model) -> int:
    """Features of the emitted state: H (LSTM's P when projected), or O for a Jordan network."""
    return state_sizes(model)[0]


def n_states(model) -> int:
    """Carried tensors: 2 for an LSTM (h, c), 1 for the others (torch.nn or rnnkit module)."""
    if isinstance(model, nn.LSTM):
        return 2
    return len(model.cell.state_names) if hasattr(model, "cell") else 1


def randn(*shape, dtype=torch.float64, seed: int = 0, requires_grad: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def random_state(model, batch: int, *, seed: int = 1, unbatched: bool = False):
    """Random initial state in the layer's format: (h_0, c_0) for an LSTM, else one tensor."""
    lead = (directions(model) * model.num_layers,) + (() if unbatched else (batch,))
    dtype = next(model.parameters()).dtype
    hs = [randn(*lead, s, dtype=dtype, seed=seed + k, requires_grad=True) for k, s in enumerate(state_sizes(model))]
    return tuple(hs) if len(hs) > 1 else hs[0]


def detached(state):
    """A state (tensor or tuple) without its autograd history."""
    return tuple(h.detach() for h in state) if isinstance(state, tuple) else state.detach()


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


def without_cpu(method: str, model, *args, **kwargs):
    """The model's forward with one of the cpu backend's whole-stack paths switched off (``infer``,
    or ``train``: oneDNN's LSTM route and the one-node stack), so that the layers go layer by layer."""
    from rnnkit.backends import cpu
    original = getattr(cpu.CPU, method)
    setattr(cpu.CPU, method, lambda self, *a, **kw: None)
    try:
        return model(*args, **kwargs)
    finally:
        setattr(cpu.CPU, method, original)


def layer_by_layer(model, *args, **kwargs):
    """The model's training forward with our kernels, one autograd node per layer."""
    return without_cpu("train", model, *args, **kwargs)
