// libFuzzer target for the attention variants of scaled_dot_product_attention(): additive bias
// (broadcast shapes, -inf entries), ALiBi (the standard slopes or given ones), sliding window,
// soft-capping, sinks, key padding, grouped K/V heads, a value head size other than the key's,
// [N, H, L, D] views through a head stride, and the attention weights out (per head or averaged).
//
// Each input decodes to one call combining any of them with a mask, causal, the masked-row policy,
// scale, threads and ISA, and sometimes one corrupted argument. Each check aborts on failure, so
// libFuzzer keeps the input:
//   - the output and the weights of both paths match the double reference of src/reference;
//   - the optimized ones have the same bits on another thread count;
//   - nothing is written outside the views of out (stride gaps keep their sentinel);
//   - a corrupted call throws std::invalid_argument and leaves out and the weights as they were.
// Inputs are normal values, the tolerance following each row's bound on the magnitudes that make
// its scores. In a fifth of the inputs NaN, Inf, huge or denormal values are planted in Q, K, V
// or the bias: every path must run without a crash, an exception or a write outside the views,
// and where only NaN and Inf were planted, each output and weight must be finite exactly where
// the double reference's is (a key hidden by the mask, causal, window, padding or a -inf bias
// never passes on its NaN), except that the optimized path may spread a NaN/Inf value of a
// hidden key to the rows of its head (0 x NaN inside a key block). ASan and UBSan catch the rest.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "fuzz_support.hpp"
#include "mask_rule.hpp"
#include "nonfinite_compare.hpp"
#include "reference/reference.hpp"
#include "simdattn/simdattn.hpp"

namespace {

using namespace fuzz;

// Multiply-adds of one call at most, so that an input runs in milliseconds under ASan.
constexpr double kMaxWork = 2e6;
constexpr double kRelTol = 3e-5;

Strided make_layout(FuzzedDataProvider& fdp, std::size_t n, std::size_t l, std::size_t h,
                    std::size_t d, float gap_fill) {
  return fdp.ConsumeBool() ? make_head_major(fdp, n, l, h, d, gap_fill)
                           : make_strided(fdp, n, l, h, d, gap_fill);
}

struct Case {
  std::size_t n, lq, lk, h, hkv, dk, dv;
  std::vector<double> q, k, v;  // dense [n, l, heads, d]
  Mask mask;
  Options options;
  simdattn::detail::MaskRule rule;  // the reference's, built from the options here
  double scale;
};

struct Result {
  std::vector<float> out, weights;
};

Result run_call(const Strided& q, const Strided& k, const Strided& v, const Strided& out_layout,
                std::size_t weights_size, std::size_t weights_offset, const Case& c,
                const Options& options) {
  Strided out = fresh_output(out_layout, kNaN);
  std::vector<float> weights(weights_offset + weights_size, kGapSentinel);
  Options o = options;
  if (weights_size != 0) {
    std::fill(weights.begin() + weights_offset, weights.end(), kNaN);
    o.weights.data = weights.data() + weights_offset;
    o.weights.size = weights_size;
  }
  expect_success(path_name(o.path), [&] {
    simdattn::scaled_dot_product_attention(q.view(), k.view(), v.view(), out.mutable_view(), c.mask,
                                           o);
  });
  check_gaps(out, (std::string(path_name(o.path)) + " out").c_str());
  for (std::size_t x = 0; x < weights_offset; ++x) {
    if (weights[x] != kGapSentinel) fail("wrote before options.weights.data");
  }
  Result r;
  for (double x : out.dense()) r.out.push_back(static_cast<float>(x));
  r.weights.assign(weights.begin() + weights_offset, weights.end());
  return r;
}

// Per (b, i, head) row: a bound on the magnitudes that make its scores (scaled dot products over
// all keys, the bias, ALiBi, the cap, the sink); float rounds each score within about eps times it.
std::vector<double> score_bounds(const Case& c) {
  std::vector<double> bounds(c.n * c.lq * c.h, 0.0);
  const std::size_t group = c.h / c.hkv;
  for (std::size_t b = 0; b < c.n; ++b) {
    for (std::size_t j = 0; j < c.h; ++j) {
      const double slope = c.rule.alibi.empty() ? 0.0 : std::abs(c.rule.alibi[j]);
      const double sink = c.rule.sinks != nullptr ? std::abs(c.rule.sinks[j]) : 0.0;
      const float* brows = c.rule.bias_rows(b, j);
      for (std::size_t i = 0; i < c.lq; ++i) {
        double bound = c.options.softcap.value_or(0.0f) + sink + slope * (c.lk + c.lq);
        for (std::size_t key = 0; key < c.lk; ++key) {
          double acc = 0.0;
          for (std::size_t t = 0; t < c.dk; ++t) {
            acc += std::abs(c.q[((b * c.lq + i) * c.h + j) * c.dk + t] *
                            c.k[((b * c.lk + key) * c.hkv + j / group) * c.dk + t]);
          }
          double extra = 0.0;
          if (brows != nullptr) {
            const float x = brows[(c.rule.bias.lq == 1 ? 0 : i) * c.lk + key];
            if (std::isfinite(x)) extra = std::abs(x);
          }
          bound = std::max(bound, c.scale * acc + extra);
        }
        bounds[(b * c.lq + i) * c.h + j] = bound;
      }
    }
  }
  return bounds;
}

void check(const Case& c, const std::vector<double>& ref_out, const std::vector<double>& ref_w,
           const std::vector<double>& bounds, const Result& got, const char* path) {
  double vmax = 0.0;
  for (double x : c.v) vmax = std::max(vmax, std::abs(x));
  for (std::size_t b = 0; b < c.n; ++b) {
    for (std::size_t i = 0; i < c.lq; ++i) {
      for (std::size_t j = 0; j < c.h; ++j) {
        const double bound = bounds[(b * c.lq + i) * c.h + j];
        const double tol = kRelTol * (1.0 + bound) * (1.0 + vmax);
        for (std::size_t t = 0; t < c.dv; ++t) {
          const std::size_t x = ((b * c.lq + i) * c.h + j) * c.dv + t;
          if (!(std::abs(got.out[x] - ref_out[x]) <= tol)) {
            char buf[240];
            std::snprintf(buf, sizeof buf,
                          " out[%zu, %zu, %zu, %zu]: got %.9g, reference %.9g, tolerance %.3g", b,
                          i, j, t, got.out[x], ref_out[x], tol);
            fail(std::string(path) + buf);
          }
        }
      }
    }
  }
  if (ref_w.empty()) return;
  const bool averaged = c.options.weights.average_heads;
  for (std::size_t x = 0; x < ref_w.size(); ++x) {
    // Row of element x: [N, H, Lq, Lk] or [N, Lq, Lk]; averaged rows take the largest bound
    // of their heads.
    const std::size_t row = x / c.lk;
    double bound = 0.0;
    if (averaged) {
      const std::size_t b = row / c.lq, i = row % c.lq;
      for (std::size_t j = 0; j < c.h; ++j)
        bound = std::max(bound, bounds[(b * c.lq + i) * c.h + j]);
    } else {
      const std::size_t i = row % c.lq, j = row / c.lq % c.h, b = row / c.lq / c.h;
      bound = bounds[(b * c.lq + i) * c.h + j];
    }
    if (!(std::abs(got.weights[x] - ref_w[x]) <= kRelTol * (1.0 + bound))) {
      char buf[200];
      std::snprintf(buf, sizeof buf, " weights element %zu of %zu: got %.9g, reference %.9g", x,
                    ref_w.size(), got.weights[x], ref_w[x]);
      fail(std::string(path) + buf);
    }
  }
}

// The double reference's output (dense [n, lq, h, dv]) and weights for the case's current inputs.
void reference_of(const Case& c, std::size_t weights_size, std::vector<double>& out,
                  std::vector<double>& weights) {
  out.assign(c.n * c.lq * c.h * c.dv, 0.0);
  weights.assign(weights_size, 0.0);
  simdattn::reference::attention<double>(
      dense_heads(c.q, c.n, c.lq, c.h, c.dk), dense_heads(c.k, c.n, c.lk, c.hkv, c.dk),
      dense_heads(c.v, c.n, c.lk, c.hkv, c.dv), dense_heads_out(out, c.n, c.lq, c.h, c.dv), c.rule,
      c.scale, c.options.masked_rows, nullptr,
      {weights_size != 0 ? weights.data() : nullptr, c.options.weights.average_heads});
}

// With NaN/Inf planted among normal values: each element of `got` is finite exactly where the
// reference's is. `spread_ok(x)`: element x may be NaN/Inf where the reference is finite.
template <class SpreadOk>
void check_reach(const std::vector<double>& ref, const std::vector<float>& got, const char* what,
                 const std::string& path, const SpreadOk& spread_ok) {
  const auto c = simdattn::test::compare_nonfinite(got, ref, spread_ok);
  if (c.lost == 0 && c.spread == 0) return;
  const std::size_t x = c.first_bad;
  char buf[200];
  std::snprintf(buf, sizeof buf, " %s element %zu of %zu: %s: got %.9g, reference %.9g", what, x,
                ref.size(), std::isfinite(ref[x]) ? "NaN/Inf spread" : "lost a NaN/Inf", got[x],
                ref[x]);
  fail(path + buf);
}

// Only NaN and Inf among normal values (no huge or denormal value planted): where the double
// reference is finite, float's arithmetic is too.
bool only_nonfinite_planted(const Case& c, const std::vector<float>& bias_values) {
  auto normal = [](double x) {
    return !std::isfinite(x) || x == 0.0 || (std::abs(x) > 1e-30 && std::abs(x) < 1e6);
  };
  for (const auto* t : {&c.q, &c.k, &c.v}) {
    if (!std::all_of(t->begin(), t->end(), normal)) return false;
  }
  return std::all_of(bias_values.begin(), bias_values.end(), normal);
}

void run(FuzzedDataProvider& fdp) {
  Case c;
  c.n = fdp.ConsumeIntegralInRange<std::size_t>(1, 2);
  c.hkv = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  c.h = c.hkv * fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  // Half the inputs take the decode kernel (Lq <= 4), the rest mostly the tile kernel.
  c.lq = fdp.ConsumeIntegralInRange<std::size_t>(1, fdp.ConsumeBool() ? 4 : 70);
  c.lk = fdp.ConsumeIntegralInRange<std::size_t>(1, 140);
  c.dk = fdp.ConsumeIntegralInRange<std::size_t>(1, 24);
  c.dv = fdp.ConsumeBool() ? c.dk : fdp.ConsumeIntegralInRange<std::size_t>(1, 24);
  while (static_cast<double>(c.n * c.h * c.lq * c.lk * (c.dk + c.dv)) > kMaxWork) {
    c.lk = (c.lk + 1) / 2;
  }
  describe("n " + std::to_string(c.n) + " lq " + std::to_string(c.lq) + " lk " +
           std::to_string(c.lk) + " h " + std::to_string(c.h) + " kv_heads " +
           std::to_string(c.hkv) + " dk " + std::to_string(c.dk) + " dv " + std::to_string(c.dv));
  Random rng(fdp.ConsumeIntegral<std::uint64_t>());
  const float qk_magnitude = fdp.PickValueInArray({1.0f, 0.3f, 3.0f});
  Strided qb = make_layout(fdp, c.n, c.lq, c.h, c.dk, kNaN);
  fill_normal(qb, rng, qk_magnitude);
  Strided kb = make_layout(fdp, c.n, c.lk, c.hkv, c.dk, kNaN);
  fill_normal(kb, rng, qk_magnitude);
  Strided vb = make_layout(fdp, c.n, c.lk, c.hkv, c.dv, kNaN);
  fill_normal(vb, rng, fdp.PickValueInArray({1.0f, 1e-3f, 1e3f}));
  c.q = qb.dense();
  c.k = kb.dense();
  c.v = vb.dense();

  std::vector<std::uint8_t> mask_bytes, padding_bytes;
  make_mask(fdp, rng, c.n, c.h, c.lq, c.lk, c.mask, mask_bytes);
  c.options = make_options(fdp, c.dk);
  Options& o = c.options;
  c.scale = scale_of(o, c.dk);
  if (o.causal != simdattn::Causal::none && fdp.ConsumeBool()) {
    o.window = fdp.ConsumeIntegralInRange<std::size_t>(1, c.lk + 3);
    describe("window " + std::to_string(*o.window));
  }
  if (fdp.ConsumeBool()) {
    padding_bytes.resize(c.n * c.lk);
    const double padded = fdp.PickValueInArray({0.1, 0.5, 1.0});
    for (auto& x : padding_bytes) x = rng.uniform() < padded ? 1 : 0;
    o.key_padding = {padding_bytes.data(), c.n, c.lk};
    describe("key_padding " + std::to_string(padded));
  }
  std::vector<float> bias_values;
  if (fdp.ConsumeBool()) {
    const unsigned full = fdp.ConsumeIntegralInRange(0u, 7u);
    simdattn::Bias& bias = o.bias;
    bias.n = (full & 1) ? c.n : 1;
    bias.h = (full & 2) ? c.h : 1;
    bias.lq = (full & 4) ? c.lq : 1;
    bias.lk = c.lk;
    const float magnitude = fdp.PickValueInArray({0.5f, 3.0f});
    const double hidden = fdp.PickValueInArray({0.0, 0.1, 0.5});
    bias_values.resize(bias.n * bias.h * bias.lq * bias.lk);
    for (float& x : bias_values) {
      x = rng.uniform() < hidden ? -std::numeric_limits<float>::infinity()
                                 : static_cast<float>(rng.normal()) * magnitude;
    }
    bias.data = bias_values.data();
    describe("bias [" + std::to_string(bias.n) + ", " + std::to_string(bias.h) + ", " +
             std::to_string(bias.lq) + ", " + std::to_string(bias.lk) + "] -inf " +
             std::to_string(hidden));
  }
  std::vector<float> slopes, sinks;
  if (fdp.ConsumeBool()) {
    o.alibi.enabled = true;
    if (fdp.ConsumeBool()) {
      for (std::size_t j = 0; j < c.h; ++j) slopes.push_back(static_cast<float>(rng.normal()));
      o.alibi.slopes = {slopes.data(), slopes.size()};
    }
    describe(slopes.empty() ? "alibi" : "alibi, given slopes");
  }
  if (fdp.ConsumeBool()) {
    o.softcap = fdp.PickValueInArray({0.5f, 5.0f, 30.0f});
    describe("softcap " + std::to_string(*o.softcap));
  }
  if (fdp.ConsumeBool()) {
    for (std::size_t j = 0; j < c.h; ++j) sinks.push_back(static_cast<float>(rng.normal() * 2));
    o.sinks = {sinks.data(), sinks.size()};
    describe("sinks");
  }
  const bool want_weights = fdp.ConsumeBool();
  o.weights.average_heads = want_weights && fdp.ConsumeBool();
  const std::size_t weights_size =
      !want_weights ? 0 : (o.weights.average_heads ? 1 : c.h) * c.n * c.lq * c.lk;
  const std::size_t weights_offset = fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  if (want_weights) describe(o.weights.average_heads ? "weights averaged" : "weights");
  const Strided out_layout = make_layout(fdp, c.n, c.lq, c.h, c.dv, kGapSentinel);

  const int corruption = fdp.ConsumeIntegralInRange(0, 40);
  if (corruption >= 1 && corruption <= 10) {
    describe("corruption " + std::to_string(corruption));
    Options bad = o;
    Strided out = fresh_output(out_layout, kNaN);
    const std::size_t weights_full = (o.weights.average_heads ? 1 : c.h) * c.n * c.lq * c.lk;
    std::vector<float> weights(weights_offset + weights_full + 1, kNaN);
    bad.weights.data = weights_size != 0 ? weights.data() + weights_offset : nullptr;
    bad.weights.size = weights_size;
    std::vector<float> wrong(c.h + 1, 0.25f);  // per-head values for one head too many
    std::vector<float> big(c.n * c.h * (c.lq + 1) * (c.lk + 1), 0.25f);
    std::vector<std::uint8_t> pad((c.n + 1) * c.lk, 0);
    switch (corruption) {
      case 1:  // a bias whose key length is not Lk
        bad.bias = {big.data(), 1, 1, 1, c.lk + 1};
        break;
      case 2:  // a bias whose query rows neither broadcast nor match
        bad.bias = {big.data(), 1, 1, c.lq + 1, c.lk};
        break;
      case 3:
        bad.window = 0;
        if (bad.causal == simdattn::Causal::none) bad.causal = simdattn::Causal::bottom_right;
        break;
      case 4:
        bad.softcap = fdp.PickValueInArray({0.0f, -1.0f, kNaN, INFINITY});
        break;
      case 5:  // a slope that is not finite
        wrong[fdp.ConsumeIntegralInRange<std::size_t>(0, c.h - 1)] =
            fdp.ConsumeBool() ? kNaN : -INFINITY;
        bad.alibi = {true, {wrong.data(), c.h}};
        break;
      case 6:  // sinks for another number of heads
        bad.sinks = {wrong.data(), c.h + 1};
        break;
      case 7:  // weights of the wrong size
        bad.weights = {weights.data() + weights_offset, weights_full + 1, o.weights.average_heads};
        break;
      case 8:  // the weights on top of the query
        bad.weights = {const_cast<float*>(qb.view().data), weights_full, o.weights.average_heads};
        break;
      case 9:  // a window without causal
        bad.window = 4;
        bad.causal = simdattn::Causal::none;
        break;
      case 10:  // key padding of another batch size
        bad.key_padding = {pad.data(), c.n + 1, c.lk};
        break;
    }
    const std::vector<float> out_before = out.buffer, weights_before = weights,
                             q_before = qb.buffer;
    expect_invalid_argument("variants corruption", [&] {
      simdattn::scaled_dot_product_attention(qb.view(), kb.view(), vb.view(), out.mutable_view(),
                                             c.mask, bad);
    });
    if (!bit_difference(out.buffer, out_before).empty() ||
        !bit_difference(weights, weights_before).empty() ||
        !bit_difference(qb.buffer, q_before).empty()) {
      fail("a refused call changed out, the weights or the query");
    }
    return;
  }

  c.rule.mask = c.mask;
  c.rule.causal = o.causal;
  c.rule.lq = c.lq;
  c.rule.lk = c.lk;
  c.rule.window = o.window.value_or(0);
  c.rule.key_padding = o.key_padding;
  c.rule.bias = o.bias;
  c.rule.softcap = o.softcap.value_or(0.0f);
  if (o.alibi.enabled) c.rule.alibi = slopes.empty() ? simdattn::alibi_slopes(c.h) : slopes;
  c.rule.sinks = sinks.empty() ? nullptr : sinks.data();

  // Sometimes NaN, Inf, huge or denormal values in the inputs or the bias: then each path, at two
  // thread counts, must run without a crash, an exception or a write outside the views, and with
  // only NaN and Inf planted, its non-finite outputs and weights are the reference's.
  if (fdp.ConsumeIntegralInRange(0, 4) == 0) {
    const bool nonfinite_only = fdp.ConsumeBool();
    plant_specials(fdp, qb, "q", nonfinite_only);
    plant_specials(fdp, kb, "k", nonfinite_only);
    plant_specials(fdp, vb, "v", nonfinite_only);
    if (!bias_values.empty() && fdp.ConsumeBool()) {
      const std::size_t at = fdp.ConsumeIntegralInRange<std::size_t>(0, bias_values.size() - 1);
      bias_values[at] = nonfinite_only ? fdp.PickValueInArray({kNaN, INFINITY, -INFINITY})
                                       : fdp.PickValueInArray({kNaN, INFINITY, 1e30f, -1e30f});
      describe("bias element " + std::to_string(at) + " = " + std::to_string(bias_values[at]));
    }
    c.q = qb.dense();
    c.k = kb.dense();
    c.v = vb.dense();
    const bool reach = only_nonfinite_planted(c, bias_values);
    std::vector<double> ref_out, ref_w;
    if (reach) reference_of(c, weights_size, ref_out, ref_w);
    // The optimized path multiplies the values of hidden keys inside a key block by zero: a
    // NaN/Inf value may reach the rows of its (batch, kv head), in its column or not.
    std::vector<char> v_dirty(c.n * c.hkv, 0);
    for (std::size_t x = 0; x < c.v.size(); ++x) {
      if (!std::isfinite(c.v[x])) v_dirty[x / (c.dv * c.hkv * c.lk) * c.hkv + x / c.dv % c.hkv] = 1;
    }
    const std::size_t group = c.h / c.hkv;
    Options opt = o;
    for (int call = 0; call < 3; ++call) {
      opt.path = call == 1 ? simdattn::Path::naive : simdattn::Path::optimized;
      if (call == 2) opt.threads = o.threads % 3 + 1;
      const Result got = run_call(qb, kb, vb, out_layout, weights_size, weights_offset, c, opt);
      if (!reach) continue;
      const bool fast = opt.path == simdattn::Path::optimized;
      const std::string path =
          std::string(path_name(opt.path)) + " (threads " + std::to_string(opt.threads) + ")";
      check_reach(ref_out, got.out, "out", path, [&](std::size_t x) {
        const std::size_t b = x / (c.dv * c.h * c.lq), j = x / c.dv % c.h;
        return fast && v_dirty[b * c.hkv + j / group] != 0;
      });
      check_reach(ref_w, got.weights, "weights", path, [](std::size_t) { return false; });
    }
    return;
  }

  std::vector<double> ref_out, ref_w;
  reference_of(c, weights_size, ref_out, ref_w);
  const std::vector<double> bounds = score_bounds(c);

  Options opt = o;
  opt.path = simdattn::Path::optimized;
  const Result fast = run_call(qb, kb, vb, out_layout, weights_size, weights_offset, c, opt);
  check(c, ref_out, ref_w, bounds, fast, "optimized");
  opt.threads = o.threads % 3 + 1;
  const Result again = run_call(qb, kb, vb, out_layout, weights_size, weights_offset, c, opt);
  for (const auto& [a, b, name] : {std::make_tuple(&fast.out, &again.out, "out"),
                                   std::make_tuple(&fast.weights, &again.weights, "weights")}) {
    const std::string diff = bit_difference(*a, *b);
    if (!diff.empty()) {
      fail(std::string("optimized ") + name + ": threads " + std::to_string(o.threads) + " and " +
           std::to_string(opt.threads) + " give different bits at " + diff);
    }
  }
  opt.path = simdattn::Path::naive;
  check(c, ref_out, ref_w, bounds,
        run_call(qb, kb, vb, out_layout, weights_size, weights_offset, c, opt), "naive");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_target = "fuzz_variants";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  g_case.clear();
  run(fdp);
  return 0;
}
