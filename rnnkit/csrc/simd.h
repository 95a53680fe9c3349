// AVX-512 building blocks of the fused float32 time loops (lstm.cpp): 16-lane versions of the
// activations of activations.h (the same range reduction and polynomials, so results agree with
// the scalar loops to about an ulp), and the time loop that splits a step's hidden units over
// threads.  Compiled only where the compiler targets AVX-512 (-march=native on such a CPU);
// RNNKIT_AVX512 says so, and the kernels keep their portable path otherwise.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define RNNKIT_AVX512 1

#include <immintrin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
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

// exp(x) for x <= 0 (activations.h: exp_neg); NaN stays NaN.
inline V exp_neg(V x) {
  x = _mm512_max_ps(splat(-87.0f), x);                   // max returns x when x is NaN
  const V n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, splat(1.44269504088896341f), splat(0.5f)),
                                   _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, splat(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, splat(-2.12194440e-4f), r);
  V p = splat(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, splat(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, splat(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, splat(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, splat(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, splat(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, splat(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline V abs(V x) { return _mm512_abs_ps(x); }

// 1 / x: the 14-bit estimate and one Newton step (about an ulp; no slow divide).
inline V recip(V x) {
  const V r = _mm512_rcp14_ps(x);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(x, r, splat(1.0f)), r);
}

// Keeps loaded operands in registers: without it gcc folds each load into every FMA that uses
// it, and a register tile then loads its weights once per row instead of once.
inline void keep_in_registers(V& a, V& b, V& c, V& d) { asm("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d)); }

inline V sigmoid(V x) {
  const V e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), abs(x)));
  const V s = recip(_mm512_add_ps(splat(1.0f), e));
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  return _mm512_mask_blend_ps(pos, _mm512_mul_ps(e, s), s);
}

inline V tanh(V x) {
  const V a = abs(x), z = _mm512_mul_ps(x, x);
  V p = splat(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, z, splat(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, z, splat(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, z, splat(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, z, splat(-3.33332819422e-1f));
  const V small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  const V e = exp_neg(_mm512_mul_ps(splat(-2.0f), a));
  const V big_abs = _mm512_mul_ps(_mm512_sub_ps(splat(1.0f), e), recip(_mm512_add_ps(splat(1.0f), e)));
  const V sign = _mm512_and_ps(x, splat(-0.0f));
  const V big = _mm512_or_ps(big_abs, sign);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, splat(0.625f), _CMP_LT_OQ), big, small);
}

}  // namespace simd

// The time loop of a fused kernel with a step's hidden units split over threads, in blocks of
// 16: for t = 0 .. Tn-1, every block j runs first(t, j); once every block of step t has done
// so (all threads wait: spin, then yield), every block runs second(t, j).  Each thread keeps
// the same blocks at every step and in both phases (their weights stay in its cache, and a
// phase may read what the same thread's blocks wrote in the phase before).  One pass over the
// sequence, not a fork per step.  Blocks are claimed by virtual worker ids, so it is correct
// whatever number of threads at::parallel_for actually runs (also one, or nested).
template <typename First, typename Second>
void owned_blocks(int64_t Tn, int64_t blocks, int64_t threads, const First& first, const Second& second) {
  threads = std::max<int64_t>(1, std::min(threads, blocks));
  if (threads == 1) {
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t j = 0; j < blocks; ++j) first(t, j);
      for (int64_t j = 0; j < blocks; ++j) second(t, j);
    }
    return;
  }
  std::atomic<int64_t> done{0};
  at::parallel_for(0, threads, 1, [&](int64_t w0, int64_t w1) {
    const int64_t j0 = w0 * blocks / threads, j1 = w1 * blocks / threads;
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t j = j0; j < j1; ++j) first(t, j);
      done.fetch_add(j1 - j0, std::memory_order_acq_rel);
      const int64_t target = (t + 1) * blocks;
      for (int spins = 0; done.load(std::memory_order_acquire) < target; ++spins) {
        if (spins < 256)
          _mm_pause();
        else
          std::this_thread::yield();                       // a loaded machine: give the core back
      }
      for (int64_t j = j0; j < j1; ++j) second(t, j);
    }
  });
}

}  // namespace rnnkit

#endif
