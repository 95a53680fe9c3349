// The buffer cache of pool.h.
#include "pool.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <utility>

namespace rnnkit {
namespace {

constexpr size_t kAlign = 64;       // what c10's CPU allocator gives: the AVX-512 loops' loads
constexpr size_t kPage = 4096;      // sizes rounded to pages, so near shapes share blocks

struct Block {
  void* data;
  size_t bytes;
};

int64_t limit_from_env() {
  const char* v = std::getenv("RNNKIT_CPU_POOL_MB");
  if (v == nullptr || *v == '\0') return int64_t(256) << 20;
  try {
    return std::max<int64_t>(0, std::stoll(v)) << 20;
  } catch (...) {
    return int64_t(256) << 20;       // an unreadable value: the default, never an error at a kernel call
  }
}

class Pool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = (std::max<size_t>(n, 1) + kPage - 1) / kPage * kPage;
    Block* b = take(bytes);
    if (b == nullptr) {
      void* data = std::aligned_alloc(kAlign, bytes);
      TORCH_CHECK(data != nullptr, "rnnkit: out of memory allocating ", bytes, " bytes");
      b = new Block{data, bytes};
    }
    return {b->data, b, &Pool::give_back, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t limit() const { return limit_; }
  int64_t cached() {
    std::lock_guard<std::mutex> lock(m_);
    return static_cast<int64_t>(cached_);
  }
  int64_t release() {
    std::deque<Block*> all;
    {
      std::lock_guard<std::mutex> lock(m_);
      all.swap(free_);
      cached_ = 0;
    }
    int64_t n = 0;
    for (Block* b : all) n += static_cast<int64_t>(b->bytes), drop(b);
    return n;
  }

  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: tensors may die after static destructors run
    return *pool;
  }

 private:
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(m_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {   // the newest first: warmest in cache
      if ((*it)->bytes == bytes) {
        Block* b = *it;
        free_.erase(std::next(it).base());
        cached_ -= bytes;
        return b;
      }
    }
    return nullptr;
  }

  static void give_back(void* ctx) { get().put(static_cast<Block*>(ctx)); }

  void put(Block* b) {
    std::deque<Block*> out;
    {
      std::lock_guard<std::mutex> lock(m_);
      if (static_cast<int64_t>(b->bytes) > limit_) {
        out.push_back(b);
      } else {
        free_.push_back(b);
        cached_ += b->bytes;
        while (static_cast<int64_t>(cached_) > limit_) {          // the oldest blocks go first
          cached_ -= free_.front()->bytes;
          out.push_back(free_.front());
          free_.pop_front();
        }
      }
    }
    for (Block* d : out) drop(d);        // freed outside the lock
  }

  static void drop(Block* b) {
    std::free(b->data);
    delete b;
  }

  std::mutex m_;
  std::deque<Block*> free_;             // oldest first
  size_t cached_ = 0;
  const int64_t limit_ = limit_from_env();
};

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t n = 1;
  for (const int64_t s : sizes) n *= s;
  const int64_t bytes = n * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  Pool& pool = Pool::get();
  if (bytes < kPoolMinBytes || pool.limit() == 0 || !options.device().is_cpu()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), c10::nullopt);
}

int64_t pool_limit() { return Pool::get().limit(); }
int64_t pool_cached() { return Pool::get().cached(); }
int64_t pool_release() { return Pool::get().release(); }

}  // namespace rnnkit
