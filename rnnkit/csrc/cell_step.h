// One differentiated step of a plain cell as one autograd node: the Cell modules' step
// (rnnkit.RNNCell, LSTMCell, GRUCell) and model.step's per layer with a graph to record.  Under autograd the same step
// written in torch ops records 6 (Elman) to 15 (LSTM) nodes, each a dispatch, saved tensors and an
// engine visit in backward, which at B = 1 cost more than the step's arithmetic.
//
//   kind  kElmanTanh, kElmanRelu, kLSTM (gates i, f, g, o), kGRU (torch's form: r, z, n with the
//         reset applied after W_hn)
//   x     (B, I)       h (B, H)       c (B, H), the LSTM's cell state (None otherwise); a state
//         given as None is zeros
//   w_ih  (G*H, I)     w_hh (G*H, H)  b_ih, b_hh (G*H) or undefined; G = 1, 4, 3
//   ->    [h'] (B, H); the LSTM's [h', c']
//
// Shapes and dtypes are checked (an error names the argument).  Forward and the first-order
// backward (the hand-derived one of rnnkit/cells) run on raw pointers for contiguous float32 and
// float64 tensors: BLAS and the sequence kernels' own gate passes (gate_rows.h); strided inputs
// take the same equations in ATen ops.  Under create_graph the backward recomputes the step's
// values from the saved inputs with grad mode on and runs the ATen form, which records a graph
// that autograd differentiates again (gradient penalties, Hessian-vector products).  Also the
// cheapest call without a graph (the node is then not recorded).
#pragma once

#include "rnn.h"

#include <cstdint>

namespace rnnkit {

enum StepKind : int64_t { kElmanTanh = 0, kElmanRelu = 1, kLSTM = 2, kGRU = 3 };

Tensors cell_step(int64_t kind, const Tensor& x, const c10::optional<Tensor>& h, const c10::optional<Tensor>& c,
                  const Tensor& w_ih, const Tensor& w_hh, const c10::optional<Tensor>& b_ih,
                  const c10::optional<Tensor>& b_hh);

}  // namespace rnnkit
