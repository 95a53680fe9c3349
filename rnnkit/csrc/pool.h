// A cache of the kernels' large (T, B, .) buffers, so that a training loop does not hand them
// back to the OS between calls and fault every page in again at the next one.
//
// Measured before it (2026-11-28, LSTM (B, H) = (8, 128), T = 128, fwd+bwd, one thread): a layer
// norm LSTM called alternately with a plain one took about 1,000 minor page faults per pair of
// calls (glibc trims its heap top and unmaps large blocks once they are freed), against 48 per call
// for the plain LSTM alone; with glibc told never to return memory, the layer norm LSTM's time over
// the plain one's fell from 1.28x to 1.14x.
//
// pooled_empty(sizes, options)  like at::empty, through the pool when the buffer is at least
//                               kPoolMinBytes (smaller ones: at::empty, malloc serves them well)
// Blocks freed by their last tensor go back to the pool, which keeps at most pool_limit() bytes
// (RNNKIT_CPU_POOL_MB, default 256; 0 turns the pool off), dropping its oldest blocks first; a
// request takes a cached block of exactly its rounded size (training repeats the same shapes).
// pool_release() frees every cached block (rnnkit.backends.cpu.empty_cache()).  Thread-safe:
// tensors die on any thread (autograd's).  The tensors are ordinary resizable CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace rnnkit {

constexpr int64_t kPoolMinBytes = int64_t(1) << 16;

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// The bytes the pool may keep, and the bytes it keeps now.
int64_t pool_limit();
int64_t pool_cached();
// Frees every cached block; returns the bytes freed.
int64_t pool_release();

}  // namespace rnnkit
