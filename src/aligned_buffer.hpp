// Owned 64-byte aligned float storage (a cache line; the widest vector load), on ordinary pages
// or, on request, transparent huge pages.
// A first touch of a fresh 4 KiB page costs 6-15 us on the Zen 5 VM, so scratch that grows with
// the tokens of a call (the module's activations, a cached sequence's gathered keys and values,
// the backward passes' buffers) asks for huge pages. A 2048-token prompt prefilled in 8 chunks of
// 256 (E = 1024, H = 16, 16 kv heads, 2 threads), the first in its process, took 207-223 ms (20k
// page faults) against 87-92 for the next prompts; with the activations and the gathered keys and
// values on huge pages, the latter grown by powers of two, 95-96 ms (500 faults) against 89-90.
// A module's training steps (forward and backward, E = 768, H = 12, N = 4, 2 threads) on batches
// of 64, 128, 256, 384 and 512 tokens, each a first, 3 runs: 126-149, 145-172, 228-265, 283-333
// and 373-452 ms (12-28k faults each) -> 54-66, 51-64, 91-106, 155-166 and 207-221 ms with the
// backward buffers on huge pages too, against 19-23, 34-44, 69-77, 113-118 and 161-175 ms for
// the same steps repeated. simdattn_mpi's slices and exchange buffers likewise: a first causal
// call at L = 16384 (E = 1024, H = 16, 2 ranks of 1 thread, 3 runs) took 2337-2527 ms (ring) and
// 2576-2996 (Ulysses), then 2034-2230 and 1795-2057, against 1686-1790 and 1647-1822 repeated.
// Other buffers stay on ordinary pages. Measured on the same VM (cold, medians, rounds in turn): a
// module's packed weights on huge pages left its decode step unchanged (E = 1024, no history:
// ordinary pages 493-515 us and huge 504-531 at 1 thread, 281-390 and 257-382 at 2: the weights
// stream at the read bandwidth either way); every buffer of 2 MiB or more on them (the threads'
// scratch too) made the KvCache decode step slower at 1 thread (16 kv heads, Lk = 4096: 812-998
// -> 945-1085 us). That step with the token-sized slots above on huge pages, 3 rounds in turn:
// 768-931 us, against 769-1038 with them off and 816-923 before the change, within the noise.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace simdattn::detail {

class AlignedBuffer {
 public:
  /// Huge: storage of 2 MiB or more starts on a 2 MiB boundary and asks for transparent huge
  /// pages (advice only: where the kernel has them off, nothing changes).
  enum class Pages { ordinary, huge };

  AlignedBuffer() = default;
  /// Uninitialised storage for `floats` floats. Throws std::bad_alloc.
  explicit AlignedBuffer(std::size_t floats, Pages pages = Pages::ordinary) : floats_(floats) {
    constexpr std::size_t kHugePage = std::size_t{2} << 20;
    if (floats > (std::numeric_limits<std::size_t>::max() - kHugePage) / sizeof(float)) {
      throw std::bad_alloc();  // the rounding below would wrap around to a tiny buffer
    }
    const std::size_t bytes = floats * sizeof(float);
    const std::size_t align = pages == Pages::huge && bytes >= kHugePage ? kHugePage : 64;
    const std::size_t allocated = bytes == 0 ? 64 : (bytes + align - 1) / align * align;
    data_.reset(static_cast<float*>(std::aligned_alloc(align, allocated)));
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePage) madvise(data_.get(), allocated, MADV_HUGEPAGE);
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
