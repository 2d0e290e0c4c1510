#include "registration.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <stdexcept>

#include "workload.hpp"

namespace bench {
namespace {

using simdattn::Isa;
using simdattn::Options;
using simdattn::Path;
using OptIsa = std::optional<Isa>;
using Clock = std::chrono::steady_clock;

int g_failed_checks = 0;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double seconds_per_call(Workload& w, const Options& o) {
  w.run(o);  // first touch of the output and of the library's scratch
  const auto t0 = Clock::now();
  int calls = 0;
  do {
    w.run(o);
    ++calls;
  } while (seconds_since(t0) < 0.02);
  return seconds_since(t0) / calls;
}

// The ISA whose rates and peak a benchmark uses: the naive path's are Isa::naive's.
Isa rates_key(Path path, OptIsa isa) {
  return path == Path::naive ? Isa::naive : isa.value_or(machine().isa);
}

double estimated_seconds(Op op, Path path, const Shape& s, int threads, OptIsa isa) {
  const Rates& r = machine().rates.at(rates_key(path, isa));
  double t = sdpa_flops(s) / r.attention;
  if (op == Op::mha) t += projection_flops(s) / r.projection;
  return path == Path::optimized ? t / threads : t;
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
}

std::string skip_reason(Op op, Path path, const Shape& s, int threads, OptIsa isa) {
  const double limit = path == Path::naive ? config().naive_limit_s : config().optimized_limit_s;
  const double estimate = estimated_seconds(op, path, s, threads, isa);
  if (estimate <= limit) return "";
  char buf[160];
  std::snprintf(buf, sizeof buf,
                "skipped: about %.*f s per call, over the %g s limit (--%s_limit_s)",
                estimate < 10 ? 1 : 0, estimate, limit, path_name(path));
  return buf;
}

// benchmark_name(), with /isa:<name> for the optimized path when the run has several ISAs.
std::string full_name(Op op, Path path, const Shape& s, int threads, OptIsa isa) {
  std::string name = benchmark_name(op, path, s, threads);
  if (machine().isa_in_names && path == Path::optimized && isa) {
    name += std::string("/isa:") + simdattn::isa_name(*isa);
  }
  return name;
}

void bench(benchmark::State& state, Op op, Path path, const Shape& s, int threads, OptIsa isa) {
  const long rss_before_kib = peak_rss_kib();
  Workload& w = workload(op, s);
  CheckResult& check = w.check(path, threads, isa);
  if (!check.ok) {
    if (!check.reported) {  // once, however many repetitions ask again
      report_failed_check(full_name(op, path, s, threads, isa), check.message);
      check.reported = true;
    }
    state.SkipWithError(check.message.c_str());
    return;
  }
  const Options o = w.options(path, threads, isa);
  // The second warm-up (the check was the first): the optimized path's first calls grow its
  // scratch. The naive path keeps nothing between calls.
  if (!check.warmed && path == Path::optimized) w.run(o);
  check.warmed = true;

  const auto t0 = Clock::now();
  for (auto _ : state) {
    w.run(o);
    benchmark::ClobberMemory();
  }
  const double seconds = seconds_since(t0) / static_cast<double>(state.iterations());

  set_rate_counters(state, flops(op, s), seconds, threads, path == Path::naive ? OptIsa() : isa);
  state.counters["rel_err"] = check.rel_err;
  if (op == Op::sdpa && s.lq == 1) {
    const double bytes_per_second = kv_bytes(s) / seconds;
    state.counters["bytes_per_second"] = bytes_per_second;
    state.counters["frac_read_bw"] = bytes_per_second * 1e-9 / read_gbps(threads);
  }
  if (s.name == kMemoryShape.name) {
    const double mib = 1.0 / 1024;
    const double io_mib = static_cast<double>(w.bytes()) / (1 << 20);
    state.counters["peak_rss_MiB"] = peak_rss_kib() * mib;
    state.counters["rss_before_MiB"] = rss_before_kib * mib;
    state.counters["io_MiB"] = io_mib;
    state.counters["rss_ratio"] = peak_rss_kib() * mib / io_mib;
  }
  state.SetLabel(path == Path::naive ? "reference" : simdattn::isa_name(rates_key(path, isa)));
}

void add_one(Op op, Path path, const Shape& s, int threads, OptIsa isa) {
  const std::string name = full_name(op, path, s, threads, isa);
  const std::string skip = skip_reason(op, path, s, threads, isa);
  if (!skip.empty()) {  // reported once, as an error row in the output and the JSON
    benchmark::RegisterBenchmark(name.c_str(),
                                 [skip](benchmark::State& st) { st.SkipWithError(skip.c_str()); })
        ->Iterations(1)
        ->Repetitions(1);
    return;
  }
  auto* b = benchmark::RegisterBenchmark(
      name.c_str(),
      [op, path, s, threads, isa](benchmark::State& st) { bench(st, op, path, s, threads, isa); });
  b->UseRealTime();
  b->Unit(flops(op, s) < 1e8 ? benchmark::kMicrosecond : benchmark::kMillisecond);
  if (s.name == kMemoryShape.name) b->Iterations(1)->Repetitions(1);
}

}  // namespace

Config& config() {
  static Config c;
  return c;
}

Machine& machine() {
  static Machine m;
  return m;
}

std::vector<Isa> run_isas(bool all, const std::vector<std::string>& names) {
  const std::vector<Isa> available = simdattn::available_isas();
  std::vector<Isa> isas;
  if (all) {
    for (Isa isa : available) {
      if (isa != Isa::naive) isas.push_back(isa);
    }
    return isas;
  }
  for (const std::string& name : names) {
    const std::optional<Isa> isa = simdattn::isa_from_name(name);
    if (!isa) {
      throw std::invalid_argument("--isa: unknown ISA '" + name + "' (" +
                                  isa_list(available, ", ") + ")");
    }
    if (std::find(available.begin(), available.end(), *isa) == available.end()) {
      throw std::invalid_argument("--isa: " + name + " cannot run on this machine (available: " +
                                  isa_list(available, ", ") + ")");
    }
    if (std::find(isas.begin(), isas.end(), *isa) == isas.end()) isas.push_back(*isa);
  }
  return isas;
}

std::string isa_list(const std::vector<Isa>& isas, const char* sep) {
  std::string text;
  for (Isa isa : isas) text += (text.empty() ? "" : sep) + std::string(simdattn::isa_name(isa));
  return text;
}

double peak_gflops(int threads) {
  return peak_gflops(threads, machine().isa);
}

double peak_gflops(int threads, Isa isa) {
  const PeakLoop loop = peak_loop(isa);
  auto& peaks = machine().peak_gflops;
  auto it = peaks.find({loop.isa, threads});
  if (it == peaks.end()) {
    it = peaks.emplace(std::make_pair(loop.isa, threads), measure_peak_gflops(loop, threads)).first;
  }
  return it->second;
}

double read_gbps(int threads) {
  auto& bw = machine().read_gbps;
  auto it = bw.find(threads);
  if (it == bw.end()) it = bw.emplace(threads, measure_read_gbps(threads)).first;
  return it->second;
}

Rates calibrate(Path path, OptIsa isa) {
  const Shape s{"calibration", 1, 128, 128, 256, 4, false};
  Rates r;
  {
    Workload w(Op::sdpa, s);
    r.attention = sdpa_flops(s) / seconds_per_call(w, w.options(path, 1, isa));
  }
  Workload w(Op::mha, s);
  const double projection_s =
      seconds_per_call(w, w.options(path, 1, isa)) - sdpa_flops(s) / r.attention;
  r.projection = projection_flops(s) / std::max(projection_s, 1e-9);
  return r;
}

void add(Op op, Path path, const Shape& s, int threads) {
  if (path == Path::naive) {
    add_one(op, path, s, threads, std::nullopt);
    return;
  }
  for (Isa isa : machine().isas) add_one(op, path, s, threads, isa);
}

void add_shape(const Shape& s) {
  for (Op op : {Op::sdpa, Op::mha}) {
    add(op, Path::naive, s, 1);
    for (int t : config().threads) add(op, Path::optimized, s, t);
  }
}

void set_rate_counters(benchmark::State& state, double flops_per_call, double seconds_per_call,
                       int threads, OptIsa isa) {
  const double gflops = flops_per_call / seconds_per_call * 1e-9;
  state.counters["GFLOPS"] = gflops;
  state.counters["frac_peak"] = gflops / peak_gflops(threads, isa.value_or(machine().isa));
  state.counters["omp_threads"] = threads;
}

void report_failed_check(const std::string& name, const std::string& message) {
  std::fprintf(stderr, "ERROR %s: %s\n", name.c_str(), message.c_str());
  ++g_failed_checks;
}

int failed_checks() {
  return g_failed_checks;
}

}  // namespace bench
