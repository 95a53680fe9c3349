// The fast CPU form of the masks of noise.h (definition and shapes there).
#include "noise.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstdint>

namespace rnnkit {
namespace {

inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}

// Arguments by value: read through the parallel_for lambda's references, they could alias out
// and the loop would stay scalar.
template <typename T>
void fill_range(T* out, int64_t i0, int64_t i1, uint32_t threshold, uint32_t k0, uint32_t k1, T value) {
  for (int64_t i = i0; i < i1; ++i) {
    const uint32_t x = mix(mix(static_cast<uint32_t>(i) + k0) ^ k1);
    out[i] = T((x >> 8) < threshold) * value;
  }
}

template <typename T>
void fill(T* out, int64_t n, uint32_t threshold, uint32_t k0, uint32_t k1, T value) {
  at::parallel_for(0, n, 1 << 16, [=](int64_t i0, int64_t i1) { fill_range(out, i0, i1, threshold, k0, k1, value); });
}

}  // namespace

void bernoulli_hash(Tensor& out, int64_t threshold, int64_t k0, int64_t k1, double value) {
  TORCH_CHECK_VALUE(out.device().is_cpu() && out.is_contiguous(),
                    "bernoulli_hash: out: expected a contiguous CPU tensor");
  TORCH_CHECK_VALUE(out.numel() <= (int64_t(1) << 32),
                    "bernoulli_hash: out: expected at most 2^32 elements, got ", out.numel());
  TORCH_CHECK_VALUE(threshold >= 0 && threshold <= (1 << 24), "bernoulli_hash: threshold: expected 0..2^24, got ",
                    threshold);
  TORCH_CHECK_VALUE(k0 >= 0 && k0 < (int64_t(1) << 32) && k1 >= 0 && k1 < (int64_t(1) << 32),
                    "bernoulli_hash: keys: expected 32-bit unsigned integers, got ", k0, ", ", k1);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bernoulli_hash", [&] {
    fill<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), uint32_t(threshold), uint32_t(k0), uint32_t(k1),
                   scalar_t(value));
  });
}

}  // namespace rnnkit
