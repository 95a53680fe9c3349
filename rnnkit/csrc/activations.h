// Gate activations of rnnkit's kernels, branch-free so that the gate loops vectorise.  float:
// Cephes-style range reduction and polynomials (about 1 ulp); double: the C library, since
// float64 is for checking, not speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace rnnkit {

// exp(x) for x <= 0.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;                       // keeps 2^n a normal number
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;                    // ln 2 split in two for exactness
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline double exp_neg(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  const T e = exp_neg(-std::fabs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

inline float tanh_(float x) {
  const float a = std::fabs(x);
  const float z = x * x;                             // small |x|: odd polynomial, no cancellation
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float e = exp_neg(-2.0f * a);
  const float big = std::copysign((1.0f - e) / (1.0f + e), x);
  return a < 0.625f ? small : big;
}
inline double tanh_(double x) { return std::tanh(x); }

// As torch: NaN passes through relu (x < 0 is false for it), and its gradient is dy unless y <= 0.
template <typename T>
inline T relu(T x) { return x < T(0) ? T(0) : x; }

// Hidden activation and its derivative written with the output y.
template <typename T>
inline T hidden_act(bool is_relu, T a) { return is_relu ? relu(a) : tanh_(a); }
template <typename T>
inline T hidden_grad(bool is_relu, T y, T dy) { return is_relu ? (y <= T(0) ? T(0) : dy) : dy * (T(1) - y * y); }

}  // namespace rnnkit
