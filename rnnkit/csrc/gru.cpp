// GRU over a whole sequence, forward and backward through time (gate order r, z, n), in
// torch's form (reset_after: n = tanh(xn + r * (h W_hn^T + b_hn))) and in the original form of
// Cho et al. (n = tanh(xn + (r * h) W_hn^T + b_hn)).
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, 3H)   x W_ih^T + b_ih                             input, read only
//   h0       (B, H), w_hh (3H, H), b_hh (3H) | None                   inputs, read only
//   hs       (T, B, H)    h_t: the state, saved for backward
//   gates    (T, B, 3H)   post-activation [r, z, n]: saved ("gates") and traced
//   hn       (T, B, H)    torch form only: h W_hn^T + b_hn, saved ("hn") for dr
//            Without save, gates and hn are (B, .) workspaces reused by every step.  With save,
//            their rows of padded steps are zero (written, so that runs are reproducible).
//   hw       (B, 3H)      forward workspace: h_{t-1} W_hh^T (original form: (B, 2H) for r, z)
//   rh, hwn  (B, H)       original form, forward workspaces: r * h_{t-1} and rh W_hn^T
//   dx       (T, B, 3H)   backward: d pre-activation of xp = d_xp, returned; its n block
//                         dx[:, 2H:] is called dan
//   drn      (T, B, H)    torch form, backward: d(h W_hn^T) = dan * r, the n rows of the
//                         recurrent gradient (the r, z rows are those of dx)
//   rhs      (T, B, H)    original form, backward: r * h_{t-1}, the input of W_hn
//   du       (B, H)       original form, backward workspace: d(r * h) = dan W_hn
//   dh, dh_prev (B, H)    backward: carried dh and the next one (backward_steps, loop.h)
//   h_update (T, B, H)    zoneout with save: the h_t the cell computed, saved ("h_update")
//   noise    (T, B, H)    recurrent mask m_t and/or zoneout's z_t (rnn.h), read only
//   hd       (B, H)       recurrent dropout, forward workspace: h_{t-1} * m_t, which enters every
//                         recurrent product (the carry z h_{t-1} keeps h_{t-1}); in backward
//                         hd_all (T, B, H) holds it for every step, and the gradient that comes
//                         back through the products is summed in the workspace dhd (B, H) and
//                         added to dh_prev times m_t
// Layer normalisation (torch form only; norm.h; rec params g_ih, g_hh (3H) after bias_hh):
// xr, xz, xn = g_ih * x_hat, and hr, hz, hn = g_hh * h_hat + b_hh, then r, z, n, h_t as above:
//   x_hat, h_hat (T, B, 3H), x_rstd, h_rstd (T, B, 3)   xp and h_{t-1} W_hh^T normalised per gate
//            block and their 1/std: saved (without save, (B, .) workspaces)
//   xs       (B, 3H)      forward workspace: g_ih * x_hat, the x-terms after_row reads (hw holds
//                         g_hh * h_hat in place of h W_hh^T)
//   dxp      (T, B, 3H)   backward: d_xp = LN'(dx g_ih), returned (dx, drn: of the gains' outputs)
//   drec     (T, B, 3H)   backward: LN'([dx_r, dx_z, drn] g_hh), the rows of dh_{t-1} and dW_hh
//   post-loop: dW_hh = drec^T [h0; hs[:-1]], db_hh as without it, dg_ih = sum dx x_hat,
//   dg_hh = sum [dx_r, dx_z, drn] h_hat.
// Post-loop GEMMs: dW_hh[:2H] = dx[:, :2H]^T [h0; hs[:-1]] and dW_hh[2H:] = drn^T [h0; hs[:-1]]
// (torch form) or dan^T rhs (original form); hd_all in place of [h0; hs[:-1]] under recurrent
// dropout.  Nothing aliases.
// FusedOpts float32 path (AVX-512 builds, torch form, where fused_pays: see "float32 AVX-512"
// below; the original form, float64 and other builds keep the loops above).  It writes the same hs, gates, hn, h_update, dx and drn, and the post-loop GEMMs
// are the same; instead of hw, hd, hd_all's per-step use, dhd and the (B, H) dh, dh_prev:
//   wp       (nb, H, 3, 16)  forward: W_hh packed per block of 16 units (tiles.h), nb = ceil(H/16);
//                            the (B, 3H) product h_{t-1} W_hh^T stays in registers, never written;
//                            recurrent dropout multiplies h_{t-1} by m_t as it is read
//   wn       (nb, 3H, 16)    backward: W_hh packed per block of 16 columns (tiles.h)
//   dh[2]    (B, H) each     backward: the carried dh_t (d_out[t] is added as it is read) and
//                            dh_{t-1}, alternating; dh_{t-1} is set by phase 1 (dh_t z, its direct
//                            part) before phase 2 adds [dx_r, dx_z, drn] W_hh (times m_t) to it
//   With layer norm it uses hw as raw (B, 3H), h_{t-1} W_hh^T before normalisation, and writes
//   the same x_hat, x_rstd, h_hat, h_rstd, dxp and drec (drec in place of [dx_r, dx_z, drn] above).
#include "activations.h"
#include "gate_rows.h"
#include "gemm.h"
#include "loop.h"
#include "norm.h"
#include "rnn.h"
#include "tiles.h"

#include <ATen/Dispatch.h>

namespace rnnkit {
namespace {

using gru_rows::after_r_grads;
using gru_rows::after_row;
using gru_rows::before_r_grads;
using gru_rows::before_row_n;
using gru_rows::before_row_rz;
using gru_rows::r_times_h;
using gru_rows::zn_grads;

// The sizes and the (B, H) rows of h_{t-1} of a run over the states hs, from h0.
template <typename T>
struct Steps {
  int64_t Tn, B, H, G;
  const T *hs, *h0;
  const T* h_prev(int64_t t) const { return t ? hs + (t - 1) * B * H : h0; }
};

template <typename T>
Steps<T> steps(const Tensor& hs, const Tensor& h0) {
  return {hs.size(0), hs.size(1), hs.size(2), 3 * hs.size(2), hs.data_ptr<T>(), h0.data_ptr<T>()};
}

// The options of a forward run: the noise, the workspace hd and the h_update buffer (or null).
template <typename T>
struct FwdOptions {
  Noise<T> nz;
  Tensor hd_t;
  T *hd, *upd;
  FwdOptions(const Spec& sp, const FwdArgs& a, const Tensors& bufs, int64_t B, int64_t H)
      : nz(sp, a.noise), hd_t(nz.drop ? at::empty({B, H}, a.xp.options()) : Tensor()),
        hd(nz.drop ? hd_t.data_ptr<T>() : nullptr),
        upd(bufs.size() > 6 && bufs[6].defined() ? bufs[6].data_ptr<T>() : nullptr) {}
  // h_{t-1} as it enters the recurrent products (masked into hd under recurrent dropout).
  const T* entering(int64_t t, int64_t B, int64_t H, const T* h_prev) const {
    if (hd == nullptr) return h_prev;
    for (int64_t b = 0; b < B; ++b) mul_to(H, hd + b * H, h_prev + b * H, nz.mask(t, b, H));
    return hd;
  }
  // Zoneout of row b of step t (valid rows), h the new state's row.
  void zone(int64_t t, int64_t b, int64_t B, int64_t H, T* h, const T* h_prev) const {
    if (nz.zoneout()) zone_row(H, h, h_prev, nz.z(t, 0, b, H), nz.p, upd ? upd + (t * B + b) * H : nullptr);
  }
  void zero_padded(int64_t t, int64_t b, int64_t B, int64_t H) const {
    if (upd != nullptr) std::fill_n(upd + (t * B + b) * H, H, T(0));
  }
};

template <typename T>
void forward_after(const Spec& sp, const FwdArgs& a, const T* b_hh, const Tensors& bufs) {
  const Steps<T> s = steps<T>(bufs[0], a.state0[0]);
  const int64_t B = s.B, H = s.H, G = s.G;
  const Mask mask(a.mask, B);
  const FwdOptions<T> o(sp, a, bufs, B, H);
  const T* xp = a.xp.data_ptr<T>();
  T *hs = bufs[0].data_ptr<T>(), *gates = bufs[1].data_ptr<T>(), *hn = bufs[2].data_ptr<T>();
  T* hw = bufs[3].data_ptr<T>();
  const StepWeight<T> w_hh(Op::T, B, G, H, a.rec[0]->data_ptr<T>(), H, s.Tn);   // h W_hh^T
  const bool ln = sp.layer_norm;
  T* LN[4] = {nullptr, nullptr, nullptr, nullptr};           // x_hat, x_rstd, h_hat, h_rstd
  const int64_t ln_n[4] = {G, 3, G, 3};
  for (int k = 0; ln && k < 4; ++k) LN[k] = bufs[7 + k].data_ptr<T>();
  T* xs = ln ? bufs[11].data_ptr<T>() : nullptr;
  const T* g_ih = ln ? a.rec[2]->data_ptr<T>() : nullptr;
  const T* g_hh = ln ? a.rec[3]->data_ptr<T>() : nullptr;
  for (int64_t t = 0; t < s.Tn; ++t) {
    const T* h_prev = s.h_prev(t);
    T* gates_t = a.save ? gates + t * B * G : gates;
    T* hn_t = a.save ? hn + t * B * H : hn;
    w_hh.mul(o.entering(t, B, H, h_prev), H, T(0), hw, G, mask.live(t));   // (B, 3H); padded rows copied below
    T* lnt[4];                                                // (B, .) each: x_hat, x_rstd, h_hat, h_rstd
    for (int k = 0; ln && k < 4; ++k) lnt[k] = a.save ? LN[k] + t * B * ln_n[k] : LN[k];
    for_rows(B, G, [&](int64_t b) {
      T* h = hs + (t * B + b) * H;
      if (mask.valid(t, b)) {
        const T* x = xp + (t * B + b) * G;
        if (ln) {                                              // the gains' outputs into xs and hw
          T *x_hat = lnt[0] + b * G, *h_hat = lnt[2] + b * G, *xs_b = xs + b * G, *hw_b = hw + b * G;
          norm_blocks(3, H, x, x_hat, lnt[1] + b * 3);
          norm_blocks(3, H, static_cast<const T*>(hw_b), h_hat, lnt[3] + b * 3);
          for (int64_t j = 0; j < G; ++j) xs_b[j] = g_ih[j] * x_hat[j], hw_b[j] = g_hh[j] * h_hat[j];
          x = xs_b;
        }
        after_row(H, x, hw + b * G, b_hh, h_prev + b * H, gates_t + b * G, hn_t + b * H, h);
        o.zone(t, b, B, H, h, h_prev + b * H);
        return;
      }
      std::memcpy(h, h_prev + b * H, H * sizeof(T));
      if (a.save) std::fill_n(gates_t + b * G, G, T(0)), std::fill_n(hn_t + b * H, H, T(0));
      for (int k = 0; a.save && ln && k < 4; ++k) std::fill_n(lnt[k] + b * ln_n[k], ln_n[k], T(0));
      o.zero_padded(t, b, B, H);
    });
  }
}

template <typename T>
void forward_before(const Spec& sp, const FwdArgs& a, const T* b_hh, const Tensors& bufs) {
  const Steps<T> s = steps<T>(bufs[0], a.state0[0]);
  const int64_t B = s.B, H = s.H, G = s.G;
  const Mask mask(a.mask, B);
  const FwdOptions<T> o(sp, a, bufs, B, H);
  const T *xp = a.xp.data_ptr<T>(), *w_hh = a.rec[0]->data_ptr<T>();
  T *hs = bufs[0].data_ptr<T>(), *gates = bufs[1].data_ptr<T>();
  T *hw = bufs[3].data_ptr<T>(), *rh = bufs[4].data_ptr<T>(), *hwn = bufs[5].data_ptr<T>();
  const StepWeight<T> w_hrz(Op::T, B, 2 * H, H, w_hh, H, s.Tn), w_hn(Op::T, B, H, H, w_hh + 2 * H * H, H, s.Tn);
  for (int64_t t = 0; t < s.Tn; ++t) {
    const T* h_prev = s.h_prev(t);
    const T* h_in = o.entering(t, B, H, h_prev);
    T* gates_t = a.save ? gates + t * B * G : gates;
    const int64_t n = mask.live(t);                           // rows past n: padded, copied below
    w_hrz.mul(h_in, H, T(0), hw, 2 * H, n);                   // r, z rows (B, 2H)
    for_rows(n, G, [&](int64_t b) {
      before_row_rz(H, xp + (t * B + b) * G, hw + b * 2 * H, b_hh, h_in + b * H, gates_t + b * G, rh + b * H);
    });
    w_hn.mul(rh, H, T(0), hwn, H, n);                         // (r * h) W_hn^T
    for_rows(B, G, [&](int64_t b) {
      T* h = hs + (t * B + b) * H;
      if (mask.valid(t, b)) {
        before_row_n(H, xp + (t * B + b) * G, hwn + b * H, b_hh, h_prev + b * H, gates_t + b * G, h);
        o.zone(t, b, B, H, h, h_prev + b * H);
        return;
      }
      std::memcpy(h, h_prev + b * H, H * sizeof(T));
      if (a.save) std::fill_n(gates_t + b * G, G, T(0));
      o.zero_padded(t, b, B, H);
    });
  }
}

// Returns dh_0.  Torch form: drn is defined, rhs is not; original form: the other way round.
// hd_all: the masked previous states under recurrent dropout (else undefined).  Layer norm: ln
// holds [dxp, drec] (the header's), else it is empty.
template <typename T>
Tensor backward_impl(const Spec& sp, const BwdArgs& a, const Tensor& dx_t, const Tensor& drn_t, const Tensor& rhs_t,
                     const Tensor& hd_all, const Tensors& ln) {
  const Steps<T> s = steps<T>(a.states[0], a.state0[0]);
  const int64_t B = s.B, H = s.H, G = s.G;
  const bool after = sp.reset_after;
  const Mask mask(a.mask, B);
  StepOptions<T> opt(sp, a);
  opt.carry_only = sp.layer_norm || after;                  // the reset-before form's step writes dx rows
  const bool drop = hd_all.defined();
  const T* hd = drop ? hd_all.data_ptr<T>() : nullptr;
  // h_{t-1} where it entered the recurrent products: row b of step t.
  auto h_in = [&](int64_t t, int64_t b) { return drop ? hd + (t * B + b) * H : s.h_prev(t) + b * H; };
  const Tensor dhd_t = drop ? at::empty({B, H}, dx_t.options()) : Tensor();
  T* dhd = drop ? dhd_t.data_ptr<T>() : nullptr;
  const T *gates = a.saved[0].data_ptr<T>(), *w_hh = a.rec[0]->data_ptr<T>();
  const T* hn = after ? a.saved[1].data_ptr<T>() : nullptr;
  const Tensor du_t = after ? Tensor() : at::empty({B, H}, dx_t.options());
  T* dx = dx_t.data_ptr<T>();
  T *drn = after ? drn_t.data_ptr<T>() : nullptr, *rhs = after ? nullptr : rhs_t.data_ptr<T>();
  T* du = after ? nullptr : du_t.data_ptr<T>();
  // only the products the form multiplies by (each costs a reorder or a pack of its part of W_hh)
  c10::optional<StepWeight<T>> w_hrz, w_hn, w_all;
  if (sp.layer_norm) {
    w_all.emplace(Op::N, B, H, G, w_hh, H, s.Tn);
  } else {
    w_hrz.emplace(Op::N, B, H, 2 * H, w_hh, H, s.Tn);
    w_hn.emplace(Op::N, B, H, H, w_hh + 2 * H * H, H, s.Tn);
  }
  std::vector<StepRows<T>> zeroed{{dx, G}, {after ? drn : rhs, H}};
  T *dxp = nullptr, *drec = nullptr;
  const T *g_ih = nullptr, *g_hh = nullptr, *x_hat = nullptr, *x_rstd = nullptr, *h_hat = nullptr, *h_rstd = nullptr;
  if (sp.layer_norm) {
    dxp = ln[0].data_ptr<T>(), drec = ln[1].data_ptr<T>();
    g_ih = a.rec[2]->data_ptr<T>(), g_hh = a.rec[3]->data_ptr<T>();
    x_hat = a.saved[2].data_ptr<T>(), x_rstd = a.saved[3].data_ptr<T>();
    h_hat = a.saved[4].data_ptr<T>(), h_rstd = a.saved[5].data_ptr<T>();
    zeroed.insert(zeroed.end(), {{dxp, G}, {drec, G}});
  }
  return backward_steps<T>(
      a, opt, G, zeroed,
      [&](int64_t t, int64_t b, const T* dh, T* dh_prev) {
        const int64_t row = t * B + b;
        const T *g = gates + row * G, *h_prev = s.h_prev(t) + b * H;
        zn_grads(H, g, h_prev, dh, dx + row * G, dh_prev);
        if (after)
          after_r_grads(H, g, hn + row * H, dx + row * G, drn + row * H);
        else
          r_times_h(H, g, h_in(t, b), rhs + row * H);
        if (!sp.layer_norm) return;
        T* d_h = drec + row * G;                              // [dx_r, dx_z, drn], then LN' of it in place
        std::memcpy(d_h, dx + row * G, 2 * H * sizeof(T));
        std::memcpy(d_h + 2 * H, drn + row * H, H * sizeof(T));
        norm_blocks_backward(3, H, dx + row * G, g_ih, x_hat + row * G, x_rstd + row * 3, dxp + row * G);
        norm_blocks_backward(3, H, static_cast<const T*>(d_h), g_hh, h_hat + row * G, h_rstd + row * 3, d_h);
      },
      [&](int64_t t, T* dh_prev) {                            // padded rows: zero gradients, nothing to add
        const int64_t n = mask.live(t);
        T* dx_s = dx + t * B * G;
        T* acc = drop ? dhd : dh_prev;                        // where the recurrent terms are summed
        if (drop) std::fill_n(dhd, n * H, T(0));
        if (sp.layer_norm) {
          w_all->mul(drec + t * B * G, G, T(1), acc, H, n);
        } else if (after) {
          w_hrz->mul(dx_s, G, T(1), acc, H, n);               // r, z rows
          w_hn->mul(drn + t * B * H, H, T(1), acc, H, n);     // n rows
        } else {
          w_hn->mul(dx_s + 2 * H, G, T(0), du, H, n);         // du = dan W_hn
          for_rows(n, G, [&](int64_t b) {
            if (mask.valid(t, b))
              before_r_grads(H, gates + (t * B + b) * G, h_in(t, b), du + b * H, dx_s + b * G, acc + b * H);
          });
          w_hrz->mul(dx_s, G, T(1), acc, H, n);               // r, z rows
        }
        for (int64_t b = 0; drop && b < n; ++b) add_masked(H, dh_prev + b * H, dhd + b * H, opt.noise.mask(t, b, H));
      });
}

#ifdef RNNKIT_AVX512
// ---- float32 AVX-512: the step's products and the gate math fused (torch form) ---------------
// Per block of 16 hidden units (tiles.h), with W_hh packed once per sequence:
//   forward   wp (nb, H, 3, 16) (pack_gate_blocks): the block's three gate sums h W_hr^T,
//             h W_hz^T, h W_hn^T of up to kGruRows batch rows stay in registers from the first FMA
//             to r, z, n and h_t; the (B, 3H) product hw is never written;
//   backward  phase 1, the block's gate gradients from dh_t: dx[t] = [dar, daz, dan], drn[t] =
//             dan r, and dh_{t-1} set to dh_t z (zoneout: plus its direct part; a padded row:
//             dh_t, its dx and drn rows zero); phase 2, once all of step t's rows are written,
//             dh_{t-1}[:, block] += [dar, daz, drn] W_hh[:, block] (times m_t under recurrent
//             dropout), from wn (nb, 3H, 16) (pack_unit_blocks); dh_t and dh_{t-1} alternate
//             between two (B, H) buffers.
// A step's blocks or rows are split over threads (owned_units_or_rows, simd.h).  They write what
// forward_after and backward_impl write, to float32 rounding (layer norm: forward_fused_ln and
// backward_fused_ln below).

// Where the fused loops win (measured on this 2-core Zen 4, L2 1 MiB a core, T = 128, I = H, one
// thread, against the GEMM path): they pay for packing W_hh once they run several steps (the
// stream's T = 1 keeps the GEMM path).  With up to 16 rows they win at every H measured (fwd
// 1.1-1.4x, fwd+bwd 1.0-1.2x at H = 128, 256, 512); with more rows they read a block's weights
// once per tile of 8 rows, and win while each thread's share of W_hh fits its L2 ((32, 256):
// 1.03-1.09x); past it they are level with MKL's blocked GEMM or behind ((32, 512) fwd+bwd 0.95x,
// (64, 512) 0.96x), which keeps those sizes.
bool fused_pays(at::ScalarType dtype, int64_t Tn, int64_t B, int64_t H) {
  const int64_t share = 3 * H * H * int64_t(sizeof(float)) / std::max<int64_t>(1, at::get_num_threads());
  return dtype == at::kFloat && Tn >= 4 && (B <= 16 || share <= (1 << 20));
}
bool use_fused(const Spec& sp, const Tensor& hs) {
  return sp.reset_after && fused_pays(hs.scalar_type(), hs.size(0), hs.size(1), hs.size(2));
}

// Batch rows per register tile: with three gate blocks, 8 rows' sums (24 vectors) and a k's
// weights fit the 32 registers, and a block's weights are read once per 8 rows.
constexpr int kGruRows = 8;

int64_t step_threads(int64_t B, int64_t H) { return step_threads_for(B * 3 * H * H); }

// The rows a fused run reads and writes, as raw pointers (data_ptr once per call: once per tile
// it cost a tenth of the forward loop's time).  gates and hn: nullptr in a forward without save.
struct Seq {
  int64_t B, H;
  const float *xp, *h0;                                        // xp: forward only
  float *hs, *gates, *hn;
  Mask mask;
  const float* h_prev(int64_t t) const { return t ? hs + (t - 1) * B * H : h0; }
};

// Forward of block jb, rows b0 .. b0+R-1 of step t (after_row's math, then zoneout); sums:
// false on a tile of padded rows only (by_live_tiles), which needs no product.
template <int R, bool Drop, bool Zone>
void gru_tile(const Seq& q, const FusedOpts& o, const float* wp, const float* b_hh, int64_t t, int64_t jb, int64_t b0,
              bool sums) {
  using namespace simd;
  const int64_t B = q.B, H = q.H, G = 3 * H, j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  const float* hp = q.h_prev(t) + b0 * H;
  V acc[R][3];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < 3; ++g) acc[r][g] = _mm512_setzero_ps();
  const float* mr[R] = {};                                     // the rows' recurrent masks
  for (int r = 0; Drop && r < R; ++r) mr[r] = o.nz.mask(t, b0 + r, H);
  if (sums) gate_sums<R, 3, Drop>(wp + jb * H * 3 * kLanes, H, hp, mr, acc);
  const V one = splat(1.0f), zero = _mm512_setzero_ps();
  const V br = load(b_hh + j0, m), bz = load(b_hh + H + j0, m), bn = load(b_hh + 2 * H + j0, m);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r, row = t * B + b;
    float* h = q.hs + row * H + j0;
    float* gt = q.gates != nullptr ? q.gates + row * G + j0 : nullptr;
    float* hn = q.hn != nullptr ? q.hn + row * H + j0 : nullptr;
    const V h_prev = load(hp + r * H + j0, m);
    if (!q.mask.valid(t, b)) {                                   // padded: the state stays
      store(h, h_prev, m);
      if (gt != nullptr) store(gt, zero, m), store(gt + H, zero, m), store(gt + 2 * H, zero, m), store(hn, zero, m);
      if (Zone && o.upd != nullptr) store(o.upd + row * H + j0, zero, m);
      continue;
    }
    const float* x = q.xp + row * G + j0;
    const V rg = sigmoid(_mm512_add_ps(_mm512_add_ps(load(x, m), acc[r][0]), br));
    const V zg = sigmoid(_mm512_add_ps(_mm512_add_ps(load(x + H, m), acc[r][1]), bz));
    const V hn_v = _mm512_add_ps(acc[r][2], bn);
    const V ng = tanh(_mm512_fmadd_ps(rg, hn_v, load(x + 2 * H, m)));
    V hv = _mm512_fmadd_ps(zg, h_prev, _mm512_mul_ps(_mm512_sub_ps(one, zg), ng));
    if (Zone) {                                                // h = h~ + z (h_{t-1} - h~)
      if (o.upd != nullptr) store(o.upd + row * H + j0, hv, m);
      hv = _mm512_fmadd_ps(zone_at(o, t, b, H, j0, m), _mm512_sub_ps(h_prev, hv), hv);
    }
    store(h, hv, m);
    if (gt != nullptr) store(gt, rg, m), store(gt + H, zg, m), store(gt + 2 * H, ng, m), store(hn, hn_v, m);
  }
}

void forward_fused(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 3;
  const Tensor packed = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 3);
  const Tensor b_hh = or_zeros(a.rec[1], 3 * H, a.xp.options());
  const float *wp = packed.data_ptr<float>(), *bias = b_hh.data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), bufs[6].defined() ? bufs[6].data_ptr<float>() : nullptr, 0.0f};
  const Seq q{B, H, a.xp.data_ptr<float>(), a.state0[0].data_ptr<float>(), bufs[0].data_ptr<float>(),
              a.save ? bufs[1].data_ptr<float>() : nullptr, a.save ? bufs[2].data_ptr<float>() : nullptr,
              Mask(a.mask, B)};
  const int64_t nb = (H + simd::kLanes - 1) / simd::kLanes;
  with_flags(
      [&](auto drop, auto zone) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value;
        owned_units_or_rows(
            Tn, nb, q.mask, step_threads(B, H), kGruRows, 3 * H * H * int64_t(sizeof(float)),
            each_block_of_rows([&](int64_t t, int64_t jb, int64_t r0, int64_t r1) {
              by_live_tiles<kGruRows>(
                  q.mask.live(t), B,
                  [&](auto rows, int64_t b0, bool sums) {
                    gru_tile<decltype(rows)::value, Drop, Zone>(q, o, wp, bias, t, jb, b0, sums);
                  },
                  r0, r1);
            }),
            no_phase);
      },
      o.nz.drop != nullptr, o.nz.zoneout());
}

// d_out[t, b, j0 .. j0+15] as a vector (zeros without d_out), read in place: out.sum() hands an
// expanded scalar (stride 0), which GradOut::add would add one lane at a time.
inline simd::V out_grad(const GradOut<float>& d, int64_t t, int64_t b, int64_t j0, __mmask16 m) {
  if (d.p == nullptr) return _mm512_setzero_ps();
  const float* row = d.p + t * d.s0 + b * d.s1 + j0 * d.s2;
  if (d.s2 == 1) return simd::load(row, m);
  if (d.s2 == 0) return simd::splat(row[0]);
  alignas(64) float v[simd::kLanes] = {};
  for (int64_t j = 0; j < simd::kLanes && ((m >> j) & 1); ++j) v[j] = row[j * d.s2];
  return _mm512_load_ps(v);
}

// Phase 1 of step t for block jb, rows r0 .. r1-1 (zn_grads' and after_r_grads' math): cur (B, H)
// holds the carried dh_t (without d_out[t], added here in registers), next (B, H) receives
// dh_{t-1}'s direct part.
template <bool Zone>
void grad_rows(const Seq& q, const FusedOpts& o, const GradOut<float>& d_out, int64_t t, int64_t jb, int64_t r0,
               int64_t r1, float* cur, float* next, float* dx, float* drn) {
  using namespace simd;
  const int64_t B = q.B, H = q.H, G = 3 * H, j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  const float *gates = q.gates, *hn = q.hn, *hp = q.h_prev(t);
  const V one = splat(1.0f), zero = _mm512_setzero_ps(), lo = splat(-o.clip), hi = splat(o.clip);
  for (int64_t b = r0; b < r1; ++b) {
    const int64_t row = t * B + b;
    V gh = _mm512_add_ps(load(cur + b * H + j0, m), out_grad(d_out, t, b, j0, m));
    if (o.clip > 0.0f) gh = _mm512_min_ps(hi, _mm512_max_ps(lo, gh));
    float *d = dx + row * G + j0, *dn = drn + row * H + j0;
    if (!q.mask.valid(t, b)) {
      store(d, zero, m), store(d + H, zero, m), store(d + 2 * H, zero, m), store(dn, zero, m);
      store(next + b * H + j0, gh, m);
      continue;
    }
    V keep = zero;                                             // zoneout's direct part dh_t z
    if (Zone) {
      const V zt = zone_at(o, t, b, H, j0, m);
      keep = _mm512_mul_ps(gh, zt), gh = _mm512_mul_ps(gh, _mm512_sub_ps(one, zt));
    }
    const float* g = gates + row * G + j0;
    const V rg = load(g, m), zg = load(g + H, m), ng = load(g + 2 * H, m);
    const V h_prev = load(hp + b * H + j0, m);
    const V dan = _mm512_mul_ps(_mm512_mul_ps(gh, _mm512_sub_ps(one, zg)), _mm512_fnmadd_ps(ng, ng, one));
    const V daz = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(gh, _mm512_sub_ps(h_prev, ng)), zg), _mm512_sub_ps(one, zg));
    const V dar = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dan, load(hn + row * H + j0, m)), rg), _mm512_sub_ps(one, rg));
    store(d, dar, m), store(d + H, daz, m), store(d + 2 * H, dan, m), store(dn, _mm512_mul_ps(dan, rg), m);
    store(next + b * H + j0, Zone ? _mm512_fmadd_ps(gh, zg, keep) : _mm512_mul_ps(gh, zg), m);
  }
}

// Returns dh_0; writes dx (T, B, 3H) and drn (T, B, H) as backward_impl does.  With
// clip_recurrent, dh_t is clamped first (padded rows too); under zoneout its direct part dh_t z
// goes to step t-1.
Tensor backward_fused(const Spec& sp, const BwdArgs& a, const Tensor& dx_t, const Tensor& drn_t) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2), G = 3 * H;
  const int64_t nb = (H + simd::kLanes - 1) / simd::kLanes;
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), G, H);
  const float* wn = packed.data_ptr<float>();
  const Carried dh(a);
  const GradOut<float> d_out(a.d_out);
  float *dx = dx_t.data_ptr<float>(), *drn = drn_t.data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), nullptr, float(sp.clip)};
  const Seq q{B, H, nullptr, a.state0[0].data_ptr<float>(), a.states[0].data_ptr<float>(),
              a.saved[0].data_ptr<float>(), a.saved[1].data_ptr<float>(), Mask(a.mask, B)};
  with_flags(
      [&](auto drop, auto zone) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value;
        owned_units_or_rows(
            Tn, nb, q.mask, step_threads(B, H), kGruRows, 3 * H * H * int64_t(sizeof(float)),
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // step s: t = Tn-1-s
              grad_rows<Zone>(q, o, d_out, Tn - 1 - s, jb, r0, r1, dh.cur(s), dh.next(s), dx, drn);
            }),
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // padded rows: nothing to add
              const int64_t t = Tn - 1 - s;
              const RowsPart step[2] = {{dx + t * B * G, G, 0, 2 * H}, {drn + t * B * H, H, 2 * H, H}};
              dh_rows<kGruRows, Drop>(step, o.nz, wn, G, H, t, jb, r0, std::min(r1, q.mask.live(t)), dh.next(s));
            }));
      },
      o.nz.drop != nullptr, o.nz.zoneout());
  return dh.grad0(Tn);
}

// ---- layer normalisation, fused (forward_after's and backward_impl's math with layer norm) -----
// A row's statistics need all its units, so a step runs in phases (owned_units_or_rows: threads
// own rows where that pays, else units with a wait after each phase; a phase that needs a row's
// statistics then computes them for all rows on every thread and writes only its own units):
//   forward   sums: raw (B, 3H) = h_{t-1} (* m_t) W_hh^T of the blocks (gate_sums); gates: per
//             row the means and rstds of raw's three gate blocks (xp's were taken for all T*B
//             rows before the loop), of the own units x_hat, h_hat, r, z, n, hn and h_t (zoneout);
//   backward  carried: dx[t] = [dar, daz, dan] and drn[t] of the own units (grad_rows' math) and
//             dh_{t-1}'s direct part; norm: per row the means of LN'(dx g_ih) and of
//             LN'([dx_r, dx_z, drn] g_hh) per gate block, d_xp into dxp[t] and d_rec into drec[t];
//             dh: dh_{t-1}[:, own units] += drec[t] W_hh[:, own units].
// bufs as gru_buffers: raw is hw (bufs[3]); x_hat, x_rstd, h_hat, h_rstd are bufs[7..10] (save).
void forward_fused_ln(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  using namespace simd;
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 3, G = 3 * H;
  const int64_t nb = (H + kLanes - 1) / kLanes;
  const auto opt = a.xp.options();
  const Tensor packed = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 3);
  const Tensor b_hh_t = or_zeros(a.rec[1], G, opt);
  const float *wp = packed.data_ptr<float>(), *b_hh = b_hh_t.data_ptr<float>(), *xp = a.xp.data_ptr<float>();
  const float *g_ih = a.rec[2]->data_ptr<float>(), *g_hh = a.rec[3]->data_ptr<float>();
  const float* h0 = a.state0[0].data_ptr<float>();
  const Tensor x_st = xp_block_stats(xp, Tn * B, 3, H);
  float *hs = bufs[0].data_ptr<float>(), *raw = bufs[3].data_ptr<float>(), *xs = x_st.data_ptr<float>();
  float* gates = a.save ? bufs[1].data_ptr<float>() : nullptr;
  float* hn = a.save ? bufs[2].data_ptr<float>() : nullptr;
  float* LN[4] = {nullptr, nullptr, nullptr, nullptr};         // x_hat, x_rstd, h_hat, h_rstd (save)
  for (int k = 0; a.save && k < 4; ++k) LN[k] = bufs[7 + k].data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), bufs[6].defined() ? bufs[6].data_ptr<float>() : nullptr, 0.0f};
  const Mask mask(a.mask, B);
  const V one = splat(1.0f), zero = _mm512_setzero_ps();
  with_flags(
      [&](auto drop, auto zone) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value;
        owned_units_or_rows(
            Tn, nb, mask, step_threads(B, H), kGruRows, G * H * int64_t(sizeof(float)),
            [&](int64_t t, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // sums
              const float* hp = t ? hs + (t - 1) * B * H : h0;
              for (int64_t jb = j0; jb < j1; ++jb) {
                const __mmask16 m = lanes(H - jb * kLanes);
                by_row_tiles<kGruRows>(r0, std::min(r1, mask.live(t)), [&](auto rows, int64_t b0) {
                  constexpr int R = decltype(rows)::value;
                  V acc[R][3];
                  for (int r = 0; r < R; ++r)
                    for (int g = 0; g < 3; ++g) acc[r][g] = zero;
                  const float* mr[R] = {};
                  for (int r = 0; Drop && r < R; ++r) mr[r] = o.nz.mask(t, b0 + r, H);
                  gate_sums<R, 3, Drop>(wp + jb * H * 3 * kLanes, H, hp + b0 * H, mr, acc);
                  for (int r = 0; r < R; ++r)
                    for (int g = 0; g < 3; ++g) store(raw + (b0 + r) * G + g * H + jb * kLanes, acc[r][g], m);
                });
              }
            },
            [&](int64_t t, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // gates
              for (int64_t b = r0; b < r1; ++b) {
                const int64_t row = t * B + b;
                const float* hp = (t ? hs + (t - 1) * B * H : h0) + b * H;
                if (!mask.valid(t, b)) {                             // padded: h stays, saved rows zero
                  for (int64_t jb = j0; jb < j1; ++jb) {
                    const int64_t j = jb * kLanes;
                    const __mmask16 m = lanes(H - j);
                    store(hs + row * H + j, load(hp + j, m), m);
                    for (int g = 0; a.save && g < 3; ++g)
                      for (float* z : {gates, LN[0], LN[2]}) store(z + row * G + g * H + j, zero, m);
                    if (a.save) store(hn + row * H + j, zero, m);
                    if (Zone && o.upd != nullptr) store(o.upd + row * H + j, zero, m);
                  }
                  if (a.save && j0 == 0) std::fill_n(LN[1] + row * 3, 3, 0.0f), std::fill_n(LN[3] + row * 3, 3, 0.0f);
                  continue;
                }
                const float *r_ = raw + b * G, *x = xp + row * G;
                const LnRow<3> st(H, xs + row * 6, r_);
                if (a.save && j0 == 0) st.save(LN[1] + row * 3, LN[3] + row * 3);
                for (int64_t jb = j0; jb < j1; ++jb) {
                  const int64_t j = jb * kLanes;
                  const __mmask16 m = lanes(H - j);
                  V xg[3], hg[3];                                    // g_ih x_hat, g_hh h_hat + b_hh per gate
                  for (int g = 0; g < 3; ++g) {
                    const int64_t k = g * H + j;
                    const V xh = st.x_hat(g, load(x + k, m)), hh = st.h_hat(g, load(r_ + k, m));
                    if (a.save) store(LN[0] + row * G + k, xh, m), store(LN[2] + row * G + k, hh, m);
                    xg[g] = _mm512_mul_ps(load(g_ih + k, m), xh);
                    hg[g] = _mm512_fmadd_ps(load(g_hh + k, m), hh, load(b_hh + k, m));
                  }
                  const V rg = sigmoid(_mm512_add_ps(xg[0], hg[0])), zg = sigmoid(_mm512_add_ps(xg[1], hg[1]));
                  const V ng = tanh(_mm512_fmadd_ps(rg, hg[2], xg[2]));
                  const V h_prev = load(hp + j, m);
                  V hv = _mm512_fmadd_ps(zg, h_prev, _mm512_mul_ps(_mm512_sub_ps(one, zg), ng));
                  if (Zone) {                                        // h = h~ + z (h_{t-1} - h~)
                    if (o.upd != nullptr) store(o.upd + row * H + j, hv, m);
                    hv = _mm512_fmadd_ps(zone_at(o, t, b, H, j, m), _mm512_sub_ps(h_prev, hv), hv);
                  }
                  store(hs + row * H + j, hv, m);
                  if (a.save) {
                    float* gt = gates + row * G + j;
                    store(gt, rg, m), store(gt + H, zg, m), store(gt + 2 * H, ng, m), store(hn + row * H + j, hg[2], m);
                  }
                }
              }
            },
            no_phase);
      },
      o.nz.drop != nullptr, o.nz.zoneout());
}

// Returns dh_0; writes dx, drn (of the gains' outputs) and ln = [dxp, drec] as backward_impl does.
Tensor backward_fused_ln(const Spec& sp, const BwdArgs& a, const Tensor& dx_t, const Tensor& drn_t, const Tensors& ln) {
  using namespace simd;
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2), G = 3 * H;
  const int64_t nb = (H + kLanes - 1) / kLanes;
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), G, H);
  const float* wn = packed.data_ptr<float>();
  const Carried dh(a);
  const GradOut<float> d_out(a.d_out);
  float *dx = dx_t.data_ptr<float>(), *drn = drn_t.data_ptr<float>();
  float *dxp = ln[0].data_ptr<float>(), *drec = ln[1].data_ptr<float>();
  const float *g_ih = a.rec[2]->data_ptr<float>(), *g_hh = a.rec[3]->data_ptr<float>();
  const float *x_hat = a.saved[2].data_ptr<float>(), *x_rstd = a.saved[3].data_ptr<float>();
  const float *h_hat = a.saved[4].data_ptr<float>(), *h_rstd = a.saved[5].data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), nullptr, float(sp.clip)};
  const Seq q{B, H, nullptr, a.state0[0].data_ptr<float>(), a.states[0].data_ptr<float>(),
              a.saved[0].data_ptr<float>(), a.saved[1].data_ptr<float>(), Mask(a.mask, B)};
  const V zero = _mm512_setzero_ps();
  with_flags(
      [&](auto drop, auto zone) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value;
        owned_units_or_rows(
            Tn, nb, q.mask, step_threads(B, H), kGruRows, G * H * int64_t(sizeof(float)),
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // carried (t = Tn-1-s)
              const int64_t t = Tn - 1 - s, j = jb * kLanes;
              grad_rows<Zone>(q, o, d_out, t, jb, r0, r1, dh.cur(s), dh.next(s), dx, drn);
              const __mmask16 m = lanes(H - j);
              for (int64_t b = r0; b < r1; ++b)                      // padded: their LN rows zero too
                if (!q.mask.valid(t, b))
                  for (float* z : {dxp, drec})
                    for (int g = 0; g < 3; ++g) store(z + (t * B + b) * G + g * H + j, zero, m);
            }),
            [&](int64_t s, int64_t j0, int64_t j1, int64_t r0, int64_t r1) {   // norm
              const int64_t t = Tn - 1 - s;
              for (int64_t b = r0; b < r1; ++b) {
                const int64_t row = t * B + b;
                if (!q.mask.valid(t, b)) continue;
                // d of the gains' outputs per gate block: dx for x; [dx_r, dx_z, drn] for h
                const float* dh_of[3] = {dx + row * G, dx + row * G + H, drn + row * H};
                float m1[3], m2[3], n1[3], n2[3];                    // the means of LN'(. g_hh), LN'(dx g_ih)
                for (int g = 0; g < 3; ++g) {
                  ln_back_means(H, dh_of[g], g_hh + g * H, h_hat + row * G + g * H, m1[g], m2[g]);
                  ln_back_means(H, dx + row * G + g * H, g_ih + g * H, x_hat + row * G + g * H, n1[g], n2[g]);
                }
                for (int64_t jb = j0; jb < j1; ++jb)
                  for (int g = 0; g < 3; ++g) {
                    const int64_t j = jb * kLanes, k = g * H + j;
                    const __mmask16 m = lanes(H - j);
                    store(drec + row * G + k, ln_back(load(dh_of[g] + j, m), load(g_hh + k, m), load(h_hat + row * G + k, m),
                                                      m1[g], m2[g], h_rstd[row * 3 + g]), m);
                    store(dxp + row * G + k, ln_back(load(dx + row * G + k, m), load(g_ih + k, m), load(x_hat + row * G + k, m),
                                                     n1[g], n2[g], x_rstd[row * 3 + g]), m);
                  }
              }
            },
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // dh
              const int64_t t = Tn - 1 - s;
              const RowsPart step[1] = {{drec + t * B * G, G, 0, G}};
              dh_rows<kGruRows, Drop>(step, o.nz, wn, G, H, t, jb, r0, std::min(r1, q.mask.live(t)), dh.next(s));
            }));
      },
      o.nz.drop != nullptr, o.nz.zoneout());
  return dh.grad0(Tn);
}
#endif

// [hs, gates, hn | undefined, hw, rh | undefined, hwn | undefined, h_update | undefined, and with
// layer norm x_hat, x_rstd, h_hat, h_rstd, xs] (see the header comment).
Tensors gru_buffers(const Spec& sp, int64_t T, int64_t B, int64_t H, const OptTensors&, bool save,
                    const at::TensorOptions& opt) {
  const int64_t rows = save ? T * B : B;
  const Tensor upd = sp.zoneout > 0 && save ? empty_seq({T, B, H}, opt) : Tensor();
  Tensors bufs{empty_seq({T, B, H}, opt), empty_seq({rows, 3 * H}, opt)};
  if (sp.reset_after && sp.layer_norm)
    return {bufs[0], bufs[1], empty_seq({rows, H}, opt), at::empty({B, 3 * H}, opt), Tensor(), Tensor(), upd,
            empty_seq({rows, 3 * H}, opt), empty_seq({rows, 3}, opt), empty_seq({rows, 3 * H}, opt),
            empty_seq({rows, 3}, opt), at::empty({B, 3 * H}, opt)};
  if (sp.reset_after)
    return {bufs[0], bufs[1], empty_seq({rows, H}, opt), at::empty({B, 3 * H}, opt), Tensor(), Tensor(), upd};
  return {bufs[0], bufs[1], Tensor(), at::empty({B, 2 * H}, opt), at::empty({B, H}, opt), at::empty({B, H}, opt), upd};
}

void gru_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const Tensor b_hh = or_zeros(a.rec[1], a.xp.size(2), a.xp.options());
#ifdef RNNKIT_AVX512
  if (use_fused(sp, bufs[0])) return sp.layer_norm ? forward_fused_ln(sp, a, bufs) : forward_fused(sp, a, bufs);
#endif
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "gru_forward", [&] {
    if (sp.reset_after)
      forward_after<scalar_t>(sp, a, b_hh.data_ptr<scalar_t>(), bufs);
    else
      forward_before<scalar_t>(sp, a, b_hh.data_ptr<scalar_t>(), bufs);
  });
}

FwdResult gru_forward(const Spec& sp, const FwdArgs& a) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 3;
  const Tensors bufs = gru_buffers(sp, Tn, B, H, a.rec, a.save, a.xp.options());
  gru_run(sp, a, bufs);
  if (!a.save) return {{bufs[0]}, {}};
  Tensors saved{bufs[1].view({Tn, B, 3 * H})};
  if (sp.reset_after) saved.push_back(bufs[2].view({Tn, B, H}));
  if (sp.layer_norm)
    saved.insert(saved.end(), {bufs[7].view({Tn, B, 3 * H}), bufs[8].view({Tn, B, 3}), bufs[9].view({Tn, B, 3 * H}),
                               bufs[10].view({Tn, B, 3})});
  if (bufs[6].defined()) saved.push_back(bufs[6]);
  return {{bufs[0]}, saved};
}

BwdResult gru_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2), G = 3 * H, R = Tn * B;
  const auto opt = hs.options();
  const Tensor dx = empty_seq({Tn, B, G}, opt);
  const Tensor drn = sp.reset_after ? empty_temp({Tn, B, H}, opt) : Tensor();
  const Tensor rhs = sp.reset_after ? Tensor() : empty_temp({Tn, B, H}, opt);
  Tensor dh, dw = at::empty({G, H}, opt);
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({G}, opt);
  const Tensors ln = sp.layer_norm ? Tensors{empty_seq({Tn, B, G}, opt), empty_seq({Tn, B, G}, opt)} : Tensors{};
  const Tensors d_ln = sp.layer_norm ? Tensors{at::empty({G}, opt), at::empty({G}, opt)} : Tensors{};
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "gru_backward", [&] {
    using T = scalar_t;
    const Noise<T> nz(sp, a.noise);
    const Tensor hd_all = nz.drop ? dropped_prev<T>(a.state0[0], hs, nz) : Tensor();
    const T* dx_p = dx.data_ptr<T>();
    const T* h0_p = nz.drop ? hd_all.data_ptr<T>() : a.state0[0].data_ptr<T>();      // the previous states as
    const T* hs_p = nz.drop ? hd_all.data_ptr<T>() + B * H : hs.data_ptr<T>();      // they entered W_hh
    T* dw_hn = dw.data_ptr<T>() + 2 * H * H;
#ifdef RNNKIT_AVX512
    if (!use_fused(sp, hs))
      dh = backward_impl<T>(sp, a, dx, drn, rhs, hd_all, ln);
    else
      dh = sp.layer_norm ? backward_fused_ln(sp, a, dx, drn, ln) : backward_fused(sp, a, dx, drn);
#else
    dh = backward_impl<T>(sp, a, dx, drn, rhs, hd_all, ln);
#endif
    if (sp.layer_norm) {
      const T *x_hat = a.saved[2].data_ptr<T>(), *h_hat = a.saved[4].data_ptr<T>();
      T *dg_ih = d_ln[0].data_ptr<T>(), *dg_hh = d_ln[1].data_ptr<T>();
      weight_grad<T>(Tn, B, G, H, ln[1].data_ptr<T>(), G, h0_p, hs_p, dw.data_ptr<T>());
      prod_col_sum<T>(R, G, dx_p, G, x_hat, G, dg_ih);
      prod_col_sum<T>(R, 2 * H, dx_p, G, h_hat, G, dg_hh);                       // r, z: dx's rows
      prod_col_sum<T>(R, H, drn.data_ptr<T>(), H, h_hat + 2 * H, G, dg_hh + 2 * H);   // n: drn
    } else if (sp.reset_after)
      weight_grad<T>(Tn, B, H, H, drn.data_ptr<T>(), H, h0_p, hs_p, dw_hn);
    else
      gemm(Op::T, Op::N, H, H, R, dx_p + 2 * H, G, rhs.data_ptr<T>(), H, T(0), dw_hn, H);
    if (!sp.layer_norm) weight_grad<T>(Tn, B, 2 * H, H, dx_p, G, h0_p, hs_p, dw.data_ptr<T>());   // r, z rows
    if (db) {
      T* db_p = db->data_ptr<T>();
      col_sum<T>(R, 2 * H, dx_p, G, db_p);
      if (sp.reset_after)
        col_sum<T>(R, H, drn.data_ptr<T>(), H, db_p + 2 * H);
      else
        col_sum<T>(R, H, dx_p + 2 * H, G, db_p + 2 * H);
    }
  });
  if (sp.layer_norm) return {ln[0], {dh}, {dw, db, d_ln[0], d_ln[1]}};
  return {dx, {dh}, {dw, db}};
}

// gates, and hn in torch's form; layer norm's x_hat, x_rstd, h_hat, h_rstd; zoneout's h_update
std::vector<Sym> gru_saved(const Spec& sp) {
  std::vector<Sym> own = sp.reset_after ? std::vector<Sym>{kGH, kH} : std::vector<Sym>{kGH};
  if (sp.layer_norm) own.insert(own.end(), {kGH, kG, kGH, kG});
  return zoneout_saved(sp, own);
}

std::vector<ParamDecl> gru_rec(const Spec& sp) {
  std::vector<ParamDecl> rec{{"weight_hh", {kGH, kH}, false}, {"bias_hh", {kGH}, true}};
  if (sp.layer_norm) rec.insert(rec.end(), {{"weight_ln_ih", {kGH}, false}, {"weight_ln_hh", {kGH}, false}});
  return rec;
}

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"gru", /*id=*/3, /*gates=*/3, /*n_states=*/1, gru_forward, gru_backward, gru_buffers,
                          gru_run, /*states=*/{kH}, gru_rec, gru_saved});

}  // namespace rnnkit
