r"""Jordan network (Jordan 1986): the network's *output* is fed back, not its hidden state.

Parameters per layer and direction: weight_ih (H, I), bias_ih (H), weight_yh (H, O),
weight_hy (O, H), bias_hy (O).

Forward, one step (B batch, H hidden, O outputs)::

    h_t = act(x_t W_ih^T + b_ih + y_{t-1} W_yh^T)        # (B, H),  act in {tanh, relu}
    y_t = out(h_t W_hy^T + b_hy)                         # (B, O),  out in {identity, tanh, sigmoid, softmax}

The carried state is y (the "context units" hold the previous output);
y_0 is the initial state, zeros by default.

Backward, one step, given dy_t (from the output at t and from step t+1)::

    dz_t      = out'(dy_t)       identity: dy;  tanh: dy (1 - y^2);  sigmoid: dy y (1 - y);
                                 softmax: y * (dy - sum_O(dy * y))
    dW_hy    += dz_t^T h_t,   db_hy += sum_B dz_t
    dh_t      = dz_t W_hy
    da_t      = dh_t * act'(h_t)
    dxp_t     = da_t                                      # -> dW_ih, db_ih, dx after the loop
    dW_yh    += da_t^T y_{t-1}
    dy_{t-1}  = da_t W_yh

Recurrent dropout (mask m (B, O), see base.py) acts on y_{t-1} where it enters:
y_{t-1} W_yh^T becomes (y_{t-1} * m) W_yh^T, so dW_yh += da_t^T (y_{t-1} * m) and
dy_{t-1} = (da_t W_yh) * m.  Zoneout is not defined for a Jordan network (its carried state is
its output); the layer refuses it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Cell, act_backward, act_forward, dropped, linear_grads, sigmoid_backward, tanh_backward

OUTPUT_ACTIVATIONS = ("identity", "tanh", "sigmoid", "softmax")


def out_forward(kind: str, z):
    if kind == "identity":
        return z
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "sigmoid":
        return torch.sigmoid(z)
    return torch.softmax(z, dim=-1)


def out_backward(kind: str, y, dy):
    if kind == "identity":
        return dy
    if kind == "tanh":
        return tanh_backward(y, dy)
    if kind == "sigmoid":
        return sigmoid_backward(y, dy)
    return y * (dy - (dy * y).sum(-1, keepdim=True))


class JordanCell(Cell):
    name = "jordan"
    n_gates = 1
    state_names = ("y",)
    rec_params = ("weight_yh", "weight_hy", "bias_hy")
    trace_names = ("hidden", "output")

    def __init__(self, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
                 output_activation: str = "identity", **variants):
        super().__init__(hidden_size, **variants)
        self.output_size = output_size
        self.nonlinearity = nonlinearity
        self.output_activation = output_activation
        self._declare_saved((("hidden", hidden_size),))

    def options(self):
        return {**super().options(), "nonlinearity": self.nonlinearity,
                "output_activation": self.output_activation}

    def init_kwargs(self):
        return {**super().init_kwargs(), "output_size": self.output_size, "nonlinearity": self.nonlinearity,
                "output_activation": self.output_activation}

    def recurrent_matrix(self, params):
        return params["weight_hy"] @ params["weight_yh"]                    # (O, O)

    def param_shapes(self, input_size, bias):
        H, O = self.hidden_size, self.output_size
        shapes = [("weight_ih", (H, input_size)), ("weight_yh", (H, O))]
        shapes += [("bias_ih", (H,))] if bias else []
        shapes += [("weight_hy", (O, H))]
        shapes += [("bias_hy", (O,))] if bias else []
        return shapes

    def state_sizes(self):
        return (self.output_size,)

    def _step(self, xp, state, p, drop, save=True):
        w_yh, w_hy, b_hy = p
        h = act_forward(self.nonlinearity, xp + F.linear(dropped(state[0], drop), w_yh))    # (B, H)
        y = out_forward(self.output_activation, F.linear(h, w_hy, b_hy))                  # (B, O)
        return (y,), (h,)

    def _step_backward(self, d_new, saved, prev, new, p, drop):
        w_yh, w_hy, b_hy = p
        h = saved[0]
        dz = out_backward(self.output_activation, new[0], d_new[0])          # (B, O)
        dw_hy, db_hy = linear_grads(dz, h, b_hy is not None)
        da = act_backward(self.nonlinearity, h, dz.mm(w_hy))                 # (B, H)
        dw_yh, _ = linear_grads(da, dropped(prev[0], drop), False)
        return da, (dropped(da.mm(w_yh), drop),), (dw_yh, dw_hy, db_hy)

    def _trace(self, saved, states):
        return {"hidden": saved[0], "output": states[0]}
