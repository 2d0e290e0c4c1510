// bench_attention: how much faster simdattn's optimized path is than its naive one on this
// machine, and how close it comes to the machine's FP32 peak. bench/README.md describes the
// cases, names, FLOP formulas, timing, output check and counters; --help lists the flags.
//
//   bench_attention [--set=default|grid|sweep|full|memory|stream|train|train_memory|variants]
//                   [--isa=NAME|all] [--threads=1,2] [--naive_limit_s=2]
//                   [--optimized_limit_s=30] [--console=medians|all]
//                   [Google Benchmark flags: --benchmark_filter=REGEX,
//                    --benchmark_out=out/bench.json, --benchmark_repetitions=N, ...]
//
// Files: cases.hpp (cases, names, FLOP counts), machine.hpp (peak measurement), workload.hpp
// (inputs and the output check), registration.hpp (skip rule, timed body, counters), sets.hpp
// (the table of sets; one file per set under sets/), summary.hpp (console output and the
// end-of-run table), console.hpp (the console reporter's options and its note on Google
// Benchmark's DEBUG warning), and this file (flags and main).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "machine.hpp"
#include "registration.hpp"
#include "sets.hpp"
#include "simdattn/simdattn.hpp"
#include "summary.hpp"
#include "workload.hpp"

namespace {

using bench::config;
using bench::machine;
using simdattn::Isa;
using simdattn::Path;

std::string set_names(const char* sep) {
  std::string names;
  for (const bench::BenchSet& set : bench::bench_sets()) {
    names += (names.empty() ? "" : sep) + std::string(set.name);
  }
  return names;
}

std::string usage() {
  std::string sets;
  for (const bench::BenchSet& set : bench::bench_sets()) {
    char line[160];
    std::snprintf(line, sizeof line, "                          %-8s %s\n", set.name, set.help);
    sets += line;
  }
  return "bench_attention: simdattn's naive and optimized paths, timed side by side.\n"
         "\n"
         "  --set=LIST            " +
         set_names(" | ") + " (comma-separated)\n" + sets +
         "  --isa=NAME            force the optimized path's ISA: " +
         bench::isa_list(simdattn::available_isas(), " | ") +
         "\n"
         "                        (sets SIMDATTN_ISA before the library's first call)\n"
         "  --isa=all, --isa=A,B  every ISA this machine runs (or those named), side by side:\n"
         "                        each optimized benchmark once per ISA, its name ending in\n"
         "                        /isa:<name>\n"
         "  --threads=LIST        thread counts of the optimized path (default 1,2)\n"
         "  --naive_limit_s=S     skip naive benchmarks estimated above S seconds per call (2)\n"
         "  --optimized_limit_s=S the same for the optimized path (30)\n"
         "  --console=medians|all each benchmark's median (default), or Google Benchmark's\n"
         "                        mean, median, stddev and cv; a summary table follows either\n"
         "\n"
         "Names: <op>/<path>/<case>/N:n/Lq:lq/Lk:lk/E:e/H:h/threads:t, e.g.\n"
         "  --benchmark_filter='^sdpa/optimized/(s2048|bert)/'   "
         "--benchmark_filter='/E:512/H:8/'\n"
         "Defaults added unless given: --benchmark_repetitions=5, --benchmark_min_time of the\n"
         "  sets (the largest when several run),\n"
         "  --benchmark_display_aggregates_only=true (the JSON of --benchmark_out keeps every "
         "run).\n"
         "Full sweep: bench_attention --set=sweep --benchmark_out=out/sweep.json (tens of "
         "minutes).\n"
         "Google Benchmark's own flags follow.\n\n";
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) out.push_back(item);
  return out;
}

double parse_seconds(const std::string& flag, const std::string& value) {
  std::size_t used = 0;
  double v = -1;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
  }
  if (used != value.size() || !(v > 0)) {
    throw std::invalid_argument(flag + " needs a positive number of seconds, got '" + value + "'");
  }
  return v;
}

// Takes our flags out of argv; Google Benchmark gets the rest.
std::vector<char*> parse_flags(int argc, char** argv, bench::Config& cfg, bool& help) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const std::string prefix = std::string(flag) + "=";
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("--set")) {
      cfg.sets = split(v, ',');
      for (const std::string& set : cfg.sets) {
        if (bench::find_set(set) == nullptr) {
          throw std::invalid_argument("--set: unknown set '" + set + "' (" + set_names(", ") + ")");
        }
      }
    } else if (const char* v = value("--console")) {
      const std::string mode = v;
      if (mode != "medians" && mode != "all") {
        throw std::invalid_argument("--console: '" + mode + "' is neither medians nor all");
      }
      cfg.all_aggregates = mode == "all";
    } else if (const char* v = value("--isa")) {
      cfg.isa = v;
    } else if (const char* v = value("--threads")) {
      cfg.threads.clear();
      for (const std::string& t : split(v, ',')) {
        const int n = std::atoi(t.c_str());
        if (n < 1 || std::to_string(n) != t) {
          throw std::invalid_argument("--threads: '" + t + "' is not a positive integer");
        }
        cfg.threads.push_back(n);
      }
      if (cfg.threads.empty()) throw std::invalid_argument("--threads: empty list");
    } else if (const char* v = value("--naive_limit_s")) {
      cfg.naive_limit_s = parse_seconds("--naive_limit_s", v);
    } else if (const char* v = value("--optimized_limit_s")) {
      cfg.optimized_limit_s = parse_seconds("--optimized_limit_s", v);
    } else if (arg == "--help" || arg == "-h") {
      static char kHelp[] = "--help";  // Google Benchmark knows no -h
      help = true;
      rest.push_back(kHelp);
    } else {
      rest.push_back(argv[i]);
    }
  }
  return rest;
}

std::string format_gflops(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// --benchmark_min_time=<the largest min_time_s of the chosen sets>
std::string min_time_flag(const std::vector<std::string>& sets) {
  double seconds = 0;
  for (const std::string& name : sets)
    seconds = std::max(seconds, bench::find_set(name)->min_time_s);
  char buf[64];
  std::snprintf(buf, sizeof buf, "--benchmark_min_time=%g", seconds);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  double load_at_start = -1;  // before this process adds its own
  getloadavg(&load_at_start, 1);
  bool help = false;
  const bench::ConsoleFlags console_flags = bench::console_flags(argc, argv);
  std::vector<char*> args;
  try {
    args = parse_flags(argc, argv, config(), help);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "bench_attention: %s\n%s", e.what(), usage().c_str());
    return 2;
  }
  if (help) std::fputs(usage().c_str(), stdout);
  // Our defaults first: a flag the user gives later on the command line wins.
  static char kRepetitions[] = "--benchmark_repetitions=5";
  static std::string min_time = min_time_flag(config().sets);
  static char kAggregates[] = "--benchmark_display_aggregates_only=true";
  args.insert(args.begin() + 1, {kRepetitions, min_time.data(), kAggregates});
  int gb_argc = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&gb_argc, args.data());  // exits after printing its help for --help
  if (benchmark::ReportUnrecognizedArguments(gb_argc, args.data())) return 2;

  // One name: the process's ISA, through SIMDATTN_ISA before the library's first call (dispatch
  // reads it once). Several, or "all": each optimized benchmark names its own (Options::isa).
  const std::vector<std::string> isa_names =
      config().isa == "all" ? std::vector<std::string>{} : split(config().isa, ',');
  if (isa_names.size() == 1) setenv("SIMDATTN_ISA", isa_names[0].c_str(), 1);
  bench::Machine& m = machine();
  try {
    m.isa = simdattn::active_isa();
    m.isas = {m.isa};
    if (config().isa == "all" || isa_names.size() > 1) {
      m.isas = bench::run_isas(config().isa == "all", isa_names);
      m.isa = m.isas.front();
      m.isa_in_names = true;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 2;
  }
  // The start-up lines go where Google Benchmark puts its context: with the console output, or
  // to stderr when stdout carries JSON or CSV, so that stdout stays one parsable document.
  std::FILE* info = console_flags.console ? stdout : stderr;
  std::string available;
  for (Isa isa : simdattn::available_isas()) {
    available += (available.empty() ? "" : ", ") + std::string(simdattn::isa_name(isa));
  }
  if (m.isa_in_names) {
    std::fprintf(info, "simdattn %s, ISAs side by side: %s (available: %s)\n", simdattn::kVersion,
                 bench::isa_list(m.isas, ", ").c_str(), available.c_str());
  } else {
    std::fprintf(info, "simdattn %s, active ISA: %s (available: %s)\n", simdattn::kVersion,
                 simdattn::isa_name(m.isa), available.c_str());
  }
  std::fprintf(info, "CPU: %s\n", bench::cpu_model().c_str());
  std::fflush(info);

  m.loop = bench::peak_loop(m.isa);
  std::vector<Isa> loops;  // each loop once: naive's is the best ISA's
  for (Isa isa : m.isas) {
    const Isa loop = bench::peak_loop(isa).isa;
    if (std::find(loops.begin(), loops.end(), loop) == loops.end()) loops.push_back(loop);
  }
  for (Isa loop : loops) {
    std::string peaks;
    for (int t : config().threads) {
      peaks += (peaks.empty() ? "" : ", ") + std::to_string(t) + " thread" + (t > 1 ? "s " : " ") +
               format_gflops(bench::peak_gflops(t, loop)) + " GFLOP/s";
    }
    std::fprintf(info, "FP32 peak (%s loop): %s\n", simdattn::isa_name(loop), peaks.c_str());
  }
  std::string bandwidths;
  for (int t : config().threads) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%d thread%s %.1f GB/s", bandwidths.empty() ? "" : ", ", t,
                  t > 1 ? "s" : "", bench::read_gbps(t));
    bandwidths += buf;
  }
  std::fprintf(info, "Memory read bandwidth (sum over %zu MiB): %s\n", bench::cold_bytes() >> 20,
               bandwidths.c_str());
  m.rates[Isa::naive] = bench::calibrate(Path::naive);
  std::string rates = "naive " + format_gflops(m.rates[Isa::naive].attention * 1e-9) +
                      " GFLOP/s attention, " +
                      format_gflops(m.rates[Isa::naive].projection * 1e-9) + " projections";
  for (Isa isa : m.isas) {
    // With SIMDATTN_ISA=naive the optimized path is the reference: its rates are naive's.
    if (isa != Isa::naive) m.rates[isa] = bench::calibrate(Path::optimized, isa);
    rates += std::string("; optimized") + (m.isa_in_names ? std::string(" ") + isa_name(isa) : "") +
             " " + format_gflops(m.rates[isa].attention * 1e-9) + ", " +
             format_gflops(m.rates[isa].projection * 1e-9);
  }
  std::fprintf(info, "Start-up rates, 1 thread: %s\n", rates.c_str());
  std::fflush(info);

  benchmark::AddCustomContext("simdattn_version", simdattn::kVersion);
  benchmark::AddCustomContext("simdattn_isa", simdattn::isa_name(m.isa));
  if (m.isa_in_names) benchmark::AddCustomContext("simdattn_isas", bench::isa_list(m.isas, ","));
  benchmark::AddCustomContext("cpu_model", bench::cpu_model());
  benchmark::AddCustomContext("peak_isa", simdattn::isa_name(m.loop.isa));
  for (const auto& [key, gflops] : m.peak_gflops) {
    const std::string t = std::to_string(key.second) + "t";
    if (key.first == m.loop.isa) {
      benchmark::AddCustomContext("peak_gflops_" + t, format_gflops(gflops));
    }
    if (m.isa_in_names) {
      benchmark::AddCustomContext(
          "peak_gflops_" + std::string(simdattn::isa_name(key.first)) + "_" + t,
          format_gflops(gflops));
    }
  }
  for (const auto& [t, gbps] : m.read_gbps) {
    benchmark::AddCustomContext("read_gbps_" + std::to_string(t) + "t", format_gflops(gbps));
  }
  benchmark::AddCustomContext("read_buffer_mib", std::to_string(bench::cold_bytes() >> 20));
  std::string sets;
  for (const std::string& set : config().sets) {
    sets += (sets.empty() ? "" : ",") + set;
    bench::find_set(set)->add();
  }
  benchmark::AddCustomContext("bench_set", sets);

  if (console_flags.console) {
    bench::SummaryReporter reporter(console_flags.options, config().all_aggregates);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    reporter.print_summary(stdout);
    const long processors = sysconf(_SC_NPROCESSORS_ONLN);
    if (load_at_start >= 0.5 * static_cast<double>(processors)) {
      std::printf(
          "\nNote: the load average was %.1f on %ld processors when this run started: other work\n"
          "was running, so these times (the multi-thread ones most) are slower than this machine "
          "can do.\n",
          load_at_start, processors);
    }
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  bench::release_workload();
  if (bench::failed_checks() > 0) {
    std::fprintf(stderr,
                 "bench_attention: %d benchmark(s) FAILED the output check against the naive "
                 "path; their times are not reported.\n",
                 bench::failed_checks());
    return 1;
  }
  return 0;
}
