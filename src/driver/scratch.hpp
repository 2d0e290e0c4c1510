// Per-thread scratch memory of the drivers.
#pragma once

#include <cstddef>

namespace simdattn::detail {

/// Independent scratch buffers of a thread; a call may hold several at once.
enum class ScratchSlot {
  kernel,       ///< a kernel task's working set (attention_scratch_floats, decode_scratch_floats)
  gemm,         ///< a projection GEMM task's copy of A's rows (kGemmPackFloats)
  activations,  ///< the module's projected Q, K, V and concatenated heads
  partials,     ///< decode slices' partial results, merged after the parallel region
  lse,          ///< rows' log-sum-exp when only the attention weights need them
  bias_transposed,    ///< a task's rows of a bias, keys down
  weights,            ///< a weights task's packed keys and score rows
  gathered,           ///< a cached sequence's keys and values as float, for the tile path
  backward,           ///< the attention backward's per-row statistics and dQ partial sums
  gradients,          ///< the module backward's activation gradients and transposed copies
  sequence_parallel,  ///< simdattn_mpi's slices in flight, running merges and exchange buffers
  kCount
};

/// True for the slots sized by a call's tokens: they grow with the prompts and batches a process
/// sees, each time onto fresh pages, so they lie on transparent huge pages where they reach
/// 2 MiB (aligned_buffer.hpp has the measurements). A switch without a default: a new slot does
/// not compile (-Wswitch) until it is placed here.
constexpr bool on_huge_pages(ScratchSlot slot) {
  switch (slot) {
    case ScratchSlot::activations:
    case ScratchSlot::gathered:
    case ScratchSlot::backward:
    case ScratchSlot::gradients:
    case ScratchSlot::sequence_parallel:
      return true;
    case ScratchSlot::kernel:
    case ScratchSlot::gemm:
    case ScratchSlot::partials:
    case ScratchSlot::lse:
    case ScratchSlot::bias_transposed:
    case ScratchSlot::weights:
    case ScratchSlot::kCount:
      return false;
  }
  return false;
}

/// 64-byte aligned scratch that belongs to the calling thread and only grows, so a steady
/// state of calls faults no fresh pages (a first touch costs 6-15 us per 4 KiB page here);
/// on huge pages where on_huge_pages(slot) says so.
/// Valid until the same thread asks the same slot for more. Throws std::bad_alloc.
float* thread_scratch(ScratchSlot slot, std::size_t floats);

}  // namespace simdattn::detail
