// AVX-512 building blocks of the fused float32 time loops (lstm.cpp): 16-lane versions of the
// activations of activations.h (the same range reduction and polynomials, so results agree with
// the scalar loops to about an ulp), and the time loop that splits a step's hidden units over
// threads.  Compiled only where the compiler targets AVX-512 (-march=native on such a CPU);
// RNNKIT_AVX512 says so, and the kernels keep their portable path otherwise.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define RNNKIT_AVX512 1

#include "loop.h"
#include "norm.h"

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>

namespace rnnkit {
namespace simd {

using V = __m512;
constexpr int64_t kLanes = 16;

// The lanes j < n of a 16-lane block (n >= 16: all).
inline __mmask16 lanes(int64_t n) { return n >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
inline V load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline void store(float* p, V v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
inline V splat(float x) { return _mm512_set1_ps(x); }

// The activations come in lockstep forms over N independent vectors x[0 .. N-1] (exp_neg_n,
// sigmoid_n, tanh_n): each stage runs on all N before the next, so that their dependency chains
// overlap.  One vector's sigmoid or tanh is a chain of 15-20 dependent operations of 4 cycles
// each; an LSTM tile that activated one row after another spent about a third of its loop there
// (about 250 cycles per 16 units and row at (B, H) = (8, 128)); activating its 4 rows in lockstep
// made the fused forward 3-6% faster on one thread and 13-18% on two (alternating processes).
// The results are those of the one-vector forms, bit for bit (the same operations).  At most
// kLockstep vectors at once: more keep more temporaries live than the 32 registers hold (12
// sigmoids at once spilled 90 vectors to the stack).
constexpr int kLockstep = 4;

template <int N, typename F>
inline void each(const F& f) {
  for (int i = 0; i < N; ++i) f(i);
}

inline V abs(V x) { return _mm512_abs_ps(x); }

// 1 / x: the 14-bit estimate and one Newton step (about an ulp; no slow divide).
inline V recip(V x) {
  const V r = _mm512_rcp14_ps(x);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(x, r, splat(1.0f)), r);
}

// x = exp(x) for x <= 0 (activations.h: exp_neg); NaN stays NaN.
template <int N>
inline void exp_neg_n(V* x) {
  V n[N], r[N], p[N];
  each<N>([&](int i) { x[i] = _mm512_max_ps(splat(-87.0f), x[i]); });        // max returns x when x is NaN
  each<N>([&](int i) {
    n[i] = _mm512_roundscale_ps(_mm512_fmadd_ps(x[i], splat(1.44269504088896341f), splat(0.5f)),
                                _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  });
  each<N>([&](int i) { r[i] = _mm512_fnmadd_ps(n[i], splat(0.693359375f), x[i]); });
  each<N>([&](int i) { r[i] = _mm512_fnmadd_ps(n[i], splat(-2.12194440e-4f), r[i]); });
  each<N>([&](int i) { p[i] = _mm512_fmadd_ps(splat(1.9875691500e-4f), r[i], splat(1.3981999507e-3f)); });
  for (const float c : {8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    each<N>([&](int i) { p[i] = _mm512_fmadd_ps(p[i], r[i], splat(c)); });
  each<N>([&](int i) { p[i] = _mm512_fmadd_ps(_mm512_mul_ps(p[i], r[i]), r[i], _mm512_add_ps(r[i], splat(1.0f))); });
  each<N>([&](int i) { x[i] = _mm512_scalef_ps(p[i], n[i]); });
}

// x = sigmoid(x) over N vectors.
template <int N>
inline void sigmoid_n(V* x) {
  if constexpr (N > kLockstep) {
    sigmoid_n<kLockstep>(x), sigmoid_n<N - kLockstep>(x + kLockstep);
    return;
  }
  V e[N];
  each<N>([&](int i) { e[i] = _mm512_sub_ps(_mm512_setzero_ps(), abs(x[i])); });
  exp_neg_n<N>(e);
  each<N>([&](int i) {
    const V s = recip(_mm512_add_ps(splat(1.0f), e[i]));
    const __mmask16 pos = _mm512_cmp_ps_mask(x[i], _mm512_setzero_ps(), _CMP_GE_OQ);
    x[i] = _mm512_mask_blend_ps(pos, _mm512_mul_ps(e[i], s), s);
  });
}

// x = tanh(x) over N vectors: an odd polynomial below |x| = 0.625 (no cancellation), else
// (1 - e) / (1 + e) with e = exp(-2|x|) and x's sign.
template <int N>
inline void tanh_n(V* x) {
  if constexpr (N > kLockstep) {
    tanh_n<kLockstep>(x), tanh_n<N - kLockstep>(x + kLockstep);
    return;
  }
  V z[N], p[N], e[N];
  each<N>([&](int i) { z[i] = _mm512_mul_ps(x[i], x[i]), e[i] = _mm512_mul_ps(splat(-2.0f), abs(x[i])); });
  exp_neg_n<N>(e);
  each<N>([&](int i) { p[i] = _mm512_fmadd_ps(splat(-5.70498872745e-3f), z[i], splat(2.06390887954e-2f)); });
  for (const float c : {-5.37397155531e-2f, 1.33314422036e-1f, -3.33332819422e-1f})
    each<N>([&](int i) { p[i] = _mm512_fmadd_ps(p[i], z[i], splat(c)); });
  each<N>([&](int i) {
    const V small = _mm512_fmadd_ps(_mm512_mul_ps(p[i], z[i]), x[i], x[i]);
    const V big_abs = _mm512_mul_ps(_mm512_sub_ps(splat(1.0f), e[i]), recip(_mm512_add_ps(splat(1.0f), e[i])));
    const V big = _mm512_or_ps(big_abs, _mm512_and_ps(x[i], splat(-0.0f)));
    x[i] = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(abs(x[i]), splat(0.625f), _CMP_LT_OQ), big, small);
  });
}

// The one-vector forms.
inline V exp_neg(V x) {
  exp_neg_n<1>(&x);
  return x;
}
inline V sigmoid(V x) {
  sigmoid_n<1>(&x);
  return x;
}
inline V tanh(V x) {
  tanh_n<1>(&x);
  return x;
}

// r = r^T for a 16 x 16 tile held as 16 row vectors: pairs of rows interleaved (unpack), then
// groups of 4 (shuffle within 128-bit lanes: r[4i+e] lane l = rows 4i..4i+3 at column 4l+e),
// then the 128-bit lanes of r[e], r[4+e], r[8+e], r[12+e] transposed as a 4 x 4.
inline void transpose16(V (&r)[16]) {
  V t[16];
  for (int i = 0; i < 8; ++i)
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int e = 0; e < 4; ++e) {
    const V u0 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x44), u1 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xEE);
    const V u2 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x44), u3 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xEE);
    t[e] = _mm512_shuffle_f32x4(u0, u2, 0x88), t[4 + e] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    t[8 + e] = _mm512_shuffle_f32x4(u1, u3, 0x88), t[12 + e] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Keeps loaded operands in registers: without it gcc folds each load into every FMA that uses
// it, and a register tile then loads its weights once per row instead of once.
inline void keep_in_registers(V& a, V& b, V& c, V& d) { asm("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d)); }

// ---- layer normalisation of a block of n features (norm.h's norm_block and norm_block_backward;
// the sums run in 16 lanes, so results agree with norm.h's to float32 rounding) ------------------
// sum over j < n of f(j, lanes) (a vector of the 16 features from j; lanes past n are not added).
template <typename F>
inline float lane_total(int64_t n, const F& f) {
  V acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes(n - j);
    acc = _mm512_mask_add_ps(acc, m, acc, f(j, m));
  }
  return _mm512_reduce_add_ps(acc);
}

// mean(a) and rstd = 1 / sqrt(var(a) + eps) (biased variance, two passes as norm_block).
inline void block_stats(int64_t n, const float* a, float& mean, float& rstd) {
  mean = lane_total(n, [&](int64_t j, __mmask16 m) { return load(a + j, m); }) / float(n);
  const V mu = splat(mean);
  const float var = lane_total(n, [&](int64_t j, __mmask16 m) {
                      const V x = _mm512_sub_ps(load(a + j, m), mu);
                      return _mm512_mul_ps(x, x);
                    }) / float(n);
  rstd = 1.0f / std::sqrt(var + float(kLnEps));
}

// a_hat (n) = (a - mean(a)) * rstd; returns rstd (norm_block).
inline float normalise(int64_t n, const float* a, float* a_hat) {
  float mean, rstd;
  block_stats(n, a, mean, rstd);
  const V mu = splat(mean), r = splat(rstd);
  for (int64_t j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes(n - j);
    store(a_hat + j, _mm512_mul_ps(_mm512_sub_ps(load(a + j, m), mu), r), m);
  }
  return rstd;
}

// The means of LN'(d w) (norm_block_backward): m1 = mean(d w), m2 = mean(d w a_hat).
inline void ln_back_means(int64_t n, const float* d, const float* w, const float* a_hat, float& m1, float& m2) {
  V s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes(n - j);
    const V e = _mm512_mul_ps(load(d + j, m), load(w + j, m));   // zero past n
    s1 = _mm512_add_ps(s1, e);
    s2 = _mm512_fmadd_ps(e, load(a_hat + j, m), s2);
  }
  m1 = _mm512_reduce_add_ps(s1) / float(n), m2 = _mm512_reduce_add_ps(s2) / float(n);
}

// 16 lanes of LN'(d w) = rstd (d w - m1 - a_hat m2).
inline V ln_back(V d, V w, V a_hat, float m1, float m2, float rstd) {
  return _mm512_mul_ps(splat(rstd), _mm512_fnmadd_ps(a_hat, splat(m2), _mm512_sub_ps(_mm512_mul_ps(d, w), splat(m1))));
}

// da (n) = LN'(d w) (norm_block_backward).
inline void normalise_backward(int64_t n, const float* d, const float* w, const float* a_hat, float rstd, float* da) {
  float m1, m2;
  ln_back_means(n, d, w, a_hat, m1, m2);
  for (int64_t j = 0; j < n; j += kLanes) {
    const __mmask16 m = lanes(n - j);
    store(da + j, ln_back(load(d + j, m), load(w + j, m), load(a_hat + j, m), m1, m2, rstd), m);
  }
}

}  // namespace simd

// The time loop of a fused kernel with a step's hidden units split over threads, in blocks of
// 16: for t = 0 .. Tn-1, each thread runs every phase in turn on the blocks it owns,
// phase(t, j0, j1) for its blocks j0 <= j < j1, and between two phases of a step waits until
// every thread has finished the first (spin, then yield).  There is no wait between a step's
// last phase and the next step's first, so that phase may read only what the same thread's
// blocks wrote in the last one (a loop that needs a wait there ends its steps with an empty
// phase).  Each thread keeps the same blocks at every step and in every phase (their weights
// stay in its cache); a phase gets the whole range so that it can compute what its blocks share
// (a row statistic) once.  One pass over the sequence, not a fork per step.  Blocks are claimed
// by virtual worker ids, so it is correct whatever number of threads at::parallel_for actually
// runs (also one, or nested).
template <typename... Phases>
void owned_blocks(int64_t Tn, int64_t blocks, int64_t threads, const Phases&... phases) {
  constexpr int kPhases = sizeof...(Phases);
  threads = std::max<int64_t>(1, std::min(threads, blocks));
  if (threads == 1) {
    for (int64_t t = 0; t < Tn; ++t) (phases(t, int64_t(0), blocks), ...);
    return;
  }
  std::atomic<int64_t> done{0};
  at::parallel_for(0, threads, 1, [&](int64_t w0, int64_t w1) {
    const int64_t j0 = w0 * blocks / threads, j1 = w1 * blocks / threads;
    int64_t waits = 0;                                       // the barriers this worker passed
    const auto wait = [&] {
      done.fetch_add(j1 - j0, std::memory_order_acq_rel);
      const int64_t target = ++waits * blocks;
      for (int spins = 0; done.load(std::memory_order_acquire) < target; ++spins) {
        if (spins < 256)
          _mm_pause();
        else
          std::this_thread::yield();                       // a loaded machine: give the core back
      }
    };
    for (int64_t t = 0; t < Tn; ++t) {
      int k = 0;
      ((phases(t, j0, j1), ++k < kPhases ? wait() : void()), ...);
    }
  });
}

// The other split of a fused time loop: threads own batch rows for the whole sequence, with
// every block of units.  A row's steps depend only on its own earlier steps, so no thread ever
// waits for another (a wait costs a step a scheduler tick when another process takes the core),
// and a row statistic is computed once; but each thread reads all of the weights at every step,
// so it pays where they fit a core's L2 and the batch has a tile of rows for every thread
// (rows_pay).  phase(t, j0, j1, b0, b1) runs blocks j0 <= j < j1 on rows b0 <= b < b1; the
// rows are cut at multiples of ``tile``, each thread's share balanced by its rows' valid steps.
// With lengths the cuts fall at multiples of kShareRows instead (a partial tile at a share's
// end), so that a batch sorted longest first splits closer to evenly: Elman at (T, B, H) = (128,
// 32, 256), 16 rows of T steps and 16 of T/2, two threads, forward 3.0-3.1 -> 2.3-2.6 ms (8-row
// cuts gave the first thread two tiles of full rows, 2/3 of the work); lengths drawn from T/2 .. T
// unchanged.
constexpr int64_t kShareRows = 4;       // a multiple of the chunks of per-thread sums (lstm.cpp: kRows)
template <typename... Phases>
void owned_rows(int64_t Tn, int64_t blocks, const Mask& rows, int64_t threads, int64_t tile, const Phases&... phases) {
  const int64_t B = rows.B, tiles = (B + tile - 1) / tile;
  threads = std::max<int64_t>(1, std::min(threads, tiles));
  const int64_t grain = rows.any() ? std::min(tile, kShareRows) : tile;
  const std::vector<int64_t> first = balanced_shares(rows, Tn, grain, threads);
  at::parallel_for(0, threads, 1, [&](int64_t w0, int64_t w1) {
    const int64_t b0 = std::min(B, first[w0] * grain), b1 = std::min(B, first[w1] * grain);
    for (int64_t t = 0; t < Tn; ++t) (phases(t, int64_t(0), blocks, b0, b1), ...);
  });
}

// Whether owned_rows beats owned_blocks: several threads, a tile of rows for each, and the
// recurrent weights (bytes) about a core's L2 (measured on Zen 4, 1 MiB L2 a core, 2 threads:
// the LSTM at (32, 256), W_hh 1 MiB, fwd+bwd 87-95 ms owning rows against 95-106 owning units;
// the GRU there level).
inline bool rows_pay(int64_t B, int64_t threads, int64_t tile, int64_t weight_bytes) {
  return threads > 1 && B >= threads * tile && weight_bytes <= (1 << 20);
}

// A fused time loop with phases phase(t, j0, j1, b0, b1): on owned_rows where rows_pay, else
// on owned_blocks (each phase then on all B rows).
// rows: the batch's rows and their valid steps (Mask, without one: all B rows, every step).
template <typename... Phases>
void owned_units_or_rows(int64_t Tn, int64_t blocks, const Mask& rows, int64_t threads, int64_t tile,
                         int64_t weight_bytes, const Phases&... phases) {
  const int64_t B = rows.B;
  if (rows_pay(B, threads, tile, weight_bytes)) return owned_rows(Tn, blocks, rows, threads, tile, phases...);
  owned_blocks(Tn, blocks, threads, [&phases, B](int64_t t, int64_t j0, int64_t j1) { phases(t, j0, j1, 0, B); }...);
}

// A phase of owned_blocks from f(t, j), run on each block of the range.
template <typename F>
auto each_block(F f) {
  return [f](int64_t t, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) f(t, j);
  };
}

// A phase of owned_units_or_rows from f(t, j, b0, b1), run on each block of the range.
template <typename F>
auto each_block_of_rows(F f) {
  return [f](int64_t t, int64_t j0, int64_t j1, int64_t b0, int64_t b1) {
    for (int64_t j = j0; j < j1; ++j) f(t, j, b0, b1);
  };
}

// A phase over another count of blocks (a second matrix's outputs, nb2 of them) from f(t, j, b0,
// b1): a thread owning blocks j0 .. j1-1 of the loop's nb runs the same share of the nb2, so that
// every block of nb2 has one owner whatever the split.
template <typename F>
auto each_share_of_blocks(int64_t nb, int64_t nb2, F f) {
  return [nb, nb2, f](int64_t t, int64_t j0, int64_t j1, int64_t b0, int64_t b1) {
    for (int64_t j = j0 * nb2 / nb; j < j1 * nb2 / nb; ++j) f(t, j, b0, b1);
  };
}

// owned_units_or_rows' empty last phase (the wait before the next step, on owned_blocks).
inline void no_phase(int64_t, int64_t, int64_t, int64_t, int64_t) {}

}  // namespace rnnkit

#endif
