// Owned 64-byte aligned float storage (a cache line; the widest vector load), on ordinary pages.
// Unlike the KvCache's pool, these buffers do not ask for transparent huge pages. Measured on
// the Zen 5 VM (cold, medians, rounds in turn): a module's packed weights on huge pages left its
// decode step unchanged (E = 1024, no history: ordinary pages 493-515 us and huge 504-531 at
// 1 thread, 281-390 and 257-382 at 2: the weights stream at the read bandwidth either way); every
// buffer of 2 MiB or more on them (the threads' scratch too) made the KvCache decode step slower at
// 1 thread (16 kv heads, Lk = 4096: 812-998 -> 945-1085 us).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>

namespace simdattn::detail {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  /// Uninitialised storage for `floats` floats. Throws std::bad_alloc.
  explicit AlignedBuffer(std::size_t floats) : floats_(floats) {
    if (floats > (std::numeric_limits<std::size_t>::max() - 63) / sizeof(float)) {
      throw std::bad_alloc();  // the rounding below would wrap around to a tiny buffer
    }
    const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    data_.reset(static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes)));
    if (!data_) throw std::bad_alloc();
  }
  float* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return floats_; }

 private:
  struct Free {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  std::size_t floats_ = 0;
};

}  // namespace simdattn::detail
