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
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Cell, act_backward, act_forward, linear_grads

NONLINEARITIES = ("tanh", "relu")


class ElmanCell(Cell):
    name = "elman"
    n_gates = 1
    state_names = ("h",)
    rec_params = ("weight_hh", "bias_hh")
    saved_names = ()
    trace_names = ("hidden",)

    def __init__(self, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__(hidden_size)
        self.nonlinearity = nonlinearity

    def options(self):
        return {"nonlinearity": self.nonlinearity}

    def init_kwargs(self):
        return {**super().init_kwargs(), "nonlinearity": self.nonlinearity}

    def recurrent_matrix(self, params):
        return params["weight_hh"]                                          # (H, H)

    def step(self, xp, state, p):
        w_hh, b_hh = p
        h = act_forward(self.nonlinearity, xp + F.linear(state[0], w_hh, b_hh))  # (B, H)
        return (h,), ()

    def step_backward(self, d_new, saved, prev, new, p):
        w_hh, b_hh = p
        da = act_backward(self.nonlinearity, new[0], d_new[0])  # (B, H)
        dw_hh, db_hh = linear_grads(da, prev[0], b_hh is not None)
        return da, (da.mm(w_hh),), (dw_hh, db_hh)

    def trace(self, saved, states):
        return {"hidden": states[0]}
