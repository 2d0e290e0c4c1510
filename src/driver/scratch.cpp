#include "driver/scratch.hpp"

#include "aligned_buffer.hpp"

namespace simdattn::detail {

float* thread_scratch(ScratchSlot slot, std::size_t floats) {
  thread_local AlignedBuffer buffers[static_cast<int>(ScratchSlot::kCount)];
  AlignedBuffer& b = buffers[static_cast<int>(slot)];
  if (b.size() < floats) {
    b = AlignedBuffer(
        floats, on_huge_pages(slot) ? AlignedBuffer::Pages::huge : AlignedBuffer::Pages::ordinary);
  }
  return b.data();
}

}  // namespace simdattn::detail
