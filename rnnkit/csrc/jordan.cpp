// Jordan network over a whole sequence, forward and backward through time.  The carried state
// is the previous output y: h_t = act(xp_t + y_{t-1} W_yh^T), y_t = out(h_t W_hy^T + b_hy).
//
// Tensors (T steps, B batch, H hidden, O outputs):
//   xp       (T, B, H)    x W_ih^T + b_ih                             input, read only
//   y0       (B, O)       initial output                              input, read only
//   w_yh     (H, O), w_hy (O, H), b_hy (O) | None                     inputs, read only
//   hs       (T, B, H)    h_t: saved ("hidden") and traced, zero at padded steps; without save
//                         a (B, H) workspace
//   ys       (T, B, O)    y_t: the state, saved for backward
//   dz       (T, B, O)    backward: d(h W_hy^T + b_hy); post-loop dW_hy = dz^T hs, db_hy = sum dz
//   da       (T, B, H)    backward: d pre-activation of h = d_xp, returned; post-loop
//                         dW_yh = da^T [y0; ys[:-1]]
//   dy, dy_prev (B, O)    backward: carried dy and the next one (backward_steps, loop.h)
//   noise    (T, B, O)    recurrent dropout's mask m_t (rnn.h; zoneout is not taken), read only;
//                         y_{t-1} * m_t enters W_yh: forward workspace yd (B, O); backward adds
//                         (da W_yh) * m_t from the workspace dyd (B, O), and dW_yh is taken
//                         against the masked previous outputs
// Aliasing: the step GEMMs write y_{t-1} W_yh^T into hs[t] and h_t W_hy^T into ys[t], which
// the activation passes overwrite in place; in backward dz_t W_hy is written into da[t] and
// scaled there by act'(h_t).
// The fused float32 loops (AVX-512; every output activation but softmax, which needs a row's every
// output at once) write what the GEMM paths write: forward_fused from W_yh and W_hy packed per
// block of 16 of their output units once per sequence (pack_gate_blocks, tiles.h), backward_fused
// from them packed per block of 16 of their input units (pack_unit_blocks).
#include "activations.h"
#include "gemm.h"
#include "loop.h"
#include "rnn.h"
#include "simd.h"
#include "tiles.h"

#include <ATen/Dispatch.h>

namespace rnnkit {
namespace {

template <typename T>
void out_forward(int64_t kind, int64_t O, T* __restrict y, const T* __restrict bias) {
  for (int64_t k = 0; k < O; ++k) y[k] += bias[k];
  if (kind == kTanh) {
    for (int64_t k = 0; k < O; ++k) y[k] = tanh_(y[k]);
  } else if (kind == kSigmoid) {
    for (int64_t k = 0; k < O; ++k) y[k] = sigmoid(y[k]);
  } else if (kind == kSoftmax) {
    const T mx = *std::max_element(y, y + O);              // shift: every exponent is <= 0
    T sum = 0;
    for (int64_t k = 0; k < O; ++k) sum += (y[k] = exp_neg(y[k] - mx));
    const T inv = T(1) / sum;
    for (int64_t k = 0; k < O; ++k) y[k] *= inv;
  }
}

// dz from dy, written with the output y.
template <typename T>
void out_backward(int64_t kind, int64_t O, const T* __restrict y, const T* __restrict g, T* __restrict dz) {
  if (kind == kTanh) {
    for (int64_t k = 0; k < O; ++k) dz[k] = g[k] * (T(1) - y[k] * y[k]);
  } else if (kind == kSigmoid) {
    for (int64_t k = 0; k < O; ++k) dz[k] = g[k] * y[k] * (T(1) - y[k]);
  } else if (kind == kSoftmax) {
    T s = 0;
    for (int64_t k = 0; k < O; ++k) s += g[k] * y[k];
    for (int64_t k = 0; k < O; ++k) dz[k] = y[k] * (g[k] - s);
  } else {
    std::memcpy(dz, g, O * sizeof(T));
  }
}

template <typename T>
void hidden_row(int64_t H, bool is_relu, T* __restrict h, const T* __restrict x) {
  for (int64_t j = 0; j < H; ++j) h[j] = hidden_act(is_relu, h[j] + x[j]);
}

template <typename T>
void hidden_grad_row(int64_t H, bool is_relu, const T* __restrict h, T* __restrict d) {
  for (int64_t j = 0; j < H; ++j) d[j] = hidden_grad(is_relu, h[j], d[j]);
}

template <typename T>
void forward_impl(const Spec& sp, const FwdArgs& a, const T* bias, const Tensor& hs, const Tensor& ys) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2), O = ys.size(2);
  const bool is_relu = sp.act == kRelu;
  const Mask mask(a.mask, B);
  const Noise<T> nz(sp, a.noise);
  const Tensor yd_t = nz.drop ? at::empty({B, O}, a.xp.options()) : Tensor();
  const T *xp = a.xp.data_ptr<T>(), *y0 = a.state0[0].data_ptr<T>();
  const T *w_yh = a.rec[0]->data_ptr<T>(), *w_hy = a.rec[1]->data_ptr<T>();
  T *H_ = hs.data_ptr<T>(), *Y = ys.data_ptr<T>(), *yd = nz.drop ? yd_t.data_ptr<T>() : nullptr;
  const StepWeight<T> yh(Op::T, B, H, O, w_yh, O, Tn), hy(Op::T, B, O, H, w_hy, H, Tn);
  for (int64_t t = 0; t < Tn; ++t) {
    const T* yp = t ? Y + (t - 1) * B * O : y0;
    T* ht = a.save ? H_ + t * B * H : H_;                     // (B, H)
    T* yt = Y + t * B * O;                                    // (B, O)
    const int64_t n = mask.live(t);                           // rows past n: padded, copied below
    if (yd != nullptr)
      for (int64_t b = 0; b < n; ++b) mul_to(O, yd + b * O, yp + b * O, nz.mask(t, b, O));
    yh.mul(yd != nullptr ? yd : yp, O, T(0), ht, H, n);
    for_rows(n, H, [&](int64_t b) { hidden_row(H, is_relu, ht + b * H, xp + (t * B + b) * H); });
    hy.mul(ht, H, T(0), yt, O, n);
    for_rows(B, O, [&](int64_t b) {
      if (mask.valid(t, b)) {
        out_forward(sp.out, O, yt + b * O, bias);
        return;
      }
      std::memcpy(yt + b * O, yp + b * O, O * sizeof(T));
      if (a.save) std::fill_n(ht + b * H, H, T(0));
    });
  }
}

#ifdef RNNKIT_AVX512
// ---- float32, fused -----------------------------------------------------------------------------
// A step in two phases, since h_t reads all of y_{t-1} and y_t all of h_t:
//   hidden  per block of 16 hidden units: a = y_{t-1} (* m_t) W_yh^T + xp (W_yh packed as
//           (nbh, O, 1, 16)), h = act(a) (a padded row's h: zero with save);
//   output  per block of 16 outputs: y = out(h W_hy^T + b_hy) (W_hy packed as (nbo, H, 1, 16)),
//           a padded row keeping y_{t-1}.
// Threads own rows where that pays (owned_units_or_rows: no wait), else blocks: a thread's blocks
// of H in the first phase, the same share of O's in the second, a wait after each (the empty third
// phase makes the one before the next step's sums, which read all of y_t).
constexpr int kJordanRows = 8;                                 // batch rows per register tile

struct JordanRows {
  int64_t B, H, O;
  const float *xp, *y0, *b_hy;
  float *hs, *ys;                                             // hs: (T, B, H) with save, else (B, H)
  bool save;
  Noise<float> nz;
  Mask mask;
  float* h_row(int64_t t, int64_t b) const { return hs + ((save ? t * B : 0) + b) * H; }
  const float* y_prev(int64_t t, int64_t b) const { return (t ? ys + (t - 1) * B * O : y0) + b * O; }
};

template <int R, bool Drop, bool Relu>
void hidden_tile(const JordanRows& io, const float* wyh, int64_t t, int64_t jb, int64_t b0, bool sums) {
  using namespace simd;
  const int64_t B = io.B, H = io.H, O = io.O, j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  const float* yp = io.y_prev(t, b0);
  V acc[R][1];
  const float* mr[R] = {};                                     // the rows' recurrent masks (width O)
  for (int r = 0; Drop && sums && r < R; ++r) mr[r] = io.nz.mask(t, b0 + r, O);
  block_sums<R, Drop>(wyh, jb, O, yp, mr, sums, acc);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    float* h = io.h_row(t, b) + j0;
    if (!io.mask.valid(t, b)) {                                // padded: h is zero where it is saved
      if (io.save) store(h, _mm512_setzero_ps(), m);
      continue;
    }
    store(h, act<Relu>(_mm512_add_ps(acc[r][0], load(io.xp + (t * B + b) * H + j0, m))), m);
  }
}

template <int R, int64_t Out>
void output_tile(const JordanRows& io, const float* why, int64_t t, int64_t ob, int64_t b0, bool sums) {
  using namespace simd;
  const int64_t B = io.B, H = io.H, O = io.O, o0 = ob * kLanes;
  const __mmask16 m = lanes(O - o0);
  const float* yp = io.y_prev(t, b0);
  V acc[R][1];
  const float* none[R] = {};
  block_sums<R, false>(why, ob, H, io.h_row(t, b0), none, sums, acc);
  const V bias = load(io.b_hy + o0, m);
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    float* y = io.ys + (t * B + b) * O + o0;
    if (!io.mask.valid(t, b)) {                                // padded: the state stays
      store(y, load(yp + r * O + o0, m), m);
      continue;
    }
    const V z = _mm512_add_ps(acc[r][0], bias);
    store(y, Out == kTanh ? tanh(z) : Out == kSigmoid ? sigmoid(z) : z, m);
  }
}

// f(Out, Drop, Relu) as compile-time constants: the output activation (std::integral_constant of
// its kind, of those the fused loops take), recurrent dropout, a relu hidden activation.
template <typename F>
void with_jordan_options(const Spec& sp, bool drop, const F& f) {
  const auto flags = [&](auto out) { with_flags([&](auto d, auto relu) { f(out, d, relu); }, drop, sp.act == kRelu); };
  if (sp.out == kTanh) return flags(std::integral_constant<int64_t, kTanh>());
  if (sp.out == kSigmoid) return flags(std::integral_constant<int64_t, kSigmoid>());
  flags(std::integral_constant<int64_t, kIdentity>());
}

int64_t jordan_threads(int64_t B, int64_t H, int64_t O) { return step_threads_for(B * 2 * H * O); }

void forward_fused(const Spec& sp, const FwdArgs& a, const float* b_hy, const Tensor& hs, const Tensor& ys) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2), O = ys.size(2);
  const int64_t nbh = (H + simd::kLanes - 1) / simd::kLanes, nbo = (O + simd::kLanes - 1) / simd::kLanes;
  const Tensor packed_yh = pack_gate_blocks(a.rec[0]->data_ptr<float>(), H, 1, O);   // W_yh (H, O)
  const Tensor packed_hy = pack_gate_blocks(a.rec[1]->data_ptr<float>(), O, 1, H);   // W_hy (O, H)
  const float *wyh = packed_yh.data_ptr<float>(), *why = packed_hy.data_ptr<float>();
  const JordanRows q{B, H, O, a.xp.data_ptr<float>(), a.state0[0].data_ptr<float>(), b_hy,
                     hs.data_ptr<float>(), ys.data_ptr<float>(), a.save, Noise<float>(sp, a.noise), Mask(a.mask, B)};
  with_jordan_options(sp, q.nz.drop != nullptr, [&](auto out, auto drop, auto relu) {
    constexpr bool Drop = decltype(drop)::value, Relu = decltype(relu)::value;
    owned_units_or_rows(
        Tn, nbh, q.mask, jordan_threads(B, H, O), kJordanRows, 2 * H * O * int64_t(sizeof(float)),
        each_block_of_rows([&](int64_t t, int64_t jb, int64_t r0, int64_t r1) {
          by_live_tiles<kJordanRows>(
              q.mask.live(t), B,
              [&](auto rows, int64_t b0, bool sums) {
                hidden_tile<decltype(rows)::value, Drop, Relu>(q, wyh, t, jb, b0, sums);
              },
              r0, r1);
        }),
        each_share_of_blocks(nbh, nbo, [&](int64_t t, int64_t ob, int64_t r0, int64_t r1) {
          by_live_tiles<kJordanRows>(
              q.mask.live(t), B,
              [&](auto rows, int64_t b0, bool sums) {
                output_tile<decltype(rows)::value, decltype(out)::value>(q, why, t, ob, b0, sums);
              },
              r0, r1);
        }),
        no_phase);
  });
}

// Where the fused loop pays (as Elman's, elman.cpp): float32, several steps (it packs the weights
// once per sequence), each thread's share of the weights within its L2 unless the batch is small.
// Backward takes the same rule.
bool use_fused(const Spec& sp, at::ScalarType dtype, int64_t Tn, int64_t B, int64_t H, int64_t O) {
  const int64_t share = 2 * H * O * int64_t(sizeof(float)) / std::max<int64_t>(1, at::get_num_threads());
  return dtype == at::kFloat && sp.out != kSoftmax && Tn >= 4 && (B <= 32 || share < (1 << 20));
}

// ---- float32, fused backward --------------------------------------------------------------------
// A step t (carried dy_t in cur, dy_{t-1} built in next, both (B, O)) in three phases:
//   output  per block of 16 outputs: g = dy_t + d_out[t] (clipped), dz_t = out'(y_t) g and next's
//           direct part zero; a padded row: dz_t = 0 and g passes to next;
//   hidden  per block of 16 hidden units: da_t = act'(h_t) (dz_t W_hy) (W_hy packed as (nbh, O, 16)
//           by pack_unit_blocks), zero on padded rows;
//   carry   per block of 16 outputs: next += da_t W_yh (W_yh packed as (nbo, H, 16)), times m_t
//           under recurrent dropout (dh_rows, tiles.h), on the live rows only (da is zero after).
// Threads own rows where that pays, else hidden blocks, and the same share of the output blocks
// in the first and last phases (each_share_of_blocks): a thread's next step reads the blocks of
// next it wrote itself, and the waits come after the first and second phases.

// Phase 1 of step t for output block ob, rows r0 .. r1-1.
template <int64_t Out>
void output_grad_rows(const BwdArgs& a, const GradOut<float>& d_out, float clip, int64_t t, int64_t ob, int64_t r0,
                      int64_t r1, float* cur, float* next, float* dz) {
  using namespace simd;
  const int64_t B = a.states[0].size(1), O = a.states[0].size(2), o0 = ob * kLanes;
  const __mmask16 m = lanes(O - o0);
  const Mask mask(a.mask, B);
  const float* ys = a.states[0].data_ptr<float>();
  const V zero = _mm512_setzero_ps(), lo = splat(-clip), hi = splat(clip), one = splat(1.0f);
  for (int64_t b = r0; b < r1; ++b) {
    const int64_t row = (t * B + b) * O + o0;
    float* g_p = cur + b * O + o0;
    d_out.add(t, b, std::min(kLanes, O - o0), g_p, o0);
    V g = load(g_p, m);
    if (clip > 0.0f) g = _mm512_min_ps(hi, _mm512_max_ps(lo, g));
    if (!mask.valid(t, b)) {                                   // padded: dy passes, dz is zero
      store(dz + row, zero, m);
      store(next + b * O + o0, g, m);
      continue;
    }
    const V y = load(ys + row, m);
    if (Out == kTanh) g = _mm512_mul_ps(g, _mm512_fnmadd_ps(y, y, one));
    if (Out == kSigmoid) g = _mm512_mul_ps(g, _mm512_mul_ps(y, _mm512_sub_ps(one, y)));
    store(dz + row, g, m);
    store(next + b * O + o0, zero, m);
  }
}

// da (R rows, ld H) [block jb] = act'(h) (dz W_hy[:, block jb]) with dz (R rows, ld O), h (R rows,
// ld H) and wn the (nbh, O, 16) of pack_unit_blocks.
template <int R, bool Relu>
void hidden_grad_tile(const float* dz, int64_t O, const float* wn, int64_t H, int64_t jb, const float* h, float* da) {
  using namespace simd;
  const int64_t j0 = jb * kLanes;
  const __mmask16 m = lanes(H - j0);
  V sum[R];
  for (int r = 0; r < R; ++r) sum[r] = _mm512_setzero_ps();
  const RowsPart parts[1] = {{dz, O, 0, O}};
  unit_sums<R>(parts, wn + jb * O * kLanes, sum);
  for (int r = 0; r < R; ++r) store(da + r * H + j0, act_grad<Relu>(load(h + r * H + j0, m), sum[r]), m);
}

// Returns dy_0; writes dz (T, B, O) and da (T, B, H) as backward_impl does.
Tensor backward_fused(const Spec& sp, const BwdArgs& a, const Tensor& dz_t, const Tensor& da_t) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), O = a.states[0].size(2), H = a.saved[0].size(2);
  const int64_t nbh = (H + simd::kLanes - 1) / simd::kLanes, nbo = (O + simd::kLanes - 1) / simd::kLanes;
  const Tensor packed_hy = pack_unit_blocks(a.rec[1]->data_ptr<float>(), O, H);   // W_hy (O, H)
  const Tensor packed_yh = pack_unit_blocks(a.rec[0]->data_ptr<float>(), H, O);   // W_yh (H, O)
  const float *why = packed_hy.data_ptr<float>(), *wyh = packed_yh.data_ptr<float>();
  const float* hs = a.saved[0].data_ptr<float>();
  float *dz = dz_t.data_ptr<float>(), *da = da_t.data_ptr<float>();
  const Carried dy(a);
  const GradOut<float> d_out(a.d_out);
  const Noise<float> nz(sp, a.noise);
  const Mask mask(a.mask, B);
  const float clip = float(sp.clip);
  with_jordan_options(sp, nz.drop != nullptr, [&](auto out, auto drop, auto relu) {
    constexpr bool Drop = decltype(drop)::value, Relu = decltype(relu)::value;
    owned_units_or_rows(
        Tn, nbh, mask, jordan_threads(B, H, O), kJordanRows, 2 * H * O * int64_t(sizeof(float)),
        each_share_of_blocks(nbh, nbo, [&](int64_t s, int64_t ob, int64_t r0, int64_t r1) {   // t = Tn-1-s
          output_grad_rows<decltype(out)::value>(a, d_out, clip, Tn - 1 - s, ob, r0, r1, dy.cur(s), dy.next(s), dz);
        }),
        each_block_of_rows([&](int64_t s, int64_t jb, int64_t r0, int64_t r1) {
          const int64_t t = Tn - 1 - s, live = std::min(std::max(mask.live(t), r0), r1);
          by_row_tiles<kJordanRows>(r0, live, [&](auto rows, int64_t b0) {
            const int64_t row = t * B + b0;
            hidden_grad_tile<decltype(rows)::value, Relu>(dz + row * O, O, why, H, jb, hs + row * H, da + row * H);
          });
          const int64_t j0 = jb * simd::kLanes;
          const __mmask16 m = simd::lanes(H - j0);
          for (int64_t b = live; b < r1; ++b) simd::store(da + (t * B + b) * H + j0, _mm512_setzero_ps(), m);
        }),
        each_share_of_blocks(nbh, nbo, [&](int64_t s, int64_t ob, int64_t r0, int64_t r1) {
          const int64_t t = Tn - 1 - s;
          const RowsPart step[1] = {{da + t * B * H, H, 0, H}};
          dh_rows<kJordanRows, Drop>(step, nz, wyh, H, O, t, ob, r0, std::min(r1, mask.live(t)), dy.next(s));
        }));
  });
  return dy.grad0(Tn);
}
#endif

// Returns dy_0.
template <typename T>
Tensor backward_impl(const Spec& sp, const BwdArgs& a, const Tensor& dz_t, const Tensor& da_t) {
  const Tensor& ys_t = a.states[0];
  const int64_t B = ys_t.size(1), O = ys_t.size(2), H = a.saved[0].size(2);
  const bool is_relu = sp.act == kRelu;
  const T *ys = ys_t.data_ptr<T>(), *hs = a.saved[0].data_ptr<T>();
  T *dz = dz_t.data_ptr<T>(), *da = da_t.data_ptr<T>();
  const StepOptions<T> opt(sp, a);
  const Tensor dyd_t = opt.noise.drop ? at::empty({B, O}, dz_t.options()) : Tensor();
  const int64_t Tn = ys_t.size(0);
  const StepWeight<T> hy(Op::N, B, H, O, a.rec[1]->data_ptr<T>(), H, Tn), yh(Op::N, B, O, H, a.rec[0]->data_ptr<T>(), O, Tn);
  return backward_steps<T>(
      a, opt, O, {{dz, O}},
      [&](int64_t t, int64_t b, const T* dy, T* dy_prev) {
        const int64_t r = (t * B + b) * O;
        out_backward(sp.out, O, ys + r, dy, dz + r);
        std::fill(dy_prev, dy_prev + O, T(0));
      },
      [&](int64_t t, T* dy_prev) {
        T* da_s = da + t * B * H;
        hy.mul(dz + t * B * O, O, T(0), da_s, H);                   // dh = dz W_hy
        for_rows(B, H, [&](int64_t b) { hidden_grad_row(H, is_relu, hs + (t * B + b) * H, da_s + b * H); });
        if (!opt.noise.drop) return yh.mul(da_s, H, T(1), dy_prev, O);   // dy_{t-1} += da W_yh
        T* dyd = dyd_t.data_ptr<T>();
        yh.mul(da_s, H, T(0), dyd, O);
        for (int64_t b = 0; b < B; ++b) add_masked(O, dy_prev + b * O, dyd + b * O, opt.noise.mask(t, b, O));
      });
}

Tensors jordan_buffers(const Spec&, int64_t T, int64_t B, int64_t H, const OptTensors& rec, bool save,
                       const at::TensorOptions& opt) {
  const int64_t O = rec[1]->size(0);                          // w_hy (O, H)
  return {empty_seq({T, B, O}, opt), save ? empty_seq({T, B, H}, opt) : at::empty({B, H}, opt)};
}

void jordan_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const Tensor bias_t = or_zeros(a.rec[2], a.rec[1]->size(0), a.xp.options());
#ifdef RNNKIT_AVX512
  if (use_fused(sp, a.xp.scalar_type(), a.xp.size(0), a.xp.size(1), a.xp.size(2), bufs[0].size(2)))
    return forward_fused(sp, a, bias_t.data_ptr<float>(), bufs[1], bufs[0]);
#endif
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "jordan_forward",
                             [&] { forward_impl<scalar_t>(sp, a, bias_t.data_ptr<scalar_t>(), bufs[1], bufs[0]); });
}

FwdResult jordan_forward(const Spec& sp, const FwdArgs& a) {
  const Tensors bufs = jordan_buffers(sp, a.xp.size(0), a.xp.size(1), a.xp.size(2), a.rec, a.save, a.xp.options());
  jordan_run(sp, a, bufs);
  if (!a.save) return {{bufs[0]}, {}};
  return {{bufs[0]}, {bufs[1]}};
}

BwdResult jordan_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor &ys = a.states[0], &hs = a.saved[0];
  const int64_t Tn = ys.size(0), B = ys.size(1), O = ys.size(2), H = hs.size(2);
  const auto opt = ys.options();
  const Tensor dz = empty_temp({Tn, B, O}, opt), da = empty_seq({Tn, B, H}, opt);
  Tensor dy;
  Tensor dw_yh = at::empty({H, O}, opt), dw_hy = at::empty({O, H}, opt);
  c10::optional<Tensor> db;
  if (a.rec[2].has_value()) db = at::empty({O}, opt);
  AT_DISPATCH_FLOATING_TYPES(ys.scalar_type(), "jordan_backward", [&] {
    using T = scalar_t;
#ifdef RNNKIT_AVX512
    dy = use_fused(sp, ys.scalar_type(), Tn, B, H, O) ? backward_fused(sp, a, dz, da) : backward_impl<T>(sp, a, dz, da);
#else
    dy = backward_impl<T>(sp, a, dz, da);
#endif
    const T *Z = dz.data_ptr<T>(), *A = da.data_ptr<T>();
    gemm(Op::T, Op::N, O, H, Tn * B, Z, O, hs.data_ptr<T>(), H, T(0), dw_hy.data_ptr<T>(), H);
    const Noise<T> nz(sp, a.noise);
    const Tensor yd = nz.drop ? dropped_prev<T>(a.state0[0], ys, nz) : Tensor();
    const T* prev0 = nz.drop ? yd.data_ptr<T>() : a.state0[0].data_ptr<T>();
    const T* prevs = nz.drop ? yd.data_ptr<T>() + B * O : ys.data_ptr<T>();
    weight_grad<T>(Tn, B, H, O, A, H, prev0, prevs, dw_yh.data_ptr<T>());
    if (db) col_sum<T>(Tn * B, O, Z, O, db->data_ptr<T>());
  });
  return {da, {dy}, {dw_yh, dw_hy, db}};
}

std::vector<Sym> jordan_saved(const Spec&) { return {kH}; }          // hidden

std::vector<ParamDecl> jordan_rec(const Spec&) {
  return {{"weight_yh", {kH, kO}, false}, {"weight_hy", {kO, kH}, false}, {"bias_hy", {kO}, true}};
}

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"jordan", /*id=*/1, /*gates=*/1, /*n_states=*/1, jordan_forward, jordan_backward,
                          jordan_buffers, jordan_run, /*states=*/{kO}, jordan_rec, jordan_saved});

}  // namespace rnnkit
