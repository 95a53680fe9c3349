"""Building blocks shared by the cells' Triton kernels.

Shapes: BB batch rows, BN output columns, BK reduction chunk (all powers of two, >= 16 for
``tl.dot``); ACC the accumulator dtype (float32, float64 for float64 tensors).

    mm_tile(a, sa_b, sa_k, w, sw_n, sw_k, rb, rn, B, N, K, acc)
        acc (BB, BN) += sum_k a[rb, k] * w[rn, k]   (rows of a past B and columns past N read 0)
        a and w are addressed by strides, so one routine gives  h W^T  (forward, w = W as stored)
        and  d W  (backward, w = W read transposed) without copying W.
    mm_gates(a, sa_b, w, gs, rb, rn, B, N, K, NG)
        the NG (<= 4) gate blocks of  a W^T  at once (w's rows g*gs + rn for gate g, row-major with
        K columns): one pass over K loads the a tile once and feeds NG products (more independent
        work per iteration than NG passes); unused accumulators stay zero.
    dot(x, y, acc, PREC)   acc + x @ y; PREC "tf32"/"ieee" as tl.dot's input_precision, or "upcast":
        the operands are cast to float32 first (Triton's interpreter multiplies bfloat16 operands
        wrongly - measured with Triton 3.9 - while float32 products of bfloat16 values are exact)
    grid_sync(sem, n)   the n-th grid barrier of a launch (every program calls it alike)
    emit(h, h_prev, ...)   the epilogue of a new emitted state: zoneout, padding, carry, exchange
    tile(s, n_c, B, C, BB, BC)   tile s of a (B, C) tensor cut in (BB, BC) tiles, n_c tiles a row:
        its rows rb, columns rc, the in-bounds mask and the row-major offsets (BB, BC)
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile(s, n_c, B, C, BB: tl.constexpr, BC: tl.constexpr):
    rb = (s // n_c) * BB + tl.arange(0, BB)
    rc = (s % n_c) * BC + tl.arange(0, BC)
    return rb, rc, (rb[:, None] < B) & (rc[None, :] < C), rb[:, None] * C + rc[None, :]


@triton.jit
def dot(x, y, acc, PREC: tl.constexpr):
    if PREC == "upcast":
        return tl.dot(x.to(tl.float32), y.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(x, y, acc, input_precision=PREC)


@triton.jit
def mm_tile(acc, a, sa_b, sa_k, w, sw_n, sw_k, rb, rn, B, N, K,
            BK: tl.constexpr, PREC: tl.constexpr):
    rk = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        # ".cg": the exchanged tensors were written by other programs on other SMs; skip L1.
        x = tl.load(a + rb[:, None] * sa_b + kk[None, :] * sa_k,
                    mask=(rb[:, None] < B) & (kk[None, :] < K), other=0.0, cache_modifier=".cg")   # (BB, BK)
        y = tl.load(w + rn[None, :] * sw_n + kk[:, None] * sw_k,
                    mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)                         # (BK, BN)
        acc = dot(x, y, acc, PREC)
    return acc


@triton.jit
def store_gates(p, H, m2, a0, a1, a2, a3, NG: tl.constexpr):
    """The tiles a0 .. a(NG-1) (NG = 3 or 4) into the NG gate blocks of H columns that start at the
    tile's pointers p, in p's element type."""
    ty = p.dtype.element_ty
    tl.store(p, a0.to(ty), mask=m2)
    tl.store(p + H, a1.to(ty), mask=m2)
    tl.store(p + 2 * H, a2.to(ty), mask=m2)
    if NG > 3:
        tl.store(p + 3 * H, a3.to(ty), mask=m2)


@triton.jit
def dropped(d, m, own, m2, DROP: tl.constexpr, ACC: tl.constexpr):
    """d * m: a gradient that reached h_{t-1} through a product with the dropout-masked state."""
    if DROP:
        return d * tl.load(m + own, mask=m2, other=0.0).to(ACC)
    else:
        return d


@triton.jit
def dh_add(dh, d, ld, K, w, m, rb, rh, m2, own, B, S, BB: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
           PREC: tl.constexpr, DROP: tl.constexpr, ACC: tl.constexpr):
    """dh_{t-1}[tile] += (d_t W)[tile] (* m): the gradient reaching the previous state (B, S) through
    the recurrent product, from the step's first K columns of d_t (B, ld) and W (K, S).  d_t's rows
    are zero on padded steps, so they add nothing."""
    acc = mm_tile(tl.zeros((BB, BH), ACC), d, ld, 1, w, 1, S, rb, rh, B, S, K, BK, PREC)
    tl.store(dh + own, tl.load(dh + own, mask=m2, other=0.0) + dropped(acc, m, own, m2, DROP, ACC), mask=m2)


@triton.jit
def mm_gates(a, sa_b, w, gs, rb, rn, B, N, K, NG: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr):
    acc0 = tl.zeros((BB, BN), ACC)
    acc1 = tl.zeros((BB, BN), ACC)
    acc2 = tl.zeros((BB, BN), ACC)
    acc3 = tl.zeros((BB, BN), ACC)
    rk = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        x = tl.load(a + rb[:, None] * sa_b + kk[None, :],
                    mask=(rb[:, None] < B) & (kk[None, :] < K), other=0.0, cache_modifier=".cg")   # (BB, BK)
        wm = (rn[None, :] < N) & (kk[:, None] < K)
        w_at = w + rn[None, :] * K + kk[:, None]                                                   # (BK, BN)
        acc0 = dot(x, tl.load(w_at, mask=wm, other=0.0), acc0, PREC)
        if NG > 1:
            acc1 = dot(x, tl.load(w_at + gs * K, mask=wm, other=0.0), acc1, PREC)
        if NG > 2:
            acc2 = dot(x, tl.load(w_at + 2 * gs * K, mask=wm, other=0.0), acc2, PREC)
        if NG > 3:
            acc3 = dot(x, tl.load(w_at + 3 * gs * K, mask=wm, other=0.0), acc3, PREC)
    return acc0, acc1, acc2, acc3


@triton.jit
def grid_sync(sem, n):
    """Wait until every program of the grid has called its n-th barrier.

    ``sem`` is an int32 counter, zero at launch, that only grows: arriving adds 1 (release, so this
    program's stores are visible first), leaving needs n * programs arrivals (acquire, so the
    others' stores are seen).  The bar.syncs order the whole program around its one atomic.
    """
    tl.debug_barrier()
    tl.atomic_add(sem, 1, sem="release", scope="gpu")
    target = n * tl.num_programs(0)
    seen = tl.atomic_add(sem, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(sem, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: tl has no tanh that runs on every Triton and the interpreter
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def act(x, RELU: tl.constexpr):
    if RELU:
        return tl.where(x < 0.0, 0.0, x)     # as torch: NaN passes (a max may drop it on the GPU)
    else:
        return tanh(x)


@triton.jit
def act_grad(y, dy, RELU: tl.constexpr):
    """Gradient through tanh or relu written with the activation's output y."""
    if RELU:
        return tl.where(y <= 0.0, 0.0, dy)
    else:
        return dy * (1.0 - y * y)


@triton.jit
def clip(d, CLIP: tl.constexpr, bound):
    if CLIP:
        nan = tl.PropagateNan.ALL                  # as torch.clamp: a NaN gradient stays NaN
        return tl.minimum(tl.maximum(d, -bound, propagate_nan=nan), bound, propagate_nan=nan)
    else:
        return d


@triton.jit
def keep_row(mask, t, B, rb, HAS_MASK: tl.constexpr):
    """(BB, 1) bool: True where step t is inside sequence b (always, without lengths)."""
    if HAS_MASK:
        return (tl.load(mask + t * B + rb, mask=rb < B, other=0) != 0)[:, None]
    else:
        return (rb >= 0)[:, None]


@triton.jit
def zone(z, step, m2, zp, ZONE: tl.constexpr, ACC: tl.constexpr):
    """Zoneout's z_t at a tile: the drawn tensor (ZONE 1, training) or the constant zp (ZONE 2, eval)."""
    if ZONE == 1:
        return tl.load(z + step, mask=m2, other=0.0).to(ACC)
    else:
        return zp


@triton.jit
def emit(h, h_prev, hs, h32, m, hd, zo, ht, mask, t64, rb, m2, own, B, S, zp, HAS_MASK: tl.constexpr,
          SAVE: tl.constexpr, DROP: tl.constexpr, ZONE: tl.constexpr, ACC: tl.constexpr):
    """The new emitted state h (B, S) of a tile: zoneout's mix (the computed h saved in ht), a padded
    step keeping the state, the carry h32 and the exchanged hs[t+1] (and h * m into hd[t+1], what
    the next step's product reads under recurrent dropout)."""
    step = t64 * B * S + own
    if ZONE != 0:
        if SAVE:
            tl.store(ht + step, h.to(ht.dtype.element_ty), mask=m2)
        h = h + zone(zo, step, m2, zp, ZONE, ACC) * (h_prev - h)
    h = tl.where(keep_row(mask, t64, B, rb, HAS_MASK), h, h_prev)
    tl.store(h32 + own, h, mask=m2)
    tl.store(hs + B * S + step, h.to(hs.dtype.element_ty), mask=m2)
    if DROP:
        tl.store(hd + B * S + step, (h * tl.load(m + own, mask=m2, other=0.0).to(ACC)).to(hd.dtype.element_ty),
                 mask=m2)
