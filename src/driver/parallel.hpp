// The one way the drivers run tasks on threads.
#pragma once

#include <cstddef>
#include <new>

#include "fp_env.hpp"

namespace simdattn::detail {

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

}  // namespace simdattn::detail
