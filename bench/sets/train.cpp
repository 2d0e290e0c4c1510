// --set=train (and --set=train_memory): the attention core's training pass.
//
//   train/optimized/backward/<case>/...  scaled_dot_product_attention_backward alone (the
//                                        training forward ran once before), s2048 and bert
//   train/optimized/step/<case>/...      the training forward (log-sum-exp out) + the backward
//   train/optimized/memory/N:1/...      (train_memory) forward + backward once at L = 16384,
//                                        E = 512, H = 8, with the process's peak resident memory
//
// FLOPs: the forward is sdpa's 4 N Lq Lk E (halved when causal: bench/README.md); the backward
// counts 2.5 times that, FlashAttention-2's convention (five Lq x Lk x D products to the
// forward's two), so frac_peak compares with the forward's. The step counts 3.5 times.
// Results are checked against the naive path on the same inputs before timing (the backward's
// relative error is rel_err). tools/peers_torch_train.py times PyTorch's CPU autograd on the
// same cases with the same FLOP counts.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "random_floats.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {
namespace {

using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Options;
using simdattn::Path;
using Clock = std::chrono::steady_clock;

constexpr double kBackwardFactor = 2.5;
constexpr double kCheckRelTol = 1e-4;

// One problem: inputs, the training forward's output and log-sum-exp, and the gradients.
struct TrainCase {
  std::size_t n, l, h, d;
  Options options;
  std::vector<float> q, k, v, out, lse, d_out, dq, dk, dv;

  TrainCase(const Shape& s, int threads) : n(s.n), l(s.lq), h(s.h), d(s.e / s.h) {
    const std::size_t size = n * l * h * d;
    q = random_floats(size, 1);
    k = random_floats(size, 2);
    v = random_floats(size, 3);
    d_out = random_floats(size, 4);
    out.assign(size, 0.0f);
    dq.assign(size, 0.0f);
    dk.assign(size, 0.0f);
    dv.assign(size, 0.0f);
    lse.assign(n * h * l, 0.0f);
    options.threads = threads;
    options.path = Path::optimized;
    if (s.causal) options.causal = simdattn::Causal::top_left;
  }
  ConstHeadsView in(const std::vector<float>& x) const { return {x.data(), n, l, h, d}; }
  HeadsView<float> grad(std::vector<float>& x) const { return {x.data(), n, l, h, d}; }
  void forward(const Options& o) {
    simdattn::scaled_dot_product_attention_forward(in(q), in(k), in(v), grad(out),
                                                   {lse.data(), n, h, l}, {}, o);
  }
  void backward(const Options& o) {
    simdattn::scaled_dot_product_attention_backward(in(q), in(k), in(v), in(out), in(d_out),
                                                    {lse.data(), n, h, l}, grad(dq), grad(dk),
                                                    grad(dv), {}, o);
  }
  // Bytes of inputs, outputs and gradients: q, k, v, out, lse, d_out, dq, dk, dv.
  double bytes() const { return (8.0 * n * l * h * d + n * h * l) * sizeof(float); }
};

// The optimized backward against the naive one: the largest relative error (Frobenius) of
// dQ, dK, dV.
double check_backward(TrainCase& c) {
  c.forward(c.options);
  c.backward(c.options);
  const std::vector<float> got[3] = {c.dq, c.dk, c.dv};
  Options naive = c.options;
  naive.path = Path::naive;
  c.backward(naive);
  const std::vector<float>* want[3] = {&c.dq, &c.dk, &c.dv};
  double worst = 0;
  for (int i = 0; i < 3; ++i) {
    double d2 = 0, r2 = 0;
    for (std::size_t j = 0; j < got[i].size(); ++j) {
      const double diff = static_cast<double>(got[i][j]) - (*want[i])[j];
      d2 += diff * diff;
      r2 += static_cast<double>((*want[i])[j]) * (*want[i])[j];
    }
    worst = std::max(worst, std::sqrt(d2 / std::max(r2, 1e-300)));
  }
  return worst;
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
}

std::string name_of(const char* part, const Shape& s, int threads) {
  std::string name = benchmark_name(Op::sdpa, Path::optimized, s, threads);
  // sdpa/optimized/<case>/... -> train/optimized/<part>/<case>/... (the memory case: its name)
  const std::string rest = name.substr(name.find('/', 5));
  return "train/optimized/" + std::string(part) +
         (s.name == part ? rest.substr(rest.find('/', 1)) : rest);
}

void add_timed(const Shape& s, int threads, bool step) {
  const double forward_flops = sdpa_flops(s);
  const double call_flops = (step ? 1.0 + kBackwardFactor : kBackwardFactor) * forward_flops;
  auto body = [=](benchmark::State& state) {
    TrainCase c(s, threads);
    // Checked once per case (the naive backward takes seconds), not per repetition.
    static std::map<std::string, double> checked;
    auto it = checked.find(s.name);
    if (it == checked.end()) it = checked.emplace(s.name, check_backward(c)).first;
    const double rel_err = it->second;
    if (!(rel_err <= kCheckRelTol)) {
      const std::string message =
          "backward differs from the naive path: relative error " + std::to_string(rel_err);
      report_failed_check(name_of(step ? "step" : "backward", s, threads), message);
      state.SkipWithError(message.c_str());
      return;
    }
    c.forward(c.options);
    c.backward(c.options);  // warm-up: scratch grown
    const auto t0 = Clock::now();
    for (auto _ : state) {
      if (step) c.forward(c.options);
      c.backward(c.options);
      benchmark::ClobberMemory();
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count() /
                           static_cast<double>(state.iterations());
    set_rate_counters(state, call_flops, seconds, threads);
    state.counters["rel_err"] = rel_err;
  };
  benchmark::RegisterBenchmark(name_of(step ? "step" : "backward", s, threads).c_str(), body)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

void register_set_train() {
  const Shape cases[] = {kGrid[3], kGrid[4]};  // s2048, bert
  for (const Shape& s : cases) {
    for (int t : config().threads) add_timed(s, t, /*step=*/false);
    for (int t : config().threads) add_timed(s, t, /*step=*/true);
  }
}

void register_set_train_memory() {
  const Shape s = kMemoryShape;
  const int threads = config().threads.back();
  auto body = [=](benchmark::State& state) {
    const long before_kib = peak_rss_kib();
    TrainCase c(s, threads);
    const auto t0 = Clock::now();
    for (auto _ : state) {
      c.forward(c.options);
      c.backward(c.options);
      benchmark::ClobberMemory();
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count() /
                           static_cast<double>(state.iterations());
    set_rate_counters(state, (1.0 + kBackwardFactor) * sdpa_flops(s), seconds, threads);
    const double mib = 1.0 / 1024, io_mib = c.bytes() / (1 << 20);
    state.counters["peak_rss_MiB"] = peak_rss_kib() * mib;
    state.counters["rss_before_MiB"] = before_kib * mib;
    state.counters["io_MiB"] = io_mib;
    state.counters["rss_ratio"] = peak_rss_kib() * mib / io_mib;
  };
  benchmark::RegisterBenchmark(name_of("memory", s, threads).c_str(), body)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->Iterations(1)
      ->Repetitions(1);
}

}  // namespace bench
