"""GRU forward and backward through time (math: rnnkit/cells/gru.py), gate order r, z, n; both forms.

Shapes (T steps, B batch, H hidden; ACC the accumulator dtype):

    xp     (T, B, 3H)     x W_ih^T + b_ih            w  (3H, H) W_hh      b (3H,) b_hh
    hs     (T+1, B, H)    hs[0] = h0, hs[t+1] = h_t: the exchanged state
    h32    (B, H) ACC     own tiles' carry           mask (T, B) int8
    gates  (T, B, 3H)     r, z, n                    hn (T, B, H) h_{t-1} W_hn^T + b_hn (torch form)
    u      (T, B, H)      r_t * h_{t-1}, exchanged within the step (original form)
    z32    (B, H) ACC     the update gate between the original form's two phases
    m      (B, H)         recurrent dropout mask: hd (T+1, B, H) = hs * m is what W_hh reads (DROP)
    zo     (T, B, H)      zoneout's z_t (ZONE 1), or the constant zp (ZONE 2: eval)
    ht     (T, B, H)      h the cell computed before zoneout (saved, ZONE)
  backward:
    d_out  (T, B, H)      gradient of the emitted h_t     dh (B, H) ACC carry
    hp     (T, B, H)      h_{t-1} of every step
    dx     (T, B, 3H)     gradient of xp: [dar, daz, dan]
    drec   (T, B, 3H)     gradient of the recurrent pre-activations [dar, daz, dan * r] (torch form)

Torch form: one exchange a step (h), as the LSTM.  Original form: r_t * h_{t-1} enters the
product with W_hn, so a step has two phases and two barriers (r, z, u; then n and h), and its
backward three phases (dz, dn; du = dan W_hn and dr; dh_{t-1} += [dar, daz] W_hrz).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import clip, dh_add, dropped, emit, grid_sync, keep_row, mm_gates, mm_tile, store_gates, tanh, tile, zone


@triton.jit
def _bias(acc, b, rh, H, HAS_B: tl.constexpr, ACC: tl.constexpr):
    if HAS_B:
        acc += tl.load(b + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit(do_not_specialize=["T", "B", "H", "zp"])
def gru_forward(xp, hs, h32, gates, hn_out, w, b, m, hd, zo, ht, mask, sem, T, B, H, zp,
                HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, DROP: tl.constexpr,
                ZONE: tl.constexpr,
                BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    """The torch form: n = tanh(xn + r * (h W_hn^T + b_hn))."""
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        h_in = (hd if DROP else hs) + t64 * B * H
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            x_at = xp + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            hr, hz, hn, _ = mm_gates(h_in, H, w, H, rb, rh, B, H, H, 3, BB, BH, BK, PREC, ACC)
            hr = _bias(hr, b, rh, H, HAS_B, ACC)
            hz = _bias(hz, b + H, rh, H, HAS_B, ACC)
            hn = _bias(hn, b + 2 * H, rh, H, HAS_B, ACC)
            r = tl.sigmoid(tl.load(x_at, mask=m2, other=0.0).to(ACC) + hr)
            z = tl.sigmoid(tl.load(x_at + H, mask=m2, other=0.0).to(ACC) + hz)
            n = tanh(tl.load(x_at + 2 * H, mask=m2, other=0.0).to(ACC) + r * hn)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            emit((1.0 - z) * n + z * h_prev, h_prev, hs, h32, m, hd, zo, ht, mask, t64, rb, m2, own, B, H, zp,
                  HAS_MASK, SAVE, DROP, ZONE, ACC)
            step = t64 * B * H + own
            if SAVE:
                g_at = gates + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
                store_gates(g_at, H, m2, r, z, n, n, 3)
                tl.store(hn_out + step, hn.to(hn_out.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit(do_not_specialize=["T", "B", "H", "zp"])
def gru_forward_original(xp, hs, h32, z32, u, gates, w, b, m, hd, zo, ht, mask, sem, T, B, H, zp,
                         HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, DROP: tl.constexpr,
                         ZONE: tl.constexpr,
                         BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                         ACC: tl.constexpr):
    """The original form: n = tanh(xn + (r * h) W_hn^T + b_hn); two phases a step."""
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        h_in = (hd if DROP else hs) + t64 * B * H
        for s in range(pid, tiles, tl.num_programs(0)):          # r, z and u = r * h_{t-1} (* m)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            x_at = xp + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            hr, hz, _, _ = mm_gates(h_in, H, w, H, rb, rh, B, H, H, 2, BB, BH, BK, PREC, ACC)
            hr = _bias(hr, b, rh, H, HAS_B, ACC)
            hz = _bias(hz, b + H, rh, H, HAS_B, ACC)
            r = tl.sigmoid(tl.load(x_at, mask=m2, other=0.0).to(ACC) + hr)
            z = tl.sigmoid(tl.load(x_at + H, mask=m2, other=0.0).to(ACC) + hz)
            tl.store(z32 + own, z, mask=m2)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            if DROP:
                h_prev = h_prev * tl.load(m + own, mask=m2, other=0.0).to(ACC)
            tl.store(u + t64 * B * H + own, (r * h_prev).to(u.dtype.element_ty), mask=m2)
            if SAVE:
                g_at = gates + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
                tl.store(g_at, r.to(gates.dtype.element_ty), mask=m2)
                tl.store(g_at + H, z.to(gates.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # n and h
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            x_at = xp + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            an = _bias(mm_tile(tl.zeros((BB, BH), ACC), u + t64 * B * H, H, 1, w + 2 * H * H, H, 1, rb, rh,
                               B, H, H, BK, PREC), b + 2 * H, rh, H, HAS_B, ACC)
            n = tanh(tl.load(x_at + 2 * H, mask=m2, other=0.0).to(ACC) + an)
            z = tl.load(z32 + own, mask=m2, other=0.0)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            emit((1.0 - z) * n + z * h_prev, h_prev, hs, h32, m, hd, zo, ht, mask, t64, rb, m2, own, B, H, zp,
                  HAS_MASK, SAVE, DROP, ZONE, ACC)
            if SAVE:
                g_at = gates + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
                tl.store(g_at + 2 * H, n.to(gates.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit
def _dz_dn(d_out, dh, gates, hp, zo, t64, rb, rh, m2, own, B, H, bound, zp,
           HAS_DOUT: tl.constexpr, CLIP: tl.constexpr, ZONE: tl.constexpr, ACC: tl.constexpr):
    """The step's total dh (clipped) less what zoneout passes straight to h_{t-1} (returned too), r,
    z, h_{t-1}, and the gradients of z's and n's pre-activations."""
    H3 = 3 * H
    step = t64 * B * H + own
    g = tl.load(dh + own, mask=m2, other=0.0)
    if HAS_DOUT:
        g += tl.load(d_out + step, mask=m2, other=0.0).to(ACC)
    g = clip(g, CLIP, bound)
    passed = tl.zeros_like(g)
    if ZONE != 0:
        passed = zone(zo, step, m2, zp, ZONE, ACC) * g
        g = g - passed
    g_at = gates + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
    r = tl.load(g_at, mask=m2, other=0.0).to(ACC)
    z = tl.load(g_at + H, mask=m2, other=0.0).to(ACC)
    n = tl.load(g_at + 2 * H, mask=m2, other=0.0).to(ACC)
    h_prev = tl.load(hp + step, mask=m2, other=0.0).to(ACC)
    dan = g * (1.0 - z) * (1.0 - n * n)
    daz = g * (h_prev - n) * z * (1.0 - z)
    return g, passed, r, z, h_prev, dan, daz


@triton.jit
def torch_form_tile(d_out, dh, dx, drec, gates, hn, hp, zo, mask, t64, rb, rh, m2, own, B, H, bound, zp,
                    HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, ZONE: tl.constexpr,
                    ACC: tl.constexpr):
    """The torch form's first backward phase on a tile: dx = [dar, daz, dan], drec = [dar, daz, dan r]
    (the recurrent pre-activations' gradient; the layer-normalised GRU's LN_3' reads it), and the
    part of dh_{t-1} that does not go through W_hh (zero rows and dh passed on when padded)."""
    H3 = 3 * H
    g, passed, r, z, h_prev, dan, daz = _dz_dn(d_out, dh, gates, hp, zo, t64, rb, rh, m2, own, B, H, bound, zp,
                                               HAS_DOUT, CLIP, ZONE, ACC)
    dar = dan * tl.load(hn + t64 * B * H + own, mask=m2, other=0.0).to(ACC) * r * (1.0 - r)
    keep = keep_row(mask, t64, B, rb, HAS_MASK)
    dar = tl.where(keep, dar, 0.0)
    daz = tl.where(keep, daz, 0.0)
    dan = tl.where(keep, dan, 0.0)
    at = t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
    store_gates(dx + at, H, m2, dar, daz, dan, dan, 3)
    store_gates(drec + at, H, m2, dar, daz, dan * r, dan, 3)
    tl.store(dh + own, tl.where(keep, g * z, g) + passed, mask=m2)


@triton.jit(do_not_specialize=["T", "B", "H", "bound", "zp"])
def gru_backward(d_out, dh, dx, drec, gates, hn, hp, w, m, zo, mask, sem, T, B, H, bound, zp,
                 HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, DROP: tl.constexpr,
                 ZONE: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for back in range(0, T):
        t64 = tl.cast(T - 1 - back, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            torch_form_tile(d_out, dh, dx, drec, gates, hn, hp, zo, mask, t64, rb, rh, m2, own, B, H, bound, zp,
                            HAS_DOUT, HAS_MASK, CLIP, ZONE, ACC)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # dh_{t-1} += drec_t W_hh
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            dh_add(dh, drec + t64 * B * H3, H3, H3, w, m, rb, rh, m2, own, B, H, BB, BH, BK, PREC, DROP, ACC)


@triton.jit(do_not_specialize=["T", "B", "H", "bound", "zp"])
def gru_backward_original(d_out, dh, dx, gates, hp, w, m, zo, mask, sem, T, B, H, bound, zp,
                          HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, DROP: tl.constexpr,
                          ZONE: tl.constexpr,
                          BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                          ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for back in range(0, T):
        t64 = tl.cast(T - 1 - back, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):          # dz, dn
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            g, passed, r, z, h_prev, dan, daz = _dz_dn(d_out, dh, gates, hp, zo, t64, rb, rh, m2, own, B, H,
                                                       bound, zp, HAS_DOUT, CLIP, ZONE, ACC)
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            at = t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            tl.store(dx + at + H, tl.where(keep, daz, 0.0).to(dx.dtype.element_ty), mask=m2)
            tl.store(dx + at + 2 * H, tl.where(keep, dan, 0.0).to(dx.dtype.element_ty), mask=m2)
            tl.store(dh + own, tl.where(keep, g * z, g) + passed, mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # du = dan W_hn, dr
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            du = mm_tile(tl.zeros((BB, BH), ACC), dx + t64 * B * H3 + 2 * H, H3, 1, w + 2 * H * H, 1, H,
                         rb, rh, B, H, H, BK, PREC)
            at = t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            r = tl.load(gates + at, mask=m2, other=0.0).to(ACC)
            hd_prev = dropped(tl.load(hp + t64 * B * H + own, mask=m2, other=0.0).to(ACC), m, own, m2, DROP, ACC)
            tl.store(dx + at, (du * hd_prev * r * (1.0 - r)).to(dx.dtype.element_ty), mask=m2)   # 0 when padded
            tl.store(dh + own, tl.load(dh + own, mask=m2, other=0.0) + dropped(du * r, m, own, m2, DROP, ACC),
                     mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # dh_{t-1} += [dar, daz] W_hrz
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            dh_add(dh, dx + t64 * B * H3, H3, 2 * H, w, m, rb, rh, m2, own, B, H, BB, BH, BK, PREC, DROP, ACC)
