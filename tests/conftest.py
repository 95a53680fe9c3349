"""Fixtures for every test under tests/; the shared helpers and tables live in tests/helpers.py.

The names below are re-exported for modules that still import them from ``conftest``; new modules
import ``helpers`` (tests/train has a conftest.py of its own, so ``conftest`` is ambiguous there).
"""
from __future__ import annotations

import pytest
import torch

from helpers import (CELLS, FORMS, INPUT_SIZE, HIDDEN_SIZE, OUTPUT_SIZE, TOL, TORCH_CELLS,  # noqa: F401
                     assert_all_close, backends_for, cell_backends, cotangents, directions, flat, grads,
                     make, make_torch_pair, needs_cpu, randn, random_state, state_size, state_tensors)


@pytest.fixture(autouse=True)
def _python_backend_by_default(monkeypatch):
    """Layers built without ``backend=`` run the 'reference' backend here, whatever the caller's shell
    says: a test that means another backend names it (the parity matrices take every registered
    backend that supports the case), and 'auto' must not pick one by accident."""
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy machine every parallel region
    waits for a descheduled thread (a 10x slowdown of softmax-heavy tests was measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
