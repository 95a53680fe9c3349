"""Jordan forward and backward through time (math: rnnkit/cells/jordan.py): the output y is fed back.

Shapes (T steps, B batch, H hidden, O outputs; ACC the accumulator dtype):

    xp     (T, B, H)      x W_ih^T + b_ih       w_yh (H, O)   w_hy (O, H)   b (O,) b_hy
    ys     (T+1, B, O)    ys[0] = y0, ys[t+1] = y_t: exchanged      y32 (B, O) ACC own carry
    hid    (T, B, H)      h_t: exchanged within the step (and the cell's saved "hidden")
    mask   (T, B) int8
    m      (B, O)         recurrent dropout mask: yd (T+1, B, O) = ys * m is what W_yh reads (DROP)
  backward:
    d_out  (T, B, O)      gradient of the emitted y_t     dy (B, O) ACC carry
    y_out  (T, B, O)      the states y_t                  dz (T, B, O) gradient of y's pre-activation
    da     (T, B, H)      gradient of h's pre-activation (= d xp)

Tiles of hidden units (BH) for h, of outputs (BO) for y; the softmax output needs a whole row,
so BO >= O there (one tile of outputs).  Forward: two phases and two barriers a step (h from
y_{t-1}; y from h_t); backward three (dz; da = act'(h) dz W_hy; dy_{t-1} = da W_yh).
OUT: 0 identity, 1 tanh, 2 sigmoid, 3 softmax.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import act, act_grad, clip, dh_add, grid_sync, keep_row, mm_tile, tanh, tile


@triton.jit
def _out(z, m2, OUT: tl.constexpr):
    if OUT == 1:
        return tanh(z)
    elif OUT == 2:
        return tl.sigmoid(z)
    elif OUT == 3:
        # rows and columns outside the tensor read a large negative, not -inf (no inf - inf)
        zm = tl.where(m2, z, -1e30)
        e = tl.where(m2, tl.exp(zm - tl.max(zm, axis=1)[:, None]), 0.0)
        return e / tl.maximum(tl.sum(e, axis=1), 1e-30)[:, None]       # a valid row sums to >= 1
    else:
        return z


@triton.jit
def _out_grad(y, g, OUT: tl.constexpr):
    if OUT == 1:
        return g * (1.0 - y * y)
    elif OUT == 2:
        return g * y * (1.0 - y)
    elif OUT == 3:
        return y * (g - tl.sum(g * y, axis=1)[:, None])
    else:
        return g


@triton.jit(do_not_specialize=["T", "B", "H", "O"])
def jordan_forward(xp, ys, y32, hid, w_yh, w_hy, b, m, yd, mask, sem, T, B, H, O,
                   HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, RELU: tl.constexpr, OUT: tl.constexpr,
                   DROP: tl.constexpr,
                   BB: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr,
                   PREC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    n_o = tl.cdiv(O, BO)
    n_b = tl.cdiv(B, BB)
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        for s in range(pid, n_b * n_h, tl.num_programs(0)):     # h_t = act(xp + y_{t-1} W_yh^T)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            a = mm_tile(tl.zeros((BB, BH), ACC), (yd if DROP else ys) + t64 * B * O, O, 1, w_yh, O, 1, rb, rh,
                        B, H, O, BK, PREC)
            a += tl.load(xp + t64 * B * H + own, mask=m2, other=0.0).to(ACC)
            tl.store(hid + t64 * B * H + own, act(a, RELU).to(hid.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, n_b * n_o, tl.num_programs(0)):     # y_t = out(h_t W_hy^T + b_hy)
            rb, ro, m2, own = tile(s, n_o, B, O, BB, BO)
            z = mm_tile(tl.zeros((BB, BO), ACC), hid + t64 * B * H, H, 1, w_hy, H, 1, rb, ro, B, O, H, BK, PREC)
            if HAS_B:
                z += tl.load(b + ro, mask=ro < O, other=0.0).to(ACC)[None, :]
            y_prev = tl.load(y32 + own, mask=m2, other=0.0)
            y = tl.where(keep_row(mask, t64, B, rb, HAS_MASK), _out(z, m2, OUT), y_prev)
            tl.store(y32 + own, y, mask=m2)
            tl.store(ys + B * O + t64 * B * O + own, y.to(ys.dtype.element_ty), mask=m2)
            if DROP:
                y = y * tl.load(m + own, mask=m2, other=0.0).to(ACC)
                tl.store(yd + B * O + t64 * B * O + own, y.to(yd.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit(do_not_specialize=["T", "B", "H", "O"])
def jordan_backward(d_out, dy, dz, da, y_out, hid, w_yh, w_hy, m, mask, sem, T, B, H, O, bound,
                    HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, RELU: tl.constexpr,
                    DROP: tl.constexpr,
                    OUT: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr, BK: tl.constexpr,
                    PREC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    n_o = tl.cdiv(O, BO)
    n_b = tl.cdiv(B, BB)
    nsync = 0
    for back in range(0, T):
        t64 = tl.cast(T - 1 - back, tl.int64)
        for s in range(pid, n_b * n_o, tl.num_programs(0)):     # dz = out'(dy)
            rb, ro, m2, own = tile(s, n_o, B, O, BB, BO)
            g = tl.load(dy + own, mask=m2, other=0.0)
            if HAS_DOUT:
                g += tl.load(d_out + t64 * B * O + own, mask=m2, other=0.0).to(ACC)
            g = clip(g, CLIP, bound)
            y = tl.load(y_out + t64 * B * O + own, mask=m2, other=0.0).to(ACC)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            tl.store(dz + t64 * B * O + own, tl.where(keep, _out_grad(y, g, OUT), 0.0).to(dz.dtype.element_ty),
                     mask=m2)
            tl.store(dy + own, tl.where(keep, 0.0, g), mask=m2)     # a padded step passes dy on
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, n_b * n_h, tl.num_programs(0)):     # da = act'(h) * dz W_hy
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            d_h = mm_tile(tl.zeros((BB, BH), ACC), dz + t64 * B * O, O, 1, w_hy, 1, H, rb, rh, B, H, O, BK, PREC)
            h = tl.load(hid + t64 * B * H + own, mask=m2, other=0.0).to(ACC)
            tl.store(da + t64 * B * H + own, act_grad(h, d_h, RELU).to(da.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, n_b * n_o, tl.num_programs(0)):     # dy_{t-1} += da W_yh (0 when padded)
            rb, ro, m2, own = tile(s, n_o, B, O, BB, BO)
            dh_add(dy, da + t64 * B * H, H, H, w_yh, m, rb, ro, m2, own, B, O, BB, BO, BK, PREC, DROP, ACC)
