// The drivers between the API layer and the kernels: they pick the path, split the work into
// tasks, run them on OpenMP threads and give each thread its scratch. Inputs are validated.
#pragma once

#include <cstddef>
#include <new>

#include "fp_env.hpp"
#include "mask_rule.hpp"
#include "reference/reference.hpp"
#include "simdattn/types.hpp"

namespace simdattn::detail {

/// Attention core on resolved views (strides filled in).
void run_attention(const reference::Heads<const float>& q, const reference::Heads<const float>& k,
                   const reference::Heads<const float>& v, const reference::Heads<float>& out,
                   const MaskRule& rule, float scale, MaskedRows policy, Path path, int threads);

/// Weights packed for the optimized GEMM (see kernels/gemm/pack.hpp): panels of kPanel output
/// features, each [in][kPanel], zero-padded past `out`.
struct PackedWeight {
  std::size_t in = 0;
  std::size_t out = 0;
  float* data = nullptr;  // owned by the module's storage
};

/// y[r, :] = x[r, :] W^T + bias for r < rows, on the optimized kernels of the active ISA.
/// Returns false (and computes nothing) when no optimized kernel is active.
bool run_linear(const float* x, std::size_t rows, const PackedWeight& w, const float* bias,
                float* y, std::size_t ldy, int threads);

/// Runs task(t) for t in [0, tasks) on `threads` OpenMP threads (the caller's thread alone when
/// threads <= 1), each with denormals flushed. Dynamic scheduling balances uneven tasks (causal
/// masks); static keeps a task on the same thread call after call (its data stays in that
/// core's L2). The only exception a task may throw is std::bad_alloc from scratch; it is
/// rethrown here, after the parallel region, never from inside it.
template <class Task>
void parallel_tasks(std::size_t tasks, int threads, bool dynamic, const Task& task) {
  if (threads <= 1 || tasks <= 1) {
    FlushDenormals ftz;
    for (std::size_t t = 0; t < tasks; ++t) task(t);
    return;
  }
  bool failed = false;
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    auto guarded = [&](std::size_t t) {
      try {
        task(t);
      } catch (...) {
#pragma omp atomic write
        failed = true;
      }
    };
    if (dynamic) {
#pragma omp for schedule(dynamic, 1)
      for (std::size_t t = 0; t < tasks; ++t) guarded(t);
    } else {
#pragma omp for schedule(static)
      for (std::size_t t = 0; t < tasks; ++t) guarded(t);
    }
  }
  if (failed) throw std::bad_alloc();
}

/// 64-byte aligned scratch that belongs to the calling thread and only grows, so a steady
/// state of calls faults no fresh pages. Valid until the same thread asks for more.
float* thread_scratch(int slot, std::size_t floats);

}  // namespace simdattn::detail
