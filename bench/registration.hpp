// Registration of timed benchmarks: the run's configuration, the machine's start-up
// measurements, the skip rule, and the timed body shared by every (op, path, shape, threads).
// A benchmark set (bench/sets/) calls add() or add_shape() for each benchmark it wants, or
// registers its own body with Google Benchmark and reports with set_rate_counters().
#pragma once

#include <benchmark/benchmark.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cases.hpp"
#include "machine.hpp"
#include "simdattn/simdattn.hpp"

namespace bench {

struct Config {
  std::vector<std::string> sets = {"default"};
  std::string isa;  // --isa: empty (the library's choice), one name, a comma list, or "all"
  std::vector<int> threads = {1, 2};
  double naive_limit_s = 2.0;
  double optimized_limit_s = 30.0;
  bool all_aggregates = false;  // --console=all
};

// Rates of one path measured at start-up on small shapes, one thread: the attention core's, and
// the projections' (the rest of a module call). They only decide what to skip.
struct Rates {
  double attention = 0;   // FLOP/s
  double projection = 0;  // FLOP/s
};

struct Machine {
  simdattn::Isa isa = simdattn::Isa::naive;  // the run's first (or only) ISA
  PeakLoop loop{};                           // its peak loop
  // The optimized path's ISAs in this run, `isa` first. With several (--isa=all or a list) the
  // optimized benchmarks' names end in /isa:<name>.
  std::vector<simdattn::Isa> isas;
  bool isa_in_names = false;
  std::map<std::pair<simdattn::Isa, int>, double> peak_gflops;  // by the loop's ISA, threads
  std::map<int, double> read_gbps;                              // by thread count
  std::map<simdattn::Isa, Rates> rates;  // by ISA; Isa::naive holds the naive path's
};

Config& config();
Machine& machine();

// The ISAs of --isa=all (every one this machine runs, best first, but naive: the naive path is
// already there) or of a list of names. An unknown name, or one this machine cannot run, throws
// std::invalid_argument naming it.
std::vector<simdattn::Isa> run_isas(bool all, const std::vector<std::string>& names);
// "avx512, avx2, sse2" with sep ", ".
std::string isa_list(const std::vector<simdattn::Isa>& isas, const char* sep);

// The FP32 peak at `threads` threads of the loop of `isa` (the run's first ISA by default; the
// best this machine runs for Isa::naive), measured on first use.
double peak_gflops(int threads);
double peak_gflops(int threads, simdattn::Isa isa);
// The memory read bandwidth at `threads` threads, GB/s, measured on first use.
double read_gbps(int threads);
// One thread's rates of `path` (on `isa`, for the optimized path), measured now (tens of
// milliseconds).
Rates calibrate(simdattn::Path path, std::optional<simdattn::Isa> isa = std::nullopt);

// Benchmark `op` on `path` at `threads` threads (the optimized path once per ISA of the run):
// checked against the naive path, then timed; or, when the start-up rates say a call would
// exceed --naive_limit_s / --optimized_limit_s, registered as a skipped benchmark that says so.
void add(Op op, simdattn::Path path, const Shape& s, int threads);
// Both ops of a shape, naive once and optimized at every thread count of the configuration, so
// consecutive benchmarks share one workload.
void add_shape(const Shape& s);

// The counters every timed benchmark reports: GFLOPS, frac_peak (of the peak at `threads` of
// `isa`'s loop, the run's first ISA by default) and omp_threads.
void set_rate_counters(benchmark::State& state, double flops_per_call, double seconds_per_call,
                       int threads, std::optional<simdattn::Isa> isa = std::nullopt);
// A benchmark whose output check failed: printed once on stderr, and the run exits with 1.
void report_failed_check(const std::string& name, const std::string& message);
int failed_checks();

}  // namespace bench
