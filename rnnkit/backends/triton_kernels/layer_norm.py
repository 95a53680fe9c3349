"""Layer-normalised LSTM and GRU forward and backward through time (math: rnnkit/cells/lstm.py, haste's
placements): each gate block of h W_hh^T normalised over its H units, the cell normalised before
its tanh.  The input side, g_ih LN_4(x W_ih^T + b_ih) + b_hh, is normalised for all steps at once
before the kernel (``xn``), and its gradient LN_4' after it; the kernels run the recurrence.

Shapes (T steps, B batch, H hidden, P the emitted h's size: proj_size with a projection, else H;
ACC the accumulator dtype):

    xn     (T, B, 4H)     g_ih x_hat + b_hh                 w (4H, P) W_hh
    gh, gc (4H,), (H,)    gains of the recurrent block norm and of the cell norm; bc (H,) its bias
    hs     (T+1, B, P)    the exchanged h (hd = hs * m under recurrent dropout, DROP)
    cs     (T, B, H)      c_t carried                       h32 (B, P), c32 (B, H) ACC carries
    rec    (T, B, 4H) ACC h_{t-1} W_hh^T, exchanged for its row statistics
    ct     (T, B, H) ACC  the cell the step computed (before zoneout), exchanged for its statistics
    gates  (T, B, 4H)     i, f, g, o      tanh_c (T, B, H)  tanh(g_c LN(c~) + b_c)
    h_hat  (T, B, 4H)     LN_4(h W_hh^T)  h_rstd (T, B, 4)  its 1 / std per gate block
    wc (3H,) peepholes (PEEP); m (B, P) dropout mask; zh, zc (T, B, P), (T, B, H) zoneout (ZONE 1) or zp (2)
    wr     (P, H)         W_hr with a projection (PROJ): h = m W_hr^T, m = o tanh_c; ms (T, B, H) the
                          m exchanged for it
  backward:
    dh (B, P), dc (B, H) ACC carries       dp (T, B, 4H) gradient of the gates' pre-activations
    e, dn  (T, B, H) ACC  dn = d of (g_c c_hat + b_c); e = dn g_c, exchanged for LN_1'
    drec   (T, B, 4H)     LN_4'(dp g_hh) = d of h_{t-1} W_hh^T (rows of dW_hh; dh_{t-1} = drec W_hh)
    g_proj (T, B, P)      d of the computed projected h (PROJ; padded rows 0), exchanged for
                          dm = g_proj W_hr (and the rows of dW_hr = sum g_proj^T m after the kernel)

Forward step: A) rec = h W_hh^T; barrier; B) the row statistics of rec, h_hat, gates, c~ and the
carried c; barrier; C) the statistics of c~, tanh_c, h (with a projection m); barrier; D) with a
projection only: h = m W_hr^T over tiles of (B, P); barrier.  Backward step: 0) with a projection
only: g_proj over tiles of (B, P); barrier; 1) d of the output gate and dn (from dm = g_proj W_hr
with a projection); barrier; 2) LN_1' of the cell, the other gates' d; barrier; 3) LN_4' of the
recurrent block; barrier; 4) dh_{t-1} = drec W_hh over tiles of (B, P).  Padded steps keep the
state and pass the gradients on (their rows of dp, dn, drec and g_proj are zero).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import dh_add, emit, grid_sync, keep_row, mm_gates, mm_tile, store_gates, tanh, tile
from .gru import torch_form_tile
from .lstm import cell_update, dh_total, keep_cell, project, proj_grad

EPS = 1e-5                                          # rnnkit.cells.base.LN_EPS


@triton.jit
def _row_stats(buf, stride, col0, rb, B, H, BB: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr):
    """Mean and 1 / sqrt(biased variance + eps) over columns col0 .. col0+H-1 of rows rb (two passes)."""
    rk = tl.arange(0, BH)
    s = tl.zeros((BB,), ACC)
    for k0 in range(0, H, BH):
        kk = k0 + rk
        mk = (rb[:, None] < B) & (kk[None, :] < H)
        s += tl.sum(tl.load(buf + rb[:, None] * stride + col0 + kk[None, :], mask=mk, other=0.0,
                            cache_modifier=".cg").to(ACC), axis=1)
    mean = s / H
    v = tl.zeros((BB,), ACC)
    for k0 in range(0, H, BH):
        kk = k0 + rk
        mk = (rb[:, None] < B) & (kk[None, :] < H)
        x = tl.load(buf + rb[:, None] * stride + col0 + kk[None, :], mask=mk, other=0.0, cache_modifier=".cg")
        d = tl.where(mk, x.to(ACC) - mean[:, None], 0.0)
        v += tl.sum(d * d, axis=1)
    return mean, 1.0 / tl.sqrt(v / H + EPS)


@triton.jit
def _ln_back_means(q, qs, hat, hs_, col0, g, g0, rb, B, H, BB: tl.constexpr, BH: tl.constexpr,
                   ACC: tl.constexpr):
    """mean(q g) and mean(q g a_hat) over columns col0.. of rows rb: the row sums of LN'."""
    rk = tl.arange(0, BH)
    s1 = tl.zeros((BB,), ACC)
    s2 = tl.zeros((BB,), ACC)
    for k0 in range(0, H, BH):
        kk = k0 + rk
        mk = (rb[:, None] < B) & (kk[None, :] < H)
        d = tl.load(q + rb[:, None] * qs + col0 + kk[None, :], mask=mk, other=0.0, cache_modifier=".cg").to(ACC)
        d = d * tl.load(g + g0 + kk, mask=kk < H, other=0.0).to(ACC)[None, :]
        a = tl.load(hat + rb[:, None] * hs_ + col0 + kk[None, :], mask=mk, other=0.0).to(ACC)
        s1 += tl.sum(d, axis=1)
        s2 += tl.sum(d * a, axis=1)
    return s1 / H, s2 / H


@triton.jit
def _ln_back_tile(d, hat, rstd, g, out, t64, rb, rh, m2, B, H, K: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                  ACC: tl.constexpr):
    """out[t] = LN_K'(d[t] g, hat[t]) on the tile, per gate block k: rstd (q - mean(q) - hat mean(q hat)),
    q = d g; d, hat, out (T, B, K*H), rstd (T, B, K)."""
    W = K * H
    d_t = d + t64 * B * W
    hat_t = hat + t64 * B * W
    for k in range(0, K):
        mq, mqa = _ln_back_means(d_t, W, hat_t, W, k * H, g, k * H, rb, B, H, BB, BH, ACC)
        at = rb[:, None] * W + k * H + rh[None, :]
        q = tl.load(d_t + at, mask=m2, other=0.0).to(ACC) \
            * tl.load(g + k * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
        a = tl.load(hat_t + at, mask=m2, other=0.0).to(ACC)
        r = tl.load(rstd + (t64 * B + rb) * K + k, mask=rb < B, other=0.0).to(ACC)
        tl.store(out + t64 * B * W + at, (r[:, None] * (q - mq[:, None] - a * mqa[:, None])).to(out.dtype.element_ty),
                 mask=m2)


@triton.jit(do_not_specialize=["T", "B", "H", "P", "zp"])
def lstm_ln_forward(xn, hs, cs, h32, c32, rec, ct, gates, tanh_c, h_hat, h_rstd, w, gh, gc, bc, wc, wr, ms, m, hd,
                    zh, zc, ht, ctz, mask, sem, T, B, H, P, zp,
                    HAS_BC: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, PEEP: tl.constexpr,
                    PROJ: tl.constexpr, DROP: tl.constexpr, ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                    BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H4 = 4 * H
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):          # A: h_{t-1} W_hh^T
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            ri, rf, rg, ro = mm_gates((hd if DROP else hs) + t64 * B * P, P, w, H, rb, rh, B, H, P, 4, BB, BH, BK,
                                      PREC, ACC)
            at = rec + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            store_gates(at, H, m2, ri, rf, rg, ro, 4)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # B: normalise, gates, c~
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            r_t = rec + t64 * B * H4
            c_prev = tl.load(c32 + own, mask=m2, other=0.0)
            pre0 = _gate_pre(xn, r_t, h_hat, h_rstd, gh, t64, 0, rb, rh, m2, B, H, BB, BH, ACC)
            pre1 = _gate_pre(xn, r_t, h_hat, h_rstd, gh, t64, 1, rb, rh, m2, B, H, BB, BH, ACC)
            pre2 = _gate_pre(xn, r_t, h_hat, h_rstd, gh, t64, 2, rb, rh, m2, B, H, BB, BH, ACC)
            pre3 = _gate_pre(xn, r_t, h_hat, h_rstd, gh, t64, 3, rb, rh, m2, B, H, BB, BH, ACC)
            i, f, g, c, o = cell_update(pre0, pre1, pre2, pre3, c_prev, wc, rh, H, PEEP, ACC)
            tl.store(ct + step, c, mask=m2)
            keep_cell(c, c_prev, ctz, zc, c32, cs, mask, t64, rb, m2, own, step, B, zp, HAS_MASK, SAVE, ZONE, ACC)
            g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            store_gates(g_at, H, m2, i, f, g, o, 4)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # C: the cell's norm, tanh, m (h unprojected)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            mean, rstd = _row_stats(ct + t64 * B * H, H, 0, rb, B, H, BB, BH, ACC)
            c_hat = (tl.load(ct + step, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None]
            a = tl.load(gc + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * c_hat
            if HAS_BC:
                a += tl.load(bc + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            tc = tanh(a)
            tl.store(tanh_c + step, tc.to(tanh_c.dtype.element_ty), mask=m2)
            o = tl.load(gates + t64 * B * H4 + rb[:, None] * H4 + 3 * H + rh[None, :], mask=m2, other=0.0).to(ACC)
            if PROJ:                                              # m_t for the projection, after the barrier
                tl.store(ms + step, (o * tc).to(ms.dtype.element_ty), mask=m2)
            else:
                emit(o * tc, tl.load(h32 + own, mask=m2, other=0.0), hs, h32, m, hd, zh, ht, mask, t64, rb, m2, own,
                     B, H, zp, HAS_MASK, SAVE, DROP, ZONE, ACC)
        nsync += 1
        grid_sync(sem, nsync)
        if PROJ:                                                  # D: h_t = m_t W_hr^T over tiles of (B, P)
            project(ms, wr, hs, h32, m, hd, zh, ht, mask, t64, B, H, P, zp, HAS_MASK, SAVE, DROP, ZONE, BB, BH, BK,
                    PREC, ACC)
            nsync += 1
            grid_sync(sem, nsync)


@triton.jit
def _gate_pre(xn, r_t, h_hat, h_rstd, gh, t64, k, rb, rh, m2, B, H, BB: tl.constexpr, BH: tl.constexpr,
              ACC: tl.constexpr):
    """Gate k's pre-activation of the tile: xn + g_hh LN(h W_hh^T) (saving h_hat and the block's
    1/std, which every tile of the row computes alike)."""
    H4 = 4 * H
    mean, rstd = _row_stats(r_t, H4, k * H, rb, B, H, BB, BH, ACC)
    at = rb[:, None] * H4 + k * H + rh[None, :]
    hat = (tl.load(r_t + at, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None]
    tl.store(h_hat + t64 * B * H4 + at, hat.to(h_hat.dtype.element_ty), mask=m2)
    tl.store(h_rstd + (t64 * B + rb) * 4 + k, rstd.to(h_rstd.dtype.element_ty), mask=rb < B)   # same from each tile
    g = tl.load(gh + k * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
    return tl.load(xn + t64 * B * H4 + at, mask=m2, other=0.0).to(ACC) + g * hat


@triton.jit(do_not_specialize=["T", "B", "H", "P", "bound", "zp"])
def lstm_ln_backward(d_out, dh, dc, dp, e, dn, drec, gates, tanh_c, ct, cs, c0, h_hat, h_rstd, w, gh, gc, wc, wr,
                     g_proj, m, zh, zc, mask, sem, T, B, H, P, bound, zp,
                     HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, PEEP: tl.constexpr,
                     PROJ: tl.constexpr, DROP: tl.constexpr, ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H4 = 4 * H
    nsync = 0
    for back in range(0, T):
        t = T - 1 - back
        t64 = tl.cast(t, tl.int64)
        if PROJ:                                                  # 0: the projected h's gradient g_proj
            proj_grad(dh, d_out, g_proj, zh, mask, t64, B, P, bound, zp, HAS_DOUT, HAS_MASK, CLIP, ZONE, BB, BH, ACC)
            nsync += 1
            grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # 1: d of o, dn; the carries' direct parts
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            if PROJ:                                              # dm = g_proj W_hr; phase 0 has set dh
                dm = mm_tile(tl.zeros((BB, BH), ACC), g_proj + t64 * B * P, P, 1, wr, 1, H, rb, rh, B, H, P, BK,
                             PREC)
            else:
                dm, pass_h, g_h = dh_total(dh, d_out, zh, step, own, m2, bound, zp, HAS_DOUT, CLIP, ZONE, ACC)
            g_cell, pass_c, g_c = dh_total(dc, d_out, zc, step, own, m2, bound, zp, False, CLIP, ZONE, ACC)
            g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            o = tl.load(g_at + 3 * H, mask=m2, other=0.0).to(ACC)
            tc = tl.load(tanh_c + step, mask=m2, other=0.0).to(ACC)
            d_n = tl.where(keep, dm * o * (1.0 - tc * tc), 0.0)
            tl.store(dn + step, d_n, mask=m2)
            tl.store(e + step, d_n * tl.load(gc + rh, mask=rh < H, other=0.0).to(ACC)[None, :], mask=m2)
            d_at = dp + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            tl.store(d_at + 3 * H, tl.where(keep, dm * tc * o * (1.0 - o), 0.0).to(dp.dtype.element_ty), mask=m2)
            # the carries now hold what passes straight to step t-1 (all of it on a padded step);
            # dc's cell part (g_c - pass_c) is kept in dc's place until phase 2 adds the carousel
            if not PROJ:
                tl.store(dh + own, tl.where(keep, pass_h, g_h), mask=m2)
            tl.store(dc + own, tl.where(keep, g_cell, g_c), mask=m2)
            tl.store(e + step + T * B * H, tl.where(keep, pass_c, 0.0), mask=m2)   # pass_c, kept for phase 2
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # 2: LN_1' of the cell, the gates' d
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            step = t64 * B * H + own
            keep = keep_row(mask, t64, B, rb, HAS_MASK)
            mean, rstd = _row_stats(ct + t64 * B * H, H, 0, rb, B, H, BB, BH, ACC)
            # mean(e) and mean(e c_hat), c_hat = (c~ - mean) rstd
            rk = tl.arange(0, BH)
            s1 = tl.zeros((BB,), ACC)
            s2 = tl.zeros((BB,), ACC)
            for k0 in range(0, H, BH):
                kk = k0 + rk
                mk = (rb[:, None] < B) & (kk[None, :] < H)
                at = t64 * B * H + rb[:, None] * H + kk[None, :]
                ev = tl.load(e + at, mask=mk, other=0.0, cache_modifier=".cg").to(ACC)
                ch = tl.load(ct + at, mask=mk, other=0.0, cache_modifier=".cg").to(ACC)
                ch = (ch - mean[:, None]) * rstd[:, None]
                s1 += tl.sum(ev, axis=1)
                s2 += tl.sum(tl.where(mk, ev * ch, 0.0), axis=1)
            c_hat = (tl.load(ct + step, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None]
            ev = tl.load(e + step, mask=m2, other=0.0)
            g_cell = tl.load(dc + own, mask=m2, other=0.0)
            dcell = g_cell + rstd[:, None] * (ev - (s1 / H)[:, None] - c_hat * (s2 / H)[:, None])
            g_at = gates + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            i = tl.load(g_at, mask=m2, other=0.0).to(ACC)
            f = tl.load(g_at + H, mask=m2, other=0.0).to(ACC)
            g = tl.load(g_at + 2 * H, mask=m2, other=0.0).to(ACC)
            d_at = dp + t64 * B * H4 + rb[:, None] * H4 + rh[None, :]
            if PEEP:
                dpo = tl.load(d_at + 3 * H, mask=m2, other=0.0).to(ACC)
                dcell += dpo * tl.load(wc + 2 * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            if t > 0:
                c_prev = tl.load(cs + step - B * H, mask=m2, other=0.0).to(ACC)
            else:
                c_prev = tl.load(c0 + own, mask=m2, other=0.0).to(ACC)
            dpi = dcell * g * i * (1.0 - i)
            dpf = dcell * c_prev * f * (1.0 - f)
            dpg = dcell * i * (1.0 - g * g)
            dc_prev = dcell * f + tl.load(e + step + T * B * H, mask=m2, other=0.0)
            if PEEP:
                dc_prev += dpi * tl.load(wc + rh, mask=rh < H, other=0.0).to(ACC)[None, :] \
                    + dpf * tl.load(wc + H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
            tl.store(d_at, tl.where(keep, dpi, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(d_at + H, tl.where(keep, dpf, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(d_at + 2 * H, tl.where(keep, dpg, 0.0).to(dp.dtype.element_ty), mask=m2)
            tl.store(dc + own, tl.where(keep, dc_prev, g_cell), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # 3: drec = LN_4'(dp g_hh, h_hat)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            _ln_back_tile(dp, h_hat, h_rstd, gh, drec, t64, rb, rh, m2, B, H, 4, BB, BH, ACC)
        nsync += 1
        grid_sync(sem, nsync)
        n_p = tl.cdiv(P, BH)
        for s in range(pid, tl.cdiv(B, BB) * n_p, tl.num_programs(0)):   # 4: dh_{t-1} += drec W_hh (* m), (B, P)
            rb, rh, m2, own = tile(s, n_p, B, P, BB, BH)
            dh_add(dh, drec + t64 * B * H4, H4, H4, w, m, rb, rh, m2, own, B, P, BB, BH, BK, PREC, DROP, ACC)


# -- the layer-normalised GRU (torch's form; math: rnnkit/cells/gru.py) ------------------------------
#   xn (T, B, 3H) = g_ih x_hat (no bias: b_ih sits inside the normalisation);  rec (T, B, 3H) ACC
#   h W_hh^T;  h_hat (T, B, 3H), h_rstd (T, B, 3);  gates (T, B, 3H) r, z, n;  hn_out (T, B, H)
#   g_hh LN(h W_hn^T) + b_hn;  backward: dx (T, B, 3H) d of the x terms, dhid (T, B, 3H) d of the
#   h terms [dar, daz, dan r], drec (T, B, 3H) = LN_3'(dhid g_hh).  Forward: rec; barrier; the
#   statistics, r, z, n, h; barrier.  Backward: dx, dhid; barrier; drec; barrier; dh += drec W_hh.

@triton.jit
def _gru_h_term(r_t, h_hat, h_rstd, gh, bh, t64, k, rb, rh, m2, B, H, HAS_B: tl.constexpr, BB: tl.constexpr,
                BH: tl.constexpr, ACC: tl.constexpr):
    """Gate k's recurrent term of the tile: g_hh LN(h W_hh^T) + b_hh (saving h_hat and 1/std)."""
    H3 = 3 * H
    mean, rstd = _row_stats(r_t, H3, k * H, rb, B, H, BB, BH, ACC)
    at = rb[:, None] * H3 + k * H + rh[None, :]
    hat = (tl.load(r_t + at, mask=m2, other=0.0) - mean[:, None]) * rstd[:, None]
    tl.store(h_hat + t64 * B * H3 + at, hat.to(h_hat.dtype.element_ty), mask=m2)
    tl.store(h_rstd + (t64 * B + rb) * 3 + k, rstd.to(h_rstd.dtype.element_ty), mask=rb < B)   # same from each tile
    term = tl.load(gh + k * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :] * hat
    if HAS_B:
        term += tl.load(bh + k * H + rh, mask=rh < H, other=0.0).to(ACC)[None, :]
    return term


@triton.jit(do_not_specialize=["T", "B", "H", "zp"])
def gru_ln_forward(xn, hs, h32, rec, gates, hn_out, h_hat, h_rstd, w, gh, bh, m, hd, zo, ht, mask, sem, T, B, H, zp,
                   HAS_B: tl.constexpr, HAS_MASK: tl.constexpr, SAVE: tl.constexpr, DROP: tl.constexpr,
                   ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                   ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for t in range(0, T):
        t64 = tl.cast(t, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):          # h_{t-1} W_hh^T
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            rr, rz, rn, _ = mm_gates((hd if DROP else hs) + t64 * B * H, H, w, H, rb, rh, B, H, H, 3, BB, BH, BK,
                                     PREC, ACC)
            at = rec + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            store_gates(at, H, m2, rr, rz, rn, rn, 3)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # normalise, r, z, n, h
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            r_t = rec + t64 * B * H3
            x_at = xn + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            hr = _gru_h_term(r_t, h_hat, h_rstd, gh, bh, t64, 0, rb, rh, m2, B, H, HAS_B, BB, BH, ACC)
            hz = _gru_h_term(r_t, h_hat, h_rstd, gh, bh, t64, 1, rb, rh, m2, B, H, HAS_B, BB, BH, ACC)
            hn = _gru_h_term(r_t, h_hat, h_rstd, gh, bh, t64, 2, rb, rh, m2, B, H, HAS_B, BB, BH, ACC)
            r = tl.sigmoid(tl.load(x_at, mask=m2, other=0.0).to(ACC) + hr)
            z = tl.sigmoid(tl.load(x_at + H, mask=m2, other=0.0).to(ACC) + hz)
            n = tanh(tl.load(x_at + 2 * H, mask=m2, other=0.0).to(ACC) + r * hn)
            h_prev = tl.load(h32 + own, mask=m2, other=0.0)
            emit((1.0 - z) * n + z * h_prev, h_prev, hs, h32, m, hd, zo, ht, mask, t64, rb, m2, own, B, H, zp,
                 HAS_MASK, SAVE, DROP, ZONE, ACC)
            g_at = gates + t64 * B * H3 + rb[:, None] * H3 + rh[None, :]
            store_gates(g_at, H, m2, r, z, n, n, 3)
            tl.store(hn_out + t64 * B * H + own, hn.to(hn_out.dtype.element_ty), mask=m2)
        nsync += 1
        grid_sync(sem, nsync)


@triton.jit(do_not_specialize=["T", "B", "H", "bound", "zp"])
def gru_ln_backward(d_out, dh, dx, dhid, drec, gates, hn, hp, h_hat, h_rstd, w, gh, m, zo, mask, sem,
                    T, B, H, bound, zp,
                    HAS_DOUT: tl.constexpr, HAS_MASK: tl.constexpr, CLIP: tl.constexpr, DROP: tl.constexpr,
                    ZONE: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr):
    pid = tl.program_id(0)
    n_h = tl.cdiv(H, BH)
    tiles = tl.cdiv(B, BB) * n_h
    H3 = 3 * H
    nsync = 0
    for back in range(0, T):
        t64 = tl.cast(T - 1 - back, tl.int64)
        for s in range(pid, tiles, tl.num_programs(0)):          # d of the x terms and of the h terms
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            torch_form_tile(d_out, dh, dx, dhid, gates, hn, hp, zo, mask, t64, rb, rh, m2, own, B, H, bound, zp,
                            HAS_DOUT, HAS_MASK, CLIP, ZONE, ACC)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # drec = LN_3'(dhid g_hh, h_hat)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            _ln_back_tile(dhid, h_hat, h_rstd, gh, drec, t64, rb, rh, m2, B, H, 3, BB, BH, ACC)
        nsync += 1
        grid_sync(sem, nsync)
        for s in range(pid, tiles, tl.num_programs(0)):          # dh_{t-1} += drec W_hh (* m)
            rb, rh, m2, own = tile(s, n_h, B, H, BB, BH)
            dh_add(dh, drec + t64 * B * H3, H3, H3, w, m, rb, rh, m2, own, B, H, BB, BH, BK, PREC, DROP, ACC)
