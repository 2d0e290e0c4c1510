#include "machine.hpp"

#include <omp.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "huge_buffer.hpp"
#endif

namespace bench {
namespace {

using simdattn::Isa;

// The benchmark is compiled for baseline x86-64, so each loop carries its own target attribute
// and runs only where dispatch says the ISA is usable.

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
// 24 chains: the FMA latency (4 cycles) times two FMA pipes needs at least 8 in flight; on an
// AVX-512 AMD EPYC with two FMA pipes, 20-24 reached the full rate. 32 zmm registers hold them.
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

// 12 chains fill 16 ymm registers with the two constants (10-12 reached the full rate on that
// EPYC).
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

volatile float g_sink;  // keeps the peak loops' results alive

// Sum of x[0, n): eight independent accumulators, so that the loads, not the adds, set the pace.
// Baseline x86-64 vectors are enough: 2 x 16 B loads per cycle are several times what memory
// delivers to one core.
float sum_floats(const float* x, std::size_t n) {
  std::size_t i = 0;
#if defined(__x86_64__) || defined(__i386__)
  __m128 acc[8];
  for (__m128& a : acc) a = _mm_setzero_ps();
  for (; i + 32 <= n; i += 32) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[j] = _mm_add_ps(acc[j], _mm_loadu_ps(x + i + 4 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm_add_ps(acc[0], acc[j]);
  float lanes[4];
  _mm_storeu_ps(lanes, acc[0]);
  float s = sum_of(lanes);
#else
  float s = 0;
#endif
  for (; i < n; ++i) s += x[i];
  return s;
}

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

}  // namespace

PeakLoop peak_loop(Isa active) {
  Isa isa = active;
  if (isa == Isa::naive) isa = simdattn::available_isas().front();
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::avx512:
      return {isa, kAvx512Chains * 16 * 2.0, fma_loop_avx512};
    case Isa::avx2:
      return {isa, kVex256Chains * 8 * 2.0, fma_loop_avx2};
    default:  // sse2 and naive; an ISA of another architecture is never active on x86
      break;
  }
  return {Isa::sse2, kSse2Chains * 4 * 2.0, mul_add_loop_sse2};
#else
  return {isa, 0.0, nullptr};
#endif
}

// Each thread times its own loop in its own CPU time and the rates add up, so a thread that
// another process preempts on a shared machine does not count as slow: this is what the cores
// can do. For the same reason more threads than processors would add rates that no core
// delivers, so at most one per processor runs. The best of several 10+ ms trials is kept, since
// a peak is an upper bound.
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

double measure_read_gbps(int threads, const float* buffer) {
  threads = std::max(1, std::min(threads, omp_get_num_procs()));
  const std::size_t floats = read_buffer_floats();
  std::unique_ptr<HugeBuffer> own;
  if (buffer == nullptr) own = std::make_unique<HugeBuffer>(floats, 1.0f);
  const float* x = buffer == nullptr ? own->data() : buffer;
  double best = 1e30;
  for (int pass = 0; pass < 5; ++pass) {
    float sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
      const std::size_t share = (floats / threads + 15) / 16 * 16;
      const std::size_t begin = std::min(floats, t * share);
      sink = sum_floats(x + begin, std::min(floats, begin + share) - begin);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g_sink = sink;
    best = std::min(best, s);
  }
  return floats * sizeof(float) / best * 1e-9;
}

namespace {

// "307200K" -> bytes; 0 if unreadable.
std::size_t read_cache_size(const std::string& path) {
  std::ifstream in(path);
  std::size_t value = 0;
  char unit = 0;
  if (!(in >> value)) return 0;
  if (in >> unit) {
    if (unit == 'K') value <<= 10;
    if (unit == 'M') value <<= 20;
  }
  return value;
}

std::size_t listed_l3_bytes() {
  // Each L3 instance is listed once per processor sharing it: count each shared_cpu_list once.
  std::vector<std::string> seen;
  std::size_t total = 0;
  const long cpus = sysconf(_SC_NPROCESSORS_CONF);
  for (long cpu = 0; cpu < cpus; ++cpu) {
    for (int index = 0; index < 8; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/cache/index" +
                              std::to_string(index) + "/";
      std::ifstream level_file(dir + "level");
      int level = 0;
      if (!(level_file >> level)) break;
      if (level != 3) continue;
      std::ifstream shared_file(dir + "shared_cpu_list");
      std::string shared;
      std::getline(shared_file, shared);
      if (std::find(seen.begin(), seen.end(), shared) != seen.end()) continue;
      seen.push_back(shared);
      total += read_cache_size(dir + "size");
    }
  }
  return total;
}

}  // namespace

std::size_t cold_bytes() {
  static const std::size_t bytes = [] {
    constexpr std::size_t kAtLeast = std::size_t{256} << 20;
    std::size_t b = std::max(kAtLeast, 8 * listed_l3_bytes());
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) {
      b = std::min(b, std::max(kAtLeast, static_cast<std::size_t>(pages) * page / 8));
    }
    return b / (std::size_t{2} << 20) * (std::size_t{2} << 20);  // whole huge pages
  }();
  return bytes;
}

std::size_t read_buffer_floats() {
  return cold_bytes() / sizeof(float);
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

}  // namespace bench
