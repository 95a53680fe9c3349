// Elman (simple RNN) over a whole sequence, forward and backward through time.
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, H)    x W_ih^T + b_ih                      input, read only
//   h0       (B, H)       initial state                        input, read only
//   w_hh     (H, H)       recurrent weights                    input, read only
//   b_hh     (H) | None
//   hs       (T, B, H)    h_t, the only thing saved for backward (plus h0)
//   h_update (T, B, H)    zoneout only: act(a_t), what the cell computed before zoneout: saved
//                         ("h_update"; rows of padded steps zero); not kept without save
//   noise    (T, B, H)    the recurrent mask m_t and/or zoneout's z_t (rnn.h), read only
//   hd       (B, H)       recurrent dropout, forward workspace: h_{t-1} * m_t, the GEMM's input
//   da       (T, B, H)    backward: d pre-activation = d_xp, returned; also the rows of the
//                         single post-loop GEMM dW_hh = da^T [h0; hs[:-1]] (recurrent dropout:
//                         dW_hh = da^T hd_all, hd_all (T, B, H) the masked previous states)
//   dh, dh_prev (B, H)    backward workspaces: carried dh and the next one (backward_steps, loop.h)
//   dhd      (B, H)       recurrent dropout, backward workspace: da_t W_hh, added to dh_prev * m_t
// Aliasing: each step's GEMM writes h_{t-1} W_hh^T straight into hs[t], which the gate pass
// then overwrites in place with h_t; nothing else aliases.
// FusedOpts float32 path (AVX-512 builds, where fused_pays: see "float32 AVX-512" below; float64 and
// other builds keep the loops above).  It writes the same hs, h_update and da, and the post-loop
// GEMMs are the same; instead of hd, dhd and the (B, H) dh, dh_prev:
//   wp       (ng, H, U, 16)  forward: W_hh packed per group of U = 2 blocks of 16 units
//                            (pack_groups), ng = ceil(H / 16U); the product h_{t-1} W_hh^T stays
//                            in registers and is never written; recurrent dropout multiplies
//                            h_{t-1} by m_t as it is read
//   wn       (nb, H, 16)     backward: W_hh packed per block of 16 columns (tiles.h), nb = ceil(H/16)
//   dh[2]    (B, H) each     backward: dh_t and dh_{t-1}, alternating; d_out[t] is added into dh_t
//                            in place, dh_{t-1} is set by phase 1 (zoneout's direct part dh_t z, or
//                            zero; a padded row: dh_t) before phase 2 adds da_t W_hh (times m_t)
#include "activations.h"
#include "gate_rows.h"
#include "gemm.h"
#include "loop.h"
#include "rnn.h"
#include "tiles.h"

#include <ATen/Dispatch.h>

namespace rnnkit {
namespace {

using elman_rows::backward_row;
using elman_rows::forward_row;

template <typename T>
void forward_impl(const Spec& sp, const FwdArgs& a, const Tensor& hs_t, const Tensor& upd_t) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2);
  const bool is_relu = sp.act == kRelu;
  const Mask mask(a.mask, B);
  const Noise<T> nz(sp, a.noise);
  const Tensor bias = or_zeros(a.rec[1], H, a.xp.options());
  const Tensor hd_t = nz.drop ? at::empty({B, H}, a.xp.options()) : Tensor();
  const T *xp = a.xp.data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>(), *b_hh = bias.data_ptr<T>();
  T *hs = hs_t.data_ptr<T>(), *upd = upd_t.defined() ? upd_t.data_ptr<T>() : nullptr;
  T* hd = nz.drop ? hd_t.data_ptr<T>() : nullptr;
  const StepWeight<T> w_t(Op::T, B, H, H, a.rec[0]->data_ptr<T>(), H, Tn);   // h W_hh^T
  for (int64_t t = 0; t < Tn; ++t) {
    const T* prev = t ? hs + (t - 1) * B * H : h0;
    T* ht = hs + t * B * H;                                   // (B, H)
    const int64_t n = mask.live(t);                           // rows past n: padded, copied below
    if (hd != nullptr)
      for (int64_t b = 0; b < n; ++b) mul_to(H, hd + b * H, prev + b * H, nz.mask(t, b, H));
    w_t.mul(hd != nullptr ? hd : prev, H, T(0), ht, H, n);
    for_rows(B, H, [&](int64_t b) {
      T* u = upd != nullptr ? upd + (t * B + b) * H : nullptr;
      if (mask.valid(t, b)) {
        forward_row(H, is_relu, ht + b * H, xp + (t * B + b) * H, b_hh);
        if (nz.zoneout()) zone_row(H, ht + b * H, prev + b * H, nz.z(t, 0, b, H), nz.p, u);
        return;
      }
      std::memcpy(ht + b * H, prev + b * H, H * sizeof(T));
      if (u != nullptr) std::fill_n(u, H, T(0));
    });
  }
}

// Returns dh_0.
template <typename T>
Tensor backward_impl(const Spec& sp, const BwdArgs& a, const Tensor& da_t) {
  const int64_t B = a.states[0].size(1), H = a.states[0].size(2);
  const bool is_relu = sp.act == kRelu;
  StepOptions<T> opt(sp, a);
  opt.carry_only = true;
  const T* hs = (sp.zoneout > 0 ? a.saved[0] : a.states[0]).data_ptr<T>();   // act(a_t) before zoneout
  T* da = da_t.data_ptr<T>();
  const Tensor dhd_t = opt.noise.drop ? at::empty({B, H}, da_t.options()) : Tensor();
  const StepWeight<T> w_n(Op::N, B, H, H, a.rec[0]->data_ptr<T>(), H, a.states[0].size(0));   // da W_hh
  const Mask mask(a.mask, B);
  return backward_steps<T>(
      a, opt, H, {{da, H}},
      [&](int64_t t, int64_t b, const T* dh, T* dh_prev) {
        const int64_t r = (t * B + b) * H;
        backward_row(H, is_relu, hs + r, dh, da + r, dh_prev);
      },
      [&](int64_t t, T* dh_prev) {                            // padded rows: da = 0, nothing to add
        const int64_t n = mask.live(t);
        if (!opt.noise.drop) return w_n.mul(da + t * B * H, H, T(1), dh_prev, H, n);   // += da_t W_hh
        T* dhd = dhd_t.data_ptr<T>();
        w_n.mul(da + t * B * H, H, T(0), dhd, H, n);
        for (int64_t b = 0; b < n; ++b) add_masked(H, dh_prev + b * H, dhd + b * H, opt.noise.mask(t, b, H));
      });
}

#ifdef RNNKIT_AVX512
// ---- float32 AVX-512: the step's product and the activation fused -----------------------------
// Per group of U blocks of 16 hidden units, with W_hh packed once per sequence:
//   forward   wp (pack_groups): the group's sums h_{t-1} W_hh^T of a tile of up to kElmanRows
//             batch rows stay in registers (gate_sums, tiles.h, with the group's U blocks as its
//             "gates": one sum per block and row, U per row in flight for the FMAs' latency, and
//             each h_{t-1}[r, k] read once for U blocks) from the first FMA to h_t;
//   backward  per block of 16: phase 1, da_t = act'(h) dh_t (dh_t: carried, plus d_out[t],
//             clipped, zoneout's split) and dh_{t-1} set to its direct part; phase 2, once all of
//             step t's da rows are written, dh_{t-1}[:, block] += da_t W_hh[:, block] (times m_t
//             under recurrent dropout), from wn (pack_unit_blocks, tiles.h: dh_tile).
// A step's groups (blocks) are split over threads (owned_blocks, simd.h).  They write what
// forward_impl and backward_impl write, to float32 rounding.

constexpr int64_t kUnits = 2;                                  // blocks of 16 units per group
constexpr int kElmanRows = 8;                                  // batch rows per register tile
constexpr int64_t kGroup = kUnits * simd::kLanes;              // hidden units per group

// Where the fused loops win (measured on this 2-core Zen 4, L2 1 MiB a core, T = 128, I = H,
// against the GEMM path in one process, best of 7): they pay for packing W_hh once they run several
// steps (the stream's T = 1 keeps the GEMM path).  One thread: fwd 1.33x, 1.25x, 1.14x, 1.07x at
// (B, H) = (1, 64), (8, 128), (16, 256), (32, 256), fwd+bwd 1.11x, 1.10x, 1.05x, 1.03x; at
// (32, 512) and (16, 1024), (32, 1024) level (1.00-1.02x); past 32 rows they keep 1.02-1.07x while
// each thread's share of W_hh is under its L2 ((64, 256), (128, 256)), and fall behind MKL's
// blocked GEMM at (64, 512) (0.97-0.99x), which keeps those sizes.  Two threads (a loaded
// machine, load average 4 on 2 cores: only the direction is trusted): 1.0-1.9x wherever the rule
// picks the fused loops with B > 1 (one row runs one thread either way), level at (64, 1024).
// Near the ceiling either way (the forward's recurrent part runs at about the machine's sgemm
// rate), the forward's (blocks per group, rows per tile) measured level on one thread: (1, 8),
// (2, 8), (4, 4), (2, 12), (1, 16), (3, 8), (2, 4) within 5% at every size but B = 1, where a
// group of one block (two sums in flight) is 5% slower; the backward's tiles of 4, 8, 12 rows too.
bool fused_pays(at::ScalarType dtype, int64_t Tn, int64_t B, int64_t H) {
  const int64_t share = H * H * int64_t(sizeof(float)) / std::max<int64_t>(1, at::get_num_threads());
  return dtype == at::kFloat && Tn >= 4 && (B <= 32 || share < (1 << 20));
}

int64_t step_threads(int64_t B, int64_t H) { return step_threads_for(B * H * H); }

// W_hh (H, H) packed per group of kUnits blocks of 16 hidden units (its rows):
//   wp  (ng, H, kUnits, 16)   wp[jg, k, v, u] = w[kGroup*jg + 16*v + u, k] (zero past H).
at::Tensor pack_groups(const float* w, int64_t H) {
  const int64_t ng = (H + kGroup - 1) / kGroup;
  at::Tensor packed = at::zeros({ng * H * kGroup}, at::kFloat);
  float* p = packed.data_ptr<float>();
  for (int64_t j = 0; j < H; ++j) {                            // row by row of w: contiguous reads
    float* out = p + (j / kGroup) * H * kGroup + j % kGroup;
    for (int64_t k = 0; k < H; ++k) out[k * kGroup] = w[j * H + k];
  }
  return packed;
}

// Forward of group jg, rows b0 .. b0+R-1 of step t (forward_row's math, then zoneout).
// sums: false on a tile of padded rows only (by_live_tiles), which needs no product.
template <int R, bool Drop, bool Zone, bool Relu>
void elman_tile(const FwdArgs& a, const FusedOpts& o, const float* wp, const float* b_hh, int64_t t, int64_t jg,
                int64_t b0, bool sums, float* hs) {
  using namespace simd;
  const int64_t B = a.xp.size(1), H = a.xp.size(2);
  const float* hp = (t ? hs + (t - 1) * B * H : a.state0[0].data_ptr<float>()) + b0 * H;
  V acc[R][kUnits];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kUnits; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* mr[R] = {};                                     // the rows' recurrent masks
  for (int r = 0; Drop && r < R; ++r) mr[r] = o.nz.mask(t, b0 + r, H);
  const float* xp = a.xp.data_ptr<float>();
  if (sums) {
    prefetch_rows<R, kUnits>(xp + (t * B + b0) * H + jg * kGroup, H, kLanes);   // (past H: no fault)
    gate_sums<R, kUnits, Drop>(wp + jg * H * kGroup, H, hp, mr, acc);
  }
  const Mask mask(a.mask, B);
  for (int v = 0; v < kUnits; ++v) {
    const int64_t j0 = jg * kGroup + v * kLanes;
    if (j0 >= H) break;
    const __mmask16 m = lanes(H - j0);
    const V bias = load(b_hh + j0, m);
    for (int r = 0; r < R; ++r) {
      const int64_t b = b0 + r, row = t * B + b;
      float* h = hs + row * H + j0;
      const V h_prev = load(hp + r * H + j0, m);
      if (!mask.valid(t, b)) {                                 // padded: the state stays
        store(h, h_prev, m);
        if (Zone && o.upd != nullptr) store(o.upd + row * H + j0, _mm512_setzero_ps(), m);
        continue;
      }
      V hv = act<Relu>(_mm512_add_ps(_mm512_add_ps(acc[r][v], load(xp + row * H + j0, m)), bias));
      if (Zone) {                                              // h = h~ + z (h_{t-1} - h~)
        if (o.upd != nullptr) store(o.upd + row * H + j0, hv, m);
        hv = _mm512_fmadd_ps(zone_at(o, t, b, H, j0, m), _mm512_sub_ps(h_prev, hv), hv);
      }
      store(h, hv, m);
    }
  }
}

void forward_fused(const Spec& sp, const FwdArgs& a, const Tensor& hs_t, const Tensor& upd_t) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2);
  const Tensor packed = pack_groups(a.rec[0]->data_ptr<float>(), H);
  const Tensor b_hh = or_zeros(a.rec[1], H, a.xp.options());
  const float *wp = packed.data_ptr<float>(), *bias = b_hh.data_ptr<float>();
  float* hs = hs_t.data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), upd_t.defined() ? upd_t.data_ptr<float>() : nullptr, 0.0f};
  const Mask mask(a.mask, B);
  with_flags(
      [&](auto drop, auto zone, auto relu) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value, Relu = decltype(relu)::value;
        owned_units_or_rows(
            Tn, (H + kGroup - 1) / kGroup, mask, step_threads(B, H), kElmanRows, H * H * int64_t(sizeof(float)),
            each_block_of_rows([&](int64_t t, int64_t jg, int64_t r0, int64_t r1) {
              by_live_tiles<kElmanRows>(
                  mask.live(t), B,
                  [&](auto rows, int64_t b0, bool sums) {
                    elman_tile<decltype(rows)::value, Drop, Zone, Relu>(a, o, wp, bias, t, jg, b0, sums, hs);
                  },
                  r0, r1);
            }),
            no_phase);
      },
      o.nz.drop != nullptr, o.nz.zoneout(), sp.act == kRelu);
}

// Phase 1 of step t for block jb, rows r0 .. r1-1 (backward_steps' options, then backward_row's math):
// cur (B, H) holds the carried dh_t (d_out[t] is added here), next (B, H) receives dh_{t-1}'s
// direct part; h: act(a_t) (before zoneout).
template <bool Zone, bool Relu>
void grad_rows(const BwdArgs& a, const FusedOpts& o, const GradOut<float>& d_out, const float* h, int64_t t, int64_t jb,
               int64_t r0, int64_t r1, float* cur, float* next, float* da) {
  using namespace simd;
  const int64_t B = a.states[0].size(1), H = a.states[0].size(2), j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  const Mask mask(a.mask, B);
  const V zero = _mm512_setzero_ps(), lo = splat(-o.clip), hi = splat(o.clip);
  for (int64_t b = r0; b < r1; ++b) {
    const int64_t row = (t * B + b) * H + j0;
    float* gh_p = cur + b * H + j0;
    d_out.add(t, b, std::min(kLanes, H - j0), gh_p, j0);
    V gh = load(gh_p, m);
    if (o.clip > 0.0f) gh = _mm512_min_ps(hi, _mm512_max_ps(lo, gh));
    if (!mask.valid(t, b)) {                                   // padded: dh passes, da is zero
      store(da + row, zero, m);
      store(next + b * H + j0, gh, m);
      continue;
    }
    V keep = zero;                                             // zoneout's direct part dh_t z
    if (Zone) {
      const V zt = zone_at(o, t, b, H, j0, m);
      keep = _mm512_mul_ps(gh, zt), gh = _mm512_mul_ps(gh, _mm512_sub_ps(splat(1.0f), zt));
    }
    store(da + row, act_grad<Relu>(load(h + row, m), gh), m);
    store(next + b * H + j0, keep, m);
  }
}

// Returns dh_0; writes da (T, B, H) as backward_impl does.
Tensor backward_fused(const Spec& sp, const BwdArgs& a, const Tensor& da_t) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2);
  const Tensor packed = pack_unit_blocks(a.rec[0]->data_ptr<float>(), H, H);
  const float* wn = packed.data_ptr<float>();
  const float* h = (sp.zoneout > 0 ? a.saved[0] : a.states[0]).data_ptr<float>();   // act(a_t) before zoneout
  const Carried dh(a);
  const GradOut<float> d_out(a.d_out);
  float* da = da_t.data_ptr<float>();
  const FusedOpts o{Noise<float>(sp, a.noise), nullptr, float(sp.clip)};
  const Mask mask(a.mask, B);
  with_flags(
      [&](auto drop, auto zone, auto relu) {
        constexpr bool Drop = decltype(drop)::value, Zone = decltype(zone)::value, Relu = decltype(relu)::value;
        owned_units_or_rows(
            Tn, (H + simd::kLanes - 1) / simd::kLanes, mask, step_threads(B, H), kElmanRows,
            H * H * int64_t(sizeof(float)),
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // step s: t = Tn-1-s
              grad_rows<Zone, Relu>(a, o, d_out, h, Tn - 1 - s, jb, r0, r1, dh.cur(s), dh.next(s), da);
            }),
            each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {   // padded rows: nothing to add
              const int64_t t = Tn - 1 - s;
              const RowsPart step[1] = {{da + t * B * H, H, 0, H}};
              dh_rows<kElmanRows, Drop>(step, o.nz, wn, H, H, t, jb, r0, std::min(r1, mask.live(t)), dh.next(s));
            }));
      },
      o.nz.drop != nullptr, o.nz.zoneout(), sp.act == kRelu);
  return dh.grad0(Tn);
}
#endif

// [hs, h_update (zoneout with save; else undefined)]
Tensors elman_buffers(const Spec& sp, int64_t T, int64_t B, int64_t H, const OptTensors&, bool save,
                      const at::TensorOptions& opt) {
  return {empty_seq({T, B, H}, opt), sp.zoneout > 0 && save ? empty_seq({T, B, H}, opt) : Tensor()};
}

void elman_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
#ifdef RNNKIT_AVX512
  if (fused_pays(a.xp.scalar_type(), a.xp.size(0), a.xp.size(1), a.xp.size(2)))
    return forward_fused(sp, a, bufs[0], bufs[1]);
#endif
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "elman_forward",
                             [&] { forward_impl<scalar_t>(sp, a, bufs[0], bufs[1]); });
}

FwdResult elman_forward(const Spec& sp, const FwdArgs& a) {
  const Tensors bufs = elman_buffers(sp, a.xp.size(0), a.xp.size(1), a.xp.size(2), a.rec, a.save, a.xp.options());
  elman_run(sp, a, bufs);
  if (!a.save || !bufs[1].defined()) return {{bufs[0]}, {}};
  return {{bufs[0]}, {bufs[1]}};
}

BwdResult elman_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2);
  const Tensor da = empty_seq(hs.sizes(), hs.options());
  Tensor dh, dw = at::empty({H, H}, hs.options());
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "elman_backward", [&] {
    using T = scalar_t;
#ifdef RNNKIT_AVX512
    dh = fused_pays(hs.scalar_type(), Tn, B, H) ? backward_fused(sp, a, da) : backward_impl<T>(sp, a, da);
#else
    dh = backward_impl<T>(sp, a, da);
#endif
    const Noise<T> nz(sp, a.noise);
    const Tensor hd = nz.drop ? dropped_prev<T>(a.state0[0], hs, nz) : Tensor();
    const T* prev0 = nz.drop ? hd.data_ptr<T>() : a.state0[0].data_ptr<T>();
    const T* prevs = nz.drop ? hd.data_ptr<T>() + B * H : hs.data_ptr<T>();
    weight_grad<T>(Tn, B, H, H, da.data_ptr<T>(), H, prev0, prevs, dw.data_ptr<T>());
    if (db) col_sum<scalar_t>(Tn * B, H, da.data_ptr<scalar_t>(), H, db->data_ptr<scalar_t>());
  });
  return {da, {dh}, {dw, db}};
}

std::vector<Sym> elman_saved(const Spec& sp) { return zoneout_saved(sp, {}); }

std::vector<ParamDecl> elman_rec(const Spec&) { return {{"weight_hh", {kH, kH}, false}, {"bias_hh", {kH}, true}}; }

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"elman", /*id=*/0, /*gates=*/1, /*n_states=*/1, elman_forward, elman_backward,
                          elman_buffers, elman_run, /*states=*/{kH}, elman_rec, elman_saved});

}  // namespace rnnkit
