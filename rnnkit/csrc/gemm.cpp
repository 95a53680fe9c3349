// Row-major GEMM on raw pointers for the time loops.
//
// The x86 torch wheels carry MKL inside libtorch_cpu and export its Fortran BLAS symbols;
// calling them directly costs well under a microsecond, against several for an ATen op
// (dispatcher, tensor creation), which is most of a step at B=1, H=64.  The symbols are weak
// so that a torch built without them still loads: the fallback wraps the pointers in tensors
// and calls addmm_, slower but the same math.
#include "gemm.h"

#include "pool.h"
#include "simd.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <atomic>
#include <exception>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
size_t sgemm_pack_get_size_(const char* id, const int* m, const int* n, const int* k) __attribute__((weak));
void sgemm_pack_(const char* id, const char* trans, const int* m, const int* n, const int* k,
                 const float* alpha, const float* src, const int* ld, float* dest) __attribute__((weak));
void sgemm_compute_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                    const float* a, const int* lda, const float* b, const int* ldb, const float* beta,
                    float* c, const int* ldc) __attribute__((weak));
}

// torch's oneDNN matmul into a given result (ATen's mkldnn/Matmul.h, not among the installed
// headers): weak, so that a torch built without it still loads.
namespace at::native {
TORCH_API void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                             float alpha) __attribute__((weak));
}

namespace rnnkit {
namespace {

// A row-major (rows, cols) block with leading dimension ld, as a tensor view (op T: transposed).
template <typename T>
Tensor view(const T* p, Op op, int64_t rows, int64_t cols, int64_t ld) {
  auto t = at::from_blob(const_cast<T*>(p), {op == Op::N ? rows : cols, op == Op::N ? cols : rows},
                         {ld, 1}, c10::CppTypeToScalarType<T>::value);
  return op == Op::N ? t : t.t();
}

template <typename T>
void gemm_aten(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  Tensor c = view(C, Op::N, M, N, ldc);
  c.addmm_(view(A, opa, M, K, lda), view(B, opb, K, N, ldb), beta, 1);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
template <typename T, typename Fn>
void gemm_blas(Fn fn, Op opa, Op opb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const char ta = opa == Op::N ? 'N' : 'T', tb = opb == Op::N ? 'N' : 'T';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(std::max<int64_t>(ldb, 1));
  const int lb = static_cast<int>(std::max<int64_t>(lda, 1));
  const int lc = static_cast<int>(std::max<int64_t>(ldc, 1));
  const T one = 1;
  fn(&tb, &ta, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
}

template <typename T>
bool trivial(int64_t M, int64_t N, int64_t K, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return true;
  if (K > 0) return false;
  for (int64_t i = 0; i < M; ++i)                  // empty sum: C = beta * C
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
  return true;
}

#ifdef RNNKIT_AVX512
// ---- a few rows, float32: our own loops ---------------------------------------------------------
// With M <= kSmallRows rows (a step of a small batch, a stream's step, a short call's projection)
// BLAS's GEMM is a GEMV: MKL's generic kernel (the one it picks on this AMD CPU), and its packed
// API, took 1.2-2.5x the time of these loops (measured on Zen 4, one thread, M = 1 .. 8 and
// (N, K) from (64, 64) to (2048, 512): (1, 256, 64) 1.42 against 0.69 us, (2, 1024, 256) 42.2
// against 16.5; at M = 16 the packed GEMM is level).
constexpr int64_t kSmallRows = 8;

using simd::V;

// One vector of 16 sums: lane o is the sum of v[o]'s lanes (a tree of adds over lane shuffles).
inline V sum16(const V (&v)[16]) {
  V w[8], u[4];
  for (int i = 0; i < 8; ++i)          // 128-bit blocks: [a0+a2, a1+a3, b0+b2, b1+b3] of v[2i], v[2i+1]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)          // block k: four partial sums of v[4i + k]
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  const V s01 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  const V s23 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
  const V r = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, r);            // lane 4k + m held the sum of v[4m + k]
}

// c[lanes m] = s + beta * c (c unread when beta is 0, as BLAS leaves it).
inline void put(float* c, V s, float beta, __mmask16 m) {
  if (beta != 0.0f) s = _mm512_fmadd_ps(simd::splat(beta), simd::load(c, m), s);
  simd::store(c, s, m);
}

// C (M, N) = A (M, K) W^T + beta C, W (N, K) with leading dimension ldw: per 16 outputs and row,
// 16 dot products along K, summed across lanes at the end (sum16).
void small_nt(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw,
              float beta, float* C, int64_t ldc) {
  const int64_t kb = K / simd::kLanes * simd::kLanes;
  const __mmask16 km = simd::lanes(K - kb);
  for (int64_t j0 = 0; j0 < N; j0 += simd::kLanes) {
    const int64_t nj = std::min(simd::kLanes, N - j0);
    const float* w[16];                                   // outputs past N repeat the last row, unstored
    for (int r = 0; r < 16; ++r) w[r] = W + (j0 + std::min<int64_t>(r, nj - 1)) * ldw;
    for (int64_t i = 0; i < M; ++i) {
      const float* a = A + i * lda;
      V acc[16];
      for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t k = 0; k < kb; k += simd::kLanes) {
        const V x = _mm512_loadu_ps(a + k);
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w[r] + k), x, acc[r]);
      }
      if (km) {
        const V x = simd::load(a + kb, km);
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_fmadd_ps(simd::load(w[r] + kb, km), x, acc[r]);
      }
      put(C + i * ldc + j0, sum16(acc), beta, simd::lanes(nj));
    }
  }
}

// C (R, N) = A (R, K) W + beta C, W (K, N) with leading dimension ldw: per 64 outputs, R rows'
// sums in registers, each row of W loaded once for the R rows.
template <int R>
void small_nn_tile(int64_t N, int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw, float beta,
                   float* C, int64_t ldc) {
  constexpr int U = 4;                                    // vectors of outputs per tile
  for (int64_t j0 = 0; j0 < N; j0 += U * simd::kLanes) {
    __mmask16 m[U];
    for (int u = 0; u < U; ++u) m[u] = simd::lanes(std::max<int64_t>(0, N - j0 - u * simd::kLanes));
    V acc[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) acc[r][u] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      V wk[U];
      for (int u = 0; u < U; ++u) wk[u] = simd::load(W + k * ldw + j0 + u * simd::kLanes, m[u]);
      for (int r = 0; r < R; ++r) {
        const V a = simd::splat(A[r * lda + k]);
        for (int u = 0; u < U; ++u) acc[r][u] = _mm512_fmadd_ps(a, wk[u], acc[r][u]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u)
        if (m[u]) put(C + r * ldc + j0 + u * simd::kLanes, acc[r][u], beta, m[u]);
  }
}

void small_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw,
              float beta, float* C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) small_nn_tile<4>(N, K, A + i * lda, lda, W, ldw, beta, C + i * ldc, ldc);
  const float* a = A + i * lda;
  float* c = C + i * ldc;
  switch (M - i) {
    case 3: small_nn_tile<3>(N, K, a, lda, W, ldw, beta, c, ldc); break;
    case 2: small_nn_tile<2>(N, K, a, lda, W, ldw, beta, c, ldc); break;
    case 1: small_nn_tile<1>(N, K, a, lda, W, ldw, beta, c, ldc); break;
    default: break;
  }
}

// The small-row loops over blocks of 64 outputs, split over the intra-op threads from 2^17
// multiply-adds per thread: MKL threads its GEMV, and on two threads a single-threaded loop lost
// to it on large weights ((8, 512, 2048): 219 against 205 us; (8, 1024, 4096): 2428 against 1476).
void small_gemm(Op opb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw,
                float beta, float* C, int64_t ldc) {
  constexpr int64_t kBlock = 64;                          // a multiple of both loops' widths
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 17) / (M * kBlock * K));
  at::parallel_for(0, (N + kBlock - 1) / kBlock, grain, [&](int64_t b0, int64_t b1) {
    const int64_t j0 = b0 * kBlock, n = std::min(N, b1 * kBlock) - j0;
    if (opb == Op::T)
      small_nt(M, n, K, A, lda, W + j0 * ldw, ldw, beta, C + j0, ldc);
    else
      small_nn(M, n, K, A, lda, W + j0, ldw, beta, C + j0, ldc);
  });
}

// The small-row loops take C = A op(B) + beta C where A is not transposed and M is small.
bool small_rows(Op opa, int64_t M) { return opa == Op::N && M <= kSmallRows; }
#else
bool small_rows(Op, int64_t) { return false; }
#endif

// ---- large float32 products: oneDNN's matmul ------------------------------------------------
// Alone, oneDNN's matmul (its brgemm kernels) written straight into C beats MKL's sgemm on Zen 4
// from about 2^24 multiply-adds (torch.mm(out=) against mkldnn_matmul, side by side): two
// threads, a projection C (M, N) = A (M, K) W^T, (M, K, N) = (128, 256, 1024) 1.31, (512, 128,
// 512) 1.08, (2048, 256, 1024) 1.37, a weight gradient G^T X 1.09-1.25, a dx G W 1.12-1.22; one
// thread 1.06-1.21; below 2^23 it loses (0.74-0.99 at 2^21).  Inside the kernels' calls the gain
// at 2^24-2^26 vanished (GRU and Elman (8, 128), T = 128, 0.95-0.98 of BLAS's time on two
// threads; 2^26: 0.99-1.02), hence the higher bar.  oneDNN's linear op, which the layer-by-layer
// path calls, allocates its result: a (T, B, 3H) projection of 39 MB at (100, 64, 512) then
// faults in every page of it on every call (58 against 46 ms into a kept buffer, two threads).
constexpr int64_t kDnnlGemmMacs = int64_t(1) << 26;

// mkldnn_matmul throws on CPUs it has no fp32 kernels for (it asks for AVX-512 BW/VL/DQ or
// AVX-NE-CONVERT); the first refusal turns this route off for the process, and that product
// and every later one run on BLAS.
std::atomic<bool> dnnl_gemm_refused{false};

// Only A (M, K) as it is (a projection, a dx): with A transposed (a weight's gradient, summed
// over T * B rows) oneDNN splits that sum among the threads, and the result's last bits then
// depend on their number ((64, 64) over 32,768 rows: 1.2e-4 apart on one and two threads; MKL's,
// and oneDNN's with A as it is, the same bits), which a training run must not (the trainer's
// test_results_do_not_change_with_the_thread_count).  oneDNN reads B in place only when it is a
// dense block or the transpose of one, and writes C in place only when it is dense
// (mkldnn_matmul copies otherwise): anything else stays on BLAS.  Inside a parallel region (a
// row's projection, project_rows) oneDNN would run on one thread and build a primitive per
// shape, so BLAS keeps those too.
bool dnnl_gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, float beta, float* C, int64_t ldc) {
  if (at::native::mkldnn_matmul == nullptr || dnnl_gemm_refused.load(std::memory_order_relaxed) ||
      M * N * K < kDnnlGemmMacs || (beta != 0.0f && beta != 1.0f) || ldc != N || opa != Op::N || lda != K ||
      ldb != (opb == Op::N ? N : K) || at::in_parallel_region() || !at::globalContext().userEnabledMkldnn())
    return false;
  try {
    at::native::mkldnn_matmul(view(A, Op::N, M, K, lda), view(B, opb, K, N, ldb), view(C, Op::N, M, N, ldc), beta,
                              1.0f);
  } catch (const std::exception&) {                            // c10::Error, or oneDNN's own
    dnnl_gemm_refused.store(true, std::memory_order_relaxed);
    return false;
  }
  return true;
}

}  // namespace

bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

namespace {

// The BLAS routine fn (sgemm_ or dgemm_; nullptr where this torch lacks it), else ATen.
template <typename T, typename Fn>
void gemm_with(Fn fn, Op opa, Op opb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (trivial(M, N, K, beta, C, ldc)) return;
  if (fn != nullptr)
    gemm_blas(fn, opa, opb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_aten(opa, opb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef RNNKIT_AVX512
  if (small_rows(opa, M)) {
    if (!trivial(M, N, K, beta, C, ldc)) small_gemm(opb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
  if (M > 0 && N > 0 && K > 0 && dnnl_gemm(opa, opb, M, N, K, A, lda, B, ldb, beta, C, ldc)) return;
  gemm_with(sgemm_, opa, opb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

void gemm(Op opa, Op opb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_with(dgemm_, opa, opb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

namespace {

template <typename T>
void project_rows_impl(const Tensor& x, const int64_t* order, const int64_t* lengths, const Tensor& w,
                       const T* bias, Tensor& xp) {
  const int64_t B = x.size(1), I = x.size(2), GH = w.size(0), st = x.stride(0), sb = x.stride(1);
  const T *px = x.data_ptr<T>(), *pw = w.data_ptr<T>();
  T* out = xp.data_ptr<T>();
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
  at::parallel_for(0, n, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t i = k; i < B; i += n) {                   // every n-th row: long and short ones
        T* c = out + i * GH;                                  // (lengths[i], GH), leading dim B*GH
        for (int64_t t = 0; bias != nullptr && t < lengths[i]; ++t)
          std::memcpy(c + t * B * GH, bias, GH * sizeof(T));
        gemm(Op::N, Op::T, lengths[i], GH, I, px + order[i] * sb, st, pw, I, T(bias != nullptr ? 1 : 0), c, B * GH);
      }
  });
}

}  // namespace

void project_rows_into(const Tensor& x, const int64_t* order, const int64_t* lengths, const Tensor& w,
                       const c10::optional<Tensor>& bias, Tensor& xp) {
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "project_rows", [&] {
    project_rows_impl<scalar_t>(x, order, lengths, w, has_bias ? bias->data_ptr<scalar_t>() : nullptr, xp);
  });
}

Tensor project_rows(const Tensor& x, const Tensor& order, const Tensor& lengths, const Tensor& w,
                    const c10::optional<Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && x.stride(2) == 1 && x.stride(0) >= x.size(2) &&
                  x.stride(1) >= x.size(2),
              "project_rows: x: expected a (T, B, I) CPU tensor with its features contiguous");
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == I && w.is_contiguous() && w.scalar_type() == x.scalar_type(),
              "project_rows: w: expected a contiguous (GH, ", I, ") tensor of x's dtype");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == w.size(0) && bias->is_contiguous() &&
                            bias->scalar_type() == x.scalar_type()),
              "project_rows: bias: expected a contiguous (", w.size(0), ") tensor of x's dtype");
  for (const Tensor* idx : {&order, &lengths})
    TORCH_CHECK(idx->dim() == 1 && idx->size(0) == B && idx->scalar_type() == at::kLong && idx->is_contiguous() &&
                idx->device().is_cpu(), "project_rows: order and lengths: expected contiguous (", B, ") int64 CPU tensors");
  const int64_t *po = order.data_ptr<int64_t>(), *pl = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) {                    // never a read outside x or a write outside xp
    TORCH_CHECK(po[i] >= 0 && po[i] < B, "project_rows: order[", i, "] = ", po[i], " is not a row of x");
    TORCH_CHECK(pl[i] >= 0 && pl[i] <= T_, "project_rows: lengths[", i, "] = ", pl[i], " is outside [0, ", T_, "]");
  }
  Tensor xp = pooled_empty({T_, B, w.size(0)}, x.options());
  project_rows_into(x, po, pl, w, bias, xp);
  return xp;
}

namespace {

bool can_pack() { return sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_; }

// Packing pays once W no longer fits the fast caches and a step has more than one row.
// A step of a few rows goes to the small-row loops instead (gemm).
bool worth_packing(int64_t M, int64_t N, int64_t K) { return M >= 2 && !small_rows(Op::N, M) && N * K >= 64 * 1024; }

// oneDNN's GEMM (the one behind torch.nn.LSTM) with W reordered once into its blocked layout
// beats MKL's packed GEMM on large steps (measured on Zen 4: about a third less time per step at
// B=64, 4H x H = 2048 x 512), but each call goes through the dispatcher, allocates its output
// and costs a copy into C, which small steps cannot afford.  Off while torch.backends.mkldnn
// is disabled.
bool worth_dnnl(int64_t M, int64_t N, int64_t K) { return M >= 16 && N * K >= (256 * 1024); }

// The fewest products (a sequence's steps) for which packing W (MKL) or reordering it (oneDNN)
// pays: each costs a copy of W (the reorder of a transposed W two), an allocation whose pages
// fault in, and for oneDNN a dispatch.  Measured (tools/ab_kernels.py, never packing or
// reordering against always, old/new above 1: never is faster), one thread, T = 1 / 2 / 4 / 8 /
// 16 / 64: LSTM (64, 384) training 1.24 / 1.13 / 1.12 / 1.02 / 0.99 / 0.98, GRU (64, 512) training
// T = 16 0.99, T = 64 0.96; two threads, T = 1 / 4 / 16: LSTM (64, 384) training 1.35 / 1.18 /
// 1.01, GRU (64, 512) 1.34 / 1.08 / 0.97; at T = 1 GRU (16, 384) no_grad 1.75 (two threads 1.94)
// and training 1.77.  MKL's packing (fewer than 16 rows), Elman (12, 512) training, T = 1 / 2 / 3:
// 1.29 / 1.32 / 1.22 (from 4 steps the fused loops take such rows).
constexpr int64_t kPackUses = 4;
constexpr int64_t kDnnlUses = 16;

// torch's oneDNN linear ops, registered by ATen when it is built with oneDNN; null otherwise.
struct DnnlOps {
  c10::optional<c10::TypedOperatorHandle<Tensor(const Tensor&, c10::optional<int64_t>)>> reorder;
  c10::optional<c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const c10::optional<Tensor>&,
                                                c10::string_view, c10::List<c10::optional<at::Scalar>>,
                                                c10::optional<c10::string_view>)>> linear;
  DnnlOps() {
    try {
      auto r = c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
      auto l = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
      if (!r || !l) return;
      reorder = r->typed<Tensor(const Tensor&, c10::optional<int64_t>)>();
      linear = l->typed<Tensor(const Tensor&, const Tensor&, const c10::optional<Tensor>&, c10::string_view,
                               c10::List<c10::optional<at::Scalar>>, c10::optional<c10::string_view>)>();
    } catch (const std::exception&) {
      reorder.reset(), linear.reset();
    }
  }
};

const DnnlOps& dnnl_ops() {
  static const DnnlOps ops;
  return ops;
}

}  // namespace

template <typename T>
StepWeight<T>::StepWeight(Op op, int64_t M, int64_t N, int64_t K, const T* w, int64_t ldw, int64_t)
    : op_(op), M_(M), N_(N), K_(K), ldw_(ldw), w_(w) {}

template <typename T>
void StepWeight<T>::mul(const T* A, int64_t lda, T beta, T* C, int64_t ldc, int64_t rows) const {
  gemm(Op::N, op_, rows < 0 ? M_ : rows, N_, K_, A, lda, w_, ldw_, beta, C, ldc);
}

// float: pack W as the first operand of the column-major call (see gemm_blas).
template <>
StepWeight<float>::StepWeight(Op op, int64_t M, int64_t N, int64_t K, const float* w, int64_t ldw, int64_t uses)
    : op_(op), M_(M), N_(N), K_(K), ldw_(ldw), w_(w) {
  const DnnlOps& dnnl = dnnl_ops();
  if (dnnl.linear && uses >= kDnnlUses && worth_dnnl(M, N, K) && at::globalContext().userEnabledMkldnn()) {
    const Tensor wt = at::from_blob(const_cast<float*>(w), {op == Op::N ? K : N, op == Op::N ? N : K}, {ldw, 1},
                                    at::kFloat);
    try {
      dnnl_ = dnnl.reorder->call((op == Op::N ? wt.t() : wt).contiguous(), M);   // (N, K)
      return;
    } catch (const std::exception&) {
      dnnl_ = Tensor();
    }
  }
  if (uses < kPackUses || !can_pack() || !worth_packing(M, N, K)) return;
  const char id = 'A', trans = op == Op::N ? 'N' : 'T';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ld = static_cast<int>(ldw);
  const float one = 1;
  const size_t bytes = sgemm_pack_get_size_(&id, &m, &n, &k);
  packed_ = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
  sgemm_pack_(&id, &trans, &m, &n, &k, &one, w, &ld, packed_.data_ptr<float>());
}

template <>
void StepWeight<float>::mul(const float* A, int64_t lda, float beta, float* C, int64_t ldc, int64_t rows) const {
  const int64_t M = rows < 0 ? M_ : rows;
  if (M == 0) return;
  if (dnnl_.defined()) {
    const Tensor a = at::from_blob(const_cast<float*>(A), {M, K_}, {lda, 1}, at::kFloat);
    const Tensor y = dnnl_ops().linear->call(a.contiguous(), dnnl_, c10::nullopt, "none",
                                             c10::List<c10::optional<at::Scalar>>(), c10::nullopt);
    const float* yp = y.data_ptr<float>();                    // (M, N)
    for (int64_t i = 0; i < M; ++i) {
      float* __restrict c = C + i * ldc;
      const float* __restrict r = yp + i * N_;
      if (beta == 0.0f)
        std::memcpy(c, r, N_ * sizeof(float));
      else
        for (int64_t j = 0; j < N_; ++j) c[j] = beta * c[j] + r[j];
    }
    return;
  }
  if (!packed_.defined() || M != M_) {                        // W was packed for M_ rows
    gemm(Op::N, op_, M, N_, K_, A, lda, w_, ldw_, beta, C, ldc);
    return;
  }
  const char ta = 'P', tb = 'N';
  const int m = static_cast<int>(N_), n = static_cast<int>(M_), k = static_cast<int>(K_);
  const int la = static_cast<int>(ldw_), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  sgemm_compute_(&ta, &tb, &m, &n, &k, packed_.data_ptr<float>(), &la, A, &lb, &beta, C, &lc);
}

template class StepWeight<float>;
template class StepWeight<double>;

}  // namespace rnnkit
