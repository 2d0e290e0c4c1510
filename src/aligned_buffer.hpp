// Owned aligned float storage: 64 bytes (a cache line; the widest vector load), or huge pages.
#pragma once

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstddef>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>

namespace simdattn::detail {

class AlignedBuffer {
 public:
  /// Storage read as a stream call after call (packed weights): from 2 MiB up it starts on a
  /// huge page and asks for transparent huge pages, as the KvCache's pool does (a sequential
  /// read measured 3-10% faster on them in a VM, where each TLB miss is a nested page walk).
  /// Only advice: where the kernel has them off, nothing changes.
  enum class Pages { normal, huge_if_large };

  AlignedBuffer() = default;
  /// Uninitialised storage for `floats` floats. Throws std::bad_alloc.
  explicit AlignedBuffer(std::size_t floats, Pages pages = Pages::normal) : floats_(floats) {
    constexpr std::size_t kHugePage = std::size_t{2} << 20;
    if (floats > (std::numeric_limits<std::size_t>::max() - kHugePage) / sizeof(float)) {
      throw std::bad_alloc();  // the rounding below would wrap around to a tiny buffer
    }
    const bool huge = pages == Pages::huge_if_large && floats * sizeof(float) >= kHugePage;
    const std::size_t align = huge ? kHugePage : 64;
    const std::size_t bytes = (floats * sizeof(float) + align - 1) / align * align;
    data_.reset(static_cast<float*>(std::aligned_alloc(align, bytes == 0 ? align : bytes)));
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(data_.get(), bytes, MADV_HUGEPAGE);
#endif
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
  std::size_t floats_ = 0;
};

}  // namespace simdattn::detail
