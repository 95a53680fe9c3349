r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), torch.nn.LSTM's cell.

Gate order in weight_ih / weight_hh rows is torch's: input, forget, cell (candidate), output.

Forward, one step (B batch, H hidden)::

    p_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      # (B, 4H)
    i_t = sigmoid(p_i)    f_t = sigmoid(p_f)            # input and forget gates
    g_t = tanh(p_g)       o_t = sigmoid(p_o)            # candidate and output gate
    c_t = f_t * c_{t-1} + i_t * g_t                     # memory cell (B, H)
    h_t = o_t * tanh(c_t)                               # hidden state (B, H)

Backward, one step, given dh_t and dc_t (both from the future; dh_t also from the output)::

    do_t      = dh_t * tanh(c_t)
    dc        = dc_t + dh_t * o_t * (1 - tanh(c_t)^2)
    di_t = dc * g_t     df_t = dc * c_{t-1}     dg_t = dc * i_t
    dp_t      = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]   # (B, 4H)
    dc_{t-1}  = dc * f_t           # the constant error carousel: no squashing
    dh_{t-1}  = dp_t W_hh
    dW_hh    += dp_t^T h_{t-1},   db_hh += sum_B dp_t

Gradients flow back through c along dc_{t-1} = dc * f_t: while the forget
gate stays open, the error neither vanishes nor explodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Cell, linear_grads


class LSTMCell(Cell):
    name = "lstm"
    n_gates = 4
    state_names = ("h", "c")
    rec_params = ("weight_hh", "bias_hh")
    saved_names = ("gates", "tanh_c")
    trace_names = ("input_gate", "forget_gate", "candidate", "output_gate", "cell", "hidden")

    def saved_sizes(self):
        return (4 * self.hidden_size, self.hidden_size)

    def step(self, xp, state, p):
        w_hh, b_hh = p
        h, c = state
        pre = xp + F.linear(h, w_hh, b_hh)                     # (B, 4H)
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g                                  # (B, H)
        tanh_c = torch.tanh(c_new)
        h_new = o * tanh_c
        return (h_new, c_new), (torch.cat([i, f, g, o], dim=1), tanh_c)

    def step_backward(self, d_new, saved, prev, new, p):
        w_hh, b_hh = p
        dh, dc_in = d_new
        gates, tanh_c = saved
        i, f, g, o = gates.chunk(4, dim=1)
        h_prev, c_prev = prev
        dc = dc_in + dh * o * (1.0 - tanh_c * tanh_c)
        dp = torch.cat(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            dim=1,
        )                                                      # (B, 4H)
        dw_hh, db_hh = linear_grads(dp, h_prev, b_hh is not None)
        return dp, (dp.mm(w_hh), dc * f), (dw_hh, db_hh)

    def trace(self, saved, states):
        i, f, g, o = saved[0].chunk(4, dim=-1)
        return {
            "input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o,
            "cell": states[1], "hidden": states[0],
        }
