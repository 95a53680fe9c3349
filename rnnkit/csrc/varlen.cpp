// RunOrder (varlen.h): the run order of a batch with lengths and the copies into and out of it.
#include "varlen.h"

#include "pool.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <numeric>

namespace rnnkit {

RunOrder::RunOrder(const Tensor& lengths, int64_t T) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.scalar_type() == at::kLong && lengths.device().is_cpu(),
                    "rnnkit.infer: lengths: expected a 1-D int64 CPU tensor, got ", lengths.dim(), "-D ",
                    lengths.scalar_type(), " on ", lengths.device());
  const Tensor l = lengths.contiguous();
  const int64_t B = l.size(0);
  const int64_t* p = l.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(p[b] >= 1 && p[b] <= T, "rnnkit.infer: lengths: expected every length in [1, ", T,
                      "], got ", p[b], " at row ", b);
  order.resize(B);
  std::iota(order.begin(), order.end(), int64_t(0));
  sorted = std::is_sorted(p, p + B, [](int64_t a, int64_t b) { return a > b; });
  if (!sorted) std::stable_sort(order.begin(), order.end(), [p](int64_t a, int64_t b) { return p[a] > p[b]; });
  len.resize(B);
  for (int64_t i = 0; i < B; ++i) len[i] = p[order[i]];
  full = B == 0 || len[B - 1] == T;
}

RunOrder::RunOrder(int64_t B, int64_t T) : order(B), len(B, T) { std::iota(order.begin(), order.end(), int64_t(0)); }

int64_t RunOrder::valid_steps() const { return std::accumulate(len.begin(), len.end(), int64_t(0)); }

Tensor RunOrder::mask(int64_t T) const {
  const int64_t B = static_cast<int64_t>(len.size());
  Tensor m = at::empty({T, B}, at::kBool);
  bool* p = m.data_ptr<bool>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < B; ++i) p[t * B + i] = t < len[i];
  return m;
}

namespace {

// dst row (n, b) = src row (n, idx[b]) of F elements for every n < N and b < B, rows of src at any
// strides (features contiguous); keep(n, b) false: zeros instead.
template <typename Keep>
void copy_rows(const Tensor& src, const std::vector<int64_t>& idx, Tensor& dst, const Keep& keep) {
  const int64_t N = dst.size(0), B = dst.size(1), F = dst.size(2), es = dst.element_size();
  const int64_t s0 = src.stride(0) * es, s1 = src.stride(1) * es, row = F * es;
  const char* in = static_cast<const char*>(src.data_ptr());
  char* out = static_cast<char*>(dst.data_ptr());
  at::parallel_for(0, N * B, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(row, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) {
                       const int64_t n = r / B, b = r % B;
                       if (keep(n, b))
                         std::memcpy(out + r * row, in + n * s0 + idx[b] * s1, row);
                       else
                         std::memset(out + r * row, 0, row);
                     }
                   });
}

}  // namespace

Tensor RunOrder::gather(const Tensor& t) const {
  const Tensor src = t.stride(2) == 1 ? t : t.contiguous();
  Tensor out = pooled_empty(t.sizes(), t.options());
  copy_rows(src, order, out, [](int64_t, int64_t) { return true; });
  return out;
}

Tensor RunOrder::to_user(const Tensor& hs, bool zeros) const {
  const int64_t B = static_cast<int64_t>(order.size());
  std::vector<int64_t> back(B), user_len(B);
  for (int64_t i = 0; i < B; ++i) back[order[i]] = i, user_len[order[i]] = len[i];
  Tensor out = pooled_empty(hs.sizes(), hs.options());
  copy_rows(hs, back, out, [&](int64_t t, int64_t b) { return !zeros || t < user_len[b]; });
  return out;
}

}  // namespace rnnkit
