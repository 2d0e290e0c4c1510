// bench_attention: how much faster simdattn's optimized path is than its naive one on this
// machine, and how close it comes to the machine's FP32 peak (issue 4).
//
//   bench_attention [--set=default|grid|sweep|full|memory] [--isa=avx512|avx2|sse2|naive]
//                   [--threads=1,2] [--naive_limit_s=2] [--optimized_limit_s=30]
//                   [Google Benchmark flags: --benchmark_filter=REGEX,
//                    --benchmark_out=out/bench.json, --benchmark_repetitions=N, ...]
//
// Benchmark names (one per op, path, shape and thread count):
//
//   <op>/<path>/<case>/N:<n>/Lq:<lq>/Lk:<lk>/E:<e>/H:<h>/threads:<t>/real_time
//
//   op     mha: MultiHeadAttention::forward (self-attention: one tensor passed three times,
//               except cross and decode, whose keys and values are one [N, Lk, E] tensor);
//          sdpa: scaled_dot_product_attention on the [N, L, H, D] heads of three [N, L, E]
//               tensors (queries, keys, values drawn separately).
//   path   naive: the scalar reference. It ignores Options::threads, so it runs at threads:1
//               only and the report compares every optimized thread count against it.
//          optimized: the kernels of the active ISA (--isa or SIMDATTN_ISA forces one).
//   case   a GRID.md case (seed s128 s512 s2048 bert s4096 causal cross decode), "sweep" for
//          the E x H x L sweep, "memory" for the peak-memory run.
//
// --benchmark_filter is a regex on these names, e.g. '^sdpa/' (op), '/naive/' (path), '/bert/'
// (case), '/E:512/', '/H:8/', '/Lq:2048/', '/threads:2/'. The ISA is per process: --isa.
//
// Sets (--set, comma-separated; filters then pick within them):
//   default  what a plain run shows in under 3 minutes on a 2-core machine: the GRID cases
//            and 10 sweep points that with them vary L, E and H (see kDefaultSweep), each
//            measurement 0.05 s at least: a quick look. The other sets follow GRID.md's 0.2 s.
//   grid     the nine GRID.md cases, both ops, both paths, every thread count.
//   sweep    E in {128, 256, 512, 1024} x H in {1, 4, 8, 16} x L in {2, 128, 512, 2048, 4096},
//            both ops and paths (480 benchmarks; a long run: filter it, or expect tens of minutes).
//   full     grid and sweep.
//   memory   sdpa at N=1, L=16384, E=512, H=8, once, with the process's peak resident memory
//            (getrusage) against the bytes of inputs plus output. Run it in its own process:
//            the peak is process-wide.
//
// Counters (medians over --benchmark_repetitions, 5 unless given; GRID.md's two warm-ups are the
// check's call and one more):
//   GFLOPS       FLOPs per call / wall time per call / 1e9, with GRID.md's formulas:
//                  sdpa = 4 N Lq Lk E, halved when causal (the masked half need not be computed)
//                  mha  = sdpa + 4 N Lq E^2 (Q and output projections) + 4 N Lk E^2 (K and V)
//   frac_peak    GFLOPS / the FP32 peak measured at start-up with the same thread count by an
//                FMA loop on the active ISA's vectors (the best ISA's when the ISA is naive).
//   omp_threads  Options::threads of the call.
//   rel_err      relative Frobenius error of the output rows checked before timing (below).
//   bytes_per_second  decode (Lq = 1) sdpa only: K and V bytes, read once, per second.
//   The label names the ISA that ran ("reference" for the naive path).
//
// Before timing, each benchmark runs once and compares its output with the naive path on
// the same inputs: every row when Lq <= 32, otherwise the first and last kCheckRows query rows
// of every batch (the edges of any tiling). A mismatch or a NaN fails that benchmark with an
// error, the run exits with status 1, and no time is reported for it. Benchmarks whose
// estimated time per call exceeds --naive_limit_s (naive) or --optimized_limit_s (optimized)
// are skipped and reported as such; the estimate comes from each path's rate measured at
// start-up on a small shape.
//
// Inputs are standard normal from fixed seeds (Tensor::randn), the module's weights from
// MultiHeadAttention(E, H, kWeightSeed): every run and every path sees the same numbers.
#include <benchmark/benchmark.h>
#include <omp.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "simdattn/simdattn.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

using simdattn::Causal;
using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Isa;
using simdattn::Mask;
using simdattn::MultiHeadAttention;
using simdattn::Options;
using simdattn::Path;
using simdattn::Tensor;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kQuerySeed = 1;
constexpr std::uint64_t kKeySeed = 2;
constexpr std::uint64_t kValueSeed = 3;
constexpr std::uint64_t kWeightSeed = 7;

// Rows per check block. 16 rows at each end cover a partial first and last tile of any
// query blocking up to 16 rows and the edge of larger ones, at a cost of 32 rows' work.
constexpr std::size_t kCheckRows = 16;
// Loose on purpose: the tests hold the kernels to 1e-5 / 1e-4 against a double oracle; here the
// check only refuses to time a broken kernel, against a float reference with its own rounding.
constexpr double kCheckRelTol = 1e-4;
constexpr double kCheckMaxTol = 1e-3;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// Shapes and FLOP counts

enum class Op { mha, sdpa };

const char* op_name(Op op) {
  return op == Op::mha ? "mha" : "sdpa";
}
const char* path_name(Path path) {
  return path == Path::naive ? "naive" : "optimized";
}

struct Shape {
  std::string name;  // GRID.md case, "sweep", "memory" or "calibration"
  std::size_t n, lq, lk, e, h;
  bool causal;

  bool operator==(const Shape& o) const {
    return name == o.name && n == o.n && lq == o.lq && lk == o.lk && e == o.e && h == o.h &&
           causal == o.causal;
  }
};

// ../shared/perf/GRID.md, in its order.
const Shape kGrid[] = {
    {"seed", 1, 2, 2, 256, 8, false},        {"s128", 1, 128, 128, 256, 8, false},
    {"s512", 1, 512, 512, 512, 8, false},    {"s2048", 1, 2048, 2048, 512, 8, false},
    {"bert", 4, 512, 512, 768, 12, false},   {"s4096", 1, 4096, 4096, 1024, 16, false},
    {"causal", 1, 2048, 2048, 512, 8, true}, {"cross", 2, 256, 1024, 512, 8, false},
    {"decode", 1, 1, 4096, 1024, 16, false},
};
const std::size_t kSweepE[] = {128, 256, 512, 1024};
const std::size_t kSweepH[] = {1, 4, 8, 16};
const std::size_t kSweepL[] = {2, 128, 512, 2048, 4096};

// The default run's sweep points beyond the GRID cases. With GRID's N = 1 self-attention cases
// (seed, s128, s512, s2048, s4096) they give L series for (E, H) = (256, 8), (512, 8) and
// (1024, 16), E from 128 to 1024 at L = 512, and H from 1 to 16 at E = 512, L = 512. Chosen to
// keep a plain run under 3 minutes on 2 cores: the naive path and the checks of large `mha`
// shapes (their K and V projections run naive) take half of it.
struct SweepPoint {
  std::size_t e, h, l;
};
const SweepPoint kDefaultSweep[] = {
    {256, 8, 512},   {512, 8, 2},   {512, 8, 128}, {512, 8, 4096}, {1024, 16, 128},
    {1024, 16, 512}, {128, 8, 512}, {512, 1, 512}, {512, 4, 512},  {512, 16, 512},
};

Shape sweep_shape(std::size_t e, std::size_t h, std::size_t l) {
  return {"sweep", 1, l, l, e, h, false};
}
const Shape kMemoryShape{"memory", 1, 16384, 16384, 512, 8, false};

double sdpa_flops(const Shape& s) {
  const double f = 4.0 * s.n * s.lq * s.lk * s.e;
  return s.causal ? f / 2 : f;
}
double projection_flops(const Shape& s) {
  const double e2 = static_cast<double>(s.e) * s.e;
  return 2.0 * s.n * s.lq * e2 * 2 + 2.0 * s.n * s.lk * e2 * 2;
}
double flops(Op op, const Shape& s) {
  return sdpa_flops(s) + (op == Op::mha ? projection_flops(s) : 0.0);
}
// Decode reads each K and V element once; that traffic, not arithmetic, bounds it.
double kv_bytes(const Shape& s) {
  return 2.0 * s.n * s.lk * s.e * sizeof(float);
}

std::string benchmark_name(Op op, Path path, const Shape& s, int threads) {
  std::ostringstream name;
  name << op_name(op) << '/' << path_name(path) << '/' << s.name << "/N:" << s.n << "/Lq:" << s.lq
       << "/Lk:" << s.lk << "/E:" << s.e << "/H:" << s.h << "/threads:" << threads;
  return name.str();
}

// ---------------------------------------------------------------------------------------------
// The FP32 peak: independent FMA chains on the widest vectors of an ISA. The benchmark is
// compiled for baseline x86-64, so each loop carries its own target attribute and runs only
// where dispatch says the ISA is usable.

// Read through volatile so that the compiler cannot fold the loops below (it did fold the SSE2
// one: x * a + b reaches a fixed point in float, and GCC saw it).
volatile float g_multiplier = 0.9999999f;
volatile float g_addend = 1e-7f;

template <std::size_t N>
float sum_of(const float (&lanes)[N]) {
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

#if defined(__x86_64__) || defined(__i386__)
// 24 chains: the FMA latency (4 cycles) times two FMA pipes needs at least 8 in flight; limits.md
// measured 20-24 for the full rate on this Zen 5. 32 zmm registers hold them.
constexpr int kAvx512Chains = 24;
__attribute__((target("avx512f"))) float fma_loop_avx512(std::int64_t iters) {
  __m512 acc[kAvx512Chains];
  for (int j = 0; j < kAvx512Chains; ++j) acc[j] = _mm512_set1_ps(1.0f + 1e-3f * j);
  const __m512 a = _mm512_set1_ps(g_multiplier), b = _mm512_set1_ps(g_addend);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // the chains must live in registers, not in the array
    for (int j = 0; j < kAvx512Chains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  // Stored and summed in scalar: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.
  float lanes[16];
  for (int j = 1; j < kAvx512Chains; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  _mm512_storeu_ps(lanes, acc[0]);
  return sum_of(lanes);
}

// 12 chains fill 16 ymm registers with the two constants (limits.md: 10-12 for the full rate).
constexpr int kVex256Chains = 12;
__attribute__((target("avx2,fma"))) float fma_loop_avx2(std::int64_t iters) {
  __m256 acc[kVex256Chains];
  for (int j = 0; j < kVex256Chains; ++j) acc[j] = _mm256_set1_ps(1.0f + 1e-3f * j);
  const __m256 a = _mm256_set1_ps(g_multiplier), b = _mm256_set1_ps(g_addend);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // the chains must live in registers, not in the array
    for (int j = 0; j < kVex256Chains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  float lanes[8];
  for (int j = 1; j < kVex256Chains; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  _mm256_storeu_ps(lanes, acc[0]);
  return sum_of(lanes);
}

// SSE2 has no FMA: a multiply and an add per element (2 FLOPs), 12 chains in 16 xmm registers.
constexpr int kSse2Chains = 12;
float mul_add_loop_sse2(std::int64_t iters) {
  __m128 acc[kSse2Chains];
  for (int j = 0; j < kSse2Chains; ++j) acc[j] = _mm_set1_ps(1.0f + 1e-3f * j);
  const __m128 a = _mm_set1_ps(g_multiplier), b = _mm_set1_ps(g_addend);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 32  // the chains must live in registers, not in the array
    for (int j = 0; j < kSse2Chains; ++j) acc[j] = _mm_add_ps(_mm_mul_ps(acc[j], a), b);
  }
  float lanes[4];
  for (int j = 1; j < kSse2Chains; ++j) acc[0] = _mm_add_ps(acc[0], acc[j]);
  _mm_storeu_ps(lanes, acc[0]);
  return sum_of(lanes);
}
#endif

struct PeakLoop {
  Isa isa;  // whose vectors the loop uses
  double flops_per_iteration;
  float (*run)(std::int64_t iters);
};

// The loop for the active ISA; the naive path has no vectors of its own, so it is measured
// against the best ISA this machine runs (the hardware's peak).
PeakLoop peak_loop(Isa active) {
  Isa isa = active;
  if (isa == Isa::naive) isa = simdattn::available_isas().front();
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::avx512:
      return {isa, kAvx512Chains * 16 * 2.0, fma_loop_avx512};
    case Isa::avx2:
      return {isa, kVex256Chains * 8 * 2.0, fma_loop_avx2};
    case Isa::sse2:
    case Isa::naive:
      break;
  }
  return {Isa::sse2, kSse2Chains * 4 * 2.0, mul_add_loop_sse2};
#else
  return {isa, 0.0, nullptr};
#endif
}

volatile float g_sink;  // keeps the peak loops' results alive

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// GFLOP/s of `threads` threads each running the loop. Each thread times its own loop in its own
// CPU time and the rates add up, so a thread that another process preempts on this shared
// machine does not count as slow: this is what the cores can do. For the same reason more
// threads than processors would add rates that no core delivers, so at most one per processor
// runs. The best of several 10+ ms trials is kept, since a peak is an upper bound.
double measure_peak_gflops(const PeakLoop& loop, int threads) {
  if (loop.run == nullptr) return 0.0;
  threads = std::min(threads, omp_get_num_procs());
  auto trial = [&](std::int64_t iters) {
    double flops_per_s = 0;
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : flops_per_s, sink)
    {
      const double t0 = thread_cpu_seconds();
      sink = loop.run(iters);
      flops_per_s = iters * loop.flops_per_iteration / (thread_cpu_seconds() - t0);
    }
    g_sink = sink;
    return flops_per_s * 1e-9;
  };
  std::int64_t iters = 1 << 14;
  while (iters * loop.flops_per_iteration / (trial(iters) * 1e9) < 0.01) iters *= 2;
  double best = 0;
  for (int i = 0; i < 7; ++i) best = std::max(best, trial(iters));
  return best;
}

// ---------------------------------------------------------------------------------------------
// Workloads: the inputs, module and output of one (op, shape), shared by its benchmarks
// (naive and each thread count) and dropped when the next shape comes.

struct CheckResult {
  bool done = false;
  bool ok = false;
  double rel_err = 0;
  std::string message;  // why it failed
  bool reported = false;
  bool warmed = false;
};

struct Block {
  std::size_t begin, count;
};

std::vector<Block> check_blocks(std::size_t lq) {
  if (lq <= 2 * kCheckRows) return {{0, lq}};
  return {{0, kCheckRows}, {lq - kCheckRows, kCheckRows}};
}

class Workload {
 public:
  Workload(Op op, const Shape& s) : op_(op), s_(s), out_(s.n, s.lq, s.e) {
    query_ = Tensor::randn(s.n, s.lq, s.e, kQuerySeed);
    if (op == Op::sdpa) {
      keys_ = Tensor::randn(s.n, s.lk, s.e, kKeySeed);
      values_ = Tensor::randn(s.n, s.lk, s.e, kValueSeed);
    } else {
      module_ = std::make_unique<MultiHeadAttention>(s.e, s.h, kWeightSeed);
      // The module's self-attention passes one tensor three times; otherwise keys and values
      // are one encoder memory (cross) or KV history (decode).
      if (!self_attention()) keys_ = Tensor::randn(s.n, s.lk, s.e, kKeySeed);
    }
  }

  bool matches(Op op, const Shape& s) const { return op == op_ && s == s_; }

  Options options(Path path, int threads) const {
    Options o;
    o.path = path;
    o.threads = threads;
    o.causal = s_.causal ? Causal::top_left : Causal::none;
    return o;
  }

  void run(const Options& o) {
    if (op_ == Op::mha) {
      module_->forward(kv(), kv(), query_, Mask{}, out_.view(), o);
    } else {
      simdattn::scaled_dot_product_attention(
          heads(query_), heads(keys_), heads(values_),
          HeadsView<float>{out_.data(), s_.n, s_.lq, s_.h, d(), 0, 0}, Mask{}, o);
    }
  }

  // Runs the call once (the first warm-up) and compares its checked rows with the naive path's.
  CheckResult& check(Path path, int threads) {
    CheckResult& c = checks_[{path, threads}];
    if (c.done) return c;
    c.done = true;
    if (expected_.empty()) expected_ = naive_rows();
    std::fill(out_.data(), out_.data() + out_.size(), std::nanf(""));
    run(options(path, threads));
    const std::vector<float> got = checked_rows(out_);
    compare(got, c);
    return c;
  }

  std::size_t bytes() const {
    return (query_.size() + keys_.size() + values_.size() + out_.size()) * sizeof(float);
  }

 private:
  bool self_attention() const { return s_.lq == s_.lk && s_.name != "cross"; }
  std::size_t d() const { return s_.e / s_.h; }
  const Tensor& kv() const { return self_attention() ? query_ : keys_; }
  ConstHeadsView heads(const Tensor& t) const { return {t.data(), t.n(), t.l(), s_.h, d(), 0, 0}; }

  // The rows of check_blocks() for every batch, in (block, batch, row) order.
  std::vector<float> checked_rows(const Tensor& out) const {
    std::vector<float> rows;
    for (const Block& blk : check_blocks(s_.lq)) {
      for (std::size_t b = 0; b < s_.n; ++b) {
        const float* first = out.data() + (b * s_.lq + blk.begin) * s_.e;
        rows.insert(rows.end(), first, first + blk.count * s_.e);
      }
    }
    return rows;
  }

  // The naive path on each block of query rows alone: query rows are independent given the
  // keys, so this is the full problem's answer for those rows at a fraction of its cost. A
  // causal mask becomes an explicit [1, 1, rows, Lk] keep-mask at the block's offset.
  std::vector<float> naive_rows() const {
    std::vector<float> rows;
    Options o = options(Path::naive, 1);
    o.causal = Causal::none;
    for (const Block& blk : check_blocks(s_.lq)) {
      std::vector<std::uint8_t> keep;
      Mask mask;
      if (s_.causal) {
        keep.resize(blk.count * s_.lk);
        for (std::size_t i = 0; i < blk.count; ++i) {
          for (std::size_t k = 0; k < s_.lk; ++k) keep[i * s_.lk + k] = k <= blk.begin + i;
        }
        mask = Mask{keep.data(), 1, 1, blk.count, s_.lk};
      }
      Tensor out(s_.n, blk.count, s_.e);
      if (op_ == Op::mha) {
        Tensor query(s_.n, blk.count, s_.e);
        for (std::size_t b = 0; b < s_.n; ++b) {
          const float* first = query_.data() + (b * s_.lq + blk.begin) * s_.e;
          std::copy(first, first + blk.count * s_.e, query.data() + b * blk.count * s_.e);
        }
        module_->forward(kv(), kv(), query, mask, out.view(), o);
      } else {
        const ConstHeadsView q{
            query_.data() + blk.begin * s_.e, s_.n, blk.count, s_.h, d(), s_.e, s_.lq * s_.e};
        simdattn::scaled_dot_product_attention(
            q, heads(keys_), heads(values_),
            HeadsView<float>{out.data(), s_.n, blk.count, s_.h, d(), 0, 0}, mask, o);
      }
      rows.insert(rows.end(), out.data(), out.data() + out.size());
    }
    return rows;
  }

  void compare(const std::vector<float>& got, CheckResult& c) const {
    double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
    std::size_t nonfinite = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double g = got[i], r = expected_[i];
      if (!std::isfinite(g)) {
        ++nonfinite;
        continue;
      }
      diff2 += (g - r) * (g - r);
      ref2 += r * r;
      max_diff = std::max(max_diff, std::fabs(g - r));
      max_ref = std::max(max_ref, std::fabs(r));
    }
    c.rel_err = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
    const double max_rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    c.ok = nonfinite == 0 && c.rel_err <= kCheckRelTol && max_rel <= kCheckMaxTol;
    std::ostringstream msg;
    msg << "output check FAILED against the naive path: " << nonfinite
        << " non-finite values, relative Frobenius error " << c.rel_err << " (limit "
        << kCheckRelTol << "), max element error " << max_rel << " x max|ref| (limit "
        << kCheckMaxTol << ") over " << got.size() << " values";
    if (!c.ok) c.message = msg.str();
  }

  Op op_;
  Shape s_;
  Tensor query_, keys_, values_;
  std::unique_ptr<MultiHeadAttention> module_;
  Tensor out_;
  std::vector<float> expected_;
  std::map<std::pair<Path, int>, CheckResult> checks_;
};

std::unique_ptr<Workload> g_workload;

Workload& workload(Op op, const Shape& s) {
  if (!g_workload || !g_workload->matches(op, s)) {
    g_workload.reset();  // free the previous inputs before allocating the next
    g_workload = std::make_unique<Workload>(op, s);
  }
  return *g_workload;
}

// ---------------------------------------------------------------------------------------------
// Configuration, start-up measurements and the benchmark body

struct Config {
  std::vector<std::string> sets = {"default"};
  std::string isa;  // empty: the library's choice
  std::vector<int> threads = {1, 2};
  double naive_limit_s = 2.0;
  double optimized_limit_s = 30.0;
};

// Rates of one path measured at start-up on small shapes, one thread: the attention core's, and
// the projections' (the rest of a module call). They only decide what to skip.
struct Rates {
  double attention = 0;   // FLOP/s
  double projection = 0;  // FLOP/s
};

struct Machine {
  Isa isa = Isa::naive;
  PeakLoop loop{};
  std::map<int, double> peak_gflops;  // by thread count
  std::map<Path, Rates> rates;
};

Config g_config;
Machine g_machine;
int g_failed_checks = 0;

double peak_gflops(int threads) {
  auto it = g_machine.peak_gflops.find(threads);
  if (it == g_machine.peak_gflops.end()) {
    it = g_machine.peak_gflops.emplace(threads, measure_peak_gflops(g_machine.loop, threads)).first;
  }
  return it->second;
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

Rates calibrate(Path path) {
  const Shape s{"calibration", 1, 128, 128, 256, 4, false};
  Rates r;
  {
    Workload w(Op::sdpa, s);
    r.attention = sdpa_flops(s) / seconds_per_call(w, w.options(path, 1));
  }
  Workload w(Op::mha, s);
  const double projection_s = seconds_per_call(w, w.options(path, 1)) - sdpa_flops(s) / r.attention;
  r.projection = projection_flops(s) / std::max(projection_s, 1e-9);
  return r;
}

double estimated_seconds(Op op, Path path, const Shape& s, int threads) {
  const Rates& r = g_machine.rates.at(path);
  double t = sdpa_flops(s) / r.attention;
  if (op == Op::mha) t += projection_flops(s) / r.projection;
  return path == Path::optimized ? t / threads : t;
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
}

std::string skip_reason(Op op, Path path, const Shape& s, int threads) {
  const double limit = path == Path::naive ? g_config.naive_limit_s : g_config.optimized_limit_s;
  const double estimate = estimated_seconds(op, path, s, threads);
  if (estimate <= limit) return "";
  char buf[160];
  std::snprintf(buf, sizeof buf,
                "skipped: about %.*f s per call, over the %g s limit (--%s_limit_s)",
                estimate < 10 ? 1 : 0, estimate, limit, path_name(path));
  return buf;
}

void bench(benchmark::State& state, Op op, Path path, const Shape& s, int threads) {
  const long rss_before_kib = peak_rss_kib();
  Workload& w = workload(op, s);
  CheckResult& check = w.check(path, threads);
  if (!check.ok) {
    if (!check.reported) {  // once, however many repetitions ask again
      std::fprintf(stderr, "ERROR %s: %s\n", benchmark_name(op, path, s, threads).c_str(),
                   check.message.c_str());
      ++g_failed_checks;
      check.reported = true;
    }
    state.SkipWithError(check.message.c_str());
    return;
  }
  const Options o = w.options(path, threads);
  // GRID.md's second warm-up (the check was the first): the optimized path's first calls grow
  // its scratch. The naive path keeps nothing between calls.
  if (!check.warmed && path == Path::optimized) w.run(o);
  check.warmed = true;

  const auto t0 = Clock::now();
  for (auto _ : state) {
    w.run(o);
    benchmark::ClobberMemory();
  }
  const double seconds = seconds_since(t0) / static_cast<double>(state.iterations());

  const double gflops = flops(op, s) / seconds * 1e-9;
  state.counters["GFLOPS"] = gflops;
  state.counters["frac_peak"] = gflops / peak_gflops(threads);
  state.counters["omp_threads"] = threads;
  state.counters["rel_err"] = check.rel_err;
  if (op == Op::sdpa && s.lq == 1) state.counters["bytes_per_second"] = kv_bytes(s) / seconds;
  if (s.name == kMemoryShape.name) {
    const double mib = 1.0 / 1024;
    const double io_mib = static_cast<double>(w.bytes()) / (1 << 20);
    state.counters["peak_rss_MiB"] = peak_rss_kib() * mib;
    state.counters["rss_before_MiB"] = rss_before_kib * mib;
    state.counters["io_MiB"] = io_mib;
    state.counters["rss_ratio"] = peak_rss_kib() * mib / io_mib;
  }
  state.SetLabel(path == Path::naive ? "reference" : simdattn::isa_name(g_machine.isa));
}

void add(Op op, Path path, const Shape& s, int threads) {
  const std::string name = benchmark_name(op, path, s, threads);
  const std::string skip = skip_reason(op, path, s, threads);
  if (!skip.empty()) {  // reported once, as an error row in the output and the JSON
    benchmark::RegisterBenchmark(name.c_str(),
                                 [skip](benchmark::State& st) { st.SkipWithError(skip.c_str()); })
        ->Iterations(1)
        ->Repetitions(1);
    return;
  }
  auto* b = benchmark::RegisterBenchmark(
      name.c_str(),
      [op, path, s, threads](benchmark::State& st) { bench(st, op, path, s, threads); });
  b->UseRealTime();
  b->Unit(flops(op, s) < 1e8 ? benchmark::kMicrosecond : benchmark::kMillisecond);
  if (s.name == kMemoryShape.name) b->Iterations(1)->Repetitions(1);
}

// Both ops of a shape, naive once and optimized at every thread count, so consecutive
// benchmarks share one workload.
void add_shape(const Shape& s) {
  for (Op op : {Op::sdpa, Op::mha}) {
    add(op, Path::naive, s, 1);
    for (int t : g_config.threads) add(op, Path::optimized, s, t);
  }
}

void register_set(const std::string& set) {
  if (set == "grid" || set == "default" || set == "full") {
    for (const Shape& s : kGrid) add_shape(s);
  }
  if (set == "default") {
    for (const SweepPoint& p : kDefaultSweep) add_shape(sweep_shape(p.e, p.h, p.l));
  }
  if (set == "sweep" || set == "full") {
    for (std::size_t e : kSweepE) {
      for (std::size_t h : kSweepH) {
        if (e % h != 0) continue;
        for (std::size_t l : kSweepL) add_shape(sweep_shape(e, h, l));
      }
    }
  }
  if (set == "memory") {
    add(Op::sdpa, Path::optimized, kMemoryShape, g_config.threads.back());
  }
}

const char kUsage[] =
    "bench_attention: simdattn's naive and optimized paths, timed side by side.\n"
    "\n"
    "  --set=LIST            default | grid | sweep | full | memory (comma-separated)\n"
    "  --isa=NAME            force the optimized path's ISA: avx512 | avx2 | sse2 | naive\n"
    "                        (sets SIMDATTN_ISA before the library's first call)\n"
    "  --threads=LIST        thread counts of the optimized path (default 1,2)\n"
    "  --naive_limit_s=S     skip naive benchmarks estimated above S seconds per call (2)\n"
    "  --optimized_limit_s=S the same for the optimized path (30)\n"
    "\n"
    "Names: <op>/<path>/<case>/N:n/Lq:lq/Lk:lk/E:e/H:h/threads:t, e.g.\n"
    "  --benchmark_filter='^sdpa/optimized/(s2048|bert)/'   --benchmark_filter='/E:512/H:8/'\n"
    "Defaults added unless given: --benchmark_repetitions=5, --benchmark_min_time=0.05 for the\n"
    "  default set and 0.2 otherwise (GRID.md),\n"
    "  --benchmark_display_aggregates_only=true (the JSON of --benchmark_out keeps every run).\n"
    "Full sweep: bench_attention --set=sweep --benchmark_out=out/sweep.json (tens of minutes).\n"
    "Google Benchmark's own flags follow.\n\n";

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
std::vector<char*> parse_flags(int argc, char** argv, Config& cfg, bool& help) {
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
        if (set != "default" && set != "grid" && set != "sweep" && set != "full" &&
            set != "memory") {
          throw std::invalid_argument("--set: unknown set '" + set +
                                      "' (default, grid, sweep, full, memory)");
        }
      }
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
    } else {
      if (arg == "--help" || arg == "-h") help = true;
      rest.push_back(argv[i]);
    }
  }
  return rest;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

std::string format_gflops(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  bool help = false;
  std::vector<char*> args;
  try {
    args = parse_flags(argc, argv, g_config, help);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "bench_attention: %s\n%s", e.what(), kUsage);
    return 2;
  }
  if (help) std::fputs(kUsage, stdout);
  // Our defaults first: a flag the user gives later on the command line wins.
  static char kRepetitions[] = "--benchmark_repetitions=5";
  static char kMinTimeDefault[] = "--benchmark_min_time=0.05";
  static char kMinTimeGrid[] = "--benchmark_min_time=0.2";
  const bool quick = g_config.sets == std::vector<std::string>{"default"};
  char* min_time = quick ? kMinTimeDefault : kMinTimeGrid;
  static char kAggregates[] = "--benchmark_display_aggregates_only=true";
  args.insert(args.begin() + 1, {kRepetitions, min_time, kAggregates});
  int gb_argc = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&gb_argc, args.data());  // exits after printing its help for --help
  if (benchmark::ReportUnrecognizedArguments(gb_argc, args.data())) return 2;

  // Before the library's first call: dispatch reads SIMDATTN_ISA once.
  if (!g_config.isa.empty()) setenv("SIMDATTN_ISA", g_config.isa.c_str(), 1);
  try {
    g_machine.isa = simdattn::active_isa();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 2;
  }
  std::string available;
  for (Isa isa : simdattn::available_isas()) {
    available += (available.empty() ? "" : ", ") + std::string(simdattn::isa_name(isa));
  }
  std::printf("simdattn %s, active ISA: %s (available: %s)\n", simdattn::kVersion,
              simdattn::isa_name(g_machine.isa), available.c_str());
  std::printf("CPU: %s\n", cpu_model().c_str());
  std::fflush(stdout);

  g_machine.loop = peak_loop(g_machine.isa);
  std::string peaks;
  for (int t : g_config.threads) {
    peaks += (peaks.empty() ? "" : ", ") + std::to_string(t) + " thread" + (t > 1 ? "s " : " ") +
             format_gflops(peak_gflops(t)) + " GFLOP/s";
  }
  std::printf("FP32 peak (%s loop): %s\n", simdattn::isa_name(g_machine.loop.isa), peaks.c_str());
  g_machine.rates[Path::naive] = calibrate(Path::naive);
  g_machine.rates[Path::optimized] = calibrate(Path::optimized);
  std::printf(
      "Start-up rates, 1 thread: naive %s GFLOP/s attention, %s projections; optimized "
      "%s, %s\n",
      format_gflops(g_machine.rates[Path::naive].attention * 1e-9).c_str(),
      format_gflops(g_machine.rates[Path::naive].projection * 1e-9).c_str(),
      format_gflops(g_machine.rates[Path::optimized].attention * 1e-9).c_str(),
      format_gflops(g_machine.rates[Path::optimized].projection * 1e-9).c_str());
  std::fflush(stdout);

  benchmark::AddCustomContext("simdattn_version", simdattn::kVersion);
  benchmark::AddCustomContext("simdattn_isa", simdattn::isa_name(g_machine.isa));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("peak_isa", simdattn::isa_name(g_machine.loop.isa));
  for (const auto& [t, gflops] : g_machine.peak_gflops) {
    benchmark::AddCustomContext("peak_gflops_" + std::to_string(t) + "t", format_gflops(gflops));
  }
  std::string sets;
  for (const std::string& set : g_config.sets) {
    sets += (sets.empty() ? "" : ",") + set;
    register_set(set);
  }
  benchmark::AddCustomContext("bench_set", sets);

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_workload.reset();
  if (g_failed_checks > 0) {
    std::fprintf(stderr,
                 "bench_attention: %d benchmark(s) FAILED the output check against the naive "
                 "path; their times are not reported.\n",
                 g_failed_checks);
    return 1;
  }
  return 0;
}
