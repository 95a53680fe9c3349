// Streaming inference for rnnkit.Stream: a stack of L layers (one direction) advanced by one
// step per call into buffers allocated once, so that a step allocates nothing.
//
// Tensors (B batch, I input size, L layers, S_k carried state sizes, GH = gate rows of a layer):
//   params[l]     [w_ih (GH, in_l), b_ih (GH) | None, rec params...]: the module's parameters,
//                 held by reference, so in-place updates (optimiser steps, load_state_dict) are
//                 seen; a non-contiguous one is held as a contiguous copy, and a None bias
//                 among the rec params is replaced by zeros, when they are bound (constructor,
//                 set_params)
//   xp[l]         (1, B, GH)   workspace: x_l W_ih^T + b_ih
//   states[p][k]  (L, B, S_k)  two sets, p = 0, 1: a step reads set cur and writes set 1 - cur,
//                 then flips cur.  Double-buffered because the Elman and Jordan kernels write the
//                 recurrent GEMM into the new state while reading the old one: they must not alias
//   work[l]       the cell's workspaces (its buffers with T = 1, save = false, states excluded),
//                 shared by both sets
//   out           (B, S_0)     the last layer's new state, copied; returned by step and
//                 overwritten by the next step (out1 is its (S_0,) view for unbatched input)
// Layer 0 reads x (B, I); layer l > 0 reads layer l-1's new state states[1 - cur][0][l - 1].
//
// Nothing from Python is trusted (check.h): the constructor and set_params check every
// parameter's presence, shape, dtype and device (errors name it: weight_hh_l0, ...), set_state
// its tensors' shapes and dtype, and every step the input and, because the held parameters are
// the module's tensors (``p.data = other`` changes them in place), each held parameter's sizes,
// dtype, contiguity and device against those it was bound with: a changed one is an error, never
// a read out of bounds.  Not thread-safe: one stream, one caller at a time.
#pragma once

#include <string>

#include "check.h"
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
  // Binds new parameters (the module's, read again), of the sizes and dtype the stream was made for.
  void set_params(const std::vector<OptTensors>& params);

 private:
  // A bound parameter and what it was bound with (checked at every step).
  struct Held {
    Tensor t;
    Name name;
    std::vector<int64_t> sizes;
  };
  // A Checker with the stream's sizes and dtype fixed (after the constructor's bind).
  Checker checker() const;
  void bind(const std::vector<OptTensors>& params);
  void check_input(const Tensor& x) const;
  void check_params() const;
  template <typename T>
  void run(const T* x, int nxt);

  std::string who_;
  Spec sp_;
  int64_t L_ = 0, B_ = 0, I_ = 0, H_ = 0, O_ = -1;
  at::ScalarType dtype_ = at::ScalarType::Undefined;
  std::vector<OptTensors> params_;    // bound: [w_ih, b_ih | None] and the rec params
  std::vector<OptTensors> rec_;       // rec params of each layer, None biases as zeros
  std::vector<Held> held_;
  Tensors xp_;
  Tensors states_[2];
  std::vector<FwdArgs> args_[2];      // args_[p][l] reads states set p
  std::vector<Tensors> bufs_[2];      // bufs_[p][l] writes states set p
  Tensor out_, out1_;
  int cur_ = 0;
};

}  // namespace rnnkit
