// The benchmark sets that --set names, one line each.
//
// Adding a set: a file bench/sets/<id>.cpp that defines `void register_set_<id>()` (it calls
// add() or add_shape() from registration.hpp for each benchmark, or registers its own body with
// Google Benchmark), and one line X(id, min_time_s, "help") in the table below: --set=<id>, the
// --benchmark_min_time its measurements need (a run of several sets takes the largest), and its
// line in --help. Benchmark names follow <op>/<path>/<case>/.../threads:<t> (bench/README.md),
// which tools/report.py and the end-of-run summary read.
#pragma once

#include <string>
#include <vector>

// clang-format off
#define BENCH_SETS(X)                                                                       \
  X(default, 0.05, "the grid cases and 10 sweep points, 0.05 s per measurement (quick)")    \
  X(grid,    0.2,  "the nine grid cases, both ops, both paths, every thread count")         \
  X(sweep,   0.2,  "E x H x L, both ops and paths: 480 benchmarks, tens of minutes")        \
  X(full,    0.2,  "grid and sweep")                                                        \
  X(memory,  0.2,  "peak resident memory of sdpa at L = 16384 (run it in its own process)") \
  X(stream,  0.2,  "decoding with a KvCache: core and module steps at Lk = 4096, generation") \
  X(train,   0.2,  "training: the core's backward, forward + backward at s2048 and bert")     \
  X(train_memory, 0.2, "peak resident memory of forward + backward at L = 16384 (own process)") \
  X(variants, 0.2, "bias, ALiBi, softcap, sinks, padding, window, weights, layouts vs plain")
// clang-format on

namespace bench {

#define BENCH_DECLARE_SET(id, min_time_s, help) void register_set_##id();
BENCH_SETS(BENCH_DECLARE_SET)
#undef BENCH_DECLARE_SET

struct BenchSet {
  const char* name;
  double min_time_s;
  const char* help;
  void (*add)();
};

// The table above, in its order.
const std::vector<BenchSet>& bench_sets();
// nullptr when no set has that name.
const BenchSet* find_set(const std::string& name);

}  // namespace bench
