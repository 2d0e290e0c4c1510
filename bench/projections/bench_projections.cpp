// bench_projections: the module's projection GEMMs alone, on the packed weights and the driver
// MultiHeadAttention::forward uses, for the grid cases (bench/cases.hpp). bench_attention times
// whole calls through the public API; this one includes the library's internal headers to
// time the part of an `mha` call that is not the attention core.
//
//   bench_projections [--isa=A,B] [--threads=1,2] [Google Benchmark flags]
//
// Per case, two GEMMs y = x W^T + b with W [out, in] packed once, as the module packs it:
//   proj/<isa>/<case>/in/...   the input projections: self-attention one GEMM of N Lq rows
//                              against [Wq; Wk; Wv] (out = 3E); cross-attention Q (N Lq rows,
//                              out = E) then K and V together (N Lk rows, out = 2E)
//   proj/<isa>/<case>/out/...  the output projection: N Lq rows, out = E
// FLOPs: 2 rows in out per GEMM. GFLOPS and frac_peak use the FMA peak loop of the same ISA
// (bench_attention's), measured at start-up. Every case is checked first against a double
// product on sampled rows (rel_err, Frobenius); a relative error above 1e-5 skips it with an
// error.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "aligned_buffer.hpp"
#include "cases.hpp"
#include "console.hpp"
#include "driver/linear.hpp"
#include "isa/registry.hpp"
#include "kernels/gemm/pack.hpp"
#include "machine.hpp"
#include "random_floats.hpp"
#include "simdattn/simdattn.hpp"

namespace {

using bench::random_floats;
using simdattn::Isa;
using Clock = std::chrono::steady_clock;

constexpr double kCheckRelTol = 1e-5;

// One GEMM y = x W^T + b of the module: `rows` rows of `in` floats, `out` outputs.
struct Gemm {
  std::size_t rows, in, out;
  std::vector<float> x, w, b, y;
  simdattn::detail::AlignedBuffer packed;

  Gemm(std::size_t rows_, std::size_t in_, std::size_t out_)
      : rows(rows_),
        in(in_),
        out(out_),
        x(random_floats(rows_ * in_, 1)),
        w(random_floats(out_ * in_, 2)),
        b(random_floats(out_, 3)),
        y(rows_ * out_, 0.0f),
        packed(simdattn::kernels::packed_weight_floats(out_, in_)) {
    for (float& v : w) v /= std::sqrt(static_cast<float>(in_));  // nn.Linear's scale
    simdattn::kernels::pack_weight(w.data(), out, in, in, packed.data());
  }
  void run(const simdattn::kernels::KernelTable& table, int threads) {
    simdattn::detail::run_linear(table, x.data(), rows, {in, out, packed.data()}, b.data(),
                                 y.data(), out, threads);
  }
  double flops() const { return 2.0 * rows * in * out; }
  // Relative error of y against a double product on up to 16 rows spread over [0, rows).
  double check() const {
    double d2 = 0, r2 = 0;
    const std::size_t step = std::max<std::size_t>(1, rows / 16);
    for (std::size_t r = 0; r < rows; r += step) {
      for (std::size_t o = 0; o < out; ++o) {
        double want = b[o];
        for (std::size_t k = 0; k < in; ++k) want += double(x[r * in + k]) * w[o * in + k];
        const double diff = y[r * out + o] - want;
        d2 += diff * diff;
        r2 += want * want;
      }
    }
    return std::sqrt(d2 / std::max(r2, 1e-300));
  }
};

std::map<std::pair<Isa, int>, double>& peaks() {
  static std::map<std::pair<Isa, int>, double> p;
  return p;
}

double peak(Isa isa, int threads) {
  auto it = peaks().find({isa, threads});
  if (it == peaks().end()) {
    const double gflops = bench::measure_peak_gflops(bench::peak_loop(isa), threads);
    it = peaks().emplace(std::make_pair(isa, threads), gflops).first;
  }
  return it->second;
}

std::string shape_name(const bench::Shape& s, const char* part, int threads, Isa isa) {
  std::ostringstream n;
  n << "proj/" << simdattn::isa_name(isa) << '/' << s.name << '/' << part << "/N:" << s.n
    << "/Lq:" << s.lq << "/Lk:" << s.lk << "/E:" << s.e << "/threads:" << threads;
  return n.str();
}

// The GEMMs of one part of a case's forward: "in" (one or two GEMMs) or "out".
std::vector<Gemm> gemms_of(const bench::Shape& s, bool input) {
  const std::size_t q_rows = s.n * s.lq, kv_rows = s.n * s.lk;
  std::vector<Gemm> g;
  if (!input) {
    g.emplace_back(q_rows, s.e, s.e);
  } else if (s.lq == s.lk) {
    g.emplace_back(q_rows, s.e, 3 * s.e);
  } else {
    g.emplace_back(q_rows, s.e, s.e);
    g.emplace_back(kv_rows, s.e, 2 * s.e);
  }
  return g;
}

void add(const bench::Shape& s, bool input, int threads, Isa isa) {
  const char* part = input ? "in" : "out";
  const std::string name = shape_name(s, part, threads, isa);
  benchmark::RegisterBenchmark(
      name.c_str(),
      [=](benchmark::State& state) {
        const simdattn::kernels::KernelTable* table = simdattn::kernels::table_for(isa);
        std::vector<Gemm> g = gemms_of(s, input);
        double flops = 0, rel_err = 0;
        for (Gemm& one : g) {
          one.run(*table, threads);  // also the warm-up
          flops += one.flops();
          rel_err = std::max(rel_err, one.check());
        }
        if (!(rel_err <= kCheckRelTol)) {
          const std::string message = "differs from a double product: " + std::to_string(rel_err);
          std::fprintf(stderr, "ERROR %s: %s\n", name.c_str(), message.c_str());
          state.SkipWithError(message.c_str());
          return;
        }
        const auto t0 = Clock::now();
        for (auto _ : state) {
          for (Gemm& one : g) one.run(*table, threads);
          benchmark::ClobberMemory();
        }
        const double seconds = std::chrono::duration<double>(Clock::now() - t0).count() /
                               static_cast<double>(state.iterations());
        const double gflops = flops / seconds * 1e-9;
        state.counters["GFLOPS"] = gflops;
        state.counters["frac_peak"] = gflops / peak(isa, threads);
        state.counters["rel_err"] = rel_err;
      })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> parts;
  std::stringstream in(list);
  for (std::string p; std::getline(in, p, ',');) parts.push_back(p);
  return parts;
}

constexpr char kUsage[] =
    "bench_projections: the module's projection GEMMs alone (y = x W^T + b, W packed once), for\n"
    "the grid cases: proj/<isa>/<case>/in/... (the input projections) and .../out/... (the\n"
    "output projection), each checked against a double product first.\n"
    "\n"
    "  --isa=A,B      the ISAs to time (default: every one this machine runs but naive)\n"
    "  --threads=1,2  thread counts (default 1,2)\n"
    "\n"
    "Google Benchmark's own flags follow.\n\n";

// Takes --isa= and --threads= out of argv; throws std::invalid_argument on a bad value.
std::pair<std::vector<Isa>, std::vector<int>> parse(int& argc, char** argv) {
  std::vector<Isa> isas;
  for (Isa isa : simdattn::available_isas()) {
    if (isa != Isa::naive) isas.push_back(isa);
  }
  std::vector<int> threads = {1, 2};
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--isa=", 0) == 0) {
      isas.clear();
      for (const std::string& name : split(arg.substr(6))) {
        const auto isa = simdattn::isa_from_name(name);
        if (!isa || *isa == Isa::naive || simdattn::kernels::table_for(*isa) == nullptr) {
          throw std::invalid_argument("--isa: '" + name + "' is not an ISA this machine runs");
        }
        isas.push_back(*isa);
      }
      if (isas.empty()) throw std::invalid_argument("--isa: empty list");
    } else if (arg.rfind("--threads=", 0) == 0) {
      threads.clear();
      for (const std::string& t : split(arg.substr(10))) {
        const int n = std::atoi(t.c_str());
        if (n < 1 || std::to_string(n) != t) {
          throw std::invalid_argument("--threads: '" + t + "' is not a positive integer");
        }
        threads.push_back(n);
      }
      if (threads.empty()) throw std::invalid_argument("--threads: empty list");
    } else if (arg == "--help" || arg == "-h") {
      static char kHelp[] = "--help";  // Google Benchmark knows no -h
      std::fputs(kUsage, stdout);
      argv[kept++] = kHelp;
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  return {isas, threads};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Isa> isas;
  std::vector<int> threads;
  try {
    std::tie(isas, threads) = parse(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "bench_projections: %s\n", e.what());
    return 2;
  }
  const bench::ConsoleFlags console_flags = bench::console_flags(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  for (const bench::Shape& s : bench::kGrid) {
    if (s.causal) continue;  // the same GEMMs as s2048
    for (Isa isa : isas) {
      for (int t : threads) {
        add(s, /*input=*/true, t, isa);
        add(s, /*input=*/false, t, isa);
      }
    }
  }
  // With JSON or CSV on stdout, the CPU line goes to stderr beside Google Benchmark's context.
  std::fprintf(console_flags.console ? stdout : stderr, "bench_projections: %s\n",
               bench::cpu_model().c_str());
  if (console_flags.console) {
    bench::BuildNoteReporter<benchmark::ConsoleReporter> reporter(console_flags.options);
    benchmark::RunSpecifiedBenchmarks(&reporter);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
