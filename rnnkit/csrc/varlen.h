// A batch with lengths in the fused backend's one-call inference (bindings.cpp: infer): the order
// its rows run in, its mask, and the way back to the user's rows, without a tensor op per piece
// (in Python the same bookkeeping took about 150 us a call, more than a small batch's whole run).
//
// The rows run longest first, as the layers and torch.nn's packed sequences run them: a step's
// finished sequences are then its last rows, which the fused loops skip (Mask::live).
//   RunOrder(lengths, T)  lengths (B,) int64 CPU, each in [1, T], one per user row (checked);
//   RunOrder(B, T)        a batch without lengths
//   packed(batch_sizes, who)  a PackedSequence's rows (already longest first): batch_sizes (T,) int64
//                         CPU, non-increasing, the first >= 1 (checked); steps[t] its values
//     order[i]      the user's row of run row i (ties keep the user's order)
//     len[i]        run row i's valid steps, non-increasing
//     sorted        order is the identity (the user's rows already run longest first)
//     full          every row has T steps: no mask
//   mask(T)         (T, B) bool: true on run row i's first len[i] steps
//   given(order, len, T)  the run the layers chose: order (B,) a permutation, len (B,) the run's
//                   rows' valid steps, non-increasing, each in [1, T] (int64 CPU, checked)
//   gather(t, z)    t (N, B, F) with its rows in run order, a new contiguous tensor; zeros on
//                   padded steps when z (N = T: an input)
//   to_user(hs, z)  hs (T, B, S) in run order -> (T, B, S) in the user's, zeros on padded steps
//                   when z (an output; a state's last step needs no zeros)
//   unpack(data)    a PackedSequence's data (N, F) -> (T, B, F), zeros on padded steps
//   pack(hs)        hs (T, B, S) -> (N, S), the valid rows step by step (PackedSequence.data)
#pragma once

#include "rnn.h"

#include <cstdint>
#include <vector>

namespace rnnkit {

struct RunOrder {
  std::vector<int64_t> order, len, steps;
  bool sorted = true, full = true;
  RunOrder(const Tensor& lengths, int64_t T);
  RunOrder(int64_t B, int64_t T);                  // no lengths: B rows of T steps
  static RunOrder packed(const Tensor& batch_sizes, const char* who);   // who: the entry point, for messages
  static RunOrder given(const Tensor& order, const Tensor& len, int64_t T);   // the layers' (checked)
  int64_t valid_steps() const;                     // sum of len
  Tensor mask(int64_t T) const;
  Tensor gather(const Tensor& t, bool zeros = false) const;
  Tensor to_user(const Tensor& hs, bool zeros) const;
  Tensor unpack(const Tensor& data) const;
  Tensor pack(const Tensor& hs) const;
};

}  // namespace rnnkit
