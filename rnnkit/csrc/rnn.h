// Shared pieces of rnnkit's fused CPU kernels.
//
// Every kernel runs the whole sequence of one layer and one direction.  Conventions used by
// all cells (T steps, B batch, H hidden, G gate blocks, S size of a carried state):
//
//   xp       (T, B, G*H)   input projection x W_ih^T + b_ih, computed by the caller in one GEMM
//   mask     (T, B, 1)     bool, true where step t is inside sequence b; undefined = all valid
//   state0   (B, S) each   initial carried states
//   states   (T, B, S)     carried state after every step (padded steps repeat the previous one)
//   saved    (T, B, .)     the cell's ``saved_names`` (post-activation gates, ...), also the trace
//
// Per step: one GEMM of the previous state with the recurrent weights, written straight into
// the step's output rows, then one fused, vectorisable pass over the gates.  Backward: the time
// loop produces only the gate gradients d_xp (T, B, G*H) and the carried state gradients;
// recurrent weight gradients are single GEMMs over all T*B rows after the loop.  Workspaces
// are allocated once per call, never inside the loop (except the per-step output of oneDNN's
// GEMM on large steps, copied into the step's rows: see StepWeight).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace rnnkit {

using at::Tensor;
using Tensors = std::vector<Tensor>;
using OptTensors = std::vector<c10::optional<Tensor>>;

// What the Python side tells the kernels about a cell (see rnnkit/backends/cpu.py).
enum Kind : int64_t { kElman = 0, kJordan = 1, kLSTM = 2, kGRU = 3 };
enum Act : int64_t { kTanh = 0, kRelu = 1, kIdentity = 2, kSigmoid = 3, kSoftmax = 4 };

struct Spec {
  int64_t kind;
  int64_t act;          // hidden activation (Elman, Jordan)
  int64_t out;          // Jordan output activation
  bool reset_after;     // GRU form
};

struct FwdArgs {
  Tensor xp;            // (T, B, G*H) contiguous
  Tensor mask;          // (T, B) bool or undefined
  Tensors state0;       // (B, S_k)
  OptTensors rec;       // the cell's rec_params, None where absent
  bool save;            // keep the saved tensors (backward or trace needs them)
};

struct FwdResult {
  Tensors states;       // (T, B, S_k)
  Tensors saved;        // the cell's saved_names, (T, B, .)
};

struct BwdArgs {
  Tensor d_out;         // (T, B, S_0) or undefined; any strides (see GradOut)
  OptTensors d_final;   // (B, S_k), None = zero
  Tensor mask;
  Tensors state0, states, saved;
  OptTensors rec;
};

struct BwdResult {
  Tensor d_xp;          // (T, B, G*H)
  Tensors d_state0;     // (B, S_k)
  OptTensors d_rec;     // one per rec param, None where the parameter is None
};

// Buffers of a forward run of T steps of one cell: the carried states (T, B, S_k) first, then
// the cell's saved tensors and workspaces (with save = false, (B, .) workspaces reused by every
// step), as each cell's header comment lists them.  <cell>_forward allocates them and calls
// <cell>_run; the streaming Stepper (stream.cpp) allocates them once and calls <cell>_run on
// every step with its own state views in the first slots.  O is the Jordan output size.
using BuffersFn = Tensors (*)(const Spec&, int64_t T, int64_t B, int64_t H, int64_t O, bool save,
                              const at::TensorOptions&);
using RunFn = void (*)(const Spec&, const FwdArgs&, const Tensors& bufs);

Tensors elman_buffers(const Spec&, int64_t, int64_t, int64_t, int64_t, bool, const at::TensorOptions&);
Tensors jordan_buffers(const Spec&, int64_t, int64_t, int64_t, int64_t, bool, const at::TensorOptions&);
Tensors lstm_buffers(const Spec&, int64_t, int64_t, int64_t, int64_t, bool, const at::TensorOptions&);
Tensors gru_buffers(const Spec&, int64_t, int64_t, int64_t, int64_t, bool, const at::TensorOptions&);
void elman_run(const Spec&, const FwdArgs&, const Tensors&);
void jordan_run(const Spec&, const FwdArgs&, const Tensors&);
void lstm_run(const Spec&, const FwdArgs&, const Tensors&);
void gru_run(const Spec&, const FwdArgs&, const Tensors&);

FwdResult elman_forward(const Spec&, const FwdArgs&);
BwdResult elman_backward(const Spec&, const BwdArgs&);
FwdResult jordan_forward(const Spec&, const FwdArgs&);
BwdResult jordan_backward(const Spec&, const BwdArgs&);
FwdResult lstm_forward(const Spec&, const FwdArgs&);
BwdResult lstm_backward(const Spec&, const BwdArgs&);
FwdResult gru_forward(const Spec&, const FwdArgs&);
BwdResult gru_backward(const Spec&, const BwdArgs&);

// at::empty for the (T, B, .) buffers.  A large fresh allocation is new pages, and faulting
// them in 4 KiB at a time costs several times the kernel's writes to them; where the kernel
// allows it, transparent huge pages are asked for on its 2 MiB-aligned interior.
inline Tensor empty_seq(at::IntArrayRef sizes, const at::TensorOptions& opt) {
  Tensor t = at::empty(sizes, opt);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + huge - 1) & ~(huge - 1), end = (p + t.nbytes()) & ~(huge - 1);
  if (end > begin + huge) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return t;
}

// ---- GEMM ------------------------------------------------------------------------------
// Row-major C (M, N) = op(A) op(B) + beta * C with leading dimensions, on raw pointers, so a
// step costs one BLAS call and no tensor is created.  op(A) is (M, K), op(B) is (K, N).
enum class Op { N, T };

void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

// xp (B, GH) = x (B, I) W^T + bias, bias (GH) or nullptr: the input projection of one step,
// straight to BLAS (an ATen addmm costs more than the GEMM at streaming sizes).
template <typename T>
void project_into(const T* x, int64_t B, int64_t I, const T* w, const T* bias, int64_t GH, T* xp) {
  for (int64_t b = 0; bias != nullptr && b < B; ++b) std::memcpy(xp + b * GH, bias, GH * sizeof(T));
  gemm(Op::N, Op::T, B, GH, I, x, I, w, I, T(bias != nullptr ? 1 : 0), xp, GH);
}

// True when the BLAS that ships inside libtorch_cpu is reachable (else ATen's addmm is used).
bool has_blas();

// A weight used by every step of a sequence: C (M, N) = A (M, K) op(W) + beta * C, where op(W)
// is (K, N) and M (the batch) is fixed.  BLAS repacks W on every plain GEMM call; with MKL's
// packed API (float) W is packed once per sequence instead, which is most of the step cost
// when M is small and W is large.  On large steps (float) W is instead reordered once for
// oneDNN's GEMM, which is faster there (see gemm.cpp).  Otherwise it is a plain gemm.
template <typename T>
class StepWeight {
 public:
  StepWeight(Op op, int64_t M, int64_t N, int64_t K, const T* w, int64_t ldw);
  void mul(const T* A, int64_t lda, T beta, T* C, int64_t ldc) const;

 private:
  Op op_;
  int64_t M_, N_, K_, ldw_;
  const T* w_;
  Tensor packed_;       // MKL's packed copy of W; undefined when not packed
  Tensor dnnl_;         // oneDNN's reordered copy of op(W)^T (N, K); undefined when not used
};

// ---- activations ------------------------------------------------------------------------
// Branch-free so that the gate loops vectorise.  float: Cephes-style range reduction and
// polynomials (about 1 ulp); double: the C library, since float64 is for checking, not speed.

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

template <typename T>
inline T relu(T x) { return x > T(0) ? x : T(0); }

// Hidden activation and its derivative written with the output y.
template <typename T>
inline T hidden_act(bool is_relu, T a) { return is_relu ? relu(a) : tanh_(a); }
template <typename T>
inline T hidden_grad(bool is_relu, T y, T dy) { return is_relu ? (y > T(0) ? dy : T(0)) : dy * (T(1) - y * y); }

// ---- loops ---------------------------------------------------------------------------------
// Runs f(b) for every batch row; rows are split over threads only when a step has enough work
// to pay for waking them (small sizes stay on the calling thread).
template <typename F>
inline void for_rows(int64_t B, int64_t work_per_row, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1));
  if (B <= grain) {
    for (int64_t b = 0; b < B; ++b) f(b);
    return;
  }
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// Row validity of step t: true everywhere when there is no mask.
struct Mask {
  const bool* m = nullptr;
  int64_t B = 0;
  explicit Mask(const Tensor& mask, int64_t batch)
      : m(mask.defined() ? mask.data_ptr<bool>() : nullptr), B(batch) {}
  bool valid(int64_t t, int64_t b) const { return m == nullptr || m[t * B + b]; }
  bool any() const { return m != nullptr; }
};

// dW (M, N) = sum_t dG_t^T prev_t with prev_0 = state0 and prev_t = states[t-1]: two GEMMs over
// all rows.  dG rows have leading dimension ldg, prev rows have width N.
template <typename T>
void weight_grad(int64_t Tn, int64_t B, int64_t M, int64_t N, const T* dG, int64_t ldg,
                 const T* state0, const T* states, T* dW) {
  gemm(Op::T, Op::N, M, N, B, dG, ldg, state0, N, T(0), dW, N);
  if (Tn > 1)
    gemm(Op::T, Op::N, M, N, (Tn - 1) * B, dG + B * ldg, ldg, states, N, T(1), dW, N);
}

// y += x over n elements.
template <typename T>
inline void add_to(int64_t n, T* __restrict y, const T* __restrict x) {
  for (int64_t j = 0; j < n; ++j) y[j] += x[j];
}

// The output's gradient d_out (T, B, S), read in place whatever its strides: out.sum() hands
// backward an expanded scalar, and a dense copy would be one more (T, B, S) buffer at the peak.
template <typename T>
struct GradOut {
  const T* p = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  explicit GradOut(const Tensor& d) {
    if (!d.defined()) return;
    p = d.data_ptr<T>();
    s0 = d.stride(0), s1 = d.stride(1), s2 = d.stride(2);
  }
  // g (n) += d_out[t, b, :]
  void add(int64_t t, int64_t b, int64_t n, T* g) const {
    if (p == nullptr) return;
    const T* row = p + t * s0 + b * s1;
    if (s2 == 1) {
      add_to(n, g, row);
      return;
    }
    for (int64_t j = 0; j < n; ++j) g[j] += row[j * s2];
  }
};

// A padded row in backward (the step did not happen): the carried state's gradient g (n)
// passes through to the previous step unchanged and the step's gate gradients d (nd) are zero.
template <typename T>
inline void skip_row(int64_t n, const T* g, T* next, int64_t nd, T* d) {
  std::memcpy(next, g, n * sizeof(T));
  std::fill(d, d + nd, T(0));
}

// Column sums of a (R, N) block with leading dimension ld, accumulated into out (N).
template <typename T>
void col_sum(int64_t R, int64_t N, const T* x, int64_t ld, T* out) {
  std::fill(out, out + N, T(0));
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict row = x + r * ld;
    for (int64_t j = 0; j < N; ++j) out[j] += row[j];
  }
}

}  // namespace rnnkit
