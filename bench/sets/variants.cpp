// --set=variants: what each attention variant costs over plain attention, on the optimized path.
//
//   at s2048 (N = 1, L = 2048, E = 512, H = 8, D = 64): plain; bias_keys [N, 1, 1, Lk],
//   bias_shared [1, 1, Lq, Lk], bias [N, H, Lq, Lk] (128 MiB, read once per call); alibi;
//   softcap (50, Gemma 2's); sinks; key_padding; weights and weights_avg (need_weights:
//   [N, H, Lq, Lk] or head-averaged); nhld (the same tensors in [N, H, L, D]); dv (Dv = 128
//   with Dk = 64: 1.5x the multiply-adds of plain, flops counted as such);
//   at L = 8192: window (W = 256, top-left causal) against causal (no window), and both again
//   as [N, H, L, D] views (causal_nhld, window_nhld), where a head's rows are contiguous rather
//   than E floats apart;
//   decode (Lq = 1, Lk = 8192, bottom-right): plain against window (W = 256).
// GFLOPS counts the multiply-adds of the visible (query, key) pairs: 4 x E per pair for plain
// attention, so within one shape a variant's GFLOPS over plain's is its speed ratio; a window
// has sum_i min(i + 1, W) pairs, so its GFLOPS against plain's is the "L x W work at the plain
// rate" ratio. Decode cases report bytes_per_second of K and V actually read.
// Names: sdpa/optimized/<case>/N:1/Lq:<lq>/Lk:<lk>/E:<e>/H:<h>[/W:<w>]/threads:<t>. Before
// timing, each case runs once on a smaller shape (L = 200, or Lk = 700 for decode) and is
// compared with the naive path there; a mismatch skips the case and fails the run.
// Interleave the cases for comparisons: --benchmark_enable_random_interleaving=true.
// Q, K, V, the output and the bias sit on transparent huge pages where the kernel grants them
// (HugeBuffer), as in the stream set, for plain attention as for every variant: with 4 KiB
// pages a window task's K/V, Q and output rows each reach new pages (a row of E = 512 floats is
// half a page), whose page walks (nested, in a VM) cost the window case W = 256 at L = 8192
// 39.3 -> 34.6 ms and the [N, H, Lq, Lk] bias 1.36x -> 1.29x plain (one thread, AVX-512, Zen 5
// VM, interleaved, load 6).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "huge_buffer.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {
namespace {

using simdattn::Causal;
using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Options;
using simdattn::Path;

struct Case {
  std::string name;
  std::size_t lq, lk, e, h;
  std::size_t window = 0;
  Causal causal = Causal::none;
  std::size_t dv = 0;  // 0: D
  bool nhld = false;
  // Sets the case's options, pointing into the workload's buffers.
  std::function<void(struct VariantWorkload&, Options&)> setup{};
};

// One case's inputs, buffers and options; `scale_l` shrinks it for the output check.
struct VariantWorkload {
  Case c;
  std::size_t lq, lk, d, dv;
  HugeBuffer q, k, v, out, bias;
  std::vector<float> sinks, weights;
  std::vector<std::uint8_t> padding;
  Options options;

  VariantWorkload(const Case& cs, std::size_t lq_, std::size_t lk_)
      : c(cs),
        lq(lq_),
        lk(lk_),
        d(cs.e / cs.h),
        dv(cs.dv != 0 ? cs.dv : cs.e / cs.h),
        q(huge(simdattn::Tensor::randn(1, lq, c.e, 1).values())),
        k(huge(simdattn::Tensor::randn(1, lk, c.e, 2).values())),
        v(huge(simdattn::Tensor::randn(1, lk, c.h * dv, 3).values())),
        out(lq * c.h * dv),
        bias(0) {
    options.causal = c.causal;
    if (c.window != 0) options.window = c.window;
    if (c.setup) c.setup(*this, options);
  }
  static HugeBuffer huge(const std::vector<float>& x) { return HugeBuffer(x.data(), x.size()); }
  ConstHeadsView view(const HugeBuffer& x, std::size_t l, std::size_t dd) const {
    const float* p = x.data();
    if (c.nhld) return simdattn::nhld_view(p, 1, c.h, l, dd);
    return {p, 1, l, c.h, dd};
  }
  void run(Options o) {
    const ConstHeadsView ov = view(out, lq, dv);
    simdattn::scaled_dot_product_attention(
        view(q, lq, d), view(k, lk, d), view(v, lk, dv),
        HeadsView<float>{out.data(), 1, lq, c.h, dv, ov.row_stride, ov.batch_stride,
                         ov.head_stride},
        {}, o);
  }
  // Visible (query, key) pairs of one head.
  double pairs() const {
    if (c.causal == Causal::none) return static_cast<double>(lq) * lk;
    const std::ptrdiff_t offset =
        c.causal == Causal::bottom_right ? static_cast<std::ptrdiff_t>(lk - lq) : 0;
    double total = 0;
    for (std::size_t i = 0; i < lq; ++i) {
      const std::ptrdiff_t end = std::min<std::ptrdiff_t>(
          static_cast<std::ptrdiff_t>(i) + offset + 1, static_cast<std::ptrdiff_t>(lk));
      const std::ptrdiff_t begin =
          c.window == 0 ? 0
                        : std::max<std::ptrdiff_t>(0, end - static_cast<std::ptrdiff_t>(c.window));
      total += static_cast<double>(std::max<std::ptrdiff_t>(0, end - begin));
    }
    return total;
  }
  double flops() const { return 2.0 * pairs() * c.h * (d + dv); }
  double kv_bytes() const { return pairs() / lq * c.h * (d + dv) * sizeof(float); }
};

void bias_setup(VariantWorkload& w, Options& o, std::size_t h, std::size_t lq) {
  w.bias = VariantWorkload::huge(simdattn::Tensor::randn(1, h * lq, w.lk, 4).values());
  o.bias = simdattn::Bias{w.bias.data(), 1, h, lq, w.lk};
}

std::vector<Case> cases() {
  const std::size_t l = 2048, e = 512, h = 8;
  std::vector<Case> c = {
      {"plain", l, l, e, h},
      {"bias_keys", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) { bias_setup(w, o, 1, 1); }},
      {"bias_shared", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) { bias_setup(w, o, 1, w.lq); }},
      {"bias", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) { bias_setup(w, o, w.c.h, w.lq); }},
      {"alibi", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload&, Options& o) { o.alibi.enabled = true; }},
      {"softcap", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload&, Options& o) { o.softcap = 50.0f; }},
      {"sinks", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) {
         w.sinks.assign(w.c.h, 1.0f);
         o.sinks = simdattn::PerHead{w.sinks.data(), w.c.h};
       }},
      {"key_padding", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) {
         w.padding.assign(w.lk, 0);
         std::fill(w.padding.begin() + w.lk * 7 / 8, w.padding.end(), 1);
         o.key_padding = simdattn::KeyPadding{w.padding.data(), 1, w.lk};
       }},
      {"weights", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) {
         w.weights.assign(w.c.h * w.lq * w.lk, 0.0f);
         o.weights = simdattn::AttentionWeights{w.weights.data(), w.weights.size(), false};
       }},
      {"weights_avg", l, l, e, h, 0, Causal::none, 0, false,
       [](VariantWorkload& w, Options& o) {
         w.weights.assign(w.lq * w.lk, 0.0f);
         o.weights = simdattn::AttentionWeights{w.weights.data(), w.weights.size(), true};
       }},
      {"nhld", l, l, e, h, 0, Causal::none, 0, true},
      {"dv", l, l, e, h, 0, Causal::none, 128},
      {"causal", 8192, 8192, e, h, 0, Causal::top_left},
      {"window", 8192, 8192, e, h, 256, Causal::top_left},
      {"causal_nhld", 8192, 8192, e, h, 0, Causal::top_left, 0, true},
      {"window_nhld", 8192, 8192, e, h, 256, Causal::top_left, 0, true},
      {"decode", 1, 8192, 1024, 16, 0, Causal::bottom_right},
      {"decode_window", 1, 8192, 1024, 16, 256, Causal::bottom_right},
  };
  return c;
}

// The case's check: the optimized path against the naive one on a smaller shape.
std::string check(const Case& c) {
  const std::size_t lq = c.lq == 1 ? 1 : 200, lk = c.lq == 1 ? 700 : 200;
  Case small = c;
  if (small.window > 64) small.window = 64;
  VariantWorkload w(small, lq, lk);
  Options o = w.options;
  o.path = Path::naive;
  w.run(o);
  const std::vector<float> want(w.out.data(), w.out.data() + w.out.size()),
      want_weights = w.weights;
  o.path = Path::optimized;
  w.run(o);
  double diff2 = 0, ref2 = 0;
  auto add = [&](const float* got, const std::vector<float>& ref) {
    for (std::size_t i = 0; i < ref.size(); ++i) {
      if (!std::isfinite(got[i])) return false;
      diff2 += (got[i] - ref[i]) * (got[i] - ref[i]);
      ref2 += ref[i] * ref[i];
    }
    return true;
  };
  const bool finite = add(w.out.data(), want) && add(w.weights.data(), want_weights);
  const double rel = std::sqrt(diff2 / std::max(ref2, 1e-300));
  if (finite && rel <= 1e-4) return "";
  return "output check FAILED against the naive path at Lq = " + std::to_string(lq) +
         ", Lk = " + std::to_string(lk) + ": relative Frobenius error " + std::to_string(rel) +
         (finite ? "" : " (non-finite values)");
}

std::string case_name(const Case& c, int threads) {
  std::string name = "sdpa/optimized/" + c.name + "/N:1/Lq:" + std::to_string(c.lq) +
                     "/Lk:" + std::to_string(c.lk) + "/E:" + std::to_string(c.e) +
                     "/H:" + std::to_string(c.h);
  if (c.window != 0) name += "/W:" + std::to_string(c.window);
  return name + "/threads:" + std::to_string(threads);
}

void bench_case(benchmark::State& state, const Case& c, int threads) {
  // One workload at a time (the bias and weights cases hold 128 MiB each); with interleaving
  // the cases take turns and each turn makes its own.
  static std::unique_ptr<VariantWorkload> current;
  static std::map<std::string, std::string> checked;
  auto found = checked.find(c.name);
  if (found == checked.end()) found = checked.emplace(c.name, check(c)).first;
  if (!found->second.empty()) {
    state.SkipWithError(found->second.c_str());
    return;
  }
  if (!current || current->c.name != c.name) {
    current.reset();
    current = std::make_unique<VariantWorkload>(c, c.lq, c.lk);
  }
  VariantWorkload& w = *current;
  Options o = w.options;
  o.threads = threads;
  w.run(o);  // first touch of the output and of the library's scratch
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    w.run(o);
    benchmark::ClobberMemory();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
      static_cast<double>(state.iterations());
  set_rate_counters(state, w.flops(), seconds, threads);
  if (c.lq == 1) state.counters["bytes_per_second"] = w.kv_bytes() / seconds;
  state.SetLabel(simdattn::isa_name(machine().isa));
}

}  // namespace

void register_set_variants() {
  for (const Case& c : cases()) {
    for (int t : config().threads) {
      const std::string name = case_name(c, t);
      // A failed check is reported once, as the benchmark's error and on stderr.
      auto* b = benchmark::RegisterBenchmark(name.c_str(), [c, t, name](benchmark::State& st) {
        bench_case(st, c, t);
        if (st.error_occurred()) {
          static std::map<std::string, bool> reported;
          if (!reported[name]) report_failed_check(name, "see the benchmark's error");
          reported[name] = true;
        }
      });
      b->UseRealTime();
      b->Unit(c.lq == 1 ? benchmark::kMicrosecond : benchmark::kMillisecond);
    }
  }
}

}  // namespace bench
