// libFuzzer target for scaled_dot_product_attention() and MultiHeadAttention::forward().
//
// Each input decodes to one call: shapes, view strides, pointer offsets, buffer sharing,
// options, a broadcast mask, normal data with a few planted special values, and sometimes one
// corrupted argument. The optimized path (the ISA that SIMDATTN_ISA picks) and the naive float
// path are compared with the double reference of src/reference; the optimized path runs twice,
// with different thread counts, and must give the same bits. Any of these aborts, so libFuzzer
// keeps the input: a mismatch beyond tolerance, NaN/Inf where the row's inputs are finite and
// bounded, a write into a stride gap of `out`, a valid call that throws, a corrupted call that
// does not throw std::invalid_argument. ASan and UBSan catch the rest.
//
// Buffers have exactly the size of their extent (ASan sees a read one element past the end),
// views start at an odd float offset (no alignment is promised to callers), and every stride
// gap of an input holds NaN: a kernel that reads a gap poisons the row, which the comparison
// sees. What a row's result must be follows the README's rules: a row whose inputs (its query
// row and every key and value row of its batch and head, masked or not) are finite must match;
// rows reached by NaN or Inf are only required not to crash.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "mask_rule.hpp"
#include "reference/reference.hpp"
#include "simdattn/simdattn.hpp"

namespace {

using namespace fuzz;

// Multiply-adds of one attention call at most, so an input runs in milliseconds under ASan.
constexpr double kMaxWork = 3e6;
// Rows whose score bound or value magnitude exceed these are checked for finiteness only:
// float rounding of a score of 1e30 is 1e23, which reorders the softmax.
constexpr double kComparableScore = 1e4;
constexpr double kComparableValue = 1e6;
// Rows below this bound cannot overflow float anywhere (dot products, exp, sums): NaN or Inf
// there is a bug. Above it, float overflow is the mathematics, not the library.
constexpr double kFiniteBound = 1e36;
// log2(e), rounded up past the float rounding of scale x log2(e).
constexpr double kLog2eMargin = 1.4427 * (1.0 + 1e-6);

// Per (b, i, j) row of a dense [n, l, h, d] double tensor: does it hold NaN/Inf, and its
// largest finite magnitude.
struct RowStats {
  std::vector<char> nonfinite;
  std::vector<double> max_abs;
};

RowStats row_stats(const std::vector<double>& x, std::size_t rows, std::size_t d) {
  RowStats s{std::vector<char>(rows, 0), std::vector<double>(rows, 0.0)};
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t k = 0; k < d; ++k) {
      const double v = x[r * d + k];
      if (!std::isfinite(v)) {
        s.nonfinite[r] = 1;
      } else {
        s.max_abs[r] = std::max(s.max_abs[r], std::abs(v));
      }
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// scaled_dot_product_attention

// What the oracle and the checks need about one decoded attention-core case.
struct SdpaCase {
  std::size_t n, lq, lk, h, d;
  std::vector<double> q, k, v;  // dense [n, l, h, d]
  Mask mask;
  Options options;
};

// Checks one result of the attention core (dense [n, lq, h, d] floats) against the oracle.
void check_sdpa(const SdpaCase& c, const std::vector<double>& ref, const std::vector<float>& got,
                const char* path) {
  const std::size_t hd = c.h * c.d;
  const RowStats qs = row_stats(c.q, c.n * c.lq * c.h, c.d);
  const RowStats ks = row_stats(c.k, c.n * c.lk * c.h, c.d);
  const RowStats vs = row_stats(c.v, c.n * c.lk * c.h, c.d);
  const double scale = scale_of(c.options, c.d);
  for (std::size_t b = 0; b < c.n; ++b) {
    for (std::size_t j = 0; j < c.h; ++j) {
      bool k_dirty = false, v_dirty = false;
      double vmax = 0.0;
      for (std::size_t key = 0; key < c.lk; ++key) {
        const std::size_t r = (b * c.lk + key) * c.h + j;
        k_dirty = k_dirty || ks.nonfinite[r];
        v_dirty = v_dirty || vs.nonfinite[r];
        vmax = std::max(vmax, vs.max_abs[r]);
      }
      for (std::size_t i = 0; i < c.lq; ++i) {
        const std::size_t qr = (b * c.lq + i) * c.h + j;
        const double* r = &ref[(b * c.lq + i) * hd + j * c.d];
        const float* g = &got[(b * c.lq + i) * hd + j * c.d];
        // A bound on every |score| and every partial sum of a dot product, over all keys
        // (masked ones too: a kernel may compute their scores before masking them), from
        // the finite products (a NaN/Inf product makes its score NaN/Inf in any precision).
        // The optimized path reads denormals as zero and flushes denormal results (README),
        // so a query component below FLT_MIN, or one that scale x log2(e) takes below it (the
        // tile kernel scales the query first), and a denormal key component count as zero
        // there. A flushed component times an Inf is NaN there while the oracle sees a signed
        // Inf: such a score may turn the row NaN. Times a large finite one (1e-39 x 3e38), the
        // product the oracle keeps may matter: such rows are not compared.
        const bool flushes = std::string(path) == "optimized";
        auto q_flushed = [&](double qv) {
          return flushes && (is_denormal(qv) || is_denormal(qv * scale * kLog2eMargin));
        };
        auto k_flushed = [&](double kv) { return flushes && is_denormal(kv); };
        bool daz_nan = false;
        double bound = 0.0, daz_lost = 0.0;
        for (std::size_t key = 0; key < c.lk; ++key) {
          double acc = 0.0;
          for (std::size_t t = 0; t < c.d; ++t) {
            const double qv = c.q[qr * c.d + t];
            const double kv = c.k[((b * c.lk + key) * c.h + j) * c.d + t];
            const double x = std::abs(qv * kv);
            const bool flushed = q_flushed(qv) || k_flushed(kv);
            if (std::isfinite(x)) {
              acc += x;
              if (flushed) daz_lost = std::max(daz_lost, x * scale);
            }
            daz_nan = daz_nan || (flushed && (std::isinf(qv) || std::isinf(kv)));
          }
          bound = std::max(bound, acc * std::max(1.0, scale));
        }
        // The optimized path multiplies the query by scale x log2(e) before the dot products
        // (README, extreme values): a query element that product takes past FLT_MAX is Inf
        // there, and its row may turn NaN where the oracle's scores are finite.
        const bool q_fits =
            !flushes || qs.max_abs[qr] * scale * kLog2eMargin < std::numeric_limits<float>::max();
        const bool bounded = bound < kFiniteBound && vmax < kFiniteBound && !daz_nan && q_fits;
        if (k_dirty || v_dirty || qs.nonfinite[qr]) {
          // NaN/Inf in this row's inputs. Wherever the oracle is NaN/Inf the result must be
          // too (a path may add NaN, never lose it). Where the oracle is finite and float can
          // hold the scores, only a masked value's NaN/Inf may reach the result (0 x NaN
          // inside a key block).
          for (std::size_t t = 0; t < c.d; ++t) {
            const bool lost = !std::isfinite(r[t]) && std::isfinite(g[t]);
            const bool spread = std::isfinite(r[t]) && !std::isfinite(g[t]) && !v_dirty && bounded;
            if (lost || spread) {
              fail(std::string(path) + " sdpa: " + (lost ? "lost a NaN/Inf" : "NaN/Inf spread") +
                   " at [" + std::to_string(b) + ", " + std::to_string(i) + ", " +
                   std::to_string(j) + ", " + std::to_string(t) + "]: got " + std::to_string(g[t]) +
                   ", reference " + std::to_string(r[t]));
            }
          }
          continue;
        }
        const bool comparable =
            bound <= kComparableScore && vmax <= kComparableValue && q_fits && daz_lost < 1e-7;
        const double tol = 3e-5 * (1.0 + bound) * (1.0 + vmax);
        for (std::size_t t = 0; t < c.d; ++t) {
          if (bounded && !std::isfinite(g[t])) {
            fail(std::string(path) + " sdpa: non-finite output " + std::to_string(g[t]) + " at [" +
                 std::to_string(b) + ", " + std::to_string(i) + ", " + std::to_string(j) + ", " +
                 std::to_string(t) + "] from finite inputs");
          }
          if (comparable && !(std::abs(g[t] - r[t]) <= tol)) {
            fail(std::string(path) + " sdpa: mismatch at [" + std::to_string(b) + ", " +
                 std::to_string(i) + ", " + std::to_string(j) + ", " + std::to_string(t) +
                 "]: got " + std::to_string(g[t]) + ", reference " + std::to_string(r[t]) +
                 ", tolerance " + std::to_string(tol) + "; shape n " + std::to_string(c.n) +
                 " lq " + std::to_string(c.lq) + " lk " + std::to_string(c.lk) + " h " +
                 std::to_string(c.h) + " d " + std::to_string(c.d));
          }
        }
      }
    }
  }
}

// Runs one path into a fresh `out` buffer laid out like `layout`, checks the stride gaps, and
// returns the dense result.
std::vector<float> run_sdpa(const Strided& q, const Strided& k, const Strided& v,
                            const Strided& layout, const Mask& mask, const Options& options) {
  Strided out = fresh_output(layout, kNaN);
  expect_success(path_name(options.path), [&] {
    simdattn::scaled_dot_product_attention(q.view(), k.view(), v.view(), out.mutable_view(), mask,
                                           options);
  });
  check_gaps(out, (std::string(path_name(options.path)) + " sdpa: out").c_str());
  std::vector<float> dense;
  for (double x : out.dense()) dense.push_back(static_cast<float>(x));
  return dense;
}

void fuzz_sdpa(FuzzedDataProvider& fdp) {
  SdpaCase c;
  c.n = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  c.lq = fdp.ConsumeIntegralInRange<std::size_t>(1, 80);
  c.lk = fdp.ConsumeIntegralInRange<std::size_t>(1, 150);
  c.h = fdp.ConsumeIntegralInRange<std::size_t>(1, 4);
  c.d = fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  while (static_cast<double>(c.n * c.h * c.lq * c.lk * c.d) > kMaxWork) {
    c.lk = (c.lk + 1) / 2;
  }
  // 0: separate buffers; 1: keys and values share one; 2: self-attention on one buffer.
  int sharing = fdp.ConsumeIntegralInRange(0, 2);
  if (sharing == 2 && c.lq != c.lk) sharing = 1;
  describe("sdpa n " + std::to_string(c.n) + " lq " + std::to_string(c.lq) + " lk " +
           std::to_string(c.lk) + " h " + std::to_string(c.h) + " d " + std::to_string(c.d) +
           " sharing " + std::to_string(sharing));
  Random rng(fdp.ConsumeIntegral<std::uint64_t>());
  const float magnitude = fdp.PickValueInArray({1.0f, 1e-3f, 1e3f});

  Strided qb = make_strided(fdp, c.n, c.lq, c.h, c.d, kNaN);
  fill_normal(qb, rng, 1.0f);
  Strided kb = make_strided(fdp, c.n, c.lk, c.h, c.d, kNaN);
  fill_normal(kb, rng, 1.0f);
  Strided vb = make_strided(fdp, c.n, c.lk, c.h, c.d, kNaN);
  fill_normal(vb, rng, magnitude);
  const Strided* qs = &qb;
  const Strided* ks = &kb;
  const Strided* vs = &vb;
  if (sharing >= 1) vs = ks;
  if (sharing == 2) qs = ks;
  if (fdp.ConsumeBool()) {
    plant_specials(fdp, qb, "q");
    plant_specials(fdp, kb, "k");
    plant_specials(fdp, vb, "v");
  }
  c.q = qs->dense();
  c.k = ks->dense();
  c.v = vs->dense();

  std::vector<std::uint8_t> mask_bytes;
  make_mask(fdp, rng, c.n, c.h, c.lq, c.lk, c.mask, mask_bytes);
  c.options = make_options(fdp, c.d);
  const Strided out_layout = make_strided(fdp, c.n, c.lq, c.h, c.d, kGapSentinel);

  const int corruption = fdp.ConsumeIntegralInRange(0, 40);
  if (corruption >= 1 && corruption <= 12) {
    ConstHeadsView q = qs->view(), k = ks->view(), v = vs->view();
    Strided out = out_layout;
    HeadsView<float> o = out.mutable_view();
    Mask mask = c.mask;
    Options options = c.options;
    static const std::uint8_t one_byte = 1;
    switch (corruption) {
      case 1:
        q.data = nullptr;
        break;
      case 2:
        k.d += 1;
        break;
      case 3:
        v.l += 1;
        break;
      case 4:
        o.n = 0;
        break;
      case 5:
        mask = Mask{&one_byte, 1, 1, c.lq + 1, 1};
        break;
      case 6:
        options.scale = fdp.PickValueInArray({0.0f, -1.0f, kNaN, INFINITY});
        break;
      case 7:  // negative, or more than an OpenMP runtime can start
        options.threads = fdp.PickValueInArray(
            {-1, -3, simdattn::kMaxThreads + 1, 100000, std::numeric_limits<int>::max()});
        break;
      case 8:  // out on top of an input (same shape: only the overlap is wrong)
        o.data = const_cast<float*>(fdp.PickValueInArray({q.data, k.data, v.data}));
        o.l = c.lq;
        break;
      case 9:
        q.h += 1;
        break;
      case 10:  // so large that its byte count overflows: must fail before any access
        q.l = (std::size_t{1} << 62) + fdp.ConsumeIntegral<std::uint32_t>();
        break;
      case 11:
        k.d = 0;
        break;
      case 12:  // enumerations cast from integers outside them
        switch (fdp.ConsumeIntegralInRange(0, 2)) {
          case 0:
            options.causal = static_cast<simdattn::Causal>(fdp.ConsumeIntegralInRange(3, 255));
            break;
          case 1:
            options.masked_rows =
                static_cast<simdattn::MaskedRows>(fdp.ConsumeIntegralInRange(2, 255));
            break;
          default:
            options.path = static_cast<simdattn::Path>(fdp.ConsumeIntegralInRange(2, 255));
            break;
        }
        break;
    }
    expect_invalid_argument("sdpa corruption", [&] {
      simdattn::scaled_dot_product_attention(q, k, v, o, mask, options);
    });
    return;
  }

  std::vector<double> ref(c.n * c.lq * c.h * c.d);
  {
    const simdattn::detail::MaskRule rule{c.mask, c.options.causal, c.lq, c.lk};
    simdattn::reference::attention<double>(
        dense_heads(c.q, c.n, c.lq, c.h, c.d), dense_heads(c.k, c.n, c.lk, c.h, c.d),
        dense_heads(c.v, c.n, c.lk, c.h, c.d), dense_heads_out(ref, c.n, c.lq, c.h, c.d), rule,
        scale_of(c.options, c.d), c.options.masked_rows);
  }

  Options opt = c.options;
  opt.path = simdattn::Path::optimized;
  const std::vector<float> fast = run_sdpa(*qs, *ks, *vs, out_layout, c.mask, opt);
  check_sdpa(c, ref, fast, "optimized");
  // Bitwise equality across thread counts is promised for finite inputs only: a NaN/Inf value
  // hidden by the mask may reach a different set of rows when the task split changes (README).
  const bool finite =
      std::all_of(c.q.begin(), c.q.end(), [](double x) { return std::isfinite(x); }) &&
      std::all_of(c.k.begin(), c.k.end(), [](double x) { return std::isfinite(x); }) &&
      std::all_of(c.v.begin(), c.v.end(), [](double x) { return std::isfinite(x); });
  opt.threads = opt.threads % 3 + 1;
  const std::string diff =
      !finite ? "" : bit_difference(fast, run_sdpa(*qs, *ks, *vs, out_layout, c.mask, opt));
  if (!diff.empty()) {
    fail("optimized sdpa: threads " + std::to_string(c.options.threads) + " and " +
         std::to_string(opt.threads) + " give different bits at " + diff + "; shape n " +
         std::to_string(c.n) + " lq " + std::to_string(c.lq) + " lk " + std::to_string(c.lk) +
         " h " + std::to_string(c.h) + " d " + std::to_string(c.d));
  }
  opt.path = simdattn::Path::naive;
  check_sdpa(c, ref, run_sdpa(*qs, *ks, *vs, out_layout, c.mask, opt), "naive");
}

// ---------------------------------------------------------------------------------------------
// MultiHeadAttention::forward

// One [n, l, e] tensor in a buffer of exactly its size at a small offset.
struct Dense {
  std::vector<float> buffer;
  std::size_t offset = 0, n = 0, l = 0, e = 0;
  float* data() { return buffer.data() + offset; }
  const float* data() const { return buffer.data() + offset; }
  simdattn::ConstTensorView view() const { return {data(), n, l, e}; }
};

Dense make_dense(FuzzedDataProvider& fdp, Random& rng, std::size_t n, std::size_t l,
                 std::size_t e) {
  Dense t;
  t.offset = fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  t.n = n, t.l = l, t.e = e;
  t.buffer.resize(t.offset + n * l * e, kNaN);
  for (std::size_t x = 0; x < n * l * e; ++x) t.data()[x] = static_cast<float>(rng.normal());
  if (fdp.ConsumeBool()) {
    const int count = fdp.ConsumeIntegralInRange(1, 3);
    for (int c = 0; c < count; ++c) {
      const std::size_t at = fdp.ConsumeIntegralInRange<std::size_t>(0, n * l * e - 1);
      t.data()[at] =
          fdp.PickValueInArray({kNaN, std::numeric_limits<float>::infinity(), 1e-40f, -1e-42f});
      describe("input element " + std::to_string(at) + " = " + std::to_string(t.data()[at]));
    }
  }
  return t;
}

bool row_nonfinite(const float* x, std::size_t e) {
  for (std::size_t t = 0; t < e; ++t)
    if (!std::isfinite(x[t])) return true;
  return false;
}

bool all_finite(const std::vector<float>& x) {
  return !row_nonfinite(x.data(), x.size());
}

void fuzz_module(FuzzedDataProvider& fdp) {
  const std::size_t heads = fdp.ConsumeIntegralInRange<std::size_t>(1, 4);
  const std::size_t d = fdp.ConsumeIntegralInRange<std::size_t>(1, 16);
  const std::size_t e = heads * d;
  const std::size_t n = fdp.ConsumeIntegralInRange<std::size_t>(1, 2);
  const std::size_t lq = fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  int sharing = fdp.ConsumeIntegralInRange(0, 2);  // as in fuzz_sdpa
  const std::size_t lk = sharing == 2 ? lq : fdp.ConsumeIntegralInRange<std::size_t>(1, 40);
  Random rng(fdp.ConsumeIntegral<std::uint64_t>());
  describe("forward E " + std::to_string(e) + " heads " + std::to_string(heads) + " n " +
           std::to_string(n) + " lq " + std::to_string(lq) + " lk " + std::to_string(lk) +
           " sharing " + std::to_string(sharing));

  simdattn::MultiHeadAttention mha(e, heads, rng.next());
  for (auto p : {simdattn::Projection::query, simdattn::Projection::key,
                 simdattn::Projection::value, simdattn::Projection::output}) {
    if (!fdp.ConsumeBool()) continue;
    std::vector<float> bias(e);
    for (float& b : bias) b = static_cast<float>(rng.normal());
    mha.set_bias(p, bias);
  }
  if (fdp.ConsumeBool()) {  // a NaN/Inf weight: every output may be reached; only no crash
    auto p = fdp.PickValueInArray({simdattn::Projection::query, simdattn::Projection::key,
                                   simdattn::Projection::value, simdattn::Projection::output});
    std::vector<float> w = mha.weight(p);
    w[fdp.ConsumeIntegralInRange<std::size_t>(0, w.size() - 1)] =
        fdp.ConsumeBool() ? kNaN : std::numeric_limits<float>::infinity();
    mha.set_weight(p, w);
  }

  const Dense qb = make_dense(fdp, rng, n, lq, e);
  const Dense kb = make_dense(fdp, rng, n, lk, e);
  const Dense vb = make_dense(fdp, rng, n, lk, e);
  const Dense* qs = &qb;
  const Dense* ks = &kb;
  const Dense* vs = &vb;
  if (sharing >= 1) vs = ks;
  if (sharing == 2) qs = ks;

  Mask mask;
  std::vector<std::uint8_t> mask_bytes;
  make_mask(fdp, rng, n, heads, lq, lk, mask, mask_bytes);
  const Options options = make_options(fdp, d);
  const std::size_t out_offset = fdp.ConsumeIntegralInRange<std::size_t>(0, 3);

  const int corruption = fdp.ConsumeIntegralInRange(0, 40);
  if (corruption >= 1 && corruption <= 8) {
    simdattn::ConstTensorView v = vs->view(), k = ks->view(), q = qs->view();
    std::vector<float> out_buffer(out_offset + n * lq * e);
    simdattn::TensorView<float> o{out_buffer.data() + out_offset, n, lq, e};
    Mask m = mask;
    Options opt = options;
    static const std::uint8_t one_byte = 1;
    switch (corruption) {
      case 1:
        q.e += 1;
        break;
      case 2:
        v.l += 1;
        break;
      case 3:
        o.l += 1;
        break;
      case 4:
        m = Mask{&one_byte, n + 1, 1, 1, 1};
        break;
      case 5:
        opt.scale = fdp.PickValueInArray({0.0f, -2.0f, kNaN, -INFINITY});
        break;
      case 6:  // out on top of an input
        o.data = const_cast<float*>(fdp.PickValueInArray({q.data, k.data, v.data}));
        break;
      case 7:
        k.data = nullptr;
        break;
      case 8:  // byte count overflows size_t: must fail before any access
        q.n = (std::size_t{1} << 62) + fdp.ConsumeIntegral<std::uint32_t>();
        break;
    }
    expect_invalid_argument("forward corruption", [&] { mha.forward(v, k, q, m, o, opt); });
    return;
  }

  // The oracle: the whole module in double from the module's own float parameters.
  auto to_double = [](const std::vector<float>& x) {
    return std::vector<double>(x.begin(), x.end());
  };
  using simdattn::Projection;
  const std::vector<double> wq = to_double(mha.weight(Projection::query)),
                            wk = to_double(mha.weight(Projection::key)),
                            wv = to_double(mha.weight(Projection::value)),
                            wo = to_double(mha.weight(Projection::output)),
                            bq = to_double(mha.bias(Projection::query)),
                            bk = to_double(mha.bias(Projection::key)),
                            bv = to_double(mha.bias(Projection::value)),
                            bo = to_double(mha.bias(Projection::output));
  simdattn::reference::Weights<double> w;
  w.wq = wq.data(), w.wk = wk.data(), w.wv = wv.data(), w.wo = wo.data();
  w.bq = bq.empty() ? nullptr : bq.data();
  w.bk = bk.empty() ? nullptr : bk.data();
  w.bv = bv.empty() ? nullptr : bv.data();
  w.bo = bo.data();
  const std::vector<double> q64(qs->data(), qs->data() + n * lq * e),
      k64(ks->data(), ks->data() + n * lk * e), v64(vs->data(), vs->data() + n * lk * e);
  std::vector<double> ref(n * lq * e), scratch;
  const simdattn::detail::MaskRule rule{mask, options.causal, lq, lk};
  simdattn::reference::multi_head_attention<double>(v64.data(), k64.data(), q64.data(), n, lk, lq,
                                                    e, heads, w, rule, scale_of(options, d),
                                                    options.masked_rows, ref.data(), scratch);

  const bool weights_finite =
      all_finite(mha.weight(Projection::query)) && all_finite(mha.weight(Projection::key)) &&
      all_finite(mha.weight(Projection::value)) && all_finite(mha.weight(Projection::output));
  double ref_max = 0.0;
  for (double r : ref) {
    if (std::isfinite(r)) ref_max = std::max(ref_max, std::abs(r));
  }
  const double tol = 2e-4 * (1.0 + ref_max);

  auto run = [&](const Options& opt) {
    std::vector<float> out_buffer(out_offset + n * lq * e, kNaN);
    float* out = out_buffer.data() + out_offset;
    expect_success(path_name(opt.path), [&] {
      mha.forward(vs->view(), ks->view(), qs->view(), mask, {out, n, lq, e}, opt);
    });
    return std::vector<float>(out, out + n * lq * e);
  };
  auto check = [&](const std::vector<float>& got, const char* path) {
    for (std::size_t x = 0; x < got.size(); ++x) {  // a path may add a NaN/Inf, never lose one
      if (!std::isfinite(ref[x]) && std::isfinite(got[x])) {
        fail(std::string(path) + " forward: lost a NaN/Inf at element " + std::to_string(x) +
             ": got " + std::to_string(got[x]) + ", reference " + std::to_string(ref[x]));
      }
    }
    if (!weights_finite) return;
    for (std::size_t b = 0; b < n; ++b) {
      bool kv_dirty = false;
      for (std::size_t key = 0; key < lk; ++key) {
        kv_dirty = kv_dirty || row_nonfinite(ks->data() + (b * lk + key) * e, e) ||
                   row_nonfinite(vs->data() + (b * lk + key) * e, e);
      }
      for (std::size_t i = 0; i < lq && !kv_dirty; ++i) {
        if (row_nonfinite(qs->data() + (b * lq + i) * e, e)) continue;
        for (std::size_t t = 0; t < e; ++t) {
          const std::size_t x = (b * lq + i) * e + t;
          if (!(std::abs(got[x] - ref[x]) <= tol)) {
            fail(std::string(path) + " forward: mismatch at [" + std::to_string(b) + ", " +
                 std::to_string(i) + ", " + std::to_string(t) + "]: got " + std::to_string(got[x]) +
                 ", reference " + std::to_string(ref[x]) + ", tolerance " + std::to_string(tol) +
                 "; E " + std::to_string(e) + " heads " + std::to_string(heads) + " n " +
                 std::to_string(n) + " lq " + std::to_string(lq) + " lk " + std::to_string(lk));
          }
        }
      }
    }
  };

  Options opt = options;
  const std::vector<float> fast = run(opt);
  check(fast, "optimized");
  opt.threads = opt.threads % 3 + 1;
  const bool finite = weights_finite && !row_nonfinite(qs->data(), n * lq * e) &&
                      !row_nonfinite(ks->data(), n * lk * e) &&
                      !row_nonfinite(vs->data(), n * lk * e);
  const std::string diff = finite ? bit_difference(fast, run(opt)) : "";
  if (!diff.empty()) {
    fail("optimized forward: threads " + std::to_string(options.threads) + " and " +
         std::to_string(opt.threads) + " give different bits at " + diff);
  }
  opt.path = simdattn::Path::naive;
  check(run(opt), "naive");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_target = "fuzz_attention";
  std::string names;
  for (const simdattn::Isa isa : optimized_isas())
    names += std::string(" ") + simdattn::isa_name(isa);
  std::fprintf(stderr, "fuzz_attention: optimized path on the ISAs of this machine:%s\n",
               names.c_str());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider fdp(data, size);
  g_case.clear();
  if (fdp.ConsumeBool()) {
    fuzz_module(fdp);
  } else {
    fuzz_sdpa(fdp);
  }
  return 0;
}
