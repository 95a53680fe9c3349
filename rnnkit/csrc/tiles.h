// Register tiles of the fused float32 AVX-512 time loops, generic over a cell's number of gate
// blocks NG (GRU 3, LSTM 4).  A step's hidden units are split into blocks of 16 (one vector);
// per block and per tile of batch rows (by_row_tiles: up to kRows = 4, or the cell's own maximum;
// the GRU's 8 rows of 3 sums fill 24 of the 32 vector registers):
//   forward   gate_sums: the NG gate sums h_{t-1} W_hh^T of the block stay in registers from the
//             first FMA to the cell's activations, from W_hh packed once per sequence by
//             pack_gate_blocks;
//   backward  dh_tile: dh_{t-1}[:, block] += d_rec W_hh[:, block], from W_hh packed once per
//             sequence by pack_unit_blocks (d_rec may come in parts: RowsPart).
// The cells' gate math stays in their files; the time loop is owned_blocks (simd.h).
#pragma once

#include "loop.h"
#include "simd.h"

#ifdef RNNKIT_AVX512

#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace rnnkit {

constexpr int64_t kRows = 4;                                   // batch rows per register tile

// f(std::integral_constant<int, R>, b0) for the tile of the last n < R rows from b0, if any.
template <int R, typename F>
void last_rows(int64_t n, int64_t b0, const F& f) {
  if constexpr (R > 0) {
    if (n == R)
      f(std::integral_constant<int, R>(), b0);
    else
      last_rows<R - 1>(n, b0, f);
  }
}

// f(std::integral_constant<int, R>, b0) for the tiles of R <= Max rows that cover B rows.
template <int Max = kRows, typename F>
void by_row_tiles(int64_t B, const F& f) {
  int64_t b0 = 0;
  for (; b0 + Max <= B; b0 += Max) f(std::integral_constant<int, Max>(), b0);
  last_rows<Max - 1>(B - b0, b0, f);
}

// by_row_tiles over the B rows of a step whose rows from n on are all padded (Mask::live):
// f(rows, b0, true) on the tiles of rows 0 .. n-1, f(rows, b0, false) on the padded rest, whose
// tiles skip the recurrent products (the layers sort a batch by length, so a step's finished
// sequences are its last rows).  Given r0 and r1, only rows r0 .. r1-1 (a thread's, owned_rows).
template <int Max = kRows, typename F>
void by_live_tiles(int64_t n, int64_t B, const F& f, int64_t r0 = 0, int64_t r1 = -1) {
  if (r1 < 0) r1 = B;
  const int64_t live = std::min(std::max(n, r0), r1);
  by_row_tiles<Max>(live - r0, [&](auto rows, int64_t k) { f(rows, r0 + k, true); });
  by_row_tiles<Max>(r1 - live, [&](auto rows, int64_t k) { f(rows, live + k, false); });
}

// by_row_tiles over rows r0 .. r1-1.
template <int Max = kRows, typename F>
void by_row_tiles(int64_t r0, int64_t r1, const F& f) {
  by_row_tiles<Max>(std::max<int64_t>(0, r1 - r0), [&](auto rows, int64_t k) { f(rows, r0 + k); });
}

// f(c...) with one std::bool_constant per flag: a loop's options chosen once per call, so that
// each combination is its own instance and the absent ones cost nothing inside the loop.
template <typename F>
void with_flags(const F& f) {
  f();
}
template <typename F, typename... Rest>
void with_flags(const F& f, bool first, Rest... rest) {
  if (first)
    with_flags([&](auto... c) { f(std::true_type(), c...); }, rest...);
  else
    with_flags([&](auto... c) { f(std::false_type(), c...); }, rest...);
}

// Asks for the vectors x + r ld + g gap (r < R, g < NG) to be brought into L1 ahead of use: a
// tile's xp rows (T, B, NG H), written by the projection before the loop, are in L2 or L3 by
// their step (2 MiB at (8, 128) for the LSTM), and their loads come after the tile's sums in
// program order, out of the out-of-order window's reach, so each missed there.  Issued before
// the sums, they arrive while the FMAs run.
template <int R, int NG>
inline void prefetch_rows(const float* x, int64_t ld, int64_t gap) {
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g) _mm_prefetch(reinterpret_cast<const char*>(x + r * ld + g * gap), _MM_HINT_T0);
}

// act(a) and act'(h) dh of 16 lanes of Elman's and Jordan's hidden units (activations.h's
// hidden_act, hidden_grad): relu keeps NaN (max returns its second operand when one is NaN), and
// its gradient is zero only where h <= 0.
template <bool Relu>
inline simd::V act(simd::V a) {
  return Relu ? _mm512_max_ps(_mm512_setzero_ps(), a) : simd::tanh(a);
}
template <bool Relu>
inline simd::V act_grad(simd::V h, simd::V dh) {
  const simd::V zero = _mm512_setzero_ps();
  if (Relu) return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(h, zero, _CMP_LE_OQ), dh, zero);
  return _mm512_mul_ps(dh, _mm512_fnmadd_ps(h, h, simd::splat(1.0f)));
}

// z_t's lanes of state k, row b, units j0.. (its draws; the constant p in eval), as a vector.
inline simd::V zone_lanes(const Noise<float>& nz, int64_t t, int k, int64_t b, int64_t H, int64_t j0, __mmask16 m) {
  const float* z = nz.z(t, k, b, H);
  return z != nullptr ? simd::load(z + j0, m) : simd::splat(nz.p);
}

// What the fused loops of a one-state cell (Elman, GRU) read besides the weights and rows: the
// noise, zoneout's buffer of the h the cell computed (forward with save; else nullptr), the clip.
struct FusedOpts {
  Noise<float> nz;
  float* upd;
  float clip;
};

// zone_lanes of a one-state cell's h.
inline simd::V zone_at(const FusedOpts& o, int64_t t, int64_t b, int64_t H, int64_t j0, __mmask16 m) {
  return zone_lanes(o.nz, t, 0, b, H, j0, m);
}

// One operand kept in a register (simd.h's keep_in_registers, for one).
inline void keep_in_register(simd::V& a) { asm("" : "+v"(a)); }

// The recurrent weights w (NG*H, K) packed per block of 16 of the H output units, the NG gates'
// rows of a block next to each other (K, the length of the sums, is H but for a projected LSTM):
//   wp  (nb, K, NG, 16)   wp[jb, k, g, u] = w[g*H + 16*jb + u, k] (zero past H).
// Packed once per call, so its cost is the call's fixed cost at short T: tiles of 16 rows x 16
// columns transposed in registers and stored whole (rows past H loaded as zeros: no zero pass),
// on the calling thread (split over threads it woke the pool for a few microseconds of work: a
// two-thread Elman's fwd+bwd at (8, 128), T = 16, lost 18%).
inline at::Tensor pack_gate_blocks(const float* w, int64_t H, int64_t NG, int64_t K = -1) {
  using namespace simd;
  if (K < 0) K = H;
  const int64_t nb = (H + kLanes - 1) / kLanes;
  at::Tensor packed = at::empty({nb * K * NG * kLanes}, at::kFloat);
  float* p = packed.data_ptr<float>();
  for (int64_t jb = 0; jb < nb; ++jb)
    for (int64_t g = 0; g < NG; ++g) {
      const int64_t n = std::min(kLanes, H - jb * kLanes);
      const float* rows = w + (g * H + jb * kLanes) * K;      // row u of the block at rows + u K
      float* out = p + (jb * K * NG + g) * kLanes;
      for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
        const __mmask16 m = lanes(K - k0);
        V r[kLanes];
        for (int64_t u = 0; u < kLanes; ++u) r[u] = u < n ? load(rows + u * K + k0, m) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t k = 0; k < std::min(kLanes, K - k0); ++k) _mm512_storeu_ps(out + (k0 + k) * NG * kLanes, r[k]);
      }
    }
  return packed;
}

// acc[r][g] += sum_k h[r, k] (* m[r, k]) wp[k, g]: a block's NG gate sums of R rows (hp: R rows,
// ld H; mr: the rows' recurrent masks with Drop; wp: the block's (H, NG, 16) of pack_gate_blocks;
// H is the sums' length K there).
// An FMA waits about 4 cycles for the one before it on the same sum, so fewer than 4 sums in
// flight (a GRU's single row) also keep a second set for odd k.
template <int R, int NG, bool Drop>
inline void gate_sums(const float* wp, int64_t H, const float* hp, const float* const* mr, simd::V (&acc)[R][NG]) {
  using namespace simd;
  constexpr int S = R * NG >= 4 ? 1 : 2;                       // sets of sums
  V sums[S][R][NG];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < NG; ++g) sums[s][r][g] = s == 0 ? acc[r][g] : _mm512_setzero_ps();
  const float* w = wp;
  int64_t k = 0;
  for (; k + S <= H; k += S, w += S * NG * kLanes)
    for (int s = 0; s < S; ++s) {
      V wg[NG];
      for (int g = 0; g < NG; ++g) wg[g] = _mm512_loadu_ps(w + (s * NG + g) * kLanes);
      for (int g = 0; g < NG; ++g) keep_in_register(wg[g]);
      for (int r = 0; r < R; ++r) {
        const V h = splat(Drop ? hp[r * H + k + s] * mr[r][k + s] : hp[r * H + k + s]);
        for (int g = 0; g < NG; ++g) sums[s][r][g] = _mm512_fmadd_ps(h, wg[g], sums[s][r][g]);
      }
    }
  for (; k < H; ++k, w += NG * kLanes)                         // S = 2 and H odd: the last k
    for (int r = 0; r < R; ++r) {
      const V h = splat(Drop ? hp[r * H + k] * mr[r][k] : hp[r * H + k]);
      for (int g = 0; g < NG; ++g) sums[0][r][g] = _mm512_fmadd_ps(h, _mm512_loadu_ps(w + g * kLanes), sums[0][r][g]);
    }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < NG; ++g) {
      acc[r][g] = sums[0][r][g];
      for (int s = 1; s < S; ++s) acc[r][g] = _mm512_add_ps(acc[r][g], sums[s][r][g]);
    }
}

// acc[r] = sum_k h[r, k] (* m[r, k]) w[16*jb + u, k] for one block of a single matrix packed by
// pack_gate_blocks with NG = 1 ((nb, K, 1, 16)), K the sums' length and hp's ld; zero without sums
// (a tile of padded rows only); mr: the rows' recurrent masks with Drop.
template <int R, bool Drop>
inline void block_sums(const float* wp, int64_t jb, int64_t K, const float* hp, const float* const* mr, bool sums,
                       simd::V (&acc)[R][1]) {
  for (int r = 0; r < R; ++r) acc[r][0] = _mm512_setzero_ps();
  if (sums) gate_sums<R, 1, Drop>(wp + jb * K * simd::kLanes, K, hp, mr, acc);
}

// The recurrent weights w (G, H) packed per block of 16 hidden units (columns of w):
//   wn  (nb, G, 16)   wn[jb, k, u] = w[k, 16*jb + u] (zero past H).
// Each output vector whole from a masked load (no zero pass).
inline at::Tensor pack_unit_blocks(const float* w, int64_t G, int64_t H) {
  const int64_t nb = (H + simd::kLanes - 1) / simd::kLanes;
  at::Tensor packed = at::empty({nb * G * simd::kLanes}, at::kFloat);
  float* p = packed.data_ptr<float>();
  for (int64_t jb = 0; jb < nb; ++jb) {
    const __mmask16 m = simd::lanes(H - jb * simd::kLanes);
    for (int64_t k = 0; k < G; ++k)
      _mm512_storeu_ps(p + (jb * G + k) * simd::kLanes, simd::load(w + k * H + jb * simd::kLanes, m));
  }
  return packed;
}

// Columns k0 .. k0+K-1 of the gradient rows d_rec (R rows from d, ld apart): a part of d_rec that
// is not stored as one row (a GRU's dx_r, dx_z in one buffer, its drn in another).
struct RowsPart {
  const float* d;
  int64_t ld, k0, K;
};

// acc[a][r] += sum_k d[r, k] w[k] over a part (w: the block's (G, 16) of pack_unit_blocks), the
// k spread over the A sums of a row (A R sums in flight: an FMA waits about 4 cycles for the one
// before it on the same sum; shorter sums also round less).
template <int A, int R>
inline void part_products(const RowsPart& p, const float* w, simd::V (&acc)[A][R]) {
  using namespace simd;
  w += p.k0 * kLanes;
  int64_t k = 0;
  for (; k + 4 <= p.K; k += 4, w += 4 * kLanes) {             // four k at a time: four weight loads per R rows
    V w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32), w3 = _mm512_loadu_ps(w + 48);
    keep_in_registers(w0, w1, w2, w3);
    for (int r = 0; r < R; ++r) {
      const float* d = p.d + r * p.ld + k;
      acc[0][r] = _mm512_fmadd_ps(splat(d[0]), w0, acc[0][r]);
      acc[1 % A][r] = _mm512_fmadd_ps(splat(d[1]), w1, acc[1 % A][r]);
      acc[2 % A][r] = _mm512_fmadd_ps(splat(d[2]), w2, acc[2 % A][r]);
      acc[3 % A][r] = _mm512_fmadd_ps(splat(d[3]), w3, acc[3 % A][r]);
    }
  }
  for (; k < p.K; ++k, w += kLanes) {
    const V w0 = _mm512_loadu_ps(w);
    for (int r = 0; r < R; ++r) acc[k % A][r] = _mm512_fmadd_ps(splat(p.d[r * p.ld + k]), w0, acc[k % A][r]);
  }
}

// sum[r] += d[r] w over the parts of R rows of gradients (w: one block's (G, 16) of
// pack_unit_blocks), the k spread over A partial sums of a row (part_products).
template <int R, size_t NP>
inline void unit_sums(const RowsPart (&parts)[NP], const float* w, simd::V (&sum)[R]) {
  constexpr int A = R == 1 ? 4 : 2;                              // sums per row
  simd::V acc[A][R];
  for (int a = 0; a < A; ++a)
    for (int r = 0; r < R; ++r) acc[a][r] = a == 0 ? sum[r] : _mm512_setzero_ps();
  for (const RowsPart& p : parts) part_products<A, R>(p, w, acc);
  for (int r = 0; r < R; ++r) {
    sum[r] = acc[0][r];
    for (int a = 1; a < A; ++a) sum[r] = _mm512_add_ps(sum[r], acc[a][r]);
  }
}

// out (R rows, ld H) [block jb] += d_rec wn[jb] with d_rec (R, G) given in parts, times the rows'
// recurrent masks mr[r] (ld H) with Drop (recurrent dropout).
template <int R, bool Drop, size_t NP>
void dh_tile(const RowsPart (&parts)[NP], const float* wn, int64_t G, int64_t H, int64_t jb, float* out,
             const float* const* mr) {
  using namespace simd;
  const int64_t j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  V sum[R];
  for (int r = 0; r < R; ++r) sum[r] = Drop ? _mm512_setzero_ps() : load(out + r * H + j0, m);
  unit_sums<R>(parts, wn + jb * G * kLanes, sum);
  for (int r = 0; r < R; ++r) {
    if (Drop) sum[r] = _mm512_fmadd_ps(sum[r], load(mr[r] + j0, m), load(out + r * H + j0, m));
    store(out + r * H + j0, sum[r], m);
  }
}

// The same with d_rec one buffer dg (R rows, ld G).
template <int R, bool Drop>
void dh_tile(const float* dg, int64_t G, const float* wn, int64_t H, int64_t jb, float* out,
             const float* const* mr) {
  const RowsPart parts[1] = {{dg, G, 0, G}};
  dh_tile<R, Drop>(parts, wn, G, H, jb, out, mr);
}

// The dh phase of a fused backward step t: dh_{t-1}[rows r0 .. r1-1, block jb] (out, (B, H)) +=
// d_rec W_hh[:, block jb], times the rows' recurrent masks m_t with Drop, in tiles of up to Max
// rows; step: d_rec's parts at row 0 of the step (a tile reads them from its first row on).  The
// caller ends r1 at the step's live rows (Mask::live): the padded rows after them have d_rec = 0.
template <int Max, bool Drop, size_t NP>
void dh_rows(const RowsPart (&step)[NP], const Noise<float>& nz, const float* wn, int64_t G, int64_t H, int64_t t,
             int64_t jb, int64_t r0, int64_t r1, float* out) {
  by_row_tiles<Max>(r0, r1, [&](auto rows, int64_t b0) {
    constexpr int R = decltype(rows)::value;
    const float* mr[R] = {};
    for (int r = 0; Drop && r < R; ++r) mr[r] = nz.mask(t, b0 + r, H);
    RowsPart parts[NP];
    for (size_t k = 0; k < NP; ++k) parts[k] = {step[k].d + b0 * step[k].ld, step[k].ld, step[k].k0, step[k].K};
    dh_tile<R, Drop>(parts, wn, G, H, jb, out + b0 * H, mr);
  });
}

// dh_t and dh_{t-1} of a fused backward loop, two (B, S_0) buffers that alternate: step s of the
// loop (t = T-1-s) reads dh_t from cur(s) and sets dh_{t-1} in next(s); the first cur is d_final
// (or zeros).  After the loop's Tn steps, grad0(Tn) is dh_0.
struct Carried {
  at::Tensor buf[2];
  float* p[2];
  explicit Carried(const BwdArgs& a)
      : buf{final_grad(a, 0), at::empty(a.state0[0].sizes(), a.states[0].options())},
        p{buf[0].data_ptr<float>(), buf[1].data_ptr<float>()} {}
  float* cur(int64_t s) const { return p[s % 2]; }
  float* next(int64_t s) const { return p[(s + 1) % 2]; }
  const at::Tensor& grad0(int64_t Tn) const { return buf[Tn % 2]; }
};

// Layer norm's statistics of xp (rows, NG*H), taken for all T*B rows before a fused loop (they do
// not depend on the recurrence): (rows, 2 NG), each row's NG block means, then their rstds.
inline at::Tensor xp_block_stats(const float* xp, int64_t rows, int64_t NG, int64_t H) {
  at::Tensor st = at::empty({rows, 2 * NG}, at::kFloat);
  float* s = st.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = 0; k < NG; ++k) simd::block_stats(H, xp + (r * NG + k) * H, s[r * 2 * NG + k], s[r * 2 * NG + NG + k]);
  });
  return st;
}

// One row's statistics in a step of a fused layer-norm loop: xp's (its row of xp_block_stats)
// and those of raw, the row's h_{t-1} W_hh^T (NG blocks of H), and the normalised vectors.
template <int NG>
struct LnRow {
  const float *x_mean, *x_rstd;
  float h_mean[NG], h_rstd[NG];
  LnRow(int64_t H, const float* x_stats, const float* raw) : x_mean(x_stats), x_rstd(x_stats + NG) {
    for (int g = 0; g < NG; ++g) simd::block_stats(H, raw + g * H, h_mean[g], h_rstd[g]);
  }
  // the rstds into the saved rows x_rstd, h_rstd (NG each)
  void save(float* xr, float* hr) const { std::copy_n(x_rstd, NG, xr), std::copy_n(h_rstd, NG, hr); }
  simd::V x_hat(int g, simd::V x) const { return norm(x, x_mean[g], x_rstd[g]); }
  simd::V h_hat(int g, simd::V r) const { return norm(r, h_mean[g], h_rstd[g]); }
  static simd::V norm(simd::V a, float mean, float rstd) {
    return _mm512_mul_ps(_mm512_sub_ps(a, simd::splat(mean)), simd::splat(rstd));
  }
};

}  // namespace rnnkit

#endif
