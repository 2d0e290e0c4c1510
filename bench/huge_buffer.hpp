// Float storage for the bandwidth-bound benchmarks: aligned to 2 MiB and backed by transparent
// huge pages where the kernel allows it (madvise), so that what they time is the memory, not
// page walks. With 4 KiB pages a decode step over E = 1024 rows pays a TLB miss per row (each
// row is a page of its own), nested page walks in a VM. The library allocates a KvCache's pool
// the same way; bench_attention uses the public API only, so it keeps this copy for the arrays
// it owns.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace bench {

class HugeBuffer {
 public:
  /// `floats` copies of `fill`.
  explicit HugeBuffer(std::size_t floats, float fill = 0.0f)
      : data_(allocate(floats)), floats_(floats) {
    std::fill(data(), data() + floats, fill);  // touched: no page faults timed
  }
  /// A copy of [src, src + floats), written once.
  HugeBuffer(const float* src, std::size_t floats) : data_(allocate(floats)), floats_(floats) {
    std::copy(src, src + floats, data());
  }
  float* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return floats_; }

 private:
  struct Free {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  static std::unique_ptr<float, Free> allocate(std::size_t floats) {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    const std::size_t bytes = (floats * sizeof(float) + kHuge - 1) / kHuge * kHuge;
    std::unique_ptr<float, Free> p(
        static_cast<float*>(std::aligned_alloc(kHuge, bytes == 0 ? kHuge : bytes)));
    if (!p) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
    madvise(p.get(), bytes, MADV_HUGEPAGE);
#endif
    return p;
  }
  std::unique_ptr<float, Free> data_;
  std::size_t floats_;
};

}  // namespace bench
