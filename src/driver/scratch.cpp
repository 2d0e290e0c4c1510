#include "driver/scratch.hpp"

#include "aligned_buffer.hpp"

namespace simdattn::detail {

float* thread_scratch(ScratchSlot slot, std::size_t floats) {
  thread_local AlignedBuffer buffers[static_cast<int>(ScratchSlot::kCount)];
  AlignedBuffer& b = buffers[static_cast<int>(slot)];
  if (b.size() < floats) {
    // The slots sized by a call's tokens grow with the prompts and batches a process sees,
    // each time onto fresh pages (aligned_buffer.hpp).
    const bool huge = slot == ScratchSlot::activations || slot == ScratchSlot::gathered ||
                      slot == ScratchSlot::backward || slot == ScratchSlot::gradients ||
                      slot == ScratchSlot::sequence_parallel;
    b = AlignedBuffer(floats, huge ? AlignedBuffer::Pages::huge : AlignedBuffer::Pages::ordinary);
  }
  return b.data();
}

}  // namespace simdattn::detail
