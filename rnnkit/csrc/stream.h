// Streaming inference for rnnkit.Stream: a stack of L layers (one direction) advanced by one
// step per call into buffers allocated once, so that a step allocates nothing.
//
// Tensors (B batch, I input size, L layers, S_k carried state sizes, GH = gate rows of a layer):
//   params[l]     [w_ih (GH, in_l), b_ih (GH) | None, rec params...]: the module's parameters,
//                 held by reference, so in-place updates (optimiser steps, load_state_dict) are
//                 seen; a None bias among the rec params is replaced by zeros once, here
//   xp[l]         (1, B, GH)   workspace: x_l W_ih^T + b_ih
//   states[p][k]  (L, B, S_k)  two sets, p = 0, 1: a step reads set cur and writes set 1 - cur,
//                 then flips cur.  Double-buffered because the Elman and Jordan kernels write the
//                 recurrent GEMM into the new state while reading the old one: they must not alias
//   work[l]       the cell's workspaces (its buffers with T = 1, save = false, states excluded),
//                 shared by both sets
//   out           (B, S_0)     the last layer's new state, copied; returned by step and
//                 overwritten by the next step (out1 is its (S_0,) view for unbatched input)
// Layer 0 reads x (B, I); layer l > 0 reads layer l-1's new state states[1 - cur][0][l - 1].
// Not thread-safe: one stream, one caller at a time.
#pragma once

#include <string>

#include "rnn.h"

namespace rnnkit {

class Stepper {
 public:
  Stepper(std::string who, const std::vector<int64_t>& spec, const std::vector<OptTensors>& params,
          int64_t batch);
  // One step: x (B, I), or (I,) when B == 1; returns out (B, S_0) or (S_0,).
  Tensor step(const Tensor& x);
  // The current states (L, B, S_k): the live buffers, not copies.
  Tensors state() const { return states_[cur_]; }
  // Copies s[k] (L, B, S_k) into the current states.
  void set_state(const Tensors& s);

 private:
  void check_input(const Tensor& x) const;
  void check_params() const;
  template <typename T>
  void run(const T* x, int nxt);

  std::string who_;
  Spec sp_;
  int64_t L_, B_, I_;
  at::ScalarType dtype_;
  std::vector<OptTensors> params_;
  std::vector<OptTensors> rec_;
  Tensors xp_;
  Tensors states_[2];
  std::vector<FwdArgs> args_[2];      // args_[p][l] reads states set p
  std::vector<Tensors> bufs_[2];      // bufs_[p][l] writes states set p
  Tensor out_, out1_;
  int cur_ = 0;
};

}  // namespace rnnkit
