// Loop helpers of rnnkit's kernels: the (T, B, .) buffers, batch rows, masks, the output's
// gradient, the options every cell takes (recurrent dropout, zoneout, clip_recurrent: rnn.h),
// and backward_steps, the backward time loop every cell shares (a cell gives only its per-row
// gate math and its per-step GEMMs).
#pragma once

#include "rnn.h"
#include "pool.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace rnnkit {

// at::empty for the (T, B, .) buffers: the one place that decides how they are allocated.  Large
// ones come from the pool of pool.h (no page faults on the next call).  Transparent huge pages
// (madvise) were asked for here until 2026-11-28: measured in the bench, interleaved with
// torch.nn, they made an LSTM's (64, 512) fwd+bwd 1.4-2x slower and gained nothing elsewhere.
inline Tensor empty_seq(at::IntArrayRef sizes, const at::TensorOptions& opt) { return pooled_empty(sizes, opt); }

// A (T, B, .) buffer that does not outlive the kernel call (a backward's workspace): not from the
// pool, so that its memory goes back to the allocator for the tensors made after the call (kept
// in the pool, the GRU backward's (T, B, H) workspace raised a training step's peak by its size:
// 131.6 against 119.2 MiB at (100, 64, 512)).
inline Tensor empty_temp(at::IntArrayRef sizes, const at::TensorOptions& opt) { return at::empty(sizes, opt); }

// An optional bias, or n zeros where it is None.
inline Tensor or_zeros(const c10::optional<Tensor>& bias, int64_t n, const at::TensorOptions& opt) {
  return bias.has_value() && bias->defined() ? *bias : at::zeros({n}, opt);
}

// Threads for a fused step of ``macs`` recurrent multiply-adds (B rows times a row's): one below
// 2^17, where a wait at every step costs more than the split saves.  Not lower: at 2^14 an LSTM's
// (B, H) = (1, 64) ran 7-13% faster on two threads while the host was quiet, but when it was not
// (a vCPU descheduled now and then) the wait at each of the 128 steps made the forward 1.5x slower
// than one thread (0.176 -> 0.264 ms, alternating processes), once 70x.
constexpr int64_t kSplitStepMacs = int64_t(1) << 17;
inline int64_t step_threads_for(int64_t macs) { return macs >= kSplitStepMacs ? at::get_num_threads() : 1; }

// Runs f(b) for every batch row; rows are split over threads only when a step has enough work
// to pay for waking them (small sizes stay on the calling thread).
template <typename F>
inline void for_rows(int64_t B, int64_t work_per_row, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1));
  if (B <= grain) {
    for (int64_t b = 0; b < B; ++b) f(b);
    return;
  }
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// Row validity of step t: true everywhere when there is no mask.
struct Mask {
  const bool* m = nullptr;
  int64_t B = 0;
  explicit Mask(const Tensor& mask, int64_t batch)
      : m(mask.defined() ? mask.data_ptr<bool>() : nullptr), B(batch) {}
  bool valid(int64_t t, int64_t b) const { return m == nullptr || m[t * B + b]; }
  bool any() const { return m != nullptr; }
  // Rows [0, live(t)) hold every valid row of step t; the rows after them are all padded.  The
  // layers sort a batch by length (longest first), so a step's finished sequences are its last
  // rows and the loops skip their recurrent products (torch.nn's packed path does the same).
  int64_t live(int64_t t) const {
    if (m == nullptr) return B;
    int64_t n = B;
    while (n > 0 && !m[t * B + n - 1]) --n;
    return n;
  }
};

// The first tile of each of n threads' contiguous shares of a batch's tiles of ``tile`` rows, and
// the number of tiles last (n + 1 entries), balanced by the rows' valid steps: the layers sort a
// batch with lengths longest first, so an even split of its rows gives the first thread the
// most steps while the others wait at the end.  Without a mask: the even split.
inline std::vector<int64_t> balanced_shares(const Mask& mask, int64_t Tn, int64_t tile, int64_t n) {
  const int64_t tiles = (mask.B + tile - 1) / tile;
  std::vector<int64_t> first(n + 1), work(tiles + 1, 0);    // work: prefix sums over tiles
  for (int64_t k = 0; k < tiles; ++k) {
    int64_t w = 0;
    for (int64_t b = k * tile; b < std::min(mask.B, (k + 1) * tile); ++b)
      for (int64_t t = 0; mask.any() && t < Tn; ++t) w += mask.valid(t, b);
    work[k + 1] = work[k] + (mask.any() ? std::max<int64_t>(w, 1) : 1);
  }
  for (int64_t w = 0, k = 0; w <= n; ++w) {                 // the first tile past w/n of the work
    while (k < tiles && work[k] * n < work[tiles] * w) ++k;
    first[w] = k;
  }
  return first;
}

// y += x over n elements.
template <typename T>
inline void add_to(int64_t n, T* __restrict y, const T* __restrict x) {
  for (int64_t j = 0; j < n; ++j) y[j] += x[j];
}

// The output's gradient d_out (T, B, S), read in place whatever its strides: out.sum() hands
// backward an expanded scalar, and a dense copy would be one more (T, B, S) buffer at the peak.
template <typename T>
struct GradOut {
  const T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  explicit GradOut(const Tensor& d) {
    if (!d.defined()) return;
    p = d.data_ptr<T>();
    s0 = d.stride(0), s1 = d.stride(1), s2 = d.stride(2);
  }
  // g (n) += d_out[t, b, j0 : j0 + n]
  void add(int64_t t, int64_t b, int64_t n, T* g, int64_t j0 = 0) const {
    if (p == nullptr) return;
    const T* row = p + t * s0 + b * s1 + j0 * s2;
    if (s2 == 1) {
      add_to(n, g, row);
      return;
    }
    for (int64_t j = 0; j < n; ++j) g[j] += row[j * s2];
  }
};

// Column sums of a (R, N) block with leading dimension ld, accumulated into out (N).
template <typename T>
void col_sum(int64_t R, int64_t N, const T* x, int64_t ld, T* out) {
  std::fill(out, out + N, T(0));
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict row = x + r * ld;
    for (int64_t j = 0; j < N; ++j) out[j] += row[j];
  }
}

// ---- the options every cell takes (rnn.h) ---------------------------------------------------
// The noise of a run: the recurrent mask of step t (B, S_0), or nullptr when there is none (no
// recurrent dropout, or eval); zoneout's z of carried state k at step t (B, S_k), or nullptr where
// the probability p stands for it (eval); p = 0: no zoneout.
template <typename T>
struct Noise {
  const T* drop = nullptr;
  int64_t drop_st = 0;
  const T* zone[2] = {nullptr, nullptr};
  int64_t zone_st[2] = {0, 0};
  T p = T(0);
  Noise(const Spec& sp, const Tensors& noise) : p(T(sp.zoneout)) {
    if (noise.empty()) return;
    if (sp.noise_drop() >= 0) drop = noise[sp.noise_drop()].data_ptr<T>(), drop_st = noise[sp.noise_drop()].stride(0);
    for (int64_t k = 0; sp.noise_zone() >= 0 && k < sp.cell->n_states; ++k) {
      const Tensor& z = noise[sp.noise_zone() + k];
      zone[k] = z.data_ptr<T>(), zone_st[k] = z.stride(0);
    }
  }
  bool zoneout() const { return p > T(0); }
  // Row b of step t's recurrent mask (width S_0), or nullptr.
  const T* mask(int64_t t, int64_t b, int64_t S) const { return drop ? drop + t * drop_st + b * S : nullptr; }
  // Row b of step t's z of state k (width S), or nullptr (then p).
  const T* z(int64_t t, int64_t k, int64_t b, int64_t S) const {
    return zone[k] ? zone[k] + t * zone_st[k] + b * S : nullptr;
  }
};

// Zoneout of one row: upd (what the cell computed, saved for backward) = s when upd is given,
// then s = s + z (s_prev - s), z the row's draws or p everywhere.
template <typename T>
inline void zone_row(int64_t n, T* __restrict s, const T* __restrict s_prev, const T* __restrict z, T p,
                     T* __restrict upd) {
  if (upd != nullptr) std::memcpy(upd, s, n * sizeof(T));
  if (z != nullptr) {
    for (int64_t j = 0; j < n; ++j) s[j] += z[j] * (s_prev[j] - s[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] += p * (s_prev[j] - s[j]);
  }
}

// The backward split of zoneout for one row: keep (n) = g z (the direct path to s_{t-1}), and
// g = g (1 - z) (what reaches the cell's computed state).
template <typename T>
inline void zone_split(int64_t n, T* __restrict g, const T* __restrict z, T p, T* __restrict keep) {
  for (int64_t j = 0; j < n; ++j) {
    const T zj = z != nullptr ? z[j] : p;
    keep[j] = g[j] * zj, g[j] *= T(1) - zj;
  }
}

// y = x * m over n elements (the state as it enters the recurrence under recurrent dropout).
template <typename T>
inline void mul_to(int64_t n, T* __restrict y, const T* __restrict x, const T* __restrict m) {
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * m[j];
}

// y += x * m over n elements (a gradient coming back through the masked recurrence).
template <typename T>
inline void add_masked(int64_t n, T* __restrict y, const T* __restrict x, const T* __restrict m) {
  for (int64_t j = 0; j < n; ++j) y[j] += x[j] * m[j];
}

template <typename T>
inline void clamp_row(int64_t n, T* __restrict g, T x) {
  for (int64_t j = 0; j < n; ++j) g[j] = std::min(x, std::max(-x, g[j]));
}

// The states as they entered the recurrence, (T, B, S): row t is s_{t-1} * m_t (s_{-1} = state0).
// Under recurrent dropout the recurrent weight gradients are taken against these.
template <typename T>
Tensor dropped_prev(const Tensor& state0, const Tensor& states, const Noise<T>& nz) {
  const int64_t Tn = states.size(0), B = states.size(1), S = states.size(2);
  Tensor out = empty_temp({Tn, B, S}, states.options());
  const T *s0 = state0.data_ptr<T>(), *ss = states.data_ptr<T>();
  T* o = out.data_ptr<T>();
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t b = 0; b < B; ++b)
      mul_to(S, o + (t * B + b) * S, (t ? ss + ((t - 1) * B + b) * S : s0 + b * S), nz.mask(t, b, S));
  return out;
}

// ---- backward through time -----------------------------------------------------------------
// The gradient of carried state k after the last step: d_final[k], or zeros (a new tensor,
// updated in place by the time loop).
inline Tensor final_grad(const BwdArgs& a, size_t k) {
  return a.d_final[k].has_value() ? a.d_final[k]->clone() : at::zeros_like(a.state0[k]);
}

// A (T, B, n) buffer of per-step gradient rows (d_xp, ...) that a padded row leaves at zero.
template <typename T>
struct StepRows {
  T* p;
  int64_t n;
};

// The options backward_steps applies: clip (0: none) clamps the carried gradients, state 0's
// and also's (B, also_n: an LSTM's dc, or nullptr); noise gives zoneout's z of state 0.
// carry_only: the cell's step only adds into g_prev (writes no gradient rows), so step 0's may be
// left out when the caller drops d_state0 (BwdArgs::need_state0); a cell opts in.
template <typename T>
struct StepOptions {
  T clip;
  Noise<T> noise;
  T* also = nullptr;
  int64_t also_n = 0;
  bool carry_only = false;
  StepOptions(const Spec& sp, const BwdArgs& a, T* also_ = nullptr, int64_t also_n_ = 0)
      : clip(T(sp.clip)), noise(sp, a.noise), also(also_), also_n(also_n_) {}
};

// The time loop of every cell's backward, t = T-1 .. 0, over the cell's first carried state
// (S = S_0).  Buffers (B, S): g, the gradient of the state after step t, and g_prev, that of the
// state before it; they swap after every step (the cells' headers call them dh, dh_prev).  Per
// step, for every batch row b: g[b] += d_out[t, b]; with clip_recurrent, g[b] and also[b] are
// clamped; then
//   valid row:  row(t, b, g[b], g_prev[b]), the cell's gate math: writes the step's gradient
//               rows and sets g_prev[b] (to zero or to its direct path, h_t's dependence on
//               h_{t-1} outside the recurrent weights); under zoneout g[b] is first split
//               (zone_split) and its direct part g z added to g_prev[b] after row;
//   padded row: the step did not happen: g[b] passes to g_prev[b] unchanged and row (t, b) of
//               every buffer in zeroed is set to zero;
// (the padded rows are done in a first pass over the rows, the valid ones in a second, after
// pre(t, g): what a step needs of all of g before the rows' math, e.g. an LSTM's projection
// dm = g W_hr), then step(t, g_prev) adds the recurrent terms (GEMMs with the recurrent weights,
// and any pass between them) into g_prev; at t = 0 not at all when nothing reads d_state0 and the
// cell's step is opt.carry_only.  Rows run on threads when B is large: row must only write row b.
// Returns g after step 0: the gradient of state0[0].
struct NoPre {
  template <typename T>
  void operator()(int64_t, const T*) const {}
};

template <typename T, typename Row, typename Step, typename Pre = NoPre>
Tensor backward_steps(const BwdArgs& a, const StepOptions<T>& opt, int64_t row_work,
                      const std::vector<StepRows<T>>& zeroed, const Row& row, const Step& step,
                      const Pre& pre = Pre()) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), S = a.states[0].size(2);
  const Mask mask(a.mask, B);
  const GradOut<T> d_out(a.d_out);
  Tensor g = final_grad(a, 0), g_prev = at::empty_like(g);
  const Tensor keep_t = opt.noise.zoneout() ? at::empty_like(g) : Tensor();   // zoneout's direct part
  T* keep = opt.noise.zoneout() ? keep_t.data_ptr<T>() : nullptr;
  for (int64_t t = Tn - 1; t >= 0; --t) {
    T* g_t = g.data_ptr<T>();
    T* g_p = g_prev.data_ptr<T>();
    for_rows(B, row_work, [&](int64_t b) {
      T *gb = g_t + b * S, *pb = g_p + b * S;
      d_out.add(t, b, S, gb);
      if (opt.clip > T(0)) {
        clamp_row(S, gb, opt.clip);
        if (opt.also != nullptr) clamp_row(opt.also_n, opt.also + b * opt.also_n, opt.clip);
      }
      if (mask.valid(t, b)) {
        if (keep != nullptr) zone_split(S, gb, opt.noise.z(t, 0, b, S), opt.noise.p, keep + b * S);
        return;
      }
      std::memcpy(pb, gb, S * sizeof(T));
      for (const StepRows<T>& z : zeroed) std::fill_n(z.p + (t * B + b) * z.n, z.n, T(0));
    });
    pre(t, static_cast<const T*>(g_t));
    for_rows(B, row_work, [&](int64_t b) {
      if (!mask.valid(t, b)) return;
      T *gb = g_t + b * S, *pb = g_p + b * S;
      row(t, b, gb, pb);
      if (keep != nullptr) add_to(S, pb, keep + b * S);
    });
    if (t > 0 || a.need_state0 || !opt.carry_only) step(t, g_p);
    std::swap(g, g_prev);
  }
  return g;
}

}  // namespace rnnkit
