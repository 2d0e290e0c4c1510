// What the machine can do, measured at start-up: the FP32 peak of an ISA's vectors (the
// denominator of every "fraction of peak"), the memory read bandwidth (the denominator of the
// decode case's fraction), and the CPU's name for the report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "simdattn/simdattn.hpp"

namespace bench {

// A loop of independent FMA chains (multiply-add on SSE2) on the widest vectors of `isa`.
struct PeakLoop {
  simdattn::Isa isa;  // whose vectors the loop uses
  double flops_per_iteration;
  float (*run)(std::int64_t iters);
};

// The loop for the active ISA; the naive path has no vectors of its own, so it is measured
// against the best ISA this machine runs (the hardware's peak).
PeakLoop peak_loop(simdattn::Isa active);

// GFLOP/s of `threads` threads each running the loop (at most one per processor): the best of
// several trials, each thread timed in its own CPU time.
double measure_peak_gflops(const PeakLoop& loop, int threads);

// GB/s of `threads` threads together (at most one per processor) summing the floats of one
// 256 MiB buffer, each thread its own contiguous share: memory read bandwidth, since 256 MiB is
// 8x the largest L3 of the machines this runs on. Wall time of the parallel region, best of 5
// passes. The buffer is on transparent huge pages (huge_buffer.hpp), like the stream set's K/V
// arrays and a KvCache's pool: its own, or `buffer` (kReadBufferFloats floats, already touched)
// to measure again and again without allocating.
constexpr std::size_t kReadBufferFloats = (std::size_t{256} << 20) / sizeof(float);
double measure_read_gbps(int threads, const float* buffer = nullptr);

// /proc/cpuinfo's "model name", or "unknown".
std::string cpu_model();

}  // namespace bench
