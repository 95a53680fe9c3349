"""model.step records an autograd graph whenever anything it reads requires grad, the state included."""
from __future__ import annotations

import pytest

from helpers import INPUT_SIZE, backends_for, make, random_state, randn


@pytest.mark.parametrize("backend", backends_for("lstm", own_backward=True))
def test_step_with_only_the_state_requiring_grad_is_differentiable(backend):
    model = make("lstm", backend=backend).requires_grad_(False)
    h = tuple(s.detach().requires_grad_() for s in random_state(model, 2))
    out, _ = model.step(randn(2, INPUT_SIZE), h)
    out.sum().backward()
    assert h[0].grad is not None and h[1].grad is not None
