// Reliability: extreme values and the floating-point environment.
// - Inputs up to 1e30 in magnitude and scores far beyond exp's range (about 88 in float): the
//   max-subtracted softmax keeps every result finite and accurate wherever float32 can hold
//   the scores themselves. Scores below the tutorial's -1e20 fill: masked keys stay excluded.
//   Queries up to FLT_MAX / (scale x log2(e)), the optimized path's own bound.
// - Denormal inputs: finite results; inside the optimized kernels denormals read as zero
//   (DAZ), which is what keeps them from costing up to 100x per instruction.
// - The caller's floating-point control register (x86 MXCSR: rounding, FTZ/DAZ, exception
//   masks; AArch64 FPCR: rounding, FZ, default NaN) is the same after a call as before, on the
//   calling thread and on OpenMP's worker threads, whatever the caller had set.
#include <omp.h>

#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace simdattn {
namespace {

using test::SdpaProblem;

const test::MaskKind kExtremeMasks[] = {test::MaskKind::none, test::MaskKind::causal_top_left,
                                        test::MaskKind::key_padding,
                                        test::MaskKind::fully_masked_rows};

// Runs p on both paths with every mask of kExtremeMasks and `o`: finite, close to the oracle.
void check_finite_and_close(const SdpaProblem& p, Options o, const std::string& what) {
  for (test::MaskKind kind : kExtremeMasks) {
    const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk, 8);
    for (Path path : test::kPaths) {
      o.path = path;
      o.causal = m.causal;
      INFO(what << ", Lq " << p.lq << ", mask " << test::mask_kind_name(kind) << ", path "
                << test::path_name(path));
      const auto out = p.run(m.mask, o);
      CHECK(test::all_finite(out));
      test::check_close(out.data(), p.oracle(m.mask, o), "vs oracle");
    }
  }
}

// A tile-path and a decode-path problem of the same heads.
std::vector<SdpaProblem> problems(std::uint64_t seed) {
  return {SdpaProblem(2, 29, 70, 2, 13, seed), SdpaProblem(2, 2, 70, 2, 13, seed + 10)};
}

void scale_all(std::vector<float>& x, float s) {
  for (float& v : x) v *= s;
}

// The bits of the thread's floating-point control register that a caller sets, and the
// settings the test tries: the architecture's default, denormal flushing, rounding toward zero.
#if defined(__x86_64__) || defined(__i386__)
#define SIMDATTN_TEST_FP_CONTROL "MXCSR"
// MXCSR: exception masks, rounding control, FTZ, DAZ. Bits 0-5 are sticky status flags that
// any float arithmetic may raise; they are not settings.
constexpr std::uint64_t kControlBits = 0xFFC0u;
constexpr std::uint64_t kDefaultControl = 0x1F80u;  // every exception masked, round to nearest
constexpr std::uint64_t kFlushDenormals = 0x8040u;  // FTZ + DAZ
constexpr std::uint64_t kRoundTowardZero = 0x6000u;
std::uint64_t read_control() {
  return _mm_getcsr();
}
void write_control(std::uint64_t v) {
  _mm_setcsr(static_cast<unsigned>(v));
}
#elif defined(__aarch64__)
#define SIMDATTN_TEST_FP_CONTROL "FPCR"
// FPCR holds settings only (the status flags live in FPSR): AHP, DN, FZ, RMode, FZ16 and the
// trap enables, which read as zero where the processor cannot trap.
constexpr std::uint64_t kControlBits = 0x07C89F00u;
constexpr std::uint64_t kDefaultControl = 0;          // round to nearest, nothing flushed
constexpr std::uint64_t kFlushDenormals = 1u << 24;   // FZ
constexpr std::uint64_t kRoundTowardZero = 3u << 22;  // RMode = RZ
std::uint64_t read_control() {
  std::uint64_t v;
  __asm__ volatile("mrs %0, fpcr" : "=r"(v));
  return v;
}
void write_control(std::uint64_t v) {
  __asm__ volatile("msr fpcr, %0" : : "r"(v));
}
#endif

#ifdef SIMDATTN_TEST_FP_CONTROL
std::uint64_t control_bits() {
  return read_control() & kControlBits;
}

// Sets the calling thread's control bits for the scope, then restores them.
class CallerControl {
 public:
  explicit CallerControl(std::uint64_t control) : saved_(read_control()) {
    write_control((saved_ & ~kControlBits) | control);
  }
  ~CallerControl() { write_control(saved_); }
  CallerControl(const CallerControl&) = delete;
  CallerControl& operator=(const CallerControl&) = delete;

 private:
  std::uint64_t saved_;
};

// Control bits of each OpenMP worker of a 2-thread team, by OS thread (libgomp keeps its pool).
std::map<std::thread::id, std::uint64_t> team_control_bits() {
  std::map<std::thread::id, std::uint64_t> bits;
  std::mutex mu;
#pragma omp parallel num_threads(2)
  {
    const std::uint64_t b = control_bits();
    std::lock_guard<std::mutex> lock(mu);
    bits[std::this_thread::get_id()] = b;
  }
  return bits;
}
#endif

}  // namespace

TEST_CASE("inputs up to 1e30: finite and accurate where float holds the scores",
          "[reliability][extreme]") {
  for (SdpaProblem p : problems(40)) {
    SdpaProblem values = p;
    scale_all(values.v, 1e30f);
    check_finite_and_close(values, {}, "values x 1e30");
    SdpaProblem query = p;  // scores about 1e30: exp(s) overflows without max subtraction
    scale_all(query.q, 1e30f);
    check_finite_and_close(query, {}, "query x 1e30");
    SdpaProblem both = p;  // scores about 1e30 from two large factors
    scale_all(both.q, 1e15f);
    scale_all(both.k, 1e15f);
    check_finite_and_close(both, {}, "query and keys x 1e15");
    // Every score about -1e30, far below the -1e20 that masked keys get in the tutorial: the
    // masked keys must still get no weight at all (the oracle skips them).
    SdpaProblem negative = p;
    for (float& x : negative.k) x = std::fabs(x);
    for (float& x : negative.q) x = -1e30f * std::fabs(x);
    check_finite_and_close(negative, {}, "every score about -1e30");
  }
}

TEST_CASE("scores far beyond exp's range, from the scale", "[reliability][extreme]") {
  for (const SdpaProblem& p : problems(41)) {
    for (float scale : {100.0f, 1e4f, 1e30f}) {
      Options o;
      o.scale = scale;
      check_finite_and_close(p, o, "scale " + std::to_string(scale));
    }
  }
}

TEST_CASE("queries up to the documented limit: |q| x scale below FLT_MAX / log2(e)",
          "[reliability][extreme]") {
  // The optimized path multiplies the query by scale x log2(e) before the dot products; that
  // product must fit float, and nothing else may grow it. Small keys (not denormal: those read
  // as zero) keep the scores within float.
  constexpr float kFloatMax = std::numeric_limits<float>::max();
  for (SdpaProblem p : problems(42)) {
    float q_max = 0.0f;
    for (float x : p.q) q_max = std::max(q_max, std::fabs(x));
    for (float scale : {0.125f, 1.0f, 4.0f}) {
      const float largest = 0.999f * std::min(kFloatMax, kFloatMax / 1.4426950f / scale);
      SdpaProblem big = p;
      scale_all(big.q, largest / q_max);
      scale_all(big.k, 1e-30f);
      Options o;
      o.scale = scale;
      check_finite_and_close(
          big, o, "scale " + std::to_string(scale) + ", max |q| " + std::to_string(largest));
    }
  }
}

TEST_CASE("module: inputs up to 1e30 stay finite and accurate", "[reliability][extreme][module]") {
  const std::size_t e = 24, heads = 3, n = 2, lq = 19, lk = 23;
  const MultiHeadAttention m(e, heads, 42);
  const auto q = test::random_normal(n * lq * e, 43);
  const auto k = test::random_normal(n * lk * e, 44);
  const auto v = test::random_normal(n * lk * e, 45);
  struct Case {
    const char* what;
    float q_scale, k_scale, v_scale;
  };
  for (const Case& c : {Case{"values x 1e30", 1, 1, 1e30f}, Case{"query x 1e30", 1e30f, 1, 1},
                        Case{"query and keys x 1e15", 1e15f, 1e15f, 1}}) {
    auto qs = q, ks = k, vs = v;
    scale_all(qs, c.q_scale);
    scale_all(ks, c.k_scale);
    scale_all(vs, c.v_scale);
    const ConstTensorView qv{qs.data(), n, lq, e}, kv{ks.data(), n, lk, e}, vv{vs.data(), n, lk, e};
    for (test::MaskKind kind : kExtremeMasks) {
      const auto mask = test::make_mask(kind, n, heads, lq, lk, 9);
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        o.causal = mask.causal;
        INFO(c.what << ", mask " << test::mask_kind_name(kind) << ", path "
                    << test::path_name(path));
        std::vector<float> out(n * lq * e);
        m.forward(vv, kv, qv, mask.mask, {out.data(), n, lq, e}, o);
        CHECK(test::all_finite(out));
        test::check_close(out.data(), test::oracle_forward(m, vv, kv, qv, mask.mask, o),
                          "vs oracle");
      }
    }
  }
}

TEST_CASE("denormal inputs give finite results", "[reliability][extreme][denormal]") {
  for (SdpaProblem p : problems(46)) {
    SdpaProblem tiny_values = p;
    scale_all(tiny_values.v, 1e-40f);
    SdpaProblem tiny_query = p;
    scale_all(tiny_query.q, 1e-40f);
    for (Path path : test::kPaths) {
      Options o;
      o.path = path;
      INFO("Lq " << p.lq << ", path " << test::path_name(path));
      // Values below 1e-38 may be flushed: the result is tiny or zero, never NaN.
      const auto out = tiny_values.run({}, o);
      const auto ref = tiny_values.oracle({}, o);
      CHECK(test::all_finite(out));
      double worst = 0;
      for (std::size_t i = 0; i < out.size(); ++i)
        worst = std::max(worst, std::fabs(out[i] - ref[i]));
      CHECK(worst < 1e-37);
      // Scores of about 1e-40 are zero to float: the uniform average, as in the oracle.
      const auto uniform = tiny_query.run({}, o);
      CHECK(test::all_finite(uniform));
      test::check_close(uniform.data(), tiny_query.oracle({}, o), "denormal query vs oracle");
    }
  }
}

TEST_CASE("the optimized kernels read denormals as zero (no denormal slowdown)",
          "[reliability][extreme][denormal]") {
  if (active_isa() == Isa::naive) {
    SUCCEED("SIMDATTN_ISA=naive: the optimized path is the reference, which does not flush");
    return;
  }
  // Timing is not testable here; the mechanism is. With DAZ set inside the kernels, values
  // that are all denormal multiply as zeros, so every output is exactly zero, where the naive
  // path (which does not flush) returns tiny non-zero averages of them.
  for (SdpaProblem p : problems(47)) {
    for (std::size_t i = 0; i < p.v.size(); ++i) {
      p.v[i] = (i % 2 ? 1e-39f : -3e-40f) * (1 + static_cast<float>(i % 7));
    }
    for (int threads : {1, 2}) {
      for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
        const auto m = test::make_mask(test::MaskKind::fully_masked_rows, p.n, p.h, p.lq, p.lk);
        Options o;
        o.threads = threads;
        o.masked_rows = policy;
        INFO("Lq " << p.lq << ", threads " << threads << ", policy "
                   << (policy == MaskedRows::zeros ? "zeros" : "uniform"));
        bool zero = true;
        for (float x : p.run(m.mask, o)) zero = zero && x == 0.0f;
        CHECK(zero);
        o.path = Path::naive;
        bool tiny_nonzero = false;
        for (float x : p.run(m.mask, o))
          tiny_nonzero = tiny_nonzero || (x != 0.0f && std::fabs(x) < 1e-37f);
        CHECK(tiny_nonzero);
      }
    }
  }
}

TEST_CASE(
    "the floating-point control register is unchanged after a call, whatever the caller "
    "set",
    "[reliability][extreme][fpenv]") {
#ifndef SIMDATTN_TEST_FP_CONTROL
  SUCCEED(
      "no floating-point control register known to this test on this architecture; the "
      "library leaves it alone there (src/fp_env.hpp)");
#else
  // Large enough for OpenMP teams with threads = 2 (above the drivers' serial limits).
  const SdpaProblem p(1, 150, 140, 2, 32, 48);
  const std::size_t e = 64;
  const MultiHeadAttention m(e, 4, 49);
  const Tensor x = Tensor::randn(2, 70, e, 50);
  for (std::uint64_t caller :
       {kDefaultControl, kDefaultControl | kFlushDenormals, kDefaultControl | kRoundTowardZero,
        kDefaultControl | kFlushDenormals | kRoundTowardZero}) {
    CallerControl set(caller);
    for (Path path : test::kPaths) {
      for (int threads : {1, 2}) {
        Options o;
        o.path = path;
        o.threads = threads;
        INFO("caller " SIMDATTN_TEST_FP_CONTROL " control "
             << std::hex << (caller & kControlBits) << std::dec << ", path "
             << test::path_name(path) << ", threads " << threads);
        const auto workers_before = team_control_bits();
        p.run({}, o);
        CHECK(control_bits() == (caller & kControlBits));
        m.forward(x, x, x, {}, o);
        CHECK(control_bits() == (caller & kControlBits));
        Options bad = o;
        bad.threads = -1;
        CHECK_THROWS_AS(m.forward(x, x, x, {}, bad), std::invalid_argument);
        CHECK(control_bits() == (caller & kControlBits));
        // OpenMP's workers are threads of the caller's process too: a kernel must not leave
        // its flush-to-zero setting behind on them either.
        const auto workers_after = team_control_bits();
        for (const auto& [id, bits] : workers_after) {
          const auto before = workers_before.find(id);
          if (before != workers_before.end()) CHECK(bits == before->second);
        }
      }
    }
  }
#endif
}

}  // namespace simdattn
