r"""Gated recurrent unit (Cho et al. 2014), in torch's form and in the original form.

Gate order in weight_ih / weight_hh rows is torch's: reset, update, new (candidate).

Forward, one step (B batch, H hidden); x-terms xr, xz, xn = x_t W_ih^T + b_ih::

    r_t = sigmoid(xr + h_{t-1} W_hr^T + b_hr)            # reset gate (B, H)
    z_t = sigmoid(xz + h_{t-1} W_hz^T + b_hz)            # update gate (B, H)
    torch form (reset_after=True; ONNX linear_before_reset=1, Keras reset_after=True):
        n_t = tanh(xn + r_t * (h_{t-1} W_hn^T + b_hn))
    original form (reset_after=False; ONNX linear_before_reset=0, Keras reset_after=False):
        n_t = tanh(xn + (r_t * h_{t-1}) W_hn^T + b_hn)
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Backward, one step, given dh_t::

    dn = dh_t (1 - z_t)      dz = dh_t (h_{t-1} - n_t)      dh_{t-1} = dh_t z_t + ...
    dan = dn (1 - n_t^2)     daz = dz z_t (1 - z_t)
    torch form:   hn = h_{t-1} W_hn^T + b_hn
        dr = dan * hn,  the recurrent pre-activation of n receives dan * r_t
    original form:   u = r_t * h_{t-1}
        du = dan W_hn,  dW_hn += dan^T u,  dr = du * h_{t-1},  dh_{t-1} += du * r_t
    dar = dr r_t (1 - r_t)
    dxp_t = [dar, daz, dan]                       # (B, 3H)
    the remaining recurrent terms: dh_{t-1} += d_rec W_hh, dW_hh += d_rec^T h_{t-1}

A GRU has 3 gate blocks to the LSTM's 4: three quarters of its parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Cell, linear_grads, sigmoid_backward, tanh_backward


class GRUCell(Cell):
    name = "gru"
    n_gates = 3
    state_names = ("h",)
    rec_params = ("weight_hh", "bias_hh")
    trace_names = ("reset_gate", "update_gate", "candidate", "hidden")

    def __init__(self, hidden_size: int, reset_after: bool = True):
        super().__init__(hidden_size)
        self.reset_after = reset_after
        # torch form keeps hn = h W_hn^T + b_hn for dr; the original form recomputes r*h.
        self.saved_names = ("gates", "hn") if reset_after else ("gates",)

    def options(self):
        return {"reset_after": "1" if self.reset_after else "0"}

    def init_kwargs(self):
        return {**super().init_kwargs(), "reset_after": self.reset_after}

    def saved_sizes(self):
        H = self.hidden_size
        return (3 * H, H) if self.reset_after else (3 * H,)

    def step(self, xp, state, p):
        w_hh, b_hh = p
        h = state[0]
        H = self.hidden_size
        xr, xz, xn = xp.chunk(3, dim=1)
        if self.reset_after:
            hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=1)      # (B, H) each
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
        else:
            b_rz = None if b_hh is None else b_hh[: 2 * H]
            b_n = None if b_hh is None else b_hh[2 * H:]
            hr, hz = F.linear(h, w_hh[: 2 * H], b_rz).chunk(2, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + F.linear(r * h, w_hh[2 * H:], b_n))
        h_new = (1.0 - z) * n + z * h
        gates = torch.cat([r, z, n], dim=1)                          # (B, 3H)
        return (h_new,), ((gates, hn) if self.reset_after else (gates,))

    def step_backward(self, d_new, saved, prev, new, p):
        w_hh, b_hh = p
        dh = d_new[0]
        h = prev[0]
        H = self.hidden_size
        r, z, n = saved[0].chunk(3, dim=1)
        dan = tanh_backward(n, dh * (1.0 - z))
        daz = sigmoid_backward(z, dh * (h - n))
        dh_prev = dh * z
        if self.reset_after:
            dar = sigmoid_backward(r, dan * saved[1])
            d_rec = torch.cat([dar, daz, dan * r], dim=1)             # (B, 3H)
            dw_hh, db_hh = linear_grads(d_rec, h, b_hh is not None)
            dh_prev = dh_prev + d_rec.mm(w_hh)
        else:
            du = dan.mm(w_hh[2 * H:])                                 # d(r*h) (B, H)
            dar = sigmoid_backward(r, du * h)
            d_rz = torch.cat([dar, daz], dim=1)                       # (B, 2H)
            dw_rz, db_rz = linear_grads(d_rz, h, b_hh is not None)
            dw_n, db_n = linear_grads(dan, r * h, b_hh is not None)
            dw_hh = torch.cat([dw_rz, dw_n], dim=0)
            db_hh = None if b_hh is None else torch.cat([db_rz, db_n])
            dh_prev = dh_prev + du * r + d_rz.mm(w_hh[: 2 * H])
        return torch.cat([dar, daz, dan], dim=1), (dh_prev,), (dw_hh, db_hh)

    def trace(self, saved, states):
        r, z, n = saved[0].chunk(3, dim=-1)
        return {"reset_gate": r, "update_gate": z, "candidate": n, "hidden": states[0]}

    def extra_repr(self) -> str:
        return "" if self.reset_after else "reset_after=False"
