"""Truncated BPTT: each update's loss and gradient equal those of a window of k2 steps that
starts from the exact (detached) state of the stream, with the loss on its last k1 steps."""
from __future__ import annotations

import pytest
import torch

from rnnkit.train.distributed import Dist
from rnnkit.train.loop import Trainer
from rnnkit.train.tasks import masked_step_ce


def _reference(net, x, y, s, e, k2):
    """Loss and gradients of chunk [s, e) computed from scratch on the whole stream prefix."""
    s0 = max(0, e - k2)
    state = None
    if s0:
        with torch.no_grad():
            _, state = net(x[:, :s0])
    net.zero_grad()
    out, _ = net(x[:, s0:e], state=state)
    total, _ = masked_step_ce(out[:, s - s0:], y[:, s:e], torch.full((x.shape[0],), e - s))
    total.backward()
    return total.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("cell,k1,k2", [("lstm", 3, 3), ("lstm", 3, 5), ("gru", 2, 7), ("jordan", 4, 6)])
def test_each_update_sees_exactly_k2_steps_from_the_carried_state(cell, k1, k2, tiny):
    steps = Trainer(tiny("text", cell=cell, k1=k1, k2=k2), Dist()).steps
    net, x, y = steps.net, steps.rows_x, steps.rows_y
    for s, e in steps.batches(0)[:6]:
        net.zero_grad()
        total, count, _ = steps.chunk_loss(s, e)
        total.backward()
        got = [p.grad.clone() for p in net.parameters()]
        want_total, want = _reference(net, x, y, s, e, k2)
        assert count.item() == x.shape[0] * (e - s)
        torch.testing.assert_close(total.detach(), want_total, atol=1e-5, rtol=1e-5)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_longer_k2_changes_the_gradient(tiny):
    grads = []
    for k2 in (3, 9):
        steps = Trainer(tiny("text", k1=3, k2=k2), Dist()).steps
        for s, e in steps.batches(0)[:4]:
            steps.net.zero_grad()
            total, _, _ = steps.chunk_loss(s, e)
            total.backward()
        grads.append(steps.net.rnn.weight_hh_l0.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
