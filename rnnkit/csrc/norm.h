// Layer normalisation of the kernels (layer_norm in rnn.h's Spec), one row at a time: the math of
// rnnkit/cells/base.py's block_norm and block_norm_backward over one block of n features (an
// LSTM's and a GRU's gate blocks of H, an LSTM's H cells).  Biased variance, eps 1e-5, as
// torch.nn.LayerNorm; the gains are applied by the cells, which keep a_hat and 1/std ("rstd").
#pragma once

#include <cmath>
#include <cstdint>

namespace rnnkit {

constexpr double kLnEps = 1e-5;

// sum_j f(j) over j < n in 16 interleaved partial sums: without reassociation (no -ffast-math) a
// single running sum is one dependent add per element, which gcc cannot vectorise; 16 lanes are.
template <typename T, typename F>
inline T lane_sum(int64_t n, const F& f) {
  constexpr int64_t kL = 16;
  T acc[kL] = {};
  int64_t j = 0;
  for (; j + kL <= n; j += kL)
    for (int64_t k = 0; k < kL; ++k) acc[k] += f(j + k);
  for (; j < n; ++j) acc[0] += f(j);
  T sum = T(0);
  for (int64_t k = 0; k < kL; ++k) sum += acc[k];
  return sum;
}

// a_hat (n) = (a - mean(a)) * rstd; returns rstd = 1 / sqrt(var(a) + eps).  a_hat may be a.
template <typename T>
T norm_block(int64_t n, const T* a, T* a_hat) {
  const T mean = lane_sum<T>(n, [&](int64_t j) { return a[j]; }) / T(n);
  const T var = lane_sum<T>(n, [&](int64_t j) { return (a[j] - mean) * (a[j] - mean); }) / T(n);
  const T rstd = T(1) / std::sqrt(var + T(kLnEps));
  for (int64_t j = 0; j < n; ++j) a_hat[j] = (a[j] - mean) * rstd;
  return rstd;
}

// da (n) = LN'(d * w): with e = d * w (the gradient of a_hat, through its gain w),
// da = rstd * (e - mean(e) - a_hat * mean(e * a_hat)).  da may be d.
template <typename T>
void norm_block_backward(int64_t n, const T* d, const T* w, const T* a_hat, T rstd, T* da) {
  const T m1 = lane_sum<T>(n, [&](int64_t j) { return d[j] * w[j]; }) / T(n);
  const T m2 = lane_sum<T>(n, [&](int64_t j) { return d[j] * w[j] * a_hat[j]; }) / T(n);
  for (int64_t j = 0; j < n; ++j) da[j] = rstd * (d[j] * w[j] - m1 - a_hat[j] * m2);
}

// The G blocks of n of one row: a_hat (G*n) and rstd (G).
template <typename T>
void norm_blocks(int64_t G, int64_t n, const T* a, T* a_hat, T* rstd) {
  for (int64_t k = 0; k < G; ++k) rstd[k] = norm_block(n, a + k * n, a_hat + k * n);
}

template <typename T>
void norm_blocks_backward(int64_t G, int64_t n, const T* d, const T* w, const T* a_hat, const T* rstd, T* da) {
  for (int64_t k = 0; k < G; ++k) norm_block_backward(n, d + k * n, w + k * n, a_hat + k * n, rstd[k], da + k * n);
}

// out (N) = sum over R rows of a * b (a with leading dimension lda, b with ldb): a gain's gradient.
template <typename T>
void prod_col_sum(int64_t R, int64_t N, const T* a, int64_t lda, const T* b, int64_t ldb, T* out) {
  for (int64_t j = 0; j < N; ++j) out[j] = T(0);
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict x = a + r * lda;
    const T* __restrict y = b + r * ldb;
    for (int64_t j = 0; j < N; ++j) out[j] += x[j] * y[j];
  }
}

}  // namespace rnnkit
