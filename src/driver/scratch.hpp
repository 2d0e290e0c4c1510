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

/// 64-byte aligned scratch that belongs to the calling thread and only grows, so a steady
/// state of calls faults no fresh pages (a first touch costs 6-15 us per 4 KiB page here). The
/// slots sized by a call's tokens (activations, gathered, backward, gradients, sequence_parallel)
/// lie on transparent huge pages where they reach 2 MiB, so that growing them is not a fault per
/// 4 KiB.
/// Valid until the same thread asks the same slot for more. Throws std::bad_alloc.
float* thread_scratch(ScratchSlot slot, std::size_t floats);

}  // namespace simdattn::detail
