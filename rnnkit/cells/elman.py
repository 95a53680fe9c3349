r"""Elman network (simple RNN), torch.nn.RNN's cell.

Forward, one step (B batch, I input, H hidden)::

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        # (B, H)
    h_t = act(a_t),  act in {tanh, relu}                    # (B, H)

Backward, one step, given g_t = dL/dh_t (from the output at t and from step t+1)::

    da_t      = g_t * act'(a_t)        tanh: 1 - h_t^2 ;  relu: [h_t > 0]
    dxp_t     = da_t                   # -> dW_ih, db_ih, dx after the loop
    dW_hh    += da_t^T h_{t-1}         # (H, H)
    db_hh    += sum_B da_t
    dh_{t-1}  = da_t W_hh              # carried back in time

Backpropagation through time is this step applied for t = T-1 ... 0; the
repeated product of W_hh^T diag(act') is what makes gradients vanish or explode.

Recurrent dropout (mask m (B, H), see base.py): h_{t-1} W_hh^T becomes (h_{t-1} * m) W_hh^T, so
dW_hh += da_t^T (h_{t-1} * m) and dh_{t-1} = (da_t W_hh) * m.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Cell, act_backward, act_forward, dropped, linear_grads

NONLINEARITIES = ("tanh", "relu")


class ElmanCell(Cell):
    name = "elman"
    n_gates = 1
    state_names = ("h",)
    rec_params = ("weight_hh", "bias_hh")
    trace_names = ("hidden",)

    def __init__(self, hidden_size: int, nonlinearity: str = "tanh", **variants):
        super().__init__(hidden_size, **variants)
        self.nonlinearity = nonlinearity
        self._declare_saved(())

    def options(self):
        return {**super().options(), "nonlinearity": self.nonlinearity}

    def init_kwargs(self):
        return {**super().init_kwargs(), "nonlinearity": self.nonlinearity}

    def recurrent_matrix(self, params):
        return params["weight_hh"]                                          # (H, H)

    def _step(self, xp, state, p, drop, save=True):
        w_hh, b_hh = p
        h = act_forward(self.nonlinearity, xp + F.linear(dropped(state[0], drop), w_hh, b_hh))  # (B, H)
        return (h,), ()

    def _step_backward(self, d_new, saved, prev, new, p, drop):
        w_hh, b_hh = p
        da = act_backward(self.nonlinearity, new[0], d_new[0])  # (B, H)
        dw_hh, db_hh = linear_grads(da, dropped(prev[0], drop), b_hh is not None)
        return da, (dropped(da.mm(w_hh), drop),), (dw_hh, db_hh)

    def _trace(self, saved, states):
        return {"hidden": states[0]}
