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

Recurrent dropout (mask m (B, H), see base.py): h_{t-1} enters the recurrent matrix products as
hd = h_{t-1} * m (torch form: hd W_hh^T; original form: hd W_hr^T, hd W_hz^T and (r_t * hd) W_hn^T)
while the carry z_t * h_{t-1} keeps h_{t-1} itself (as Keras's GRU); backward as above with hd in
place of h_{t-1} in the products, and the gradient reaching hd multiplied by m on its way to h_{t-1}.

Layer normalisation (``layer_norm=True``, torch form only; the placements of haste's
LayerNormLSTM, whose cell normalisation a GRU has no cell for): LN_3 normalises each of the 3 gate
blocks of H features on its own (mean 0, variance 1, eps 1e-5)::

    [xr, xz, xn] = g_ih * LN_3(x_t W_ih^T + b_ih)
    [hr, hz, hn] = g_hh * LN_3(h_{t-1} W_hh^T) + b_hh                 # b_hh after LN
    then r, z, n and h_t as in the torch form

with gains weight_ln_ih (3H,), weight_ln_hh (3H,) (initially 1).  Backward: with the gradients
[dar, daz, dan] of the x-terms and d_rec = [dar, daz, dan * r_t] of the h-terms,
dxp_t = LN'([dar, daz, dan] * g_ih), dW_hh += LN'(d_rec * g_hh)^T h_{t-1},
dh_{t-1} += LN'(d_rec * g_hh) W_hh, db_hh += sum_B d_rec, dg_* += sum_B (their gradient) * a_hat,
where LN'(d) = (d - mean(d) - a_hat mean(d a_hat)) / std per block (see lstm.py).

A GRU has 3 gate blocks to the LSTM's 4: three quarters of its parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (Cell, block_norm, block_norm_backward, dropped, join_repr, linear_grads, sigmoid_backward,
                   tanh_backward)


class GRUCell(Cell):
    name = "gru"
    n_gates = 3
    state_names = ("h",)
    rec_params = ("weight_hh", "bias_hh")
    trace_names = ("reset_gate", "update_gate", "candidate", "hidden")

    def __init__(self, hidden_size: int, reset_after: bool = True, layer_norm: bool = False, **variants):
        super().__init__(hidden_size, **variants)
        self.reset_after = reset_after
        self.layer_norm = layer_norm
        if layer_norm:
            self.rec_params = type(self).rec_params + ("weight_ln_ih", "weight_ln_hh")
        # torch form keeps hn = hd W_hn^T + b_hn for dr; the original form recomputes r*hd; layer
        # normalisation keeps the normalised terms and their 1/std.
        H = hidden_size
        saved = (("gates", 3 * H), ("hn", H)) if reset_after else (("gates", 3 * H),)
        self._declare_saved(saved + ((("x_hat", 3 * H), ("x_rstd", 3), ("h_hat", 3 * H), ("h_rstd", 3))
                                     if layer_norm else ()))

    def options(self):
        return {**super().options(), "reset_after": "1" if self.reset_after else "0",
                **({"layer_norm": "1"} if self.layer_norm else {})}

    def init_kwargs(self):
        return {**super().init_kwargs(), "reset_after": self.reset_after,
                **({"layer_norm": True} if self.layer_norm else {})}

    def param_shapes(self, input_size, bias):
        extra = [("weight_ln_ih", (3 * self.hidden_size,)), ("weight_ln_hh", (3 * self.hidden_size,))]
        return super().param_shapes(input_size, bias) + (extra if self.layer_norm else [])

    def _step(self, xp, state, p, drop, save=True):
        if self.layer_norm:
            return self._step_ln(xp, state, p, drop)
        w_hh, b_hh = p
        h = state[0]
        hd = dropped(h, drop)                                           # h where it enters W_hh
        H = self.hidden_size
        xr, xz, xn = xp.chunk(3, dim=1)
        if self.reset_after:
            hr, hz, hn = F.linear(hd, w_hh, b_hh).chunk(3, dim=1)     # (B, H) each
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
        else:
            b_rz = None if b_hh is None else b_hh[: 2 * H]
            b_n = None if b_hh is None else b_hh[2 * H:]
            hr, hz = F.linear(hd, w_hh[: 2 * H], b_rz).chunk(2, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + F.linear(r * hd, w_hh[2 * H:], b_n))
        h_new = (1.0 - z) * n + z * h
        if not save:
            return (h_new,), ()
        gates = torch.cat([r, z, n], dim=1)                          # (B, 3H)
        return (h_new,), ((gates, hn) if self.reset_after else (gates,))

    def _step_ln(self, xp, state, p, drop):
        w_hh, b_hh, g_ih, g_hh = p
        h = state[0]
        x_hat, x_rstd = block_norm(xp, 3)
        h_hat, h_rstd = block_norm(F.linear(dropped(h, drop), w_hh), 3)
        xr, xz, xn = (g_ih * x_hat).chunk(3, dim=1)
        hr, hz, hn = (g_hh * h_hat + (0.0 if b_hh is None else b_hh)).chunk(3, dim=1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h_new = (1.0 - z) * n + z * h
        return (h_new,), (torch.cat([r, z, n], dim=1), hn, x_hat, x_rstd, h_hat, h_rstd)

    def _step_backward_ln(self, d_new, saved, prev, new, p, drop):
        w_hh, b_hh, g_ih, g_hh = p
        dh, h = d_new[0], prev[0]
        gates, hn, x_hat, x_rstd, h_hat, h_rstd = saved
        r, z, n = gates.chunk(3, dim=1)
        dan = tanh_backward(n, dh * (1.0 - z))
        daz = sigmoid_backward(z, dh * (h - n))
        dar = sigmoid_backward(r, dan * hn)
        d_x = torch.cat([dar, daz, dan], dim=1)                       # d of the x-terms (B, 3H)
        d_h = torch.cat([dar, daz, dan * r], dim=1)                   # d of the h-terms
        d_rec = block_norm_backward(d_h * g_hh, h_hat, h_rstd)
        dw_hh, _ = linear_grads(d_rec, dropped(h, drop), False)
        d_params = (dw_hh, None if b_hh is None else d_h.sum(0), (d_x * x_hat).sum(0), (d_h * h_hat).sum(0))
        d_xp = block_norm_backward(d_x * g_ih, x_hat, x_rstd)
        return d_xp, (dh * z + dropped(d_rec.mm(w_hh), drop),), d_params

    def _step_backward(self, d_new, saved, prev, new, p, drop):
        if self.layer_norm:
            return self._step_backward_ln(d_new, saved, prev, new, p, drop)
        w_hh, b_hh = p
        dh = d_new[0]
        h = prev[0]
        hd = dropped(h, drop)
        H = self.hidden_size
        r, z, n = saved[0].chunk(3, dim=1)
        dan = tanh_backward(n, dh * (1.0 - z))
        daz = sigmoid_backward(z, dh * (h - n))
        if self.reset_after:
            dar = sigmoid_backward(r, dan * saved[1])
            d_rec = torch.cat([dar, daz, dan * r], dim=1)             # (B, 3H)
            dw_hh, db_hh = linear_grads(d_rec, hd, b_hh is not None)
            dhd = d_rec.mm(w_hh)
        else:
            du = dan.mm(w_hh[2 * H:])                                 # d(r*hd) (B, H)
            dar = sigmoid_backward(r, du * hd)
            d_rz = torch.cat([dar, daz], dim=1)                       # (B, 2H)
            dw_rz, db_rz = linear_grads(d_rz, hd, b_hh is not None)
            dw_n, db_n = linear_grads(dan, r * hd, b_hh is not None)
            dw_hh = torch.cat([dw_rz, dw_n], dim=0)
            db_hh = None if b_hh is None else torch.cat([db_rz, db_n])
            dhd = du * r + d_rz.mm(w_hh[: 2 * H])
        dh_prev = dh * z + dropped(dhd, drop)
        return torch.cat([dar, daz, dan], dim=1), (dh_prev,), (dw_hh, db_hh)

    def _trace(self, saved, states):
        r, z, n = saved[0].chunk(3, dim=-1)
        return {"reset_gate": r, "update_gate": z, "candidate": n, "hidden": states[0]}

    def extra_repr(self) -> str:
        return join_repr("" if self.reset_after else "reset_after=False", "layer_norm=True" if self.layer_norm else "",
                         super().extra_repr())
