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

// Bytes that this machine's caches cannot hold: 8x its L3 (every instance, as the kernel lists
// them under /sys/devices/system/cpu), at least 256 MiB and at most an eighth of the physical
// memory. 256 MiB where the kernel lists no caches (some VMs). A server's L3 can be larger than
// 256 MiB (300 MiB on a 16-core Xeon VM seen), and there a fixed 256 MiB stays partly in cache.
std::size_t cold_bytes();

// GB/s of `threads` threads together (at most one per processor) summing the floats of one
// buffer of cold_bytes(), each thread its own contiguous share: memory read bandwidth. Wall time
// of the parallel region, best of 5 passes. The buffer is on transparent huge pages
// (huge_buffer.hpp), like the stream set's K/V arrays and a KvCache's pool: its own, or `buffer`
// (read_buffer_floats() floats, already touched) to measure again and again without allocating.
std::size_t read_buffer_floats();
double measure_read_gbps(int threads, const float* buffer = nullptr);

// /proc/cpuinfo's "model name", or "unknown".
std::string cpu_model();

}  // namespace bench
