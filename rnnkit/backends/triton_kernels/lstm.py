"""LSTM forward and backward through time (math: rnnkit/cells/lstm.py), torch's gate order i, f, g, o.

Shapes (one layer and direction; T steps, B batch, H hidden; dtype = the tensors' dtype, ACC the
accumulator dtype):

    xp     (T, B, 4H)     x W_ih^T + b_ih            w  (4H, H) W_hh      b (4H,) b_hh
    hs     (T+1, B, H)    hs[0] = h0, hs[t+1] = h_t: the exchanged state (read by every program)
    cs     (T, B, H)      c_t                         h32, c32 (B, H) ACC: own tiles' carries
    gates  (T, B, 4H)     i, f, g, o after their nonlinearities    tanh_c (T, B, H)
    mask   (T, B)         int8, 1 inside the sequence
    wc     (3H,)          peepholes w_ci, w_cf, w_co                       (PEEP)
    m      (B, H)         recurrent dropout mask; hd (T+1, B, H) = hs * m, what W_hh reads   (DROP)
    zh, zc (T, B, H)      zoneout's z_t per state (ZONE 1), or the constant zp (ZONE 2: eval)
    ht, ct (T, B, H)      the states the cell computed before zoneout (saved, ZONE)
  backward:
    d_out  (T, B, H)      gradient of the emitted h_t            dh, dc (B, H) ACC carries
    dp     (T, B, 4H)     gradient of the pre-activations (= d xp, and the rows of d W_hh)

Forward step t, tile (rows rb, units rh): p = xp + h_{t-1} W_hh^T + b for the 4 gate blocks of
rh (peepholes: + w_ci c_{t-1}, w_cf c_{t-1}, w_co c_t); c, h of the tile; zoneout mixes in the
previous state; store; barrier.  Backward step t: phase 1 (own tile) dp and dc_{t-1};
barrier; phase 2 (own tile of units k) dh_{t-1}[:, k] = dp_t W_hh[:, k].  One barrier a step.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import clip, grid_sync, keep_row, mm_gates, mm_tile, tanh, tile, zone


@triton.jit(do_not_specialize=["T", "B", "H", "zp"])
def lstm_forward(xp, hs, cs, h32, c32, gates, tanh_c, w, b, wc, m, hd, zh, zc, ht, ct, mask, sem, T, B, H, zp,
                 HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, PEEP: tl.constexpr,
                 DROP: tl.constexpr, ZONE: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                 ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H4 = 4 * H
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            h_prev_seq = (hd if DROP else hs) + t64 * B * H
            x_at = xp + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            pi, pf, pg, po = mm_gates(h_prev_seq, H, w, H, rb, rh, B, H, H, 4, BB, BH, BK, PREC, ACC)
            pi += tl.load(x_at, mask=m2, other=0.0).to(ACC)
            pf += tl.load(x_at + H, mask=m2, other=0.0).to(ACC)
            pg += tl.load(x_at + 2 * H, mask=m2, other=0.0).to(ACC)
            po += tl.load(x_at + 3 * H, mask=m2, other=0.0).to(ACC)
            if HAS_B:
                pi += tl.load(b + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
                pf += tl.load(b + H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
                pg += tl.load(b + 2 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
                po += tl.load(b + 3 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            step = t64 * B * H + own
            c_prev = tl.load(c32 + own, mask=m2, other=0.0)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            if PEEP:
                pi += tl.load(wc + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c_prev
                pf += tl.load(wc + H + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c_prev
            i = tl.sigmoid(pi)
            f = tl.sigmoid(pf)
            g = tanh(pg)
            c = f * c_prev + i * g
            if PEEP:
                po += tl.load(wc + 2 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c
            o = tl.sigmoid(po)
            tc = tanh(c)
            h = o * tc
            if ZONE != 0:
                if SAVE:
                    tl.store(ht + step, h.to(ht.dtype.element_ty), mask=m2)
                    tl.store(ct + step, c.to(ct.dtype.element_ty), mask=m2)
                h = h + zone(zh, step, m2, zp, ZONE, ACC) * (h_prev - h)
                c = c + zone(zc, step, m2, zp, ZONE, ACC) * (c_prev - c)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            c = tl.where(keep, c, c_prev)                 # a padded step keeps the state
            h = tl.where(keep, h, h_prev)
            tl.store(c32 + own, c, mask=m2)
            tl.store(h32 + own, h, mask=m2)
            tl.store(cs + step, c.to(cs.dtype.element_ty), mask=m2)
            tl.store(hs + B * H + step, h.to(hs.dtype.element_ty), mask=m2)
            if DROP:
                h = h * tl.load(m + own, mask=m2, other=0.0).to(ACC)
                tl.store(hd + B * H + step, h.to(hd.dtype.element_ty), mask=m2)
            if SAVE:
                g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
                tl.store(g_at, i.to(gates.dtype.element_ty), mask=m2)
                tl.store(g_at + H, f.to(gates.dtype.element_ty), mask=m2)
                tl.store(g_at + 2 * H, g.to(gates.dtype.element_ty), mask=m2)
                tl.store(g_at + 3 * H, o.to(gates.dtype.element_ty), mask=m2)
                tl.store(tanh_c + step, tc.to(tanh_c.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit(do_not_specialize=["T", "B", "H", "bound", "zp"])
def lstm_backward(d_out, dh, dc, dp, gates, tanh_c, cs, c0, w, wc, m, zh, zc, mask, sem, T, B, H, bound, zp,
                  HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, PEEP: tl.constexpr,
                  DROP: tl.constexpr, ZONE: tl.constexpr,
                  BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                  ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H4 = 4 * H
    nsync = 0
    for back in range(0, T):
        t = T - 1 - back
        t64 = tl.cast(t, tl.int64)
        # phase 1: the gates' gradients of the own tile, and the cell's carry
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            g_h = tl.load(dh + own, mask=m2, other=0.0)
            if HAS_DOUT:
                g_h += tl.load(d_out + step, mask=m2, other=0.0).to(ACC)
            g_h = clip(g_h, CLIP, bound)
            g_c = clip(tl.load(dc + own, mask=m2, other=0.0), CLIP, bound)
            pass_h = tl.zeros((BB, BH), ACC)              # what reaches the previous state past the cell
            pass_c = tl.zeros((BB, BH), ACC)
            if ZONE != 0:                                 # s = s~ + z (s_prev - s~)
                z_h = zone(zh, step, m2, zp, ZONE, ACC)
                z_c = zone(zc, step, m2, zp, ZONE, ACC)
                pass_h = z_h * g_h
                pass_c = z_c * g_c
                g_h = g_h - pass_h
                g_c = g_c - pass_c
            g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            i = tl.load(g_at, mask=m2, other=0.0).to(ACC)
            f = tl.load(g_at + H, mask=m2, other=0.0).to(ACC)
            g = tl.load(g_at + 2 * H, mask=m2, other=0.0).to(ACC)
            o = tl.load(g_at + 3 * H, mask=m2, other=0.0).to(ACC)
            tc = tl.load(tanh_c + step, mask=m2, other=0.0).to(ACC)
            if t > 0:
                c_prev = tl.load(cs + step - B * H, mask=m2, other=0.0).to(ACC)
            else:
                c_prev = tl.load(c0 + own, mask=m2, other=0.0).to(ACC)
            dpo = g_h * tc * o * (1.0 - o)
            dcell = g_c + g_h * o * (1.0 - tc * tc)
            if PEEP:
                dcell += dpo * tl.load(wc + 2 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            dpi = dcell * g * i * (1.0 - i)
            dpf = dcell * c_prev * f * (1.0 - f)
            dpg = dcell * i * (1.0 - g * g)
            dc_prev = dcell * f + pass_c
            if PEEP:
                dc_prev += dpi * tl.load(wc + rh, mask=rh < H, other=0.0).to(ACC)[None, :] \
                    + dpf * tl.load(wc + H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            d_at = dp + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            tl.store(d_at, tl.where(keep, dpi, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(d_at + H, tl.where(keep, dpf, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(d_at + 2 * H, tl.where(keep, dpg, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(d_at + 3 * H, tl.where(keep, dpo, 0.0).to(dp.dtype.element_ty), mask=m2)
            # a padded step passes dh and dc on (pass_* are zero there: its z was never applied)
            tl.store(dc + own, tl.where(keep, dc_prev, g_c + pass_c), mask=m2)
            tl.store(dh + own, tl.where(keep, pass_h, g_h + pass_h), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        # phase 2: dh_{t-1}[:, own units] = dp_t W_hh[:, own units]  (reads every tile's dp_t)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            acc = mm_tile(tl.zeros((BB, BH), ACC), dp + t64 * B * H4, H4, 1, w, 1, H, rb, rh, B, H, H4, BK, PREC)
            if DROP:
                acc = acc * tl.load(m + own, mask=m2, other=0.0).to(ACC)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            tl.store(dh + own, tl.load(dh + own, mask=m2, other=0.0) + tl.where(keep, acc, 0.0), mask=m2)
