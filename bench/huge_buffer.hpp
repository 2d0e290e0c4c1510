// Float storage for the bandwidth-bound benchmarks: aligned to 2 MiB and backed by transparent
// huge pages where the kernel allows it (madvise), so that what they time is the memory, not
// page walks. With 4 KiB pages a decode step over E = 1024 rows pays a TLB miss per row (each
// row is a page of its own), nested page walks in a VM.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace bench {

class HugeBuffer {
 public:
  explicit HugeBuffer(std::size_t floats, float fill = 0.0f) : floats_(floats) {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    const std::size_t bytes = (floats * sizeof(float) + kHuge - 1) / kHuge * kHuge;
    data_.reset(static_cast<float*>(std::aligned_alloc(kHuge, bytes == 0 ? kHuge : bytes)));
    if (!data_) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
    madvise(data_.get(), bytes, MADV_HUGEPAGE);
#endif
    for (std::size_t i = 0; i < floats; ++i) data_.get()[i] = fill;  // touched: no faults timed
  }
  float* data() const noexcept {
    return data_.get();
  }
  std::size_t size() const noexcept {
    return floats_;
  }

 private:
  struct Free {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  std::size_t floats_;
};

}  // namespace bench
