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
    ht, ct (T, B, P/H)    the states the cell computed before zoneout (saved, ZONE)
    wr     (P, H)         W_hr with a projection (PROJ): h (B, P) = m W_hr^T, m = o tanh(c);
                          ms (T, B, H) the m exchanged for it; backward gh (T, B, P) d of the
                          projected h (padded rows 0), exchanged for dm = gh W_hr
    Without a projection P = H.
  backward:
    d_out  (T, B, H)      gradient of the emitted h_t            dh, dc (B, H) ACC carries
    dp     (T, B, 4H)     gradient of the pre-activations (= d xp, and the rows of d W_hh)

Forward step t, tile (rows rb, units rh): p = xp + h_{t-1} W_hh^T + b for the 4 gate blocks of
rh (peepholes: + w_ci c_{t-1}, w_cf c_{t-1}, w_co c_t); c, h of the tile; zoneout mixes in the
previous state; store; barrier.  Backward step t: phase 1 (own tile) dp and dc_{t-1};
barrier; phase 2 (own tile of units k) dh_{t-1}[:, k] = dp_t W_hh[:, k].  One barrier a step; with a
projection two (forward: m; barrier; h = m W_hr^T over tiles of P.  Backward: phase 0 the projected
h's gradient over tiles of P; barrier; phase 1 with dm = gh W_hr; barrier; phase 2 over tiles of P).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import clip, dh_add, emit, grid_sync, keep_row, mm_gates, mm_tile, store_gates, tanh, tile, zone


@triton.jit
def cell_update(pi, pf, pg, po, c_prev, wc, rh, H, PEEP: tl.constexpr, ACC: tl.constexpr):
    """The gates i, f, g, o of a tile from their pre-activations and the new cell c~ = f c_{t-1} + i g
    (peepholes: c_{t-1} into i and f, c~ into o)."""
    if PEEP:
        pi += tl.load(wc + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c_prev
        pf += tl.load(wc + H + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c_prev
    i = tl.sigmoid(pi)
    f = tl.sigmoid(pf)
    g = tanh(pg)
    c = f * c_prev + i * g
    if PEEP:
        po += tl.load(wc + 2 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c
    return i, f, g, c, tl.sigmoid(po)


@triton.jit
def keep_cell(c, c_prev, ct, zc, c32, cs, mask, t64, rb, m2, own, step, B, zp, HAS_MASK: tl.constexpr,
              SAVE: tl.constexpr, ZONE: tl.constexpr, ACC: tl.constexpr):
    """The cell the step keeps: zoneout's mix (the computed c~ saved in ct), a padded step keeping
    c_{t-1}; into the carry c32 and the saved cs."""
    if ZONE != 0:
        if SAVE:
            tl.store(ct + step, c.to(ct.dtype.element_ty), mask=m2)
        c = c + zone(zc, step, m2, zp, ZONE, ACC) * (c_prev - c)
    c = tl.where(keep_row(mask, t64, B, rb, HAS_MASK), c, c_prev)     # a padded step keeps the state
    tl.store(c32 + own, c, mask=m2)
    tl.store(cs + step, c.to(cs.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["T", "B", "H", "P", "zp"])
def lstm_forward(xp, hs, cs, h32, c32, gates, tanh_c, w, b, wc, wr, ms, m, hd, zh, zc, ht, ct, mask, sem,
                 T, B, H, P, zp,
                 HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, PEEP: tl.constexpr,
                 PROJ: tl.constexpr, DROP: tl.constexpr, ZONE: tl.constexpr,
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
            h_prev_seq = (hd if DROP else hs) + t64 * B * P
            x_at = xp + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            pi, pf, pg, po = mm_gates(h_prev_seq, P, w, H, rb, rh, B, H, P, 4, BB, BH, BK, PREC, ACC)
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
            i, f, g, c, o = cell_update(pi, pf, pg, po, c_prev, wc, rh, H, PEEP, ACC)
            tc = tanh(c)
            keep_cell(c, c_prev, ct, zc, c32, cs, mask, t64, rb, m2, own, step, B, zp, HAS_MASK, SAVE, ZONE, ACC)
            if PROJ:                                      # m_t for the projection, after the barrier
                tl.store(ms + step, (o * tc).to(ms.dtype.element_ty), mask=m2)
            else:
                emit(o * tc, tl.load(h32 + own, mask=m2, other=0.0), hs, h32, m, hd, zh, ht, mask, t64, rb, m2, own,
                     B, H, zp, HAS_MASK, SAVE, DROP, ZONE, ACC)
            if SAVE:
                g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
                store_gates(g_at, H, m2, i, f, g, o, 4)
                tl.store(tanh_c + step, tc.to(tanh_c.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        if PROJ:                                          # h_t = m_t W_hr^T over tiles of (B, P)
            project(ms, wr, hs, h32, m, hd, zh, ht, mask, t64, B, H, P, zp, HAS_MASK, SAVE, DROP, ZONE, BB, BH, BK,
                    PREC, ACC)
            nsync += 1
            grid_sync(sem, nsync)


@triton.jit
def project(ms, wr, hs, h32, m, hd, zh, ht, mask, t64, B, H, P, zp, HAS_MASK: tl.constexpr, SAVE: tl.constexpr,
            DROP: tl.constexpr, ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
            PREC: tl.constexpr, ACC: tl.constexpr):
    """The projection phase of forward step t (after the barrier that completes ms[t]): h_t = m_t W_hr^T
    (B, P) over tiles of (B, P), emitted."""
    n_p = tl.cdiv(P, BH)
    for s in range(tl.program_id(0), tl.cdiv(B, BB) * n_p, tl.num_programs(0)):
        rb, rp, m2, own = tile(s, n_p, B, P, BB, BH)
        h = mm_tile(tl.zeros((BB, BH), ACC), ms + t64 * B * H, H, 1, wr, H, 1, rb, rp, B, P, H, BK, PREC)
        emit(h, tl.load(h32 + own, mask=m2, other=0.0), hs, h32, m, hd, zh, ht, mask, t64, rb, m2, own,
             B, P, zp, HAS_MASK, SAVE, DROP, ZONE, ACC)


@triton.jit
def dh_total(dh, d_out, zh, step, own, m2, bound, zp, HAS_DOUT: tl.constexpr, CLIP: tl.constexpr,
             ZONE: tl.constexpr, ACC: tl.constexpr):
    """(the gradient of the cell's computed h, the part zoneout passes straight to h_{t-1}, the
    whole clipped dh_t) of a tile: carry + the output's gradient, clipped, split by zoneout."""
    g = tl.load(dh + own, mask=m2, other=0.0)
    if HAS_DOUT:
        g += tl.load(d_out + step, mask=m2, other=0.0).to(ACC)
    g = clip(g, CLIP, bound)
    passed = tl.zeros_like(g)
    if ZONE != 0:                                         # s = s~ + z (s_prev - s~)
        passed = zone(zh, step, m2, zp, ZONE, ACC) * g
    return g - passed, passed, g


@triton.jit
def proj_grad(dh, d_out, gh, zh, mask, t64, B, P, bound, zp, HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr,
              CLIP: tl.constexpr, ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr):
    """Phase 0 of a projected backward step t, over tiles of (B, P): gh_t, the gradient of the computed
    (projected) h, kept for dm = gh_t W_hr and dW_hr (0 on padded rows); dh keeps what passes
    straight to h_{t-1} (all of it on a padded step)."""
    n_p = tl.cdiv(P, BH)
    for s in range(tl.program_id(0), tl.cdiv(B, BB) * n_p, tl.num_programs(0)):
        rb, rp, m2, own = tile(s, n_p, B, P, BB, BH)
        g_h, pass_h, g_all = dh_total(dh, d_out, zh, t64 * B * P + own, own, m2, bound, zp, HAS_DOUT, CLIP, ZONE, ACC)
        keep = keep_row(mask, t64, B, rb, HAS_MASK)
        tl.store(gh + t64 * B * P + own, tl.where(keep, g_h, 0.0).to(gh.dtype.element_ty), mask=m2)
        tl.store(dh + own, tl.where(keep, pass_h, g_all), mask=m2)


@triton.jit(do_not_specialize=["T", "B", "H", "P", "bound", "zp"])
def lstm_backward(d_out, dh, dc, dp, gates, tanh_c, cs, c0, w, wc, wr, gh, m, zh, zc, mask, sem,
                  T, B, H, P, bound, zp,
                  HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, PEEP: tl.constexpr,
                  PROJ: tl.constexpr, DROP: tl.constexpr, ZONE: tl.constexpr,
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
        n_p = tl.cdiv(P, BH)
        if PROJ:          # phase 0: the projected h's gradient gh
            proj_grad(dh, d_out, gh, zh, mask, t64, B, P, bound, zp, HAS_DOUT, HAS_MASK, CLIP, ZONE, BB, BH, ACC)
            nsync += 1
            grid_sync(sem, nsync)
        # phase 1: the gates' gradients of the own tile, and the cell's carry
        for s in range(pid, tiles, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            if PROJ:
                # dm = gh_t W_hr (B, H): the gradient of m_t = o tanh(c_t); phase 0 has set dh
                g_h = mm_tile(tl.zeros((BB, BH), ACC), gh + t64 * B * P, P, 1, wr, 1, H, rb, rh, B, H, P, BK, PREC)
            else:
                g_h, pass_h, g_all = dh_total(dh, d_out, zh, step, own, m2, bound, zp, HAS_DOUT, CLIP, ZONE, ACC)
            g_c, pass_c, g_c_all = dh_total(dc, d_out, zc, step, own, m2, bound, zp, False, CLIP, ZONE, ACC)
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
            store_gates(d_at, H, m2, tl.where(keep, dpi, 0.0), tl.where(keep, dpf, 0.0), tl.where(keep, dpg, 0.0),
                        tl.where(keep, dpo, 0.0), 4)
            # a padded step passes dh and dc on
            tl.store(dc + own, tl.where(keep, dc_prev, g_c_all), mask=m2)
            if not PROJ:
                tl.store(dh + own, tl.where(keep, pass_h, g_all), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        # phase 2: dh_{t-1}[:, own units] = dp_t W_hh[:, own units]  (reads every tile's dp_t)
        for s in range(pid, tl.cdiv(B, BB) * n_p, tl.num_programs(0)):
            rb, rh, m2, own = tile(s, n_p, B, P, BB, BH)
            dh_add(dh, dp + t64 * B * H4, H4, H4, w, m, rb, rh, m2, own, B, P, BB, BH, BK, PREC, DROP, ACC)
