// libFuzzer target for training: the attention core's scaled_dot_product_attention_forward() and
// scaled_dot_product_attention_backward() (include/simdattn/training.hpp), and
// MultiHeadAttention::backward().
//
// An input for the core decodes to one problem: shapes (grouped K/V heads too), view strides and
// offsets, inputs sharing buffers (K = V, Q = K = V, d_out on top of Q or of out), a broadcast
// mask, the causal alignment, a sliding window, key padding, the masked-row policy, scale, threads
// and ISA, normal data at several magnitudes with denormals or NaN/Inf planted, and sometimes one
// corrupted argument. Each check aborts on failure, so libFuzzer keeps the input:
//   - the training forward's `out` has the plain call's bits, and its log-sum-exp matches the
//     double oracle (-inf exactly where a row sees no key);
//   - the optimized gradients (from that out and lse) and the naive ones match the double oracle
//     of src/reference/backward.hpp, within a bound made of the magnitudes of each gradient's
//     terms; the optimized ones have the same bits on another thread count;
//   - no gradient is written outside its view (stride gaps keep their sentinel);
//   - a corrupted call throws std::invalid_argument and leaves every buffer as it was.
// An input for the module decodes to a module (grouped K/V heads, some biases), inputs that may
// be one tensor (self-attention, keys = query, keys = values), a mask, causal, window and key
// padding; every gradient of both paths is compared with the double oracle (each use of a tensor
// summed), the optimized ones bitwise on two thread counts, and a refused call must leave the
// Gradients of an earlier call as they were.
// Inputs with NaN or Inf, or beyond the magnitudes the bounds cover, need only run without a
// crash or a write outside the views. ASan and UBSan catch the rest.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fuzz_support.hpp"
#include "mask_rule.hpp"
#include "reference/backward.hpp"
#include "simdattn/simdattn.hpp"

namespace {

using namespace fuzz;
using simdattn::ConstLseView;
using simdattn::LseView;

// Multiply-adds of one forward at most: the backward costs about 2.5 of them, the oracle and the
// tolerance's magnitudes two more, in double, under ASan.
constexpr double kMaxWork = 1.5e6;
// Inputs up to this magnitude and rows whose score bound stays below kComparableScore are
// compared with the oracle; others are checked for no crash and no stray write only.
constexpr double kComparableInput = 1e6;
constexpr double kComparableScore = 1e4;
// Relative tolerance on a gradient element's magnitude bound, and an absolute floor for results
// the optimized path flushes to zero (it reads and writes denormals as zero, README).
constexpr double kRelTol = 3e-5;
constexpr double kAbsTol = 1e-35;
// Below this (a margin over FLT_MIN for the float rounding of a probability), a term of the
// gradients may be flushed to zero.
constexpr double kFlushed = 1e-36;

struct Problem {
  std::size_t n, lq, lk, h, hkv, d;
  std::vector<double> q, k, v, d_out;  // dense [n, l, heads, d]
  simdattn::detail::MaskRule rule;     // the oracle's: mask, causal, window, key padding
  Options options;
  double scale;
};

// The oracle's results and the bounds the library's results are compared within.
struct Expected {
  std::vector<double> lse, d_q, d_k, d_v;   // lse dense [n, h, lq]
  std::vector<double> lse_tol, tq, tk, tv;  // tolerances, element by element
  bool comparable = true;                   // every row's score bound small enough
};

// The oracle's gradients and log-sum-exp, and per element a bound on the sum of the magnitudes
// of the terms that make it: with S = scale Q K^T, P = softmax(S), dP = dO V^T, D = rowsum(dO O),
// each term of dS_ik = P_ik (dP_ik - D_i) is at most P_ik (sum_t |dO_it V_kt| + sum_t |dO_it|
// sum_k P_ik |V_kt|); float rounding of a score s perturbs P_ik by about eps |s| relative, hence
// the factor (1 + score bound of the row).
Expected expect(const Problem& c) {
  Expected e;
  const std::size_t group = c.h / c.hkv, d = c.d;
  e.lse.assign(c.n * c.h * c.lq, 0.0);
  e.lse_tol.assign(e.lse.size(), 0.0);
  e.d_q.assign(c.q.size(), 0.0);
  e.d_k.assign(c.k.size(), 0.0);
  e.d_v.assign(c.v.size(), 0.0);
  simdattn::reference::attention_backward<double>(
      dense_heads(c.q, c.n, c.lq, c.h, d), dense_heads(c.k, c.n, c.lk, c.hkv, d),
      dense_heads(c.v, c.n, c.lk, c.hkv, d), dense_heads(c.d_out, c.n, c.lq, c.h, d),
      dense_heads_out(e.d_q, c.n, c.lq, c.h, d), dense_heads_out(e.d_k, c.n, c.lk, c.hkv, d),
      dense_heads_out(e.d_v, c.n, c.lk, c.hkv, d), c.rule, c.scale, c.options.masked_rows);

  std::vector<double> mq(c.q.size(), 0.0), mk(c.k.size(), 0.0), mv(c.v.size(), 0.0);
  std::vector<double> s(c.lk), p(c.lk), vabs(d);
  for (std::size_t b = 0; b < c.n; ++b) {
    for (std::size_t hh = 0; hh < c.h; ++hh) {
      const std::size_t g = hh / group;
      for (std::size_t i = 0; i < c.lq; ++i) {
        const double* qi = &c.q[((b * c.lq + i) * c.h + hh) * d];
        const double* doi = &c.d_out[((b * c.lq + i) * c.h + hh) * d];
        auto krow = [&](std::size_t key) { return &c.k[((b * c.lk + key) * c.hkv + g) * d]; };
        auto vrow = [&](std::size_t key) { return &c.v[((b * c.lk + key) * c.hkv + g) * d]; };
        // Scores of all keys (a kernel may compute masked ones too), and the row's bound.
        double bound = 0.0, smax = -INFINITY;
        bool any = false;
        for (std::size_t key = 0; key < c.lk; ++key) {
          double acc = 0.0, abs_acc = 0.0;
          for (std::size_t t = 0; t < d; ++t) {
            acc += qi[t] * krow(key)[t];
            abs_acc += std::abs(qi[t] * krow(key)[t]);
          }
          s[key] = c.scale * acc;
          bound = std::max(bound, c.scale * abs_acc);
          if (simdattn::reference::visible_key(c.rule, b, hh, i, key)) {
            any = true;
            smax = std::max(smax, s[key]);
          }
        }
        if (bound > kComparableScore) e.comparable = false;
        const std::size_t r = (b * c.h + hh) * c.lq + i;
        if (!any) {
          e.lse[r] = -INFINITY;
          if (c.options.masked_rows == simdattn::MaskedRows::uniform) {
            for (std::size_t key = 0; key < c.lk; ++key)
              for (std::size_t t = 0; t < d; ++t)
                mv[((b * c.lk + key) * c.hkv + g) * d + t] += std::abs(doi[t]) / c.lk;
          }
          continue;
        }
        double sum = 0.0;
        for (std::size_t key = 0; key < c.lk; ++key) {
          p[key] = simdattn::reference::visible_key(c.rule, b, hh, i, key) ? std::exp(s[key] - smax)
                                                                           : 0.0;
          sum += p[key];
        }
        e.lse[r] = smax + std::log(sum);
        e.lse_tol[r] = kRelTol * (1.0 + bound);
        std::fill(vabs.begin(), vabs.end(), 0.0);
        for (std::size_t key = 0; key < c.lk; ++key) {
          p[key] /= sum;
          for (std::size_t t = 0; t < d; ++t) vabs[t] += p[key] * std::abs(vrow(key)[t]);
        }
        double dabs = 0.0;
        for (std::size_t t = 0; t < d; ++t) dabs += std::abs(doi[t]) * vabs[t];
        const double rounding = 1.0 + bound;
        for (std::size_t key = 0; key < c.lk; ++key) {
          if (p[key] == 0.0) continue;
          double dpabs = 0.0;
          for (std::size_t t = 0; t < d; ++t) dpabs += std::abs(doi[t] * vrow(key)[t]);
          // A probability or a dS term that float holds only as a denormal is zero in the
          // optimized path: such a term may be missing altogether.
          const bool flushed = p[key] < kFlushed || p[key] * (dpabs + dabs) < kFlushed;
          const double whole = flushed ? 1.0 / kRelTol : rounding;
          const double w = p[key] * (dpabs + dabs) * whole;
          const std::size_t kr = ((b * c.lk + key) * c.hkv + g) * d;
          for (std::size_t t = 0; t < d; ++t) {
            mq[((b * c.lq + i) * c.h + hh) * d + t] += c.scale * w * std::abs(krow(key)[t]);
            mk[kr + t] += c.scale * w * std::abs(qi[t]);
            mv[kr + t] += p[key] * whole * std::abs(doi[t]);
          }
        }
      }
    }
  }
  auto tolerances = [](const std::vector<double>& m) {
    std::vector<double> t(m.size());
    for (std::size_t x = 0; x < m.size(); ++x) t[x] = kRelTol * m[x] + kAbsTol;
    return t;
  };
  e.tq = tolerances(mq);
  e.tk = tolerances(mk);
  e.tv = tolerances(mv);
  return e;
}

void compare(const std::vector<double>& got, const std::vector<double>& want,
             const std::vector<double>& tol, const char* what, bool values) {
  for (std::size_t x = 0; x < got.size(); ++x) {
    if (!std::isfinite(got[x])) {
      fail(std::string(what) + ": non-finite " + std::to_string(got[x]) + " at element " +
           std::to_string(x) + " from finite inputs");
    }
    if (values && !(std::abs(got[x] - want[x]) <= tol[x])) {
      char buf[200];
      std::snprintf(buf, sizeof buf, ": element %zu of %zu: got %.9g, oracle %.9g, tolerance %.3g",
                    x, got.size(), got[x], want[x], tol[x]);
      fail(std::string(what) + buf);
    }
  }
}

std::vector<float> to_float(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

struct Gradients {
  Strided q, k, v;
};

Gradients run_backward(const Strided& q, const Strided& k, const Strided& v, const Strided& out,
                       const Strided& d_out, const std::vector<float>& lse, const Gradients& layout,
                       const Mask& mask, const Options& options, std::size_t h) {
  Gradients g{fresh_output(layout.q, kNaN), fresh_output(layout.k, kNaN),
              fresh_output(layout.v, kNaN)};
  expect_success(path_name(options.path), [&] {
    simdattn::scaled_dot_product_attention_backward(
        q.view(), k.view(), v.view(), out.view(), d_out.view(),
        ConstLseView{lse.data(), q.n, h, q.l}, g.q.mutable_view(), g.k.mutable_view(),
        g.v.mutable_view(), mask, options);
  });
  check_gaps(g.q, "d_query");
  check_gaps(g.k, "d_keys");
  check_gaps(g.v, "d_values");
  return g;
}

bool all_finite_within(const std::vector<double>& x, double limit) {
  return std::all_of(x.begin(), x.end(), [&](double v) { return std::abs(v) <= limit; });
}

void fuzz_core(FuzzedDataProvider& fdp) {
  Problem c;
  c.n = fdp.ConsumeIntegralInRange<std::size_t>(1, 2);
  c.hkv = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  c.h = c.hkv * fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  c.lq = fdp.ConsumeIntegralInRange<std::size_t>(1, 80);
  c.lk = fdp.ConsumeIntegralInRange<std::size_t>(1, 150);
  c.d = fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  while (static_cast<double>(c.n * c.h * c.lq * c.lk * c.d) > kMaxWork) {
    if (c.lk >= c.lq) {
      c.lk = (c.lk + 1) / 2;
    } else {
      c.lq = (c.lq + 1) / 2;
    }
  }
  // 0: separate buffers; 1: keys and values share one; 2: self-attention on one buffer.
  int sharing = fdp.ConsumeIntegralInRange(0, 2);
  if (sharing == 2 && (c.lq != c.lk || c.h != c.hkv)) sharing = 1;
  // d_out: 0 a buffer of its own; 1 on top of the query; 2 on top of out.
  const int d_out_sharing = fdp.ConsumeIntegralInRange(0, 2);
  describe("n " + std::to_string(c.n) + " lq " + std::to_string(c.lq) + " lk " +
           std::to_string(c.lk) + " h " + std::to_string(c.h) + " kv_heads " +
           std::to_string(c.hkv) + " d " + std::to_string(c.d) + " sharing " +
           std::to_string(sharing) + " d_out sharing " + std::to_string(d_out_sharing));
  Random rng(fdp.ConsumeIntegral<std::uint64_t>());
  const float qk_magnitude = fdp.PickValueInArray({1.0f, 0.3f, 3.0f});
  const float v_magnitude = fdp.PickValueInArray({1.0f, 1e-3f, 1e3f});
  const float g_magnitude = fdp.PickValueInArray({1.0f, 1e-3f, 1e3f});

  Strided qb = make_strided(fdp, c.n, c.lq, c.h, c.d, kNaN);
  fill_normal(qb, rng, qk_magnitude);
  Strided kb = make_strided(fdp, c.n, c.lk, c.hkv, c.d, kNaN);
  fill_normal(kb, rng, qk_magnitude);
  Strided vb = make_strided(fdp, c.n, c.lk, c.hkv, c.d, kNaN);
  fill_normal(vb, rng, v_magnitude);
  Strided gb = make_strided(fdp, c.n, c.lq, c.h, c.d, kNaN);
  fill_normal(gb, rng, g_magnitude);
  if (fdp.ConsumeBool()) {
    plant_specials(fdp, qb, "q");
    plant_specials(fdp, kb, "k");
    plant_specials(fdp, vb, "v");
    plant_specials(fdp, gb, "d_out");
  }
  const Strided* qs = &qb;
  const Strided* ks = &kb;
  const Strided* vs = &vb;
  if (sharing >= 1) vs = ks;
  if (sharing == 2) qs = ks;

  std::vector<std::uint8_t> mask_bytes, padding_bytes;
  Mask mask;
  make_mask(fdp, rng, c.n, c.h, c.lq, c.lk, mask, mask_bytes);
  c.options = make_options(fdp, c.d);
  c.scale = scale_of(c.options, c.d);
  if (c.options.causal != simdattn::Causal::none && fdp.ConsumeBool()) {
    c.options.window = fdp.ConsumeIntegralInRange<std::size_t>(1, c.lk + 3);
    describe("window " + std::to_string(*c.options.window));
  }
  if (fdp.ConsumeBool()) {
    const double padded = fdp.PickValueInArray({0.1, 0.5, 1.0});
    padding_bytes.resize(c.n * c.lk);
    for (auto& x : padding_bytes) x = rng.uniform() < padded ? 1 : 0;
    c.options.key_padding = {padding_bytes.data(), c.n, c.lk};
    describe("key_padding, padded " + std::to_string(padded));
  }
  c.rule.mask = mask;
  c.rule.causal = c.options.causal;
  c.rule.lq = c.lq;
  c.rule.lk = c.lk;
  c.rule.window = c.options.window.value_or(0);
  c.rule.key_padding = c.options.key_padding;

  const Strided out_layout = make_strided(fdp, c.n, c.lq, c.h, c.d, kGapSentinel);
  const Gradients layout{make_strided(fdp, c.n, c.lq, c.h, c.d, kGapSentinel),
                         make_strided(fdp, c.n, c.lk, c.hkv, c.d, kGapSentinel),
                         make_strided(fdp, c.n, c.lk, c.hkv, c.d, kGapSentinel)};
  const int corruption = fdp.ConsumeIntegralInRange(0, 40);

  // The training forward, and the plain call whose bits it must have.
  Options opt = c.options;
  opt.path = simdattn::Path::optimized;
  Strided out = fresh_output(out_layout, kNaN);
  std::vector<float> lse(c.n * c.h * c.lq, kNaN);
  const LseView<float> lse_view{lse.data(), c.n, c.h, c.lq};
  expect_success("training forward", [&] {
    simdattn::scaled_dot_product_attention_forward(qs->view(), ks->view(), vs->view(),
                                                   out.mutable_view(), lse_view, mask, opt);
  });
  check_gaps(out, "out");
  {
    Strided plain = fresh_output(out_layout, kNaN);
    expect_success("plain forward", [&] {
      simdattn::scaled_dot_product_attention(qs->view(), ks->view(), vs->view(),
                                             plain.mutable_view(), mask, opt);
    });
    const std::vector<float> a = to_float(out.dense()), b = to_float(plain.dense());
    for (std::size_t x = 0; x < a.size(); ++x) {
      if (std::memcmp(&a[x], &b[x], sizeof(float)) != 0 && !(std::isnan(a[x]) && std::isnan(b[x])))
        fail("training forward: out differs from the plain call's at element " + std::to_string(x) +
             ": " + std::to_string(a[x]) + " vs " + std::to_string(b[x]));
    }
  }
  const Strided* d_out = d_out_sharing == 0 ? &gb : d_out_sharing == 1 ? qs : &out;
  c.q = qs->dense();
  c.k = ks->dense();
  c.v = vs->dense();
  c.d_out = d_out->dense();

  if (corruption >= 1 && corruption <= 14) {
    describe("corruption " + std::to_string(corruption));
    ConstHeadsView q = qs->view(), k = ks->view(), v = vs->view(), o = out.view(),
                   go = d_out->view();
    Gradients g{fresh_output(layout.q, kNaN), fresh_output(layout.k, kNaN),
                fresh_output(layout.v, kNaN)};
    HeadsView<float> gq = g.q.mutable_view(), gk = g.k.mutable_view(), gv = g.v.mutable_view();
    ConstLseView l{lse.data(), c.n, c.h, c.lq};
    Options bad = opt;
    bool forward = false;
    static const float cap_bias = 0.5f;
    switch (corruption) {
      case 1:
        l.data = nullptr;
        break;
      case 2:
        l.l += 1;
        break;
      case 3: {  // a gradient laid over an input of the same shape
        const ConstHeadsView& in = fdp.PickValueInArray({q, o, go});
        gq = {const_cast<float*>(in.data), in.n, in.l, in.h, in.d, in.row_stride, in.batch_stride};
        break;
      }
      case 4:  // two gradients on top of each other
        gk.data = gv.data;
        break;
      case 5:
        go.l += 1;
        break;
      case 6:  // variants the backward pass does not differentiate
        switch (fdp.ConsumeIntegralInRange(0, 2)) {
          case 0:
            bad.softcap = 30.0f;
            break;
          case 1:
            bad.alibi.enabled = true;
            break;
          default:
            bad.sinks = {&cap_bias, c.h};
            break;
        }
        break;
      case 7:
        gv.d += 1;
        break;
      case 8:
        bad.window = 0;
        if (bad.causal == simdattn::Causal::none) bad.causal = simdattn::Causal::bottom_right;
        break;
      case 9:
        o.data = nullptr;
        break;
      case 10:  // the gradient of the keys on top of d_out's extent
        gk.data = const_cast<float*>(go.data);
        break;
      case 11:
        bad.threads = fdp.PickValueInArray({-1, simdattn::kMaxThreads + 1});
        break;
      case 12:
        bad.scale = fdp.PickValueInArray({0.0f, -1.0f, kNaN});
        break;
      case 13:  // the training forward with a log-sum-exp of the wrong heads
        forward = true;
        l.h += 1;
        break;
      case 14:  // the training forward writing lse over an input
        forward = true;
        l.data = fdp.PickValueInArray({q.data, k.data, v.data});
        break;
    }
    const std::vector<std::vector<float>> before = {qb.buffer,  kb.buffer,  vb.buffer,
                                                    gb.buffer,  out.buffer, lse,
                                                    g.q.buffer, g.k.buffer, g.v.buffer};
    if (forward) {
      expect_invalid_argument("training forward corruption", [&] {
        simdattn::scaled_dot_product_attention_forward(
            q, k, v, out.mutable_view(), LseView<float>{const_cast<float*>(l.data), l.n, l.h, l.l},
            mask, bad);
      });
    } else {
      expect_invalid_argument("backward corruption", [&] {
        simdattn::scaled_dot_product_attention_backward(q, k, v, o, go, l, gq, gk, gv, mask, bad);
      });
    }
    const std::vector<std::vector<float>> after = {qb.buffer,  kb.buffer,  vb.buffer,
                                                   gb.buffer,  out.buffer, lse,
                                                   g.q.buffer, g.k.buffer, g.v.buffer};
    for (std::size_t x = 0; x < before.size(); ++x) {
      if (before[x].size() != after[x].size() ||
          std::memcmp(before[x].data(), after[x].data(), before[x].size() * sizeof(float)) != 0)
        fail("a refused call changed buffer " + std::to_string(x) +
             " (q, k, v, d_out, out, lse, d_query, d_keys, d_values)");
    }
    return;
  }

  const Gradients fast = run_backward(*qs, *ks, *vs, out, *d_out, lse, layout, mask, opt, c.h);
  const bool clean =
      all_finite_within(c.q, kComparableInput) && all_finite_within(c.k, kComparableInput) &&
      all_finite_within(c.v, kComparableInput) && all_finite_within(c.d_out, kComparableInput);
  if (!clean) return;  // NaN/Inf or huge values: no crash and no stray write is all we ask

  const Expected e = expect(c);
  for (std::size_t r = 0; r < lse.size(); ++r) {
    const bool ok =
        std::isinf(e.lse[r]) ? lse[r] == e.lse[r] : std::abs(lse[r] - e.lse[r]) <= e.lse_tol[r];
    if (!ok && e.comparable) {
      fail("training forward: lse[" + std::to_string(r) + "] = " + std::to_string(lse[r]) +
           ", oracle " + std::to_string(e.lse[r]));
    }
  }
  auto check = [&](const Gradients& g, const char* path) {
    compare(g.q.dense(), e.d_q, e.tq, (std::string(path) + " d_query").c_str(), e.comparable);
    compare(g.k.dense(), e.d_k, e.tk, (std::string(path) + " d_keys").c_str(), e.comparable);
    compare(g.v.dense(), e.d_v, e.tv, (std::string(path) + " d_values").c_str(), e.comparable);
  };
  check(fast, "optimized");

  Options other = opt;
  other.threads = opt.threads % 3 + 1;
  const Gradients again = run_backward(*qs, *ks, *vs, out, *d_out, lse, layout, mask, other, c.h);
  for (const auto& [a, b, name] :
       {std::make_tuple(&fast.q, &again.q, "d_query"), std::make_tuple(&fast.k, &again.k, "d_keys"),
        std::make_tuple(&fast.v, &again.v, "d_values")}) {
    const std::string diff = bit_difference(to_float(a->dense()), to_float(b->dense()));
    if (!diff.empty()) {
      fail(std::string("optimized ") + name + ": threads " + std::to_string(opt.threads) + " and " +
           std::to_string(other.threads) + " give different bits at " + diff);
    }
  }
  Options naive = opt;
  naive.path = simdattn::Path::naive;
  check(run_backward(*qs, *ks, *vs, out, *d_out, lse, layout, mask, naive, c.h), "naive");
}

// ---------------------------------------------------------------------------------------------
// MultiHeadAttention::backward

using simdattn::Projection;
constexpr Projection kProjections[4] = {Projection::query, Projection::key, Projection::value,
                                        Projection::output};

// Every gradient of a module call as float arrays: d query, d keys, d values, then the weights'
// and the biases' in kProjections order (empty where the module has no such bias).
std::vector<std::vector<float>> flatten(const simdattn::Gradients& g) {
  std::vector<std::vector<float>> all = {g.query.values(), g.keys.values(), g.values.values()};
  for (const Projection p : kProjections) all.push_back(g.weight(p));
  for (const Projection p : kProjections) all.push_back(g.bias(p));
  return all;
}

const char* const kGradientNames[11] = {"d query", "d keys", "d values", "dWq", "dWk", "dWv",
                                        "dWo",     "dbq",    "dbk",      "dbv", "dbo"};

void fuzz_module(FuzzedDataProvider& fdp) {
  const std::size_t kv_heads = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  const std::size_t heads = kv_heads * fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  const std::size_t d = fdp.ConsumeIntegralInRange<std::size_t>(1, 12);
  const std::size_t e = heads * d, kv_e = kv_heads * d;
  const std::size_t n = fdp.ConsumeIntegralInRange<std::size_t>(1, 2);
  const std::size_t lq = fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  // 0: distinct tensors; 1: keys and values one tensor; 2: keys are the query; 3: self.
  const int inputs = fdp.ConsumeIntegralInRange(0, 3);
  const std::size_t lk = inputs >= 2 ? lq : fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  Random rng(fdp.ConsumeIntegral<std::uint64_t>());
  describe("module backward E " + std::to_string(e) + " heads " + std::to_string(heads) +
           " kv_heads " + std::to_string(kv_heads) + " n " + std::to_string(n) + " lq " +
           std::to_string(lq) + " lk " + std::to_string(lk) + " inputs " + std::to_string(inputs));

  simdattn::MultiHeadAttention m(e, heads, simdattn::KvHeads{kv_heads}, rng.next());
  for (const Projection p : kProjections) {
    if (!fdp.ConsumeBool()) continue;
    std::vector<float> bias(p == Projection::key || p == Projection::value ? kv_e : e);
    for (float& b : bias) b = static_cast<float>(rng.normal());
    m.set_bias(p, bias);
  }
  auto tensor = [&](std::size_t l, const char* name) {
    std::vector<float> x(n * l * e);
    for (float& v : x) v = static_cast<float>(rng.normal());
    if (fdp.ConsumeIntegralInRange(0, 7) == 0) {
      const std::size_t at = fdp.ConsumeIntegralInRange<std::size_t>(0, x.size() - 1);
      x[at] = pick_special(fdp);
      describe(std::string(name) + " element " + std::to_string(at) + " = " +
               std::to_string(x[at]));
    }
    return x;
  };
  const std::vector<float> q = tensor(lq, "query"), k = tensor(lk, "keys"),
                           v = tensor(lk, "values"), g = tensor(lq, "d_out");
  const simdattn::ConstTensorView query{q.data(), n, lq, e};
  const simdattn::ConstTensorView keys =
      inputs >= 2 ? query : simdattn::ConstTensorView{k.data(), n, lk, e};
  const simdattn::ConstTensorView values = inputs == 3 ? query
                                           : inputs == 1
                                               ? keys
                                               : simdattn::ConstTensorView{v.data(), n, lk, e};
  const simdattn::ConstTensorView d_out{g.data(), n, lq, e};

  Mask mask;
  std::vector<std::uint8_t> mask_bytes, padding_bytes;
  make_mask(fdp, rng, n, heads, lq, lk, mask, mask_bytes);
  Options options = make_options(fdp, d);
  if (options.causal != simdattn::Causal::none && fdp.ConsumeBool()) {
    options.window = fdp.ConsumeIntegralInRange<std::size_t>(1, lk + 3);
    describe("window " + std::to_string(*options.window));
  }
  if (fdp.ConsumeBool()) {
    padding_bytes.resize(n * lk);
    for (auto& x : padding_bytes) x = rng.uniform() < 0.3 ? 1 : 0;
    options.key_padding = {padding_bytes.data(), n, lk};
    describe("key_padding");
  }

  simdattn::Gradients fast;
  expect_success("optimized module backward",
                 [&] { m.backward(values, keys, query, d_out, fast, mask, options); });
  const int corruption = fdp.ConsumeIntegralInRange(0, 40);
  if (corruption >= 1 && corruption <= 8) {
    describe("corruption " + std::to_string(corruption));
    simdattn::ConstTensorView bq = query, bk = keys, bg = d_out;
    Options bad = options;
    std::vector<float> strided;
    switch (corruption) {
      case 1:
        bg.l += 1;
        break;
      case 2:
        bad.softcap = 50.0f;
        break;
      case 3:
        bk.data = nullptr;
        break;
      case 4:
        bad.window = 0;
        if (bad.causal == simdattn::Causal::none) bad.causal = simdattn::Causal::top_left;
        break;
      case 5:
        bad.threads = -2;
        break;
      case 6:  // a strided view: the backward pass takes dense tensors only (one row has none)
        if (n * lq == 1) return;
        strided.assign(n * lq * (e + 1), 0.5f);
        bq = {strided.data(), n, lq, e, e + 1, lq * (e + 1)};
        break;
      case 7:
        bg.e += 1;
        break;
      case 8:  // the gradient of the query (from the call above) passed as the query
        bq = std::as_const(fast.query).view();
        break;
    }
    const std::vector<std::vector<float>> before = flatten(fast);
    expect_invalid_argument("module backward corruption",
                            [&] { m.backward(values, bk, bq, bg, fast, mask, bad); });
    const std::vector<std::vector<float>> after = flatten(fast);
    for (std::size_t t = 0; t < after.size(); ++t) {
      if (!bit_difference(before[t], after[t]).empty())
        fail(std::string("a refused module backward (corruption ") + std::to_string(corruption) +
             ") changed " + kGradientNames[t]);
    }
    return;
  }

  // The oracle, each use of a tensor separately, then summed over the uses of each tensor.
  auto to_double = [](const std::vector<float>& x) {
    return std::vector<double>(x.begin(), x.end());
  };
  std::vector<double> w[4], b[4], dw[4], db[4];
  for (int i = 0; i < 4; ++i) {
    w[i] = to_double(m.weight(kProjections[i]));
    b[i] = to_double(m.bias(kProjections[i]));
    dw[i].resize(w[i].size());
    db[i].resize(b[i].size());
  }
  auto ptr = [](std::vector<double>& x) { return x.empty() ? nullptr : x.data(); };
  const std::vector<double> vd(values.data, values.data + n * lk * e),
      kd(keys.data, keys.data + n * lk * e), qd(q.begin(), q.end()), gd(g.begin(), g.end());
  std::vector<double> dv(vd.size()), dk(kd.size()), dq(qd.size());
  simdattn::detail::MaskRule rule{mask, options.causal, lq, lk};
  rule.window = options.window.value_or(0);
  rule.key_padding = options.key_padding;
  simdattn::reference::multi_head_attention_backward<double>(
      vd.data(), kd.data(), qd.data(), n, lk, lq, e, heads,
      simdattn::reference::Weights<double>{w[0].data(), w[1].data(), w[2].data(), w[3].data(),
                                           ptr(b[0]), ptr(b[1]), ptr(b[2]), ptr(b[3]), kv_heads},
      rule, scale_of(options, d), options.masked_rows, gd.data(), dv.data(), dk.data(), dq.data(),
      simdattn::reference::WeightGradients<double>{dw[0].data(), dw[1].data(), dw[2].data(),
                                                   dw[3].data(), ptr(db[0]), ptr(db[1]), ptr(db[2]),
                                                   ptr(db[3])});
  std::vector<double> want_q = dq, want_k = dk, want_v = dv;
  for (std::size_t i = 0; i < want_q.size(); ++i) {
    if (inputs == 3) want_q[i] += dk[i] + dv[i];
    if (inputs == 2) want_q[i] += dk[i];
  }
  if (inputs == 3) want_k = want_v = want_q;
  if (inputs == 2) want_k = want_q;
  if (inputs == 1) {
    for (std::size_t i = 0; i < want_k.size(); ++i) want_k[i] += dv[i];
    want_v = want_k;
  }
  std::vector<std::vector<double>> want = {want_q, want_k, want_v};
  for (const auto& x : dw) want.push_back(x);
  for (const auto& x : db) want.push_back(x);

  auto tame = [](const std::vector<float>& x) {
    return std::all_of(x.begin(), x.end(), [](float y) { return std::abs(y) <= kComparableInput; });
  };
  // A planted NaN/Inf or huge value (whose square overflows float): no crash is all we ask.
  if (!(tame(q) && tame(k) && tame(v) && tame(g))) return;
  // Each gradient within a fraction of its own largest element, plus a smaller fraction of the
  // largest of all: a gradient that is zero in exact arithmetic (Lk = 1: nothing flows through
  // the scores) holds the rounding of the others; plus the floor for denormal results, which the
  // optimized path flushes to zero.
  double largest = 0.0;
  for (const auto& x : want)
    for (double y : x) largest = std::max(largest, std::abs(y));
  auto check = [&](const simdattn::Gradients& got, const char* path) {
    const std::vector<std::vector<float>> all = flatten(got);
    for (std::size_t t = 0; t < all.size(); ++t) {
      if (all[t].size() != want[t].size()) {
        fail(std::string(path) + " module backward: " + kGradientNames[t] + " has " +
             std::to_string(all[t].size()) + " elements, not " + std::to_string(want[t].size()));
      }
      double own = 0.0;
      for (double y : want[t]) own = std::max(own, std::abs(y));
      const double tol = 3e-4 * own + 3e-5 * largest + 1e-30;
      for (std::size_t x = 0; x < all[t].size(); ++x) {
        if (!(std::abs(all[t][x] - want[t][x]) <= tol)) {
          char buf[200];
          std::snprintf(buf, sizeof buf, " element %zu of %zu: got %.9g, oracle %.9g, tol %.3g", x,
                        all[t].size(), all[t][x], want[t][x], tol);
          fail(std::string(path) + " module backward: " + kGradientNames[t] + buf);
        }
      }
    }
  };
  check(fast, "optimized");
  Options other = options;
  other.threads = options.threads % 3 + 1;
  simdattn::Gradients again;
  expect_success("optimized module backward",
                 [&] { m.backward(values, keys, query, d_out, again, mask, other); });
  const std::vector<std::vector<float>> a = flatten(fast), c = flatten(again);
  for (std::size_t t = 0; t < a.size(); ++t) {
    const std::string diff = bit_difference(a[t], c[t]);
    if (!diff.empty()) {
      fail(std::string("optimized module backward: ") + kGradientNames[t] + ": threads " +
           std::to_string(options.threads) + " and " + std::to_string(other.threads) +
           " give different bits at " + diff);
    }
  }
  Options naive = options;
  naive.path = simdattn::Path::naive;
  simdattn::Gradients slow;
  expect_success("naive module backward",
                 [&] { m.backward(values, keys, query, d_out, slow, mask, naive); });
  check(slow, "naive");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_target = "fuzz_backward";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  g_case.clear();
  if (fdp.ConsumeBool()) {
    fuzz_module(fdp);
  } else {
    fuzz_core(fdp);
  }
  return 0;
}
