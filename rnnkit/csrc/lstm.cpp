// LSTM over a whole sequence, forward and backward through time (gate order i, f, g, o).
//
// Tensors (T steps, B batch, H hidden, P = proj_size if projected else H):
//   xp       (T, B, 4H)   x W_ih^T + b_ih                             input, read only
//   h0 (B, P), c0 (B, H)  initial states                               input, read only
//   w_hh     (4H, P), b_hh (4H) | None
//   w_hr     (P, H)       projection only: h_t = m_t W_hr^T, m_t = o_t * tanh(c_t)
//   w_ch     (3H)         peephole only: [w_ci, w_cf, w_co] (c_{t-1} into i, f; c_t into o)
//   noise    (T, B, H)    recurrent mask m_t and/or zoneout's z_t of h and of c (rnn.h), read only
//   hs (T, B, P), cs (T, B, H)   h_t and c_t: the states, saved for backward
//   gates    (T, B, 4H)   post-activation [i, f, g, o]: saved ("gates") and traced
//   tanh_c   (T, B, H)    tanh(c_t): saved ("tanh_c")
//   h_update (T, B, P), c_update (T, B, H)  zoneout with save: the h_t, c_t the cell computed, saved
//   m        (B, H)       projection, forward workspace: o * tanh(c_t) of the step (the GEMM's input)
//            Without save, gates and tanh_c are (B, .) workspaces reused by every step (and the
//            updates are not kept).  With save, their rows of padded steps are zero (written, so
//            that runs are reproducible).
//   hd       (B, H)       recurrent dropout, forward workspace of the GEMM path: h_{t-1} * m_t (the
//                         fused path multiplies as it reads h)
//   dg       (T, B, 4H)   backward: d pre-activation = d_xp, returned; also the rows of the
//                         post-loop GEMM dW_hh = dg^T [h0; hs[:-1]]
//   dh, dh_prev (B, P)    backward: carried dh and the next one (backward_steps, loop.h)
//   dm       (B, H)       projection, backward workspace: dh_t W_hr, what the gate rows read as dh
//   dh_all   (T, B, P)    projection, backward: dh_t of every step (zero on padded rows), for the
//                         post-loop dW_hr = dh_all^T m_all, m_all = o * tanh_c (T, B, H)
//   dc       (B, H)       backward: carried dc, updated in place
// Layer normalisation (norm.h; rec params g_ih (4H), g_hh (4H), g_c (H), b_c (H) | None after the
// others), pre = g_ih * x_hat + g_hh * h_hat + b_hh and tanh_c = tanh(g_c * c_hat + b_c):
//   x_hat, h_hat (T, B, 4H), x_rstd, h_rstd (T, B, 4)   xp and h_{t-1} W_hh^T normalised per gate
//            block, and their 1/std: saved (without save, (B, .) workspaces)
//   ln_pre   (B, 4H)      forward workspace: zeros, the x-term of forward_row (pre is in gates)
//   dp       (T, B, 4H)   backward: d pre (the gate rows); d_xp = LN'(dp g_ih), returned as dx
//   dx       (T, B, 4H)   backward: d_xp; a row's first H are its workspace for LN'(dn g_c) first
//            (dg then holds d_rec = LN'(dp g_hh), the rows of dh_{t-1} and of dW_hh)
//   dn, c_hat (T, B, H)   backward: dn = dm o (1 - tanh_c^2), c~_t normalised: dg_c, db_c sums
// Post-loop with it: db_hh = sum dp, dg_ih = sum dp x_hat, dg_hh = sum dp h_hat,
// dg_c = sum dn c_hat, db_c = sum dn (and dw_ch from dp).
// The fused float32 layer-norm loops (forward_fused_ln, backward_fused_ln) also use
//   raw      (B, 4H)      forward workspace: h_{t-1} W_hh^T of the step (h_hat is written beside it)
//   x_st     (T*B, 8)     forward: xp's four block means and rstds, taken before the loop
//   cn       (B, H)       forward, zoneout without save: c~ of the step (else c~ goes to c_update[t]
//                         with zoneout, and to cs[t] itself without)
//   c_rstd   (T*B)        backward: the rstd of c~ of every row, beside c_hat (both before the loop)
// and take the post-loop sums above (and dw_ch) inside the loop, so that their backward's dp is a
// (B, 4H) and dn a (B, H) workspace of one step; dx = d_xp is written in the loop, not used as a
// workspace of LN'(dn g_c).
// The fused float32 forward with a projection (forward_fused_proj) writes what forward_impl
// writes, m its (B, H) workspace shared by the step's two phases; the fused backward
// (backward_fused_proj) writes what backward_impl writes, dm of a tile of rows kept in registers.
//   dhd      (B, H)       recurrent dropout, backward workspace of the GEMM path: dg_t W_hh, added
//                         to dh_{t-1} times m_t
// Post-loop: dW_hh = dg^T [h0; hs[:-1]] (recurrent dropout: the masked previous states), dW_hr,
// db_hh = sum dg, dw_ch = [sum di c_{t-1}, sum df c_{t-1}, sum do c~_t] (c~: before zoneout).
// Aliasing: the step GEMM writes h_{t-1} W_hh^T into gates[t], which the gate pass overwrites
// in place with the activations.  The fused layer-norm loops: without save, gates (B, 4H) carries
// o from a step's gates phase to its cell phase; backward overwrites the carried dh_t in place
// with what reaches h~_t (clipped, times 1 - z under zoneout) between its carried and cell phases.
#include "activations.h"
#include "gate_rows.h"
#include "gemm.h"
#include "loop.h"
#include "norm.h"
#include "rnn.h"
#include "simd.h"
#include "tiles.h"

#include <ATen/Dispatch.h>

namespace rnnkit {
namespace {

using lstm_rows::backward_row;
using lstm_rows::forward_row;

// Where the rec params hold the peephole weights: after weight_hh, bias_hh (and weight_hr).
inline size_t peep_index(const Spec& sp) { return sp.proj > 0 ? 3 : 2; }

// The peephole weights (3H), or 3H zeros without peepholes (the rows then add nothing).
Tensor peep_or_zeros(const Spec& sp, const OptTensors& rec, int64_t H, const at::TensorOptions& opt) {
  return sp.peephole ? *rec[peep_index(sp)] : at::zeros({3 * H}, opt);
}

// Layer normalisation's parameters: the gains g_ih, g_hh (4H), g_c (H) and b_c (H; zeros when None).
template <typename T>
struct LnParams {
  Tensor b_c_t;
  const T *g_ih, *g_hh, *g_c, *b_c;
  LnParams(const Spec& sp, const OptTensors& rec, int64_t H, const at::TensorOptions& opt) {
    const size_t k = 2 + (sp.proj > 0) + sp.peephole;         // after weight_hh, bias_hh, weight_hr, weight_ch
    b_c_t = or_zeros(rec[k + 3], H, opt);
    g_ih = rec[k]->data_ptr<T>(), g_hh = rec[k + 1]->data_ptr<T>(), g_c = rec[k + 2]->data_ptr<T>();
    b_c = b_c_t.data_ptr<T>();
  }
};

// c~_t (T, B, H): the cell the step computed (before zoneout), c_t itself without zoneout.
const Tensor& cell_computed(const Spec& sp, const BwdArgs& a) {
  return sp.zoneout > 0 ? a.saved[sp.layer_norm ? 7 : 3] : a.states[1];
}

// Layer-normalised forward of one row: g holds h_{t-1} W_hh^T on entry and the gates on exit;
// x_hat, x_rstd, h_hat, h_rstd (the rows of the header's tensors) are written; zero: 4H zeros.
template <typename T>
void forward_row_ln(int64_t H, const LnParams<T>& ln, T* g, const T* x, const T* bias, const T* peep,
                    const T* c_prev, T* c, T* tc, T* h, T* x_hat, T* x_rstd, T* h_hat, T* h_rstd, const T* zero) {
  norm_blocks(4, H, x, x_hat, x_rstd);
  norm_blocks(4, H, static_cast<const T*>(g), h_hat, h_rstd);
  for (int64_t j = 0; j < 4 * H; ++j) g[j] = ln.g_ih[j] * x_hat[j] + ln.g_hh[j] * h_hat[j];
  forward_row(H, g, zero, bias, peep, c_prev, c, tc, h);     // + b_hh; tc, h are redone below
  norm_block(H, static_cast<const T*>(c), tc);               // c_hat
  for (int64_t j = 0; j < H; ++j) {
    tc[j] = tanh_(ln.g_c[j] * tc[j] + ln.b_c[j]);
    h[j] = g[3 * H + j] * tc[j];
  }
}

// bufs: lstm_buffers' [hs, cs, gates, tanh_c, h_update | undefined, c_update | undefined,
// m | undefined, x_hat, x_rstd, h_hat, h_rstd, ln_pre (layer norm; else undefined)].
template <typename T>
void forward_impl(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4, G = 4 * H, P = bufs[0].size(2);
  const bool proj = sp.proj > 0;
  const Mask mask(a.mask, B);
  const Noise<T> nz(sp, a.noise);
  const Tensor bias_t = or_zeros(a.rec[1], G, a.xp.options()), peep_t = peep_or_zeros(sp, a.rec, H, a.xp.options());
  const Tensor hd_t = nz.drop ? at::empty({B, P}, a.xp.options()) : Tensor();
  const T *xp = a.xp.data_ptr<T>(), *w = a.rec[0]->data_ptr<T>(), *bias = bias_t.data_ptr<T>();
  const T *peep = peep_t.data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>(), *c0 = a.state0[1].data_ptr<T>();
  T *H_ = bufs[0].data_ptr<T>(), *C_ = bufs[1].data_ptr<T>(), *G_ = bufs[2].data_ptr<T>(), *TC = bufs[3].data_ptr<T>();
  T* upd[2] = {bufs[4].defined() ? bufs[4].data_ptr<T>() : nullptr, bufs[5].defined() ? bufs[5].data_ptr<T>() : nullptr};
  T* hd = nz.drop ? hd_t.data_ptr<T>() : nullptr;
  T* M = proj ? bufs[6].data_ptr<T>() : nullptr;
  const StepWeight<T> w_t(Op::T, B, G, P, w, P, Tn);          // h W_hh^T
  c10::optional<StepWeight<T>> w_r;                           // m W_hr^T
  if (proj) w_r.emplace(Op::T, B, P, H, a.rec[2]->data_ptr<T>(), H, Tn);
  const bool ln = sp.layer_norm;
  c10::optional<LnParams<T>> lnp;
  if (ln) lnp.emplace(sp, a.rec, H, a.xp.options());
  T* LN[4] = {nullptr, nullptr, nullptr, nullptr};           // x_hat, x_rstd, h_hat, h_rstd
  const int64_t ln_n[4] = {G, 4, G, 4};
  for (int k = 0; ln && k < 4; ++k) LN[k] = bufs[7 + k].data_ptr<T>();
  const T* zero = ln ? bufs[11].data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < Tn; ++t) {
    const T* hp = t ? H_ + (t - 1) * B * P : h0;
    const T* cp = t ? C_ + (t - 1) * B * H : c0;
    T* gt = a.save ? G_ + t * B * G : G_;                     // (B, 4H)
    T* tct = a.save ? TC + t * B * H : TC;                    // (B, H)
    T* lnt[4];                                                // (B, .) each
    for (int k = 0; ln && k < 4; ++k) lnt[k] = a.save ? LN[k] + t * B * ln_n[k] : LN[k];
    const int64_t n = mask.live(t);                           // rows past n: padded, copied below
    if (hd != nullptr)
      for (int64_t b = 0; b < n; ++b) mul_to(P, hd + b * P, hp + b * P, nz.mask(t, b, P));
    w_t.mul(hd != nullptr ? hd : hp, P, T(0), gt, G, n);
    for_rows(B, G, [&](int64_t b) {
      const int64_t row = t * B + b;
      T* h = H_ + row * P;
      T* c = C_ + row * H;
      if (mask.valid(t, b)) {
        if (ln)
          forward_row_ln(H, *lnp, gt + b * G, xp + row * G, bias, peep, cp + b * H, c, tct + b * H,
                         proj ? M + b * H : h, lnt[0] + b * G, lnt[1] + b * 4, lnt[2] + b * G, lnt[3] + b * 4, zero);
        else
          forward_row(H, gt + b * G, xp + row * G, bias, peep, cp + b * H, c, tct + b * H, proj ? M + b * H : h);
        if (nz.zoneout()) {
          if (!proj) zone_row(H, h, hp + b * H, nz.z(t, 0, b, H), nz.p, upd[0] ? upd[0] + row * H : nullptr);
          zone_row(H, c, cp + b * H, nz.z(t, 1, b, H), nz.p, upd[1] ? upd[1] + row * H : nullptr);
        }
      } else {                                                // padded: the state stays
        std::memcpy(h, hp + b * P, P * sizeof(T));
        std::memcpy(c, cp + b * H, H * sizeof(T));
        if (a.save) std::fill_n(gt + b * G, G, T(0)), std::fill_n(tct + b * H, H, T(0));
        for (int k = 0; a.save && ln && k < 4; ++k) std::fill_n(lnt[k] + b * ln_n[k], ln_n[k], T(0));
        if (upd[0] != nullptr) std::fill_n(upd[0] + row * P, P, T(0)), std::fill_n(upd[1] + row * H, H, T(0));
      }
    });
    if (!proj) continue;
    T* ht = H_ + t * B * P;
    w_r->mul(M, H, T(0), ht, P, n);                           // h_t = m W_hr^T, then zoneout
    for (int64_t b = 0; b < B; ++b) {
      if (!mask.valid(t, b))
        std::memcpy(ht + b * P, hp + b * P, P * sizeof(T));
      else if (nz.zoneout())
        zone_row(P, ht + b * P, hp + b * P, nz.z(t, 0, b, P), nz.p, upd[0] ? upd[0] + (t * B + b) * P : nullptr);
    }
  }
}

#ifdef RNNKIT_AVX512
// float32 forward with the step GEMM and the gate pass fused, per block of 16 hidden units: the
// four gates' weights of a block are packed once per sequence next to each other,
//   wp  (nb, H, 4, 16)   wp[jb, k, g, u] = W_hh[g*H + 16*jb + u, k] (zero past H),
// and a block's 4 x 16 gate sums of up to 4 batch rows stay in registers from the first FMA
// to the activations: the (B, 4H) product is never written, and a step's blocks run on
// several threads (owned_blocks, simd.h).  Writes what forward_impl writes.
// What the fused loops read besides the plain LSTM's: the peephole weights (3H, rec[peep_index];
// nullptr without peepholes), the noise, zoneout's update buffers (forward
// with save; else nullptr) and the clip.  The loops take the options present as compile-time
// flags (with_options), so that the plain LSTM's instance does none of their loads, FMAs or
// per-row look-ups.
struct Fused {
  const float* peep;
  Noise<float> nz;
  float* upd[2];
  float clip;
};

// f(Peep, Drop, Zone) as std::bool_constant values: the options of the call, chosen once.
template <typename F>
void with_options(const Fused& o, const F& f) {
  with_flags(f, o.peep != nullptr, o.nz.drop != nullptr, o.nz.zoneout());
}

// The options of a fused forward (bufs: lstm_buffers', zoneout's update buffers at 4 and 5) and of
// a fused backward (the clip; no update buffers).
Fused forward_options(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  return {sp.peephole ? a.rec[peep_index(sp)]->data_ptr<float>() : nullptr, Noise<float>(sp, a.noise),
          {bufs[4].defined() ? bufs[4].data_ptr<float>() : nullptr,
           bufs[5].defined() ? bufs[5].data_ptr<float>() : nullptr},
          0.0f};
}
Fused backward_options(const Spec& sp, const BwdArgs& a) {
  return {sp.peephole ? a.rec[peep_index(sp)]->data_ptr<float>() : nullptr, Noise<float>(sp, a.noise), {nullptr, nullptr},
          float(sp.clip)};
}

int64_t step_threads(int64_t B, int64_t H) { return step_threads_for(B * 4 * H * H); }

// The fused LSTM loops' time loop: owned_units_or_rows over the blocks of H units, with the
// threads a step of B rows pays for, tiles of kRows rows and W_hh's size.
template <typename... Phases>
void lstm_loop(int64_t Tn, const Mask& rows, int64_t H, const Phases&... phases) {
  owned_units_or_rows(Tn, (H + simd::kLanes - 1) / simd::kLanes, rows, step_threads(rows.B, H), kRows,
                      4 * H * H * int64_t(sizeof(float)), phases...);
}

// z's lanes of state k, row b, step t, units j0.. (its draws, or p), as a vector.
inline simd::V zone_at(const Fused& o, int64_t t, int64_t k, int64_t b, int64_t H, int64_t j0, __mmask16 m) {
  const float* z = o.nz.z(t, k, b, H);
  return z != nullptr ? simd::load(z + j0, m) : simd::splat(o.nz.p);
}

// acc: the four gate sums h_{t-1} (* m_t) W_hh^T of block jb for rows b0 .. b0+R-1 (hp: their
// h_{t-1}, ld K; K: h's size, H or with a projection P; wp packed (nb, K, 4, 16)).
template <int R, bool Drop>
inline void tile_sums(const Fused& o, const float* wp, int64_t K, int64_t t, int64_t jb, int64_t b0, const float* hp,
                      simd::V (&acc)[R][4]) {
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 4; ++g) acc[r][g] = _mm512_setzero_ps();
  const float* mr[R] = {};                                     // the rows' recurrent masks
  for (int r = 0; Drop && r < R; ++r) mr[r] = o.nz.mask(t, b0 + r, K);
  gate_sums<R, 4, Drop>(wp + jb * K * 4 * simd::kLanes, K, hp, mr, acc);
}

// The peephole weights w_ci, w_cf, w_co of the 16 units from j0 (zeros, unread, without Peep).
template <bool Peep>
inline void peep_weights(const Fused& o, int64_t H, int64_t j0, __mmask16 m, simd::V (&wc)[3]) {
  for (int k = 0; k < 3; ++k) wc[k] = Peep ? simd::load(o.peep + k * H + j0, m) : _mm512_setzero_ps();
}

// The gates of 16 units of R rows from their pre-activations (i, f, g, o) (forward_row's math):
// i, f, n, c~ = f c_{t-1} + i n and o; peepholes: c_{t-1} into i and f, c~ into o.  The rows'
// activations run in lockstep (simd.h: sigmoid_n, tanh_n).
struct Cell16 {
  simd::V i, f, n, c, o;
};
template <int R, bool Peep>
inline void cell_gates(const simd::V (&pre)[R][4], const simd::V (&c_prev)[R], const simd::V (&wc)[3],
                       Cell16 (&q)[R]) {
  using namespace simd;
  const auto peep = [&](int k, V s, V p) { return Peep ? _mm512_fmadd_ps(wc[k], s, p) : p; };
  V s[3 * R], n[R];                                            // i, f (and o without Peep); n
  for (int r = 0; r < R; ++r) {
    s[r] = peep(0, c_prev[r], pre[r][0]), s[R + r] = peep(1, c_prev[r], pre[r][1]), s[2 * R + r] = pre[r][3];
    n[r] = pre[r][2];
  }
  sigmoid_n<Peep ? 2 * R : 3 * R>(s);                          // with peepholes o waits for c~
  tanh_n<R>(n);
  for (int r = 0; r < R; ++r) {
    q[r].i = s[r], q[r].f = s[R + r], q[r].n = n[r];
    q[r].c = _mm512_fmadd_ps(q[r].f, c_prev[r], _mm512_mul_ps(q[r].i, q[r].n));
  }
  if (Peep) {
    V o[R];
    for (int r = 0; r < R; ++r) o[r] = peep(2, q[r].c, pre[r][3]);
    sigmoid_n<R>(o);
    for (int r = 0; r < R; ++r) q[r].o = o[r];
  } else {
    for (int r = 0; r < R; ++r) q[r].o = s[2 * R + r];
  }
}

// Zoneout of 16 units of state k (0: h, 1: c) of row b: s + z (s_prev - s).
inline simd::V zone_mix(const Fused& o, int64_t t, int64_t k, int64_t b, int64_t H, int64_t j0, __mmask16 m,
                        simd::V s_prev, simd::V s) {
  return _mm512_fmadd_ps(zone_at(o, t, k, b, H, j0, m), _mm512_sub_ps(s_prev, s), s);
}

// The rows the fused forwards read and write, as raw pointers taken once per call (per tile,
// data_ptr and its checks cost several percent of the loop): xp (T, B, 4H), h0 (B, P), c0 (B, H),
// hs (T, B, P), cs (T, B, H), gates (T, B, 4H) and tanh_c (T, B, H) (nullptr in a forward without
// save); with a projection m, the (B, H) workspace of m_t = o tanh(c_t) (P = H and nullptr without).
struct LstmRows {
  int64_t B, H, P;
  const float *xp, *h0, *c0;
  float *hs, *cs, *gates, *tanh_c, *m;
  Mask mask;
  const float* h_prev(int64_t t, int64_t b) const { return (t ? hs + (t - 1) * B * P : h0) + b * P; }
};

// The gates of 16 units for R rows: c, and h = o tanh(c) or, with Proj, m into io.m (h then comes
// from proj_out_tile; zoneout on c only here).  sums: false on a tile of padded rows only
// (by_live_tiles), which needs no product.
template <int R, bool Peep, bool Drop, bool Zone, bool Proj = false>
void lstm_tile(const LstmRows& io, const Fused& o, const float* wp, const float* bias, int64_t t, int64_t jb,
               int64_t b0, bool sums) {
  using namespace simd;
  const int64_t B = io.B, H = io.H, P = io.P, G = 4 * H, j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  const float* hp = io.h_prev(t, b0);
  const float* cp = (t ? io.cs + (t - 1) * B * H : io.c0) + b0 * H;
  V acc[R][4], c_prev[R], tcn[R];
  Cell16 q[R];
  for (int r = 0; r < R; ++r) c_prev[r] = load(cp + r * H + j0, m);
  V wc[3];
  peep_weights<Peep>(o, H, j0, m, wc);
  if (sums) {                                                  // else every row is padded
    prefetch_rows<R, 4>(io.xp + (t * B + b0) * G + j0, G, H);
    tile_sums<R, Drop>(o, wp, P, t, jb, b0, hp, acc);
    V pre[R][4];
    for (int r = 0; r < R; ++r) {
      const float* x = io.xp + (t * B + b0 + r) * G + j0;
      for (int g = 0; g < 4; ++g)
        pre[r][g] = _mm512_add_ps(acc[r][g], _mm512_add_ps(load(x + g * H, m), load(bias + g * H + j0, m)));
    }
    cell_gates<R, Peep>(pre, c_prev, wc, q);
    for (int r = 0; r < R; ++r) tcn[r] = q[r].c;
    tanh_n<R>(tcn);
  }
  const Mask& mask = io.mask;
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r, row = t * B + b;
    float* h = io.hs + row * P + j0;                           // without Proj, P = H
    float* c = io.cs + row * H + j0;
    float* gt = io.gates != nullptr ? io.gates + row * G + j0 : nullptr;
    float* tc = io.tanh_c != nullptr ? io.tanh_c + row * H + j0 : nullptr;
    if (!mask.valid(t, b)) {                                   // padded: the state stays
      if (!Proj) store(h, load(hp + r * H + j0, m), m);
      store(c, c_prev[r], m);
      if (gt != nullptr) {
        for (int g = 0; g < 4; ++g) store(gt + g * H, _mm512_setzero_ps(), m);
        store(tc, _mm512_setzero_ps(), m);
      }
      for (int k = Proj ? 1 : 0; Zone && k < 2; ++k)
        if (o.upd[k] != nullptr) store(o.upd[k] + row * H + j0, _mm512_setzero_ps(), m);
      continue;
    }
    V hn = _mm512_mul_ps(q[r].o, tcn[r]), cz = q[r].c;
    if (Zone) {                                                // s = s~ + z (s_prev - s~)
      if (o.upd[1] != nullptr) store(o.upd[1] + row * H + j0, q[r].c, m);
      if (!Proj && o.upd[0] != nullptr) store(o.upd[0] + row * H + j0, hn, m);
      if (!Proj) hn = zone_mix(o, t, 0, b, H, j0, m, load(hp + r * H + j0, m), hn);
      cz = zone_mix(o, t, 1, b, H, j0, m, c_prev[r], q[r].c);
    }
    store(c, cz, m), store(Proj ? io.m + b * H + j0 : h, hn, m);
    if (gt != nullptr) {
      store(gt, q[r].i, m), store(gt + H, q[r].f, m), store(gt + 2 * H, q[r].n, m), store(gt + 3 * H, q[r].o, m);
      store(tc, tcn[r], m);
    }
  }
}

// Where the fused loops win (measured on Zen 4, 2 cores): they pay for packing the weights once
// they run several steps (the steps of a stream, T = 1, keep the GEMM path), and they stream a
// block's weights once per tile of rows, so with many rows they need each thread's share of
// W_hh in its L2 (about 512 KiB here); beyond that (H = 512 at B = 64, or H = 256 on one
// thread) BLAS's blocked GEMM is faster.
bool fused_pays(at::ScalarType dtype, int64_t Tn, int64_t B, int64_t H) {
  const int64_t share = 4 * H * H * int64_t(sizeof(float)) / std::max<int64_t>(1, at::get_num_threads());
  return dtype == at::kFloat && Tn >= 4 && (B <= 16 || share <= (512 << 10));
}
bool use_fused(const Spec& sp, const FwdArgs& a) {
  return !(sp.proj > 0 && sp.layer_norm) && fused_pays(a.xp.scalar_type(), a.xp.size(0), a.xp.size(1), a.xp.size(2) / 4);
}

void forward_fused(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const Tensor &hs = bufs[0], &cs = bufs[1], &gates = bufs[2], &tanh_c = bufs[3];
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4;
  const Tensor packed = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 4);
  const Tensor bias_t = or_zeros(a.rec[1], 4 * H, a.xp.options());
  const float *wp = packed.data_ptr<float>(), *bias = bias_t.data_ptr<float>();
  const Fused o = forward_options(sp, a, bufs);
  const LstmRows q{B, H, H, a.xp.data_ptr<float>(), a.state0[0].data_ptr<float>(), a.state0[1].data_ptr<float>(),
                   hs.data_ptr<float>(), cs.data_ptr<float>(), a.save ? gates.data_ptr<float>() : nullptr,
                   a.save ? tanh_c.data_ptr<float>() : nullptr, nullptr, Mask(a.mask, B)};
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    lstm_loop(
        Tn, q.mask, H,
        each_block_of_rows([&](int64_t t, int64_t jb, int64_t r0, int64_t r1) {
          by_live_tiles(
              q.mask.live(t), B,
              [&](auto rows, int64_t b0, bool sums) {
                lstm_tile<decltype(rows)::value, Peep, Drop, Zone>(q, o, wp, bias, t, jb, b0, sums);
              },
              r0, r1);
        }),
        no_phase);
  });
}

// ---- projection (proj_size = P), fused (forward_impl's math with proj) -------------------------
// h_t = m_t W_hr^T needs all H units of m_t = o tanh(c_t), so a step runs in two phases:
//   gates  per block of 16 units (lstm_tile with Proj): the gate sums h_{t-1} (* m_t) W_hh^T over
//          P (W_hh packed as wp (nb, P, 4, 16)), the gates, c (zoneout on c), m into the (B, H)
//          workspace;
//   proj   per block of 16 of the P outputs: h_t = m W_hr^T (W_hr packed as wr (nbp, H, 1, 16)),
//          zoneout on h.
// Threads own rows where that pays (owned_units_or_rows: no wait), else blocks: a thread's blocks
// of H in the first phase, the same share of P's blocks in the second, an empty third phase
// making the wait before the next step's sums (they read all of h_t).  Writes what forward_impl
// writes (m is its workspace, not saved).
template <int R, bool Zone>
void proj_out_tile(const LstmRows& io, const Fused& o, const float* wr, int64_t t, int64_t pb, int64_t b0,
                   bool sums) {
  using namespace simd;
  const int64_t B = io.B, H = io.H, P = io.P, p0 = pb * kLanes;
  const __mmask16 m = lanes(P - p0);
  const float* hp = io.h_prev(t, b0);
  V acc[R][1];
  const float* none[R] = {};
  block_sums<R, false>(wr, pb, H, io.m + b0 * H, none, sums, acc);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r, row = t * B + b;
    float* h = io.hs + row * P + p0;
    const V h_prev = load(hp + r * P + p0, m);
    if (!io.mask.valid(t, b)) {                                // padded: the state stays
      store(h, h_prev, m);
      if (Zone && o.upd[0] != nullptr) store(o.upd[0] + row * P + p0, _mm512_setzero_ps(), m);
      continue;
    }
    V hn = acc[r][0];
    if (Zone) {
      if (o.upd[0] != nullptr) store(o.upd[0] + row * P + p0, hn, m);
      hn = zone_mix(o, t, 0, b, P, p0, m, h_prev, hn);
    }
    store(h, hn, m);
  }
}

void forward_fused_proj(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const Tensor &hs = bufs[0], &cs = bufs[1], &gates = bufs[2], &tanh_c = bufs[3], &m_t = bufs[6];
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4, P = hs.size(2);
  const int64_t nb = (H + simd::kLanes - 1) / simd::kLanes, nbp = (P + simd::kLanes - 1) / simd::kLanes;
  const Tensor packed = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 4, P);     // W_hh (4H, P)
  const Tensor packed_r = pack_gate_blocks(a.rec[2]->data_ptr<float>(), P, 1, H);   // W_hr (P, H)
  const Tensor bias_t = or_zeros(a.rec[1], 4 * H, a.xp.options());
  const float *wp = packed.data_ptr<float>(), *wr = packed_r.data_ptr<float>(), *bias = bias_t.data_ptr<float>();
  const Fused o = forward_options(sp, a, bufs);
  const LstmRows q{B, H, P, a.xp.data_ptr<float>(), a.state0[0].data_ptr<float>(), a.state0[1].data_ptr<float>(),
                   hs.data_ptr<float>(), cs.data_ptr<float>(), a.save ? gates.data_ptr<float>() : nullptr,
                   a.save ? tanh_c.data_ptr<float>() : nullptr, m_t.data_ptr<float>(), Mask(a.mask, B)};
  const int64_t macs = 4 * H * P + P * H;                     // a row's multiply-adds per step
  const int64_t threads = step_threads_for(B * macs);
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    owned_units_or_rows(
        Tn, nb, q.mask, threads, kRows, macs * int64_t(sizeof(float)),
        each_block_of_rows([&](int64_t t, int64_t jb, int64_t r0, int64_t r1) {
          by_live_tiles(
              q.mask.live(t), B,
              [&](auto rows, int64_t b0, bool sums) {
                lstm_tile<decltype(rows)::value, Peep, Drop, Zone, true>(q, o, wp, bias, t, jb, b0, sums);
              },
              r0, r1);
        }),
        each_share_of_blocks(nb, nbp, [&](int64_t t, int64_t pb, int64_t r0, int64_t r1) {
          by_live_tiles(
              q.mask.live(t), B,
              [&](auto rows, int64_t b0, bool sums) {
                proj_out_tile<decltype(rows)::value, Zone>(q, o, wr, t, pb, b0, sums);
              },
              r0, r1);
        }),
        no_phase);
  });
}

// ---- layer normalisation, fused (forward_row_ln's math) ----------------------------------------
// The statistics of a row need all its units, so a step runs in three phases.  Threads own
// batch rows where that pays (owned_units_or_rows, simd.h): no waits.  Else they own blocks of
// units with a wait after each phase (owned_blocks), and a phase that needs a row's statistics
// computes them for all B rows on every thread (about 1/H of the step's FMAs) and writes only its
// own units:
//   sums   raw (B, 4H) = h_{t-1} (* m_t) W_hh^T of its blocks (tile_sums);
//   gates  per row, the mean and rstd of raw's four gate blocks (xp's were taken for all T*B rows
//          before the loop: they do not depend on the recurrence); of its units x_hat, h_hat,
//          pre = g_ih x_hat + g_hh h_hat + b_hh, the gates, and c~ = f c_{t-1} + i n into cn
//          (cs[t] itself without zoneout; c_update[t] with it and save; else a (B, H) workspace);
//   cell   per row, the mean and rstd of c~; of its units tanh_c = tanh(g_c c_hat + b_c),
//          h = o tanh_c, zoneout; an empty last phase makes the wait before the next step's sums.
// Writes what forward_impl writes; without save, gates is the (B, 4H) workspace that carries o
// from the gates phase to the cell phase.
void forward_fused_ln(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  using namespace simd;
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4, G = 4 * H;
  const auto opt = a.xp.options();
  const Tensor packed = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 4);
  const Tensor bias_t = or_zeros(a.rec[1], G, opt);
  const LnParams<float> ln(sp, a.rec, H, opt);
  const Fused o = forward_options(sp, a, bufs);
  const Tensor raw_t = at::empty({B, G}, opt);                 // h_{t-1} W_hh^T of the step
  const Tensor cn_t = o.nz.zoneout() && !a.save ? at::empty({B, H}, opt) : Tensor();
  const float *wp = packed.data_ptr<float>(), *bias = bias_t.data_ptr<float>(), *xp = a.xp.data_ptr<float>();
  const float *h0 = a.state0[0].data_ptr<float>(), *c0 = a.state0[1].data_ptr<float>();
  float *H_ = bufs[0].data_ptr<float>(), *C_ = bufs[1].data_ptr<float>(), *G_ = bufs[2].data_ptr<float>();
  const Tensor x_st = xp_block_stats(xp, Tn * B, 4, H);
  float *raw = raw_t.data_ptr<float>(), *xs = x_st.data_ptr<float>();
  float* TC = a.save ? bufs[3].data_ptr<float>() : nullptr;
  float* LN[4] = {nullptr, nullptr, nullptr, nullptr};         // x_hat, x_rstd, h_hat, h_rstd (save)
  for (int k = 0; a.save && k < 4; ++k) LN[k] = bufs[7 + k].data_ptr<float>();
  const Mask mask(a.mask, B);
  const V zero = _mm512_setzero_ps();
  // the step's c~ rows (B, H)
  const auto cn_of = [&](int64_t t) {
    if (!o.nz.zoneout()) return C_ + t * B * H;
    return a.save ? o.upd[1] + t * B * H : cn_t.data_ptr<float>();
  };
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    lstm_loop(
        Tn, mask, H,
        [&](int64_t t, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // sums
          const float* hp = t ? H_ + (t - 1) * B * H : h0;
          const int64_t live = std::max<int64_t>(0, std::min(r1, mask.live(t)) - r0);   // padded rows' raw is not read
          for (int64_t jb = j0; jb < j1; ++jb) {
            const __mmask16 m = lanes(H - jb * kLanes);
            by_row_tiles(live, [&](auto rows, int64_t k) {
              constexpr int R = decltype(rows)::value;
              const int64_t b0 = r0 + k;
              V acc[R][4];
              tile_sums<R, Drop>(o, wp, H, t, jb, b0, hp + b0 * H, acc);
              for (int r = 0; r < R; ++r)
                for (int g = 0; g < 4; ++g) store(raw + (b0 + r) * G + g * H + jb * kLanes, acc[r][g], m);
            });
          }
        },
        [&](int64_t t, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // gates
          float* cn = cn_of(t);
          for (int64_t b = r0; b < r1; ++b) {
            const int64_t row = t * B + b;
            const float* cp = (t ? C_ + (t - 1) * B * H : c0) + b * H;
            float* gt = G_ + (a.save ? row : b) * G;
            if (!mask.valid(t, b)) {                             // padded: c stays, saved rows zero
              for (int64_t jb = j0; jb < j1; ++jb) {
                const int64_t j = jb * kLanes;
                const __mmask16 m = lanes(H - j);
                store(C_ + row * H + j, load(cp + j, m), m);
                for (int g = 0; a.save && g < 4; ++g)
                  for (float* z : {gt, LN[0] + row * G, LN[2] + row * G}) store(z + g * H + j, zero, m);
                for (float* u : o.upd)
                  if (Zone && u != nullptr) store(u + row * H + j, zero, m);
              }
              if (a.save && j0 == 0) std::fill_n(LN[1] + row * 4, 4, 0.0f), std::fill_n(LN[3] + row * 4, 4, 0.0f);
              continue;
            }
            const float *r = raw + b * G, *x = xp + row * G;
            const LnRow<4> st(H, xs + row * 8, r);
            if (a.save && j0 == 0) st.save(LN[1] + row * 4, LN[3] + row * 4);
            for (int64_t jb = j0; jb < j1; ++jb) {
              const int64_t j = jb * kLanes;
              const __mmask16 m = lanes(H - j);
              V pre[1][4], wc[3];                                // one row: cell_gates with R = 1
              for (int g = 0; g < 4; ++g) {
                const int64_t k = g * H + j;
                const V xh = st.x_hat(g, load(x + k, m)), hh = st.h_hat(g, load(r + k, m));
                if (a.save) store(LN[0] + row * G + k, xh, m), store(LN[2] + row * G + k, hh, m);
                pre[0][g] = _mm512_add_ps(
                    _mm512_fmadd_ps(load(ln.g_hh + k, m), hh, _mm512_mul_ps(load(ln.g_ih + k, m), xh)), load(bias + k, m));
              }
              peep_weights<Peep>(o, H, j, m, wc);
              const V c_prev[1] = {load(cp + j, m)};
              Cell16 qs[1];
              cell_gates<1, Peep>(pre, c_prev, wc, qs);
              const Cell16& q = qs[0];
              store(gt + j, q.i, m), store(gt + H + j, q.f, m), store(gt + 2 * H + j, q.n, m), store(gt + 3 * H + j, q.o, m);
              store(cn + b * H + j, q.c, m);
            }
          }
        },
        [&](int64_t t, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // cell
          const float* cn = cn_of(t);
          for (int64_t b = r0; b < r1; ++b) {
            const int64_t row = t * B + b;
            const float* hp = (t ? H_ + (t - 1) * B * H : h0) + b * H;
            const float* cp = (t ? C_ + (t - 1) * B * H : c0) + b * H;
            const float *c = cn + b * H, *gt = G_ + (a.save ? row : b) * G;
            if (!mask.valid(t, b)) {                             // padded: h stays
              for (int64_t jb = j0; jb < j1; ++jb) {
                const __mmask16 m = lanes(H - jb * kLanes);
                store(H_ + row * H + jb * kLanes, load(hp + jb * kLanes, m), m);
                if (a.save) store(TC + row * H + jb * kLanes, zero, m);
              }
              continue;
            }
            float c_mean, c_rstd;
            block_stats(H, c, c_mean, c_rstd);
            for (int64_t jb = j0; jb < j1; ++jb) {
              const int64_t j = jb * kLanes;
              const __mmask16 m = lanes(H - j);
              const V c_hat = _mm512_mul_ps(_mm512_sub_ps(load(c + j, m), splat(c_mean)), splat(c_rstd));
              const V tc = tanh(_mm512_fmadd_ps(load(ln.g_c + j, m), c_hat, load(ln.b_c + j, m)));
              V hn = _mm512_mul_ps(load(gt + 3 * H + j, m), tc);
              if (a.save) store(TC + row * H + j, tc, m);
              if (Zone) {                                        // c_update[t] is cn already
                if (o.upd[0] != nullptr) store(o.upd[0] + row * H + j, hn, m);
                hn = zone_mix(o, t, 0, b, H, j, m, load(hp + j, m), hn);
                store(C_ + row * H + j, zone_mix(o, t, 1, b, H, j, m, load(cp + j, m), load(c + j, m)), m);
              }
              store(H_ + row * H + j, hn, m);
            }
          }
        },
        [](int64_t, int64_t, int64_t, int64_t, int64_t) {});
  });
}

// ---- backward: the time loop of backward_steps, fused and split over threads -------------------
// Per step t, each thread's blocks of 16 hidden units (the same in both phases):
//   first   the gate gradients dg[t] of its units from dh_t (carried + d_out[t]) and dc_t (updated
//           in place to dc_{t-1}); dh_{t-1} of its units set to 0 (a padded row: to dh_t, and
//           its dg rows to 0);
//   second  (once all of dg[t] is written) dh_{t-1}[:, its units] += dg[t] W_hh[:, its units],
//           from W_hh packed per block as wn (nb, 4H, 16): wn[jb, k, u] = W_hh[k, 16*jb + u].
// dh_t and dh_{t-1} alternate between two (B, H) buffers.
bool use_fused_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  return !(sp.proj > 0 && sp.layer_norm) && fused_pays(hs.scalar_type(), hs.size(0), hs.size(1), a.states[1].size(2));
}

// dh_t and dc_t of the 16 units from j0 of row b as step t reads them: d_out[t] added to the
// carried dh (B, H) in place; with clip_recurrent both clamped (dc (B, H) in place).
inline void carried(const Fused& o, const GradOut<float>& d_out, int64_t t, int64_t b, int64_t H, int64_t j0,
                    __mmask16 m, float* dh, float* dc, simd::V& gh, simd::V& gc) {
  using namespace simd;
  float* gh_p = dh + b * H + j0;
  d_out.add(t, b, std::min(kLanes, H - j0), gh_p, j0);
  gh = load(gh_p, m), gc = load(dc + b * H + j0, m);
  if (o.clip > 0.0f) {
    const V lo = splat(-o.clip), hi = splat(o.clip);
    gh = _mm512_min_ps(hi, _mm512_max_ps(lo, gh)), gc = _mm512_min_ps(hi, _mm512_max_ps(lo, gc));
    store(dc + b * H + j0, gc, m);
  }
}

// Zoneout's split of 16 units of the carried gradient g of state k (0: h, 1: c): returns g z, the
// direct path to step t-1; g becomes g - g z, what reaches the state the cell computed.
inline simd::V zone_keep(const Fused& o, int64_t t, int64_t k, int64_t b, int64_t H, int64_t j0, __mmask16 m,
                         simd::V& g) {
  const simd::V keep = _mm512_mul_ps(g, zone_at(o, t, k, b, H, j0, m));
  g = _mm512_sub_ps(g, keep);
  return keep;
}

// The gate gradients of 16 units (backward_row's math) into d (its four blocks of H apart): q the
// saved gates i, f, n, o; gh the gradient reaching h~_t = o tanh_c; dct that reaching c~_t
// through the carried dc and through tanh_c (not yet the peephole's).  Returns dc_{t-1}, with
// zoneout's direct part keep_c.
template <bool Peep, bool Zone>
inline simd::V gate_grads(const simd::V (&q)[4], simd::V gh, simd::V tc, simd::V c_prev, simd::V dct, simd::V keep_c,
                          const simd::V (&wc)[3], float* d, int64_t H, __mmask16 m) {
  using namespace simd;
  const V one = splat(1.0f), i = q[0], f = q[1], n = q[2], og = q[3];
  const V dpo = _mm512_mul_ps(_mm512_mul_ps(gh, tc), _mm512_mul_ps(og, _mm512_sub_ps(one, og)));
  if (Peep) dct = _mm512_fmadd_ps(dpo, wc[2], dct);
  const V di = _mm512_mul_ps(_mm512_mul_ps(dct, n), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
  const V df = _mm512_mul_ps(_mm512_mul_ps(dct, c_prev), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
  store(d, di, m), store(d + H, df, m);
  store(d + 2 * H, _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(n, n, one)), m);
  store(d + 3 * H, dpo, m);
  V dcp = Zone ? _mm512_fmadd_ps(dct, f, keep_c) : _mm512_mul_ps(dct, f);
  if (Peep) dcp = _mm512_fmadd_ps(di, wc[0], _mm512_fmadd_ps(df, wc[1], dcp));
  return dcp;
}

// The saved gates i, f, n, o of the 16 units from j0 of a row (gt: the row, (4H)).
inline void saved_gates(const float* gt, int64_t H, int64_t j0, __mmask16 m, simd::V (&q)[4]) {
  for (int g = 0; g < 4; ++g) q[g] = simd::load(gt + g * H + j0, m);
}

// dh_{t-1}[rows r0 .. r1-1, block jb] (next, (B, H)) += dg_t (B, 4H) W_hh[:, block jb], times the
// recurrent mask with Drop (dh_rows; r1 at most the step's live rows).
template <bool Drop>
void dh_block(const Fused& o, const float* dg_t, const float* wn, int64_t r0, int64_t r1, int64_t H, int64_t t,
              int64_t jb, float* next) {
  const RowsPart step[1] = {{dg_t, 4 * H, 0, 4 * H}};
  dh_rows<kRows, Drop>(step, o.nz, wn, 4 * H, H, t, jb, r0, r1, next);
}

// The rows a fused backward reads and writes: cs (T, B, H), c0 (B, H), the saved gates (T, B, 4H)
// and tanh_c (T, B, H); dg (T, B, 4H) and the carried dc (B, H).
struct LstmGrads {
  int64_t B, H;
  const float *cs, *c0, *gates, *tanh_c;
  float *dg, *dc;
  LstmGrads(const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t)
      : B(a.states[1].size(1)), H(a.states[1].size(2)), cs(a.states[1].data_ptr<float>()),
        c0(a.state0[1].data_ptr<float>()), gates(a.saved[0].data_ptr<float>()), tanh_c(a.saved[1].data_ptr<float>()),
        dg(dg_t.data_ptr<float>()), dc(dc_t.data_ptr<float>()) {}
};

// Valid row b of step t, the 16 units from j0: dg[t, b] (gate_grads) from gh, the gradient
// reaching h~_t = o tanh_c (after zoneout's split of h), and gc, the carried dc_t (clipped);
// dc[b] becomes dc_{t-1} (zoneout's direct part of c included).
template <bool Peep, bool Zone>
inline void cell_grads(const Fused& o, const LstmGrads& g, int64_t t, int64_t b, int64_t j0, __mmask16 m,
                       const simd::V (&wc)[3], simd::V gh, simd::V gc) {
  using namespace simd;
  const int64_t H = g.H, row = t * g.B + b;
  const V keep_c = Zone ? zone_keep(o, t, 1, b, H, j0, m, gc) : _mm512_setzero_ps();
  V q[4];
  saved_gates(g.gates + row * 4 * H, H, j0, m, q);
  const V tc = load(g.tanh_c + row * H + j0, m);
  const V c_prev = load((t ? g.cs + (row - g.B) * H : g.c0 + b * H) + j0, m);
  const V dct = _mm512_fmadd_ps(_mm512_mul_ps(gh, q[3]), _mm512_fnmadd_ps(tc, tc, splat(1.0f)), gc);
  float* d = g.dg + row * 4 * H + j0;
  store(g.dc + b * H + j0, gate_grads<Peep, Zone>(q, gh, tc, c_prev, dct, keep_c, wc, d, H, m), m);
}

// dc_t of row b, the 16 units from j0, clamped in place with clip_recurrent.
inline simd::V clipped_dc(const Fused& o, const LstmGrads& g, int64_t b, int64_t j0, __mmask16 m) {
  using namespace simd;
  float* p = g.dc + b * g.H + j0;
  V gc = load(p, m);
  if (o.clip > 0.0f) {
    gc = _mm512_min_ps(splat(o.clip), _mm512_max_ps(splat(-o.clip), gc));
    store(p, gc, m);
  }
  return gc;
}

// A padded row's gate gradients (the 16 units from j0 of each gate): zero.
inline void zero_gate_grads(const LstmGrads& g, int64_t t, int64_t b, int64_t j0, __mmask16 m) {
  float* d = g.dg + (t * g.B + b) * 4 * g.H + j0;
  for (int k = 0; k < 4; ++k) simd::store(d + k * g.H, _mm512_setzero_ps(), m);
}

// Returns dh_0; dc_t carries dc back in place to dc_0.  With clip_recurrent, dh_t and dc_t are
// clamped first (padded rows too); under zoneout their direct parts dh_t z, dc_t z go to step t-1.
Tensor backward_fused(const Spec& sp, const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t) {
  using namespace simd;
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2), G = 4 * H;
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), G, H);
  const float* wn = packed.data_ptr<float>();
  const Carried dh(a);
  const Mask mask(a.mask, B);
  const GradOut<float> d_out(a.d_out);
  const LstmGrads g(a, dg_t, dc_t);
  float *dg = g.dg, *dc = g.dc;
  const V zero = _mm512_setzero_ps();
  const Fused o = backward_options(sp, a);
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    lstm_loop(
        Tn, mask, H,
        each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // step s: t = Tn-1-s
          const int64_t t = Tn - 1 - s, j0 = jb * kLanes;
          const __mmask16 m = lanes(H - j0);
          float *cur = dh.cur(s), *next = dh.next(s);
          V wc[3];
          peep_weights<Peep>(o, H, j0, m, wc);
          for (int64_t b = r0; b < r1; ++b) {
            const int64_t row = t * B + b;
            V gh, gc;
            carried(o, d_out, t, b, H, j0, m, cur, dc, gh, gc);
            float* d = dg + row * G + j0;
            if (!mask.valid(t, b)) {
              for (int k = 0; k < 4; ++k) store(d + k * H, zero, m);
              store(next + b * H + j0, gh, m);
              continue;
            }
            const V keep_h = Zone ? zone_keep(o, t, 0, b, H, j0, m, gh) : zero;   // zoneout's direct part
            cell_grads<Peep, Zone>(o, g, t, b, j0, m, wc, gh, gc);
            store(next + b * H + j0, keep_h, m);
          }
        }),
        each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {
          const int64_t t = Tn - 1 - s;
          dh_block<Drop>(o, dg + t * B * G, wn, r0, std::min(r1, mask.live(t)), H, t, jb, dh.next(s));
        }));
  });
  return dh.grad0(Tn);
}

// ---- projection, fused backward (backward_impl's math with proj) -------------------------------
// The carried dh_t is (B, P) and the gates read dm = dh_t W_hr (all of dh_t), so a step runs in
// three phases:
//   carried per block of 16 of the P units: dh_t + d_out[t], clipped; zoneout's direct part
//           dh_t z to dh_{t-1} (else zero); what reaches h~_t written back into dh_t and kept in
//           dh_all[t] (for dW_hr after the loop); a padded row: dh_t passes to dh_{t-1}, dh_all
//           zero;
//   gates   per block of 16 hidden units: dm = dh_t W_hr[:, block] (W_hr packed as (nb, P, 16) by
//           pack_unit_blocks) for a tile of rows, then the rows' gate gradients (cell_grads);
//           dc_t clipped on every row, a padded row's dg zero;
//   carry   per block of 16 of P: dh_{t-1} += dg[t] W_hh[:, block] (W_hh packed as (nbp, 4H, 16)),
//           times m_t under recurrent dropout, on the live rows.
// Threads own rows where that pays, else blocks of H in the gates phase and the same share of
// P's blocks in the other two (each_share_of_blocks): a thread's carried phase reads the blocks of
// dh_{t-1} that its carry phase wrote; the waits come after the first two phases.
template <int R, bool Peep, bool Zone>
void proj_gates_tile(const Fused& o, const LstmGrads& g, const float* wr, int64_t P, int64_t t, int64_t jb,
                     int64_t b0, const float* dh, const Mask& mask) {
  using namespace simd;
  const int64_t H = g.H, j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  V dm[R];                                                       // dh_t W_hr[:, block jb]
  for (int r = 0; r < R; ++r) dm[r] = _mm512_setzero_ps();
  const RowsPart parts[1] = {{dh + b0 * P, P, 0, P}};
  unit_sums<R>(parts, wr + jb * P * kLanes, dm);
  V wc[3];
  peep_weights<Peep>(o, H, j0, m, wc);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    const V gc = clipped_dc(o, g, b, j0, m);
    if (!mask.valid(t, b)) {
      zero_gate_grads(g, t, b, j0, m);
      continue;
    }
    cell_grads<Peep, Zone>(o, g, t, b, j0, m, wc, dm[r], gc);
  }
}

// Returns dh_0 (B, P); writes dg, dc and dh_all (T, B, P) as backward_impl does.
Tensor backward_fused_proj(const Spec& sp, const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t,
                           const Tensor& dh_all_t) {
  using namespace simd;
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), P = a.states[0].size(2), H = a.states[1].size(2);
  const int64_t G = 4 * H, nb = (H + kLanes - 1) / kLanes, nbp = (P + kLanes - 1) / kLanes;
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), G, P);     // W_hh (4H, P)
  const Tensor packed_r = pack_unit_blocks(a.rec[2]->data_ptr<float>(), P, H);   // W_hr (P, H)
  const float *wn = packed.data_ptr<float>(), *wr = packed_r.data_ptr<float>();
  const Carried dh(a);
  const Mask mask(a.mask, B);
  const GradOut<float> d_out(a.d_out);
  const LstmGrads g(a, dg_t, dc_t);
  float* dh_all = dh_all_t.data_ptr<float>();
  const Fused o = backward_options(sp, a);
  const int64_t macs = 4 * H * P + P * H;                     // a row's multiply-adds per step
  const int64_t threads = step_threads_for(B * macs);
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    owned_units_or_rows(
        Tn, nb, mask, threads, kRows, macs * int64_t(sizeof(float)),
        each_share_of_blocks(nb, nbp, [&](int64_t s, int64_t pb, int64_t r0, int64_t r1) {   // step s: t = Tn-1-s
          const int64_t t = Tn - 1 - s, p0 = pb * kLanes;
          const __mmask16 m = lanes(P - p0);
          float *cur = dh.cur(s), *next = dh.next(s);
          const V lo = splat(-o.clip), hi = splat(o.clip), zero = _mm512_setzero_ps();
          for (int64_t b = r0; b < r1; ++b) {
            float* gh_p = cur + b * P + p0;
            float* kept = dh_all + (t * B + b) * P + p0;
            d_out.add(t, b, std::min(kLanes, P - p0), gh_p, p0);
            V gh = load(gh_p, m);
            if (o.clip > 0.0f) gh = _mm512_min_ps(hi, _mm512_max_ps(lo, gh));
            if (!mask.valid(t, b)) {                             // padded: dh passes
              store(kept, zero, m);
              store(next + b * P + p0, gh, m);
              continue;
            }
            const V keep_h = Zone ? zone_keep(o, t, 0, b, P, p0, m, gh) : zero;
            store(gh_p, gh, m), store(kept, gh, m);
            store(next + b * P + p0, keep_h, m);
          }
        }),
        each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {
          const int64_t t = Tn - 1 - s, live = std::min(std::max(mask.live(t), r0), r1);
          const float* cur = dh.cur(s);
          by_row_tiles(r0, live, [&](auto rows, int64_t b0) {
            proj_gates_tile<decltype(rows)::value, Peep, Zone>(o, g, wr, P, t, jb, b0, cur, mask);
          });
          const __mmask16 m = lanes(H - jb * kLanes);
          for (int64_t b = live; b < r1; ++b) {                  // padded rows
            clipped_dc(o, g, b, jb * kLanes, m);
            zero_gate_grads(g, t, b, jb * kLanes, m);
          }
        }),
        each_share_of_blocks(nb, nbp, [&](int64_t s, int64_t pb, int64_t r0, int64_t r1) {
          const int64_t t = Tn - 1 - s;
          const RowsPart step[1] = {{g.dg + t * B * G, G, 0, G}};
          dh_rows<kRows, Drop>(step, o.nz, wn, G, P, t, pb, r0, std::min(r1, mask.live(t)), dh.next(s));
        }));
  });
  return dh.grad0(Tn);
}

// Backward of the layer-normalised LSTM (backward_impl's math), fused.  ln: [dp, dx, dn, c_hat]
// (the header's; here dp (B, 4H) and dn (B, H) are workspaces of one step); dg receives d_rec.
// Before the loop c_hat of all rows (c~ is saved); per step t = T-1 .. 0 four phases.  Threads
// own batch rows where that pays (owned_units_or_rows, simd.h: no waits); else they own units,
// with a wait after each phase but the last (owned_blocks), each phase writing only its thread's
// units and computing the row sums it needs for all B rows:
//   carried  dh_t (+ d_out[t], clipped; zoneout's direct part to dh_{t-1}) into gh (in place),
//            dc_t clipped, dn = gh o (1 - tanh_c^2);
//   cell     per row, the means of LN'(dn g_c); dp = d pre (gate_grads), dc_{t-1};
//   rec      per row, the means of LN'(dp g_hh) and LN'(dp g_ih) of the four gate blocks; d_rec
//            into dg[t], d_xp into dx[t];
//   dh       dh_{t-1}[:, its units] += dg[t] W_hh[:, its units] (dh_block), while the saved rows
//            of step t-1 are fetched into the cache (the loop is bound by their memory traffic).
// The sums over rows that lstm_backward takes after the loop otherwise (LnSums) are taken in the
// cell and rec phases while the rows are in cache: each thread on its own units, or each chunk
// of rows into its own set, the sets added up after the loop.
struct LnSums {
  float *db_hh, *dg_ih, *dg_hh, *dg_c, *db_c, *dw_ch;         // db_hh, db_c, dw_ch: nullptr when None
};
Tensor backward_fused_ln(const Spec& sp, const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t, const Tensors& lnb,
                         const LnSums& sums) {
  using namespace simd;
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2), G = 4 * H;
  const auto opt = a.states[0].options();
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), G, H);
  const float* wn = packed.data_ptr<float>();
  const LnParams<float> ln(sp, a.rec, H, opt);
  const Carried dh(a);
  const Tensor c_rstd_t = at::empty({Tn * B}, opt);
  const Mask mask(a.mask, B);
  const GradOut<float> d_out(a.d_out);
  const float *cs = a.states[1].data_ptr<float>(), *c0 = a.state0[1].data_ptr<float>();
  const float *gates = a.saved[0].data_ptr<float>(), *tanh_c = a.saved[1].data_ptr<float>();
  const float *x_hat = a.saved[2].data_ptr<float>(), *x_rstd = a.saved[3].data_ptr<float>();
  const float *h_hat = a.saved[4].data_ptr<float>(), *h_rstd = a.saved[5].data_ptr<float>();
  const float* c_new = cell_computed(sp, a).data_ptr<float>();
  float *dp = lnb[0].data_ptr<float>(), *dx = lnb[1].data_ptr<float>(), *dn = lnb[2].data_ptr<float>();
  float *c_hat = lnb[3].data_ptr<float>(), *c_rstd = c_rstd_t.data_ptr<float>();
  float *dg = dg_t.data_ptr<float>(), *dc = dc_t.data_ptr<float>();
  at::parallel_for(0, Tn * B, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (mask.valid(r / B, r % B)) c_rstd[r] = normalise(H, c_new + r * H, c_hat + r * H);
      else std::fill_n(c_hat + r * H, H, 0.0f);
    }
  });
  // The sums, one set per chunk of rows where threads own rows (a chunk starts at a multiple of
  // kRows: set r0 / kRows), added up after the loop; one set where they own units.
  static_assert(kShareRows % kRows == 0, "a thread's rows start at a multiple of kRows");
  const int64_t n_sets = (B + kRows - 1) / kRows, set_n = 3 * G + 5 * H;   // db_hh, dg_ih, dg_hh, dg_c, db_c, dw_ch (3H)
  const Tensor sets_t = at::zeros({std::max<int64_t>(1, n_sets), set_n}, opt);
  const auto set_of = [&](int64_t r0) {
    float* p = sets_t.data_ptr<float>() + r0 / kRows * set_n;
    return LnSums{p, p + G, p + 2 * G, p + 3 * G, p + 3 * G + H, p + 3 * G + 2 * H};
  };
  const auto add = [](float* sum, __mmask16 m, V x) { store(sum, _mm512_add_ps(load(sum, m), x), m); };
  // rows r0 .. r1-1 (n floats each) of step t of a (T, B, n) tensor into the cache; only where a
  // step's rows are small beside the packed weights that the cache must keep
  const bool fetch = B * (3 * G + 2 * H) * int64_t(sizeof(float)) <= (64 << 10);
  const auto prefetch = [&](const float* p, int64_t t, int64_t n, int64_t r0, int64_t r1) {
    const char* q = reinterpret_cast<const char*>(p + (t * B + r0) * n);
    for (int64_t k = 0; k < (r1 - r0) * n * int64_t(sizeof(float)); k += 64) _mm_prefetch(q + k, _MM_HINT_T1);
  };
  const V one = splat(1.0f), zero = _mm512_setzero_ps();
  const Fused o = backward_options(sp, a);
  with_options(o, [&](auto peep, auto drop, auto zone) {
    constexpr bool Peep = decltype(peep)::value, Drop = decltype(drop)::value, Zone = decltype(zone)::value;
    lstm_loop(
        Tn, mask, H,
        [&](int64_t s, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // carried (step s: t = Tn-1-s)
          for (int64_t jb = j0; jb < j1; ++jb) {
            const int64_t t = Tn - 1 - s, j = jb * kLanes;
            const __mmask16 m = lanes(H - j);
            float *cur = dh.cur(s), *next = dh.next(s);
            for (int64_t b = r0; b < r1; ++b) {
              const int64_t row = t * B + b;
              V gh, gc;
              carried(o, d_out, t, b, H, j, m, cur, dc, gh, gc);
              if (!mask.valid(t, b)) {
                for (float* z : {dg, dx})
                  for (int g = 0; g < 4; ++g) store(z + row * G + g * H + j, zero, m);
                store(next + b * H + j, gh, m);
                continue;
              }
              const V keep_h = Zone ? zone_keep(o, t, 0, b, H, j, m, gh) : zero;
              store(cur + b * H + j, gh, m), store(next + b * H + j, keep_h, m);
              const V og = load(gates + row * G + 3 * H + j, m), tc = load(tanh_c + row * H + j, m);
              store(dn + b * H + j, _mm512_mul_ps(_mm512_mul_ps(gh, og), _mm512_fnmadd_ps(tc, tc, one)), m);
            }
          }
        },
        [&](int64_t s, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // cell
          const int64_t t = Tn - 1 - s;
          const float* cur = dh.cur(s);
          const LnSums mine = set_of(r0);
          for (int64_t b = r0; b < r1; ++b) {
            const int64_t row = t * B + b;
            if (!mask.valid(t, b)) continue;
            float m1, m2;
            ln_back_means(H, dn + b * H, ln.g_c, c_hat + row * H, m1, m2);
            const float* cp = (t ? cs + (row - B) * H : c0 + b * H);
            for (int64_t jb = j0; jb < j1; ++jb) {
              const int64_t j = jb * kLanes;
              const __mmask16 m = lanes(H - j);
              V gc = load(dc + b * H + j, m), q[4], wc[3];
              const V keep_c = Zone ? zone_keep(o, t, 1, b, H, j, m, gc) : zero;
              const V dnv = load(dn + b * H + j, m), ch = load(c_hat + row * H + j, m), c_prev = load(cp + j, m);
              const V dcn = ln_back(dnv, load(ln.g_c + j, m), ch, m1, m2, c_rstd[row]);
              saved_gates(gates + row * G, H, j, m, q);
              peep_weights<Peep>(o, H, j, m, wc);
              float* d = dp + b * G + j;
              const V dcp = gate_grads<Peep, Zone>(q, load(cur + b * H + j, m), load(tanh_c + row * H + j, m), c_prev,
                                                   _mm512_add_ps(gc, dcn), keep_c, wc, d, H, m);
              store(dc + b * H + j, dcp, m);
              add(mine.dg_c + j, m, _mm512_mul_ps(dnv, ch));
              add(mine.db_c + j, m, dnv);
              if (Peep) {                                        // dw_ch: di c_{t-1}, df c_{t-1}, do c~_t
                add(mine.dw_ch + j, m, _mm512_mul_ps(load(d, m), c_prev));
                add(mine.dw_ch + H + j, m, _mm512_mul_ps(load(d + H, m), c_prev));
                add(mine.dw_ch + 2 * H + j, m, _mm512_mul_ps(load(d + 3 * H, m), load(c_new + row * H + j, m)));
              }
            }
          }
        },
        [&](int64_t s, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // rec
          const int64_t t = Tn - 1 - s;
          const LnSums mine = set_of(r0);
          for (int64_t b = r0; b < r1; ++b) {
            const int64_t row = t * B + b;
            if (!mask.valid(t, b)) continue;
            const float *d = dp + b * G, *hh = h_hat + row * G, *xh = x_hat + row * G;
            float m1[4], m2[4], n1[4], n2[4];                    // the means of LN'(dp g_hh), LN'(dp g_ih)
            for (int g = 0; g < 4; ++g) {
              ln_back_means(H, d + g * H, ln.g_hh + g * H, hh + g * H, m1[g], m2[g]);
              ln_back_means(H, d + g * H, ln.g_ih + g * H, xh + g * H, n1[g], n2[g]);
            }
            for (int64_t jb = j0; jb < j1; ++jb)
              for (int g = 0; g < 4; ++g) {
                const int64_t k = g * H + jb * kLanes;
                const __mmask16 m = lanes(H - jb * kLanes);
                const V dpv = load(d + k, m), hv = load(hh + k, m), xv = load(xh + k, m);
                store(dg + row * G + k, ln_back(dpv, load(ln.g_hh + k, m), hv, m1[g], m2[g], h_rstd[row * 4 + g]), m);
                store(dx + row * G + k, ln_back(dpv, load(ln.g_ih + k, m), xv, n1[g], n2[g], x_rstd[row * 4 + g]), m);
                add(mine.dg_hh + k, m, _mm512_mul_ps(dpv, hv));
                add(mine.dg_ih + k, m, _mm512_mul_ps(dpv, xv));
                add(mine.db_hh + k, m, dpv);
              }
          }
        },
        [&](int64_t s, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // dh
          const int64_t t = Tn - 1 - s;
          if (fetch && t > 0) {
            for (const float* p : {gates, h_hat, x_hat}) prefetch(p, t - 1, G, r0, r1);
            for (const float* p : {tanh_c, static_cast<const float*>(c_hat)}) prefetch(p, t - 1, H, r0, r1);
          }
          const int64_t live = std::min(r1, mask.live(t));
          for (int64_t jb = j0; jb < j1; ++jb) dh_block<Drop>(o, dg + t * B * G, wn, r0, live, H, t, jb, dh.next(s));
        });
  });
  const float* sets = sets_t.data_ptr<float>();
  const int64_t widths[6] = {G, G, G, H, H, 3 * H}, at_[6] = {0, G, 2 * G, 3 * G, 3 * G + H, 3 * G + 2 * H};
  float* outs[6] = {sums.db_hh, sums.dg_ih, sums.dg_hh, sums.dg_c, sums.db_c, sums.dw_ch};
  for (int k = 0; k < 6; ++k) {
    if (outs[k] == nullptr) continue;
    std::fill_n(outs[k], widths[k], 0.0f);
    for (int64_t q = 0; q < n_sets; ++q) add_to(widths[k], outs[k], sets + q * set_n + at_[k]);
  }
  return dh.grad0(Tn);
}
#endif

// Returns dh_0; dc_t carries dc back in place to dc_0; dh_all (projection: (T, B, P), else
// undefined) receives every step's dh_t.  Layer norm: ln holds [dp, dx, dn, c_hat] (the header's;
// dg_t then receives d_rec), else it is empty.
template <typename T>
Tensor backward_impl(const Spec& sp, const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t, const Tensor& dh_all,
                     const Tensors& ln) {
  const int64_t B = a.states[0].size(1), P = a.states[0].size(2), H = a.states[1].size(2), G = 4 * H;
  const bool proj = sp.proj > 0;
  c10::optional<LnParams<T>> lnp;
  if (sp.layer_norm) lnp.emplace(sp, a.rec, H, dg_t.options());
  T *dp = nullptr, *dx = nullptr, *dn = nullptr, *c_hat = nullptr;
  const T *x_hat = nullptr, *x_rstd = nullptr, *h_hat = nullptr, *h_rstd = nullptr, *c_new = nullptr;
  std::vector<StepRows<T>> zeroed{{dg_t.data_ptr<T>(), G}};
  if (sp.layer_norm) {
    dp = ln[0].data_ptr<T>(), dx = ln[1].data_ptr<T>(), dn = ln[2].data_ptr<T>(), c_hat = ln[3].data_ptr<T>();
    x_hat = a.saved[2].data_ptr<T>(), x_rstd = a.saved[3].data_ptr<T>();
    h_hat = a.saved[4].data_ptr<T>(), h_rstd = a.saved[5].data_ptr<T>();
    c_new = cell_computed(sp, a).data_ptr<T>();
    zeroed.insert(zeroed.end(), {{dp, G}, {dx, G}, {dn, H}, {c_hat, H}});
  }
  const T *cs = a.states[1].data_ptr<T>(), *c0 = a.state0[1].data_ptr<T>();
  const T *gates = a.saved[0].data_ptr<T>(), *tanh_c = a.saved[1].data_ptr<T>();
  T *dg = dg_t.data_ptr<T>(), *dc = dc_t.data_ptr<T>();
  StepOptions<T> opt(sp, a, dc, H);
  opt.carry_only = true;
  const Mask mask(a.mask, B);
  const Tensor peep_t = peep_or_zeros(sp, a.rec, H, dg_t.options());
  const Tensor dhd_t = opt.noise.drop ? at::empty({B, P}, dg_t.options()) : Tensor();
  const Tensor dm_t = proj ? at::empty({B, H}, dg_t.options()) : Tensor();
  const T* peep = peep_t.data_ptr<T>();
  T* dm = proj ? dm_t.data_ptr<T>() : nullptr;
  const int64_t Tn = a.states[0].size(0);
  const StepWeight<T> w_n(Op::N, B, P, G, a.rec[0]->data_ptr<T>(), P, Tn);   // dg W_hh
  c10::optional<StepWeight<T>> w_r;                           // dh W_hr
  if (proj) w_r.emplace(Op::N, B, H, P, a.rec[2]->data_ptr<T>(), H, Tn);
  return backward_steps<T>(
      a, opt, G, zeroed,
      [&](int64_t t, int64_t b, const T* dh, T* dh_prev) {
        const int64_t row = t * B + b, r = row * H;
        const T* c_prev = t ? cs + r - B * H : c0 + b * H;
        const T* gh = proj ? dm + b * H : dh;
        std::fill_n(dh_prev, P, T(0));
        if (!sp.layer_norm)
          return backward_row(H, gates + row * G, tanh_c + r, c_prev, peep, opt.noise.z(t, 1, b, H), opt.noise.p, gh,
                              dc + b * H, dg + row * G);
        const T* g = gates + row * G;
        for (int64_t j = 0; j < H; ++j) dn[r + j] = gh[j] * g[3 * H + j] * (T(1) - tanh_c[r + j] * tanh_c[r + j]);
        const T c_rstd = norm_block(H, c_new + r, c_hat + r);
        norm_block_backward(H, dn + r, lnp->g_c, c_hat + r, c_rstd, dx + row * G);   // d c_t through tanh_c
        backward_row<T, true>(H, g, tanh_c + r, c_prev, peep, opt.noise.z(t, 1, b, H), opt.noise.p, gh, dc + b * H,
                              dp + row * G, dx + row * G);
        norm_blocks_backward(4, H, dp + row * G, lnp->g_ih, x_hat + row * G, x_rstd + row * 4, dx + row * G);
        norm_blocks_backward(4, H, dp + row * G, lnp->g_hh, h_hat + row * G, h_rstd + row * 4, dg + row * G);
      },
      [&](int64_t t, T* dh_prev) {                            // padded rows: dg = 0, nothing to add
        const int64_t n = mask.live(t);
        if (!opt.noise.drop) return w_n.mul(dg + t * B * G, G, T(1), dh_prev, P, n);   // += dg_t W_hh
        T* dhd = dhd_t.data_ptr<T>();
        w_n.mul(dg + t * B * G, G, T(0), dhd, P, n);
        for (int64_t b = 0; b < n; ++b) add_masked(P, dh_prev + b * P, dhd + b * P, opt.noise.mask(t, b, P));
      },
      [&](int64_t t, const T* dh) {                           // projection: dm = dh_t W_hr, dh_t kept
        if (!proj) return;
        w_r->mul(dh, P, T(0), dm, H, mask.live(t));
        T* keep = dh_all.data_ptr<T>() + t * B * P;
        for (int64_t b = 0; b < B; ++b) {
          if (mask.valid(t, b))
            std::memcpy(keep + b * P, dh + b * P, P * sizeof(T));
          else
            std::fill_n(keep + b * P, P, T(0));
        }
      });
}

// dW_hr (P, H) = dh_all^T m_all, m_all = o * tanh_c over all T*B rows (zero on padded rows).
template <typename T>
void projection_grad(int64_t R, int64_t H, int64_t P, const T* dh_all, const T* gates, const T* tanh_c, T* dw) {
  Tensor m_t = at::empty({R, H}, c10::CppTypeToScalarType<T>::value);
  T* m = m_t.data_ptr<T>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < H; ++j) m[r * H + j] = gates[r * 4 * H + 3 * H + j] * tanh_c[r * H + j];
  gemm(Op::T, Op::N, P, H, R, dh_all, P, m, H, T(0), dw, H);
}

// dw_ch (3H) = [sum di c_{t-1}, sum df c_{t-1}, sum do c~_t] over all T*B rows (padded rows have
// dg = 0); c_new: c~_t (T, B, H), the cell computed before zoneout.
template <typename T>
void peephole_grad(int64_t Tn, int64_t B, int64_t H, const T* dg, const T* c0, const T* cs, const T* c_new, T* dw) {
  std::fill(dw, dw + 3 * H, T(0));
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t b = 0; b < B; ++b) {
      const T *d = dg + (t * B + b) * 4 * H, *cp = t ? cs + ((t - 1) * B + b) * H : c0 + b * H;
      const T* cn = c_new + (t * B + b) * H;
      for (int64_t j = 0; j < H; ++j) {
        dw[j] += d[j] * cp[j];
        dw[H + j] += d[H + j] * cp[j];
        dw[2 * H + j] += d[3 * H + j] * cn[j];
      }
    }
}

// [hs, cs, gates, tanh_c, h_update | undefined, c_update | undefined, m | undefined, and with
// layer norm x_hat, x_rstd, h_hat, h_rstd, ln_pre] (see the header comment).
Tensors lstm_buffers(const Spec& sp, int64_t T, int64_t B, int64_t H, const OptTensors&, bool save,
                     const at::TensorOptions& opt) {
  const int64_t rows = save ? T * B : B, P = sp.proj > 0 ? sp.proj : H;
  const bool upd = sp.zoneout > 0 && save;
  Tensors bufs{empty_seq({T, B, P}, opt), empty_seq({T, B, H}, opt), empty_seq({rows, 4 * H}, opt),
               empty_seq({rows, H}, opt), upd ? empty_seq({T, B, P}, opt) : Tensor(),
               upd ? empty_seq({T, B, H}, opt) : Tensor(), sp.proj > 0 ? at::empty({B, H}, opt) : Tensor()};
  if (sp.layer_norm)
    bufs.insert(bufs.end(), {empty_seq({rows, 4 * H}, opt), empty_seq({rows, 4}, opt), empty_seq({rows, 4 * H}, opt),
                             empty_seq({rows, 4}, opt), at::zeros({4 * H}, opt)});
  return bufs;
}

void lstm_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
#ifdef RNNKIT_AVX512
  if (use_fused(sp, a))
    return sp.layer_norm ? forward_fused_ln(sp, a, bufs)
                         : sp.proj > 0 ? forward_fused_proj(sp, a, bufs) : forward_fused(sp, a, bufs);
#endif
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "lstm_forward", [&] { forward_impl<scalar_t>(sp, a, bufs); });
}

FwdResult lstm_forward(const Spec& sp, const FwdArgs& a) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4;
  const Tensors bufs = lstm_buffers(sp, Tn, B, H, a.rec, a.save, a.xp.options());
  lstm_run(sp, a, bufs);
  if (!a.save) return {{bufs[0], bufs[1]}, {}};
  Tensors saved{bufs[2].view({Tn, B, 4 * H}), bufs[3].view({Tn, B, H})};
  if (sp.layer_norm)
    saved.insert(saved.end(), {bufs[7].view({Tn, B, 4 * H}), bufs[8].view({Tn, B, 4}), bufs[9].view({Tn, B, 4 * H}),
                               bufs[10].view({Tn, B, 4})});
  if (bufs[4].defined()) saved.push_back(bufs[4]), saved.push_back(bufs[5]);
  return {{bufs[0], bufs[1]}, saved};
}

// Whether lstm_backward runs the fused float32 loops.
bool fused_backward(const Spec& sp, const BwdArgs& a) {
#ifdef RNNKIT_AVX512
  return use_fused_backward(sp, a);
#else
  return false;
#endif
}

BwdResult lstm_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), P = hs.size(2), H = a.states[1].size(2);
  const auto opt = hs.options();
  const Tensor dg = empty_seq({Tn, B, 4 * H}, opt), dc = final_grad(a, 1);
  const Tensor dh_all = sp.proj > 0 ? empty_temp({Tn, B, P}, opt) : Tensor();
  Tensor dh;
  Tensor dw = at::empty({4 * H, P}, opt);
  c10::optional<Tensor> db, dw_ch, dw_hr, db_c;
  if (sp.proj > 0) dw_hr = at::empty({P, H}, opt);
  if (a.rec[1].has_value()) db = at::empty({4 * H}, opt);
  if (sp.peephole) dw_ch = at::empty({3 * H}, opt);
  // The fused loops take layer norm's sums over rows inside the loop (dp and dn: one step's rows).
  const bool in_loop = sp.layer_norm && fused_backward(sp, a);
  Tensors ln, d_ln;                                           // [dp, dx, dn, c_hat]; d g_ih, g_hh, g_c
  if (sp.layer_norm) {
    ln = {in_loop ? at::empty({B, 4 * H}, opt) : empty_seq({Tn, B, 4 * H}, opt), empty_seq({Tn, B, 4 * H}, opt),
          in_loop ? at::empty({B, H}, opt) : empty_seq({Tn, B, H}, opt), empty_seq({Tn, B, H}, opt)};
    d_ln = {at::empty({4 * H}, opt), at::empty({4 * H}, opt), at::empty({H}, opt)};
    if (a.rec.back().has_value()) db_c = at::empty({H}, opt);
  }
  const Tensor& dpre = sp.layer_norm ? ln[0] : dg;            // d pre: the biases' and peepholes' rows
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lstm_backward", [&] {
    using T = scalar_t;
#ifdef RNNKIT_AVX512
    const auto ptr = [](const c10::optional<Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; };
    if (!use_fused_backward(sp, a))
      dh = backward_impl<T>(sp, a, dg, dc, dh_all, ln);
    else if (sp.proj > 0)
      dh = backward_fused_proj(sp, a, dg, dc, dh_all);
    else if (!sp.layer_norm)
      dh = backward_fused(sp, a, dg, dc);
    else
      dh = backward_fused_ln(sp, a, dg, dc, ln,
                             {ptr(db), d_ln[0].data_ptr<float>(), d_ln[1].data_ptr<float>(), d_ln[2].data_ptr<float>(),
                              ptr(db_c), ptr(dw_ch)});
#else
    dh = backward_impl<T>(sp, a, dg, dc, dh_all, ln);
#endif
    const Noise<T> nz(sp, a.noise);
    const Tensor hd = nz.drop ? dropped_prev<T>(a.state0[0], hs, nz) : Tensor();
    const T* prev0 = nz.drop ? hd.data_ptr<T>() : a.state0[0].data_ptr<T>();     // the previous h as it
    const T* prevs = nz.drop ? hd.data_ptr<T>() + B * P : hs.data_ptr<T>();     // entered W_hh
    weight_grad<T>(Tn, B, 4 * H, P, dg.data_ptr<T>(), 4 * H, prev0, prevs, dw.data_ptr<T>());
    if (dw_hr)
      projection_grad<T>(Tn * B, H, P, dh_all.data_ptr<T>(), a.saved[0].data_ptr<T>(), a.saved[1].data_ptr<T>(),
                         dw_hr->data_ptr<T>());
    if (in_loop) return;
    const int64_t R = Tn * B;
    const T* dp = dpre.data_ptr<T>();
    if (db) col_sum<T>(R, 4 * H, dp, 4 * H, db->data_ptr<T>());
    if (dw_ch)
      peephole_grad<T>(Tn, B, H, dp, a.state0[1].data_ptr<T>(), a.states[1].data_ptr<T>(),
                       cell_computed(sp, a).data_ptr<T>(), dw_ch->data_ptr<T>());
    if (!sp.layer_norm) return;
    prod_col_sum<T>(R, 4 * H, dp, 4 * H, a.saved[2].data_ptr<T>(), 4 * H, d_ln[0].data_ptr<T>());   // x_hat
    prod_col_sum<T>(R, 4 * H, dp, 4 * H, a.saved[4].data_ptr<T>(), 4 * H, d_ln[1].data_ptr<T>());   // h_hat
    prod_col_sum<T>(R, H, ln[2].data_ptr<T>(), H, ln[3].data_ptr<T>(), H, d_ln[2].data_ptr<T>());   // dn c_hat
    if (db_c) col_sum<T>(R, H, ln[2].data_ptr<T>(), H, db_c->data_ptr<T>());
  });
  OptTensors d_rec{dw, db};
  if (sp.proj > 0) d_rec.push_back(dw_hr);
  if (sp.peephole) d_rec.push_back(dw_ch);
  if (sp.layer_norm) d_rec.insert(d_rec.end(), {d_ln[0], d_ln[1], d_ln[2], db_c});
  return {sp.layer_norm ? ln[1] : dg, {dh, dc}, d_rec};
}

// gates, tanh_c; layer norm's x_hat, x_rstd, h_hat, h_rstd; zoneout's h_update, c_update
std::vector<Sym> lstm_saved(const Spec& sp) {
  std::vector<Sym> own{kGH, kH};
  if (sp.layer_norm) own.insert(own.end(), {kGH, kG, kGH, kG});
  return zoneout_saved(sp, own);
}

std::vector<ParamDecl> lstm_rec(const Spec& sp) {
  std::vector<ParamDecl> rec{{"weight_hh", {kGH, sp.proj > 0 ? kP : kH}, false}, {"bias_hh", {kGH}, true}};
  if (sp.proj > 0) rec.push_back({"weight_hr", {kP, kH}, false});
  if (sp.peephole) rec.push_back({"weight_ch", {kH3}, false});
  if (sp.layer_norm)
    rec.insert(rec.end(), {{"weight_ln_ih", {kGH}, false}, {"weight_ln_hh", {kGH}, false}, {"weight_ln_c", {kH}, false},
                           {"bias_ln_c", {kH}, true}});
  return rec;
}

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"lstm", /*id=*/2, /*gates=*/4, /*n_states=*/2, lstm_forward, lstm_backward, lstm_buffers,
                          lstm_run, /*states=*/{kH, kH}, lstm_rec, lstm_saved});

}  // namespace rnnkit
