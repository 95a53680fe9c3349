// RunOrder (varlen.h): the run order of a batch with lengths and the copies into and out of it.
#include "varlen.h"

#include "pool.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

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

RunOrder RunOrder::packed(const Tensor& batch_sizes, const char* who) {
  TORCH_CHECK_VALUE(batch_sizes.dim() == 1 && batch_sizes.size(0) >= 1 && batch_sizes.scalar_type() == at::kLong &&
                        batch_sizes.device().is_cpu(),
                    who, ": batch_sizes: expected a non-empty 1-D int64 CPU tensor, got ", batch_sizes.dim(),
                    "-D ", batch_sizes.scalar_type(), " of shape ", batch_sizes.sizes());
  const Tensor bs = batch_sizes.contiguous();
  const int64_t T = bs.size(0), *p = bs.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(p[0] >= 1, who, ": batch_sizes: expected at least one row at step 0, got ", p[0]);
  for (int64_t t = 1; t < T; ++t)
    TORCH_CHECK_VALUE(p[t] >= 1 && p[t] <= p[t - 1], who, ": batch_sizes: expected non-increasing sizes "
                      "of at least 1 (a PackedSequence's), got ", p[t], " after ", p[t - 1], " at step ", t);
  RunOrder run(p[0], T);
  run.steps.assign(p, p + T);
  for (int64_t i = 0; i < p[0]; ++i)
    run.len[i] = std::upper_bound(p, p + T, i, [](int64_t row, int64_t size) { return row >= size; }) - p;
  run.full = p[T - 1] == p[0];
  return run;
}

RunOrder RunOrder::given(const Tensor& order, const Tensor& len, int64_t T) {
  const int64_t B = order.dim() == 1 ? order.size(0) : -1;
  for (const Tensor* t : {&order, &len})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == B && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "rnnkit rows: order and lengths: expected two (B,) int64 CPU tensors, got shapes ",
                      order.sizes(), " and ", len.sizes());
  const Tensor o = order.contiguous(), l = len.contiguous();
  const int64_t *po = o.data_ptr<int64_t>(), *pl = l.data_ptr<int64_t>();
  RunOrder run(B, T);
  std::vector<bool> seen(B, false);
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK_VALUE(po[i] >= 0 && po[i] < B && !seen[po[i]], "rnnkit rows: order: expected a permutation of 0 .. ",
                      B - 1, ", got ", po[i], " at ", i);
    TORCH_CHECK_VALUE(pl[i] >= 1 && pl[i] <= T && (i == 0 || pl[i] <= pl[i - 1]), "rnnkit rows: lengths: expected "
                      "non-increasing lengths in [1, ", T, "], got ", pl[i], " at ", i);
    seen[po[i]] = true, run.order[i] = po[i], run.len[i] = pl[i];
    run.sorted = run.sorted && po[i] == i;
  }
  run.full = B == 0 || pl[B - 1] == T;
  return run;
}

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

Tensor RunOrder::gather(const Tensor& t, bool zeros) const {
  const Tensor src = t.stride(2) == 1 ? t : t.contiguous();
  Tensor out = pooled_empty(t.sizes(), t.options());
  copy_rows(src, order, out, [&](int64_t n, int64_t i) { return !zeros || n < len[i]; });
  return out;
}

Tensor RunOrder::to_user(const Tensor& hs, bool zeros) const {
  const int64_t B = static_cast<int64_t>(order.size());
  std::vector<int64_t> back(B), user_len(B);
  for (int64_t i = 0; i < B; ++i) back[order[i]] = i, user_len[order[i]] = len[i];
  const Tensor src = hs.stride(2) == 1 ? hs : hs.contiguous();
  Tensor out = pooled_empty(hs.sizes(), hs.options());
  copy_rows(src, back, out, [&](int64_t t, int64_t b) { return !zeros || t < user_len[b]; });
  return out;
}

namespace {

// f(t, packed row offset of step t) for every step of a packed batch, steps split over threads.
template <typename F>
void each_step(const std::vector<int64_t>& steps, int64_t row_bytes, const F& f) {
  std::vector<int64_t> first(steps.size() + 1, 0);
  for (size_t t = 0; t < steps.size(); ++t) first[t + 1] = first[t] + steps[t];
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, row_bytes * steps[0]));
  at::parallel_for(0, static_cast<int64_t>(steps.size()), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) f(t, first[t]);
  });
}

}  // namespace

Tensor RunOrder::unpack(const Tensor& data) const {
  const int64_t T = static_cast<int64_t>(steps.size()), B = static_cast<int64_t>(order.size());
  TORCH_CHECK_VALUE(data.dim() == 2 && data.size(0) == valid_steps(), "rnnkit unpack: expected (", valid_steps(),
                    ", F) data for these batch sizes, got ", data.sizes());
  const Tensor src = data.contiguous();
  Tensor out = pooled_empty({T, B, src.size(1)}, src.options());
  const int64_t row = src.size(1) * src.element_size();
  const char* in = static_cast<const char*>(src.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  each_step(steps, row, [&](int64_t t, int64_t at) {
    std::memcpy(o + t * B * row, in + at * row, steps[t] * row);
    std::memset(o + (t * B + steps[t]) * row, 0, (B - steps[t]) * row);
  });
  return out;
}

Tensor RunOrder::pack(const Tensor& t) const {
  const int64_t B = static_cast<int64_t>(order.size());
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == static_cast<int64_t>(steps.size()) && t.size(1) == B,
                    "rnnkit pack: expected a (", steps.size(), ", ", B, ", S) tensor for these batch sizes, got ",
                    t.sizes());
  const Tensor hs = t.contiguous();
  Tensor out = pooled_empty({valid_steps(), hs.size(2)}, hs.options());
  const int64_t row = hs.size(2) * hs.element_size();
  const char* in = static_cast<const char*>(hs.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  each_step(steps, row, [&](int64_t t, int64_t at) { std::memcpy(o + at * row, in + t * B * row, steps[t] * row); });
  return out;
}

}  // namespace rnnkit
