"""Elman forward and backward through time (math: rnnkit/cells/elman.py).

Shapes (T steps, B batch, H hidden; ACC the accumulator dtype):

    xp     (T, B, H)      x W_ih^T + b_ih            w  (H, H) W_hh      b (H,) b_hh
    hs     (T+1, B, H)    hs[0] = h0, hs[t+1] = h_t: the exchanged state
    h32    (B, H) ACC     own tiles' carry           mask (T, B) int8
    m      (B, H)         recurrent dropout mask; hd (T+1, B, H) = hs * m, what W_hh reads   (DROP)
    zh     (T, B, H)      zoneout's z_t (ZONE 1), or the constant zp (ZONE 2: eval)
    ht     (T, B, H)      h the cell computed before zoneout (saved, ZONE)
  backward:
    d_out  (T, B, H)      gradient of the emitted h_t     dh (B, H) ACC carry
    da     (T, B, H)      gradient of the pre-activation (= d xp, and the rows of d W_hh)

Forward step t, tile (rb, rh): h = act(xp + h_{t-1} W_hh^T + b); barrier.  Backward step t:
phase 1 da of the own tile; barrier; phase 2 dh_{t-1}[:, own units] = da_t W_hh[:, own units].
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import act, act_grad, clip, dh_add, grid_sync, keep_row, mm_tile, tile, zone


@triton.jit(do_not_specialize=["T", "B", "H", "zp"])
def elman_forward(xp, hs, h32, w, b, m, hd, zh, ht, mask, sem, T, B, H, zp,
                  HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, RELU: tl.constexpr, SAVE: tl.constexpr,
                  DROP: tl.constexpr, ZONE: tl.constexpr,
                  BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                  ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            a = mm_tile(tl.zeros((BB, BH), ACC), (hd if DROP else hs) + t64 * B * H, H, 1, w, H, 1, rb, rh,
                        B, H, H, BK, PREC)
            a += tl.load(xp + step, mask=m2, other=0.0).to(ACC)
            if HAS_B:
                a += tl.load(b + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            h = act(a, RELU)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            if ZONE != 0:
                if SAVE:
                    tl.store(ht + step, h.to(ht.dtype.element_ty), mask=m2)
                h = h + zone(zh, step, m2, zp, ZONE, ACC) * (h_prev - h)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            h = tl.where(keep, h, h_prev)
            tl.store(h32 + own, h, mask=m2)
            tl.store(hs + B * H + step, h.to(hs.dtype.element_ty), mask=m2)
            if DROP:
                h = h * tl.load(m + own, mask=m2, other=0.0).to(ACC)
                tl.store(hd + B * H + step, h.to(hd.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit(do_not_specialize=["T", "B", "H", "bound", "zp"])
def elman_backward(d_out, dh, da, hs_out, w, m, zh, mask, sem, T, B, H, bound, zp,
                   HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, RELU: tl.constexpr,
                   DROP: tl.constexpr, ZONE: tl.constexpr,
                   BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                   ACC: tl.constexpr):
    """hs_out (T, B, H): the h_t the cell computed (the states; before zoneout with it), whose
    activation derivative is read."""
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    nsync = 0
    for back in range(0, T):
        t64 = tl.cast(T - 1 - back, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            g = tl.load(dh + own, mask=m2, other=0.0)
            if HAS_DOUT:
                g += tl.load(d_out + step, mask=m2, other=0.0).to(ACC)
            g = clip(g, CLIP, bound)
            passed = tl.zeros((BB, BH), ACC)              # z dh: what zoneout passes to h_{t-1}
            if ZONE != 0:
                passed = zone(zh, step, m2, zp, ZONE, ACC) * g
            h = tl.load(hs_out + step, mask=m2, other=0.0).to(ACC)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            tl.store(da + step, tl.where(keep, act_grad(h, g - passed, RELU), 0.0).to(da.dtype.element_ty), mask=m2)
            tl.store(dh + own, tl.where(keep, passed, g), mask=m2)    # a padded step passes dh on
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            dh_add(dh, da + t64 * B * H, H, H, w, m, rb, rh, m2, own, B, H, BB, BH, BK, PREC, DROP, ACC)
