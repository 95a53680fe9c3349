r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), torch.nn.LSTM's cell,
with torch's projection (Sak et al. 2014, ``proj_size``), peephole connections (Gers &
Schmidhuber 2000, ``peephole``) and layer normalisation (Ba et al. 2016, ``layer_norm``) as options.

Gate order in weight_ih / weight_hh rows is torch's: input, forget, cell (candidate), output.
Sizes: B batch, H hidden (c and the gates), P = proj_size if projected else H (h, the emitted
state).  Parameters: weight_hh (4H, P); with projection weight_hr (P, H); with peepholes the
diagonal weights weight_ch (3H,) = [w_ci, w_cf, w_co] (input, forget, output).

Forward, one step::

    p_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      # (B, 4H)
    i_t = sigmoid(p_i + w_ci * c_{t-1})                 # input gate   (peephole term: optional)
    f_t = sigmoid(p_f + w_cf * c_{t-1})                 # forget gate
    g_t = tanh(p_g)                                     # candidate
    c_t = f_t * c_{t-1} + i_t * g_t                     # memory cell (B, H)
    o_t = sigmoid(p_o + w_co * c_t)                     # output gate sees the *new* cell
    m_t = o_t * tanh(c_t)                               # (B, H)
    h_t = m_t W_hr^T   with projection (B, P),   else h_t = m_t

Backward, one step, given dh_t and dc_t (both from the future; dh_t also from the output)::

    dm        = dh_t W_hr  (projection; dW_hr += dh_t^T m_t),   else dm = dh_t
    dp_o      = dm * tanh(c_t) * o (1 - o)
    dc        = dc_t + dm * o_t * (1 - tanh(c_t)^2) + dp_o * w_co
    dp_i = dc * g_t * i (1 - i)    dp_f = dc * c_{t-1} * f (1 - f)    dp_g = dc * i_t * (1 - g^2)
    dp_t      = [dp_i, dp_f, dp_g, dp_o]                # (B, 4H) = dxp_t
    dc_{t-1}  = dc * f_t + dp_i * w_ci + dp_f * w_cf    # the constant error carousel (+ peepholes)
    dh_{t-1}  = dp_t W_hh
    dW_hh    += dp_t^T h_{t-1},   db_hh += sum_B dp_t
    dw_ch    += [sum_B dp_i c_{t-1}, sum_B dp_f c_{t-1}, sum_B dp_o c_t]

Without peepholes (w_c* = 0) gradients flow back through c along dc_{t-1} = dc * f_t: while the
forget gate stays open, the error neither vanishes nor explodes.

Recurrent dropout (mask m (B, P), see base.py): h_{t-1} W_hh^T becomes (h_{t-1} * m) W_hh^T, so
dW_hh += dp_t^T (h_{t-1} * m) and dh_{t-1} = (dp_t W_hh) * m; c is not masked.

Layer normalisation (``layer_norm=True``; haste's LayerNormLSTM placements): LN_4 normalises each
of the 4 gate blocks of H features on its own (mean 0, variance 1, eps 1e-5), LN_1 the H cells::

    p_t = g_ih * LN_4(x_t W_ih^T + b_ih) + g_hh * LN_4(h_{t-1} W_hh^T) + b_hh      # b_hh after LN
    ...gates and c_t as above...
    m_t = o_t * tanh(g_c * LN_1(c_t) + b_c)

with gains weight_ln_ih (4H,), weight_ln_hh (4H,), weight_ln_c (H,) (initially 1) and bias_ln_c (H,)
(initially 0; absent with bias=False).  b_ih is inside the input normalisation (an offset before
it), b_hh is the gates' shift after it.  Backward, with a_hat = LN_4(.) and its 1/std kept, and
LN'(d, a_hat) = (d - mean(d) - a_hat mean(d a_hat)) / std per block::

    dxp_t   = LN'(dp_t * g_ih, a_hat_x)          dg_ih += sum_B dp_t * a_hat_x
    dr      = LN'(dp_t * g_hh, a_hat_h)          dg_hh += sum_B dp_t * a_hat_h,  db_hh += sum_B dp_t
    dW_hh  += dr^T h_{t-1},   dh_{t-1} = dr W_hh
    dn      = dm * o_t * (1 - tanh^2)            dg_c += sum_B dn * c_hat,  db_c += sum_B dn
    dc     += LN'(dn * g_c, c_hat)               (in place of dm * o * (1 - tanh^2))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Cell, block_norm, block_norm_backward, dropped, join_repr, linear_grads


class LSTMCell(Cell):
    name = "lstm"
    n_gates = 4
    state_names = ("h", "c")
    rec_params = ("weight_hh", "bias_hh")
    trace_names = ("input_gate", "forget_gate", "candidate", "output_gate", "cell", "hidden")

    def __init__(self, hidden_size: int, proj_size: int = 0, peephole: bool = False, layer_norm: bool = False,
                 **variants):
        super().__init__(hidden_size, **variants)
        self.proj_size = proj_size
        self.peephole = peephole
        self.layer_norm = layer_norm
        self.rec_params = ("weight_hh", "bias_hh") + (("weight_hr",) if proj_size else ()) \
            + (("weight_ch",) if peephole else ()) + (LN_PARAMS if layer_norm else ())
        H = hidden_size
        self._declare_saved((("gates", 4 * H), ("tanh_c", H))
                            + ((("x_hat", 4 * H), ("x_rstd", 4), ("h_hat", 4 * H), ("h_rstd", 4)) if layer_norm else ()))

    def options(self):
        found = super().options()
        if self.proj_size:
            found["proj_size"] = str(self.proj_size)
        if self.peephole:
            found["peephole"] = "1"
        if self.layer_norm:
            found["layer_norm"] = "1"
        return found

    def init_kwargs(self):
        found = super().init_kwargs()
        if self.proj_size:
            found["proj_size"] = self.proj_size
        if self.peephole:
            found["peephole"] = True
        if self.layer_norm:
            found["layer_norm"] = True
        return found

    def state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def param_shapes(self, input_size, bias):
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        shapes = [("weight_ih", (4 * H, input_size)), ("weight_hh", (4 * H, P))]
        if bias:
            shapes += [("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))]
        if self.proj_size:
            shapes += [("weight_hr", (P, H))]
        if self.peephole:
            shapes += [("weight_ch", (3 * H,))]
        if self.layer_norm:
            shapes += [("weight_ln_ih", (4 * H,)), ("weight_ln_hh", (4 * H,)), ("weight_ln_c", (H,))]
            shapes += [("bias_ln_c", (H,))] if bias else []
        return shapes

    def _split(self, p):
        """(w_hh, b_hh, w_hr or None, (w_ci, w_cf, w_co) or None, (g_ih, g_hh, g_c, b_c) or None)."""
        w_hh, b_hh, *rest = p
        w_hr = rest.pop(0) if self.proj_size else None
        peep = rest.pop(0).chunk(3) if self.peephole else None
        return w_hh, b_hh, w_hr, peep, (tuple(rest) if self.layer_norm else None)

    def _step(self, xp, state, p, drop, save=True):
        w_hh, b_hh, w_hr, peep, ln = self._split(p)
        h, c = state
        if ln is None:
            pre = xp + F.linear(dropped(h, drop), w_hh, b_hh)                # (B, 4H)
            ln_saved = ()
        else:
            x_hat, x_rstd = block_norm(xp, 4)
            h_hat, h_rstd = block_norm(F.linear(dropped(h, drop), w_hh), 4)
            pre = ln[0] * x_hat + ln[1] * h_hat + (0.0 if b_hh is None else b_hh)
            ln_saved = (x_hat, x_rstd, h_hat, h_rstd)
        i, f, g, o = pre.chunk(4, dim=1)
        if peep is not None:
            i, f = i + peep[0] * c, f + peep[1] * c
        i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
        c_new = f * c + i * g                                  # (B, H)
        if peep is not None:
            o = o + peep[2] * c_new
        o = torch.sigmoid(o)
        tanh_c = torch.tanh(c_new if ln is None else self._cell_norm(c_new, ln)[0])
        h_new = o * tanh_c
        if w_hr is not None:
            h_new = F.linear(h_new, w_hr)                      # (B, P)
        if not save:
            return (h_new, c_new), ()
        return (h_new, c_new), (torch.cat([i, f, g, o], dim=1), tanh_c) + ln_saved

    @staticmethod
    def _cell_norm(c, ln):
        """(g_c * LN(c) + b_c, c_hat, rstd) of the layer-normalised LSTM."""
        c_hat, rstd = block_norm(c, 1)
        return ln[2] * c_hat + (0.0 if ln[3] is None else ln[3]), c_hat, rstd

    def _step_backward(self, d_new, saved, prev, new, p, drop):
        w_hh, b_hh, w_hr, peep, ln = self._split(p)
        dh, dc_in = d_new
        gates, tanh_c = saved[:2]
        i, f, g, o = gates.chunk(4, dim=1)
        h_prev, c_prev = prev
        if w_hr is not None:
            dw_hr, _ = linear_grads(dh, o * tanh_c, False)     # (P, H)
            dh = dh.mm(w_hr)                                   # d(o * tanh c) (B, H)
        dpo = dh * tanh_c * o * (1.0 - o)
        dn = dh * o * (1.0 - tanh_c * tanh_c)                  # through tanh
        if ln is None:
            dc = dc_in + dn
        else:
            _, c_hat, c_rstd = self._cell_norm(new[1], ln)
            d_ln_c = ((dn * c_hat).sum(0), None if ln[3] is None else dn.sum(0))
            dc = dc_in + block_norm_backward(dn * ln[2], c_hat, c_rstd)
        if peep is not None:
            dc = dc + dpo * peep[2]
        dpi = dc * g * i * (1.0 - i)
        dpf = dc * c_prev * f * (1.0 - f)
        dp = torch.cat([dpi, dpf, dc * i * (1.0 - g * g), dpo], dim=1)   # (B, 4H): d pre
        dc_prev = dc * f
        if peep is not None:
            dc_prev = dc_prev + dpi * peep[0] + dpf * peep[1]
        if ln is None:
            d_xp, d_rec = dp, dp
            dw_hh, db_hh = linear_grads(dp, dropped(h_prev, drop), b_hh is not None)
        else:
            x_hat, x_rstd, h_hat, h_rstd = saved[2:]
            d_xp = block_norm_backward(dp * ln[0], x_hat, x_rstd)
            d_rec = block_norm_backward(dp * ln[1], h_hat, h_rstd)
            dw_hh, _ = linear_grads(d_rec, dropped(h_prev, drop), False)
            db_hh = None if b_hh is None else dp.sum(0)
        d_params = [dw_hh, db_hh]
        if w_hr is not None:
            d_params.append(dw_hr)
        if peep is not None:
            d_params.append(torch.cat([(dpi * c_prev).sum(0), (dpf * c_prev).sum(0), (dpo * new[1]).sum(0)]))
        if ln is not None:
            d_params += [(dp * x_hat).sum(0), (dp * h_hat).sum(0), *d_ln_c]
        return d_xp, (dropped(d_rec.mm(w_hh), drop), dc_prev), tuple(d_params)

    def _trace(self, saved, states):
        i, f, g, o = saved[0].chunk(4, dim=-1)
        return {"input_gate": i, "forget_gate": f, "candidate": g, "output_gate": o,
                "cell": states[1], "hidden": states[0]}

    def extra_repr(self) -> str:
        # proj_size is the layer's (torch's) argument and in its repr already; the others are ours.
        return join_repr("peephole=True" if self.peephole else "", "layer_norm=True" if self.layer_norm else "",
                         super().extra_repr())


LN_PARAMS = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")
