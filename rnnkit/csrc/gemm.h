// GEMM for rnnkit's kernels: row-major C (M, N) = op(A) op(B) + beta * C with leading
// dimensions, on raw pointers, so a step costs one BLAS call and no tensor is created.  op(A) is
// (M, K), op(B) is (K, N).  Implemented in gemm.cpp.
#pragma once

#include "rnn.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace rnnkit {

enum class Op { N, T };

void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// xp (B, GH) = x (B, I) W^T + bias, bias (GH) or nullptr: the input projection of one step, or
// of a whole sequence's T * B rows, straight to BLAS (an ATen addmm costs more than the GEMM at
// streaming sizes).  The bias rows are copied in first, on every thread from 64K floats (a
// sequence's: 39 MB at (T, B, 3H) = (100, 64, 1536)).
template <typename T>
void project_into(const T* x, int64_t B, int64_t I, const T* w, const T* bias, int64_t GH, T* xp) {
  if (bias != nullptr)
    at::parallel_for(0, B, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(GH, 1)),
                     [&](int64_t b0, int64_t b1) {
                       for (int64_t b = b0; b < b1; ++b) std::memcpy(xp + b * GH, bias, GH * sizeof(T));
                     });
  gemm(Op::N, Op::T, B, GH, I, x, I, w, I, T(bias != nullptr ? 1 : 0), xp, GH);
}

// The first layer's input projection of a batch with lengths, its rows gathered in the run's
// order (longest first) without copying the input, and no padded step computed:
//   x        (T, B, I)    the user's batch, read only: any strides with the features contiguous
//                         (a batch_first input's transposed view needs no copy)
//   order    (B,) int64   row i of the run is the user's row order[i]
//   lengths  (B,) int64   valid steps of the run's row i (non-increasing, each in [0, T])
//   w        (GH, I), bias (GH) | None
//   returns  xp (T, B, GH): xp[t, i] = x[t, order[i]] w^T + bias for t < lengths[i]; the padded
//            rows (t >= lengths[i]) are left uninitialised (no backend reads them).
// One GEMM per row (M = lengths[i] steps, leading dimensions B*I and B*GH), rows dealt out to the
// threads in turn so that each gets long and short ones.
Tensor project_rows(const Tensor& x, const Tensor& order, const Tensor& lengths, const Tensor& w,
                    const c10::optional<Tensor>& bias);
// The same into a given xp (T, B, GH), with order and lengths B values each (unchecked: the
// caller's), x (T, B, I) with its features contiguous and w contiguous, all of one dtype.
void project_rows_into(const Tensor& x, const int64_t* order, const int64_t* lengths, const Tensor& w,
                       const c10::optional<Tensor>& bias, Tensor& xp);

// True when the BLAS that ships inside libtorch_cpu is reachable (else ATen's addmm is used).
bool has_blas();

// A weight used by every step of a sequence: C (M, N) = A (M, K) op(W) + beta * C, where op(W)
// is (K, N) and M (the batch) is fixed.  BLAS repacks W on every plain GEMM call; with MKL's
// packed API (float) W is packed once per sequence instead, which is most of the step cost
// when M is small and W is large.  On large steps (float) W is instead reordered once for
// oneDNN's GEMM, which is faster there (see gemm.cpp).  Otherwise it is a plain gemm.
// ``uses``: the products it will serve (a sequence's steps); packing or reordering W costs
// several plain products' time, so a short sequence reads W as it is (see gemm.cpp).
// ``rows`` (at most M; -1: M) multiplies only the first rows of A and C: a step's live rows
// (Mask::live), the finished sequences of a sorted batch left out.
template <typename T>
class StepWeight {
 public:
  StepWeight(Op op, int64_t M, int64_t N, int64_t K, const T* w, int64_t ldw, int64_t uses);
  void mul(const T* A, int64_t lda, T beta, T* C, int64_t ldc, int64_t rows = -1) const;

 private:
  Op op_;
  int64_t M_, N_, K_, ldw_;
  const T* w_;
  Tensor packed_;       // MKL's packed copy of W; undefined when not packed
  Tensor dnnl_;         // oneDNN's reordered copy of op(W)^T (N, K); undefined when not used
};

// dW (M, N) = sum_t dG_t^T prev_t with prev_0 = state0 and prev_t = states[t-1]: two GEMMs over
// all rows.  dG rows have leading dimension ldg, prev rows have width N.
template <typename T>
void weight_grad(int64_t Tn, int64_t B, int64_t M, int64_t N, const T* dG, int64_t ldg,
                 const T* state0, const T* states, T* dW) {
  if (Tn == 0) B = 0;                               // no steps: dW = 0 (the empty sum)
  gemm(Op::T, Op::N, M, N, B, dG, ldg, state0, N, T(0), dW, N);
  if (Tn > 1)
    gemm(Op::T, Op::N, M, N, (Tn - 1) * B, dG + B * ldg, ldg, states, N, T(1), dW, N);
}

}  // namespace rnnkit
