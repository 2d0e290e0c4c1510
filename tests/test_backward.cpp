// The backward pass. First the oracle itself (src/reference/backward.hpp in double) against
// central finite differences of the double forward, on tiny sizes with every mask kind and both
// fully-masked-row policies; then the library's gradients against the oracle.
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "reference/backward.hpp"
#include "simdattn/safetensors.hpp"

using namespace simdattn;

namespace {

using DHeads = reference::Heads<double>;
using CDHeads = reference::Heads<const double>;

std::vector<double> random_doubles(std::size_t count, std::uint64_t seed) {
  const auto f = test::random_normal(count, seed);
  return std::vector<double>(f.begin(), f.end());
}

// Dense [n, l, h, d] heads over a vector.
CDHeads cheads(const std::vector<double>& x, std::size_t n, std::size_t l, std::size_t h,
               std::size_t d) {
  return {x.data(), n, l, h, d, h * d, l * h * d};
}
DHeads heads(std::vector<double>& x, std::size_t n, std::size_t l, std::size_t h, std::size_t d) {
  return {x.data(), n, l, h, d, h * d, l * h * d};
}

// Central difference of f along every element of x, against the analytic gradient `grad`:
// the largest error relative to max(1, |grad|). f is a polynomial-exponential of x, so the
// truncation error of a step of 1e-5 is about 1e-10 and rounding about 1e-11.
double max_fd_error(std::vector<double>& x, const std::function<double()>& f,
                    const std::vector<double>& grad) {
  constexpr double kStep = 1e-5;
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kStep;
    const double up = f();
    x[i] = saved - kStep;
    const double down = f();
    x[i] = saved;
    const double fd = (up - down) / (2 * kStep);
    worst = std::max(worst, std::fabs(fd - grad[i]) / std::max(1.0, std::fabs(grad[i])));
  }
  return worst;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

}  // namespace

TEST_CASE("backward oracle: attention gradients equal finite differences", "[backward][oracle]") {
  const std::size_t n = 2, h = 2, d = 3;
  const auto lengths = GENERATE(std::make_pair<std::size_t, std::size_t>(3, 3),
                                std::make_pair<std::size_t, std::size_t>(2, 5),
                                std::make_pair<std::size_t, std::size_t>(5, 2));
  const std::size_t lq = lengths.first, lk = lengths.second;
  const test::MaskKind kind =
      GENERATE(from_range(std::begin(test::kAllMaskKinds), std::end(test::kAllMaskKinds)));
  const MaskedRows policy = GENERATE(MaskedRows::uniform, MaskedRows::zeros);
  INFO("Lq " << lq << ", Lk " << lk << ", mask " << test::mask_kind_name(kind) << ", policy "
             << (policy == MaskedRows::uniform ? "uniform" : "zeros"));
  const test::MaskCase mc = test::make_mask(kind, n, h, lq, lk, 3);
  const detail::MaskRule rule{mc.mask, mc.causal, lq, lk};
  const double scale = 0.7;
  std::vector<double> q = random_doubles(n * lq * h * d, 1), k = random_doubles(n * lk * h * d, 2),
                      v = random_doubles(n * lk * h * d, 3), r = random_doubles(n * lq * h * d, 4);
  // loss = sum(out * r), so d_out = r.
  std::vector<double> out(n * lq * h * d);
  auto loss = [&] {
    reference::attention<double>(cheads(q, n, lq, h, d), cheads(k, n, lk, h, d),
                                 cheads(v, n, lk, h, d), heads(out, n, lq, h, d), rule, scale,
                                 policy);
    return dot(out, r);
  };
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  reference::attention_backward<double>(cheads(q, n, lq, h, d), cheads(k, n, lk, h, d),
                                        cheads(v, n, lk, h, d), cheads(r, n, lq, h, d),
                                        heads(dq, n, lq, h, d), heads(dk, n, lk, h, d),
                                        heads(dv, n, lk, h, d), rule, scale, policy);
  CHECK(max_fd_error(q, loss, dq) < 1e-8);
  CHECK(max_fd_error(k, loss, dk) < 1e-8);
  CHECK(max_fd_error(v, loss, dv) < 1e-8);
  // The gradients are not trivially zero (a test that cannot fail is a defect).
  CHECK(max_abs(dv) > 0.1);
  if (kind != test::MaskKind::none) CHECK(max_abs(dq) > 1e-3);
}

TEST_CASE("backward oracle: a fully masked row gives dQ = 0 and dV = dO / Lk (uniform) or 0",
          "[backward][oracle]") {
  const std::size_t lq = 3, lk = 4, d = 2;
  std::vector<std::uint8_t> keep = {1, 1, 0, 1,   // row 0
                                    0, 0, 0, 0,   // row 1: fully masked
                                    1, 0, 0, 0};  // row 2
  const detail::MaskRule rule{Mask{keep.data(), 1, 1, lq, lk}, Causal::none, lq, lk};
  std::vector<double> q = random_doubles(lq * d, 5), k = random_doubles(lk * d, 6),
                      v = random_doubles(lk * d, 7), r(lq * d, 0.0);
  r[1 * d + 0] = 1.0;  // only row 1's output counts
  r[1 * d + 1] = -2.0;
  for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
    reference::attention_backward<double>(cheads(q, 1, lq, 1, d), cheads(k, 1, lk, 1, d),
                                          cheads(v, 1, lk, 1, d), cheads(r, 1, lq, 1, d),
                                          heads(dq, 1, lq, 1, d), heads(dk, 1, lk, 1, d),
                                          heads(dv, 1, lk, 1, d), rule, 0.5, policy);
    CHECK(max_abs(dq) == 0.0);
    CHECK(max_abs(dk) == 0.0);
    const double w = policy == MaskedRows::uniform ? 0.25 : 0.0;
    for (std::size_t key = 0; key < lk; ++key) {
      CHECK(dv[key * d + 0] == w * 1.0);
      CHECK(dv[key * d + 1] == w * -2.0);
    }
  }
}

TEST_CASE("backward oracle: grouped key/value heads get the sum over their query heads",
          "[backward][oracle]") {
  // GQA (4 query heads, 2 key/value heads) equals plain attention on key/value heads repeated
  // per query head, with the gradients of the repeats summed.
  const std::size_t n = 2, lq = 4, lk = 5, hq = 4, hkv = 2, d = 3, group = hq / hkv;
  const test::MaskCase mc = test::make_mask(test::MaskKind::fully_masked_rows, n, hq, lq, lk, 9);
  const detail::MaskRule rule{mc.mask, Causal::none, lq, lk};
  const std::vector<double> q = random_doubles(n * lq * hq * d, 11),
                            k = random_doubles(n * lk * hkv * d, 12),
                            v = random_doubles(n * lk * hkv * d, 13),
                            r = random_doubles(n * lq * hq * d, 14);
  std::vector<double> k_rep(n * lk * hq * d), v_rep(k_rep.size());
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t key = 0; key < lk; ++key) {
      for (std::size_t hh = 0; hh < hq; ++hh) {
        for (std::size_t dd = 0; dd < d; ++dd) {
          const std::size_t to = ((b * lk + key) * hq + hh) * d + dd;
          const std::size_t from = ((b * lk + key) * hkv + hh / group) * d + dd;
          k_rep[to] = k[from];
          v_rep[to] = v[from];
        }
      }
    }
  }
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  reference::attention_backward<double>(cheads(q, n, lq, hq, d), cheads(k, n, lk, hkv, d),
                                        cheads(v, n, lk, hkv, d), cheads(r, n, lq, hq, d),
                                        heads(dq, n, lq, hq, d), heads(dk, n, lk, hkv, d),
                                        heads(dv, n, lk, hkv, d), rule, 0.6, MaskedRows::uniform);
  std::vector<double> dq_rep(q.size()), dk_rep(k_rep.size()), dv_rep(v_rep.size());
  reference::attention_backward<double>(
      cheads(q, n, lq, hq, d), cheads(k_rep, n, lk, hq, d), cheads(v_rep, n, lk, hq, d),
      cheads(r, n, lq, hq, d), heads(dq_rep, n, lq, hq, d), heads(dk_rep, n, lk, hq, d),
      heads(dv_rep, n, lk, hq, d), rule, 0.6, MaskedRows::uniform);
  for (std::size_t i = 0; i < dq.size(); ++i) CHECK(dq[i] == Approx(dq_rep[i]).margin(1e-14));
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t key = 0; key < lk; ++key) {
      for (std::size_t g = 0; g < hkv; ++g) {
        for (std::size_t dd = 0; dd < d; ++dd) {
          double sk = 0, sv = 0;
          for (std::size_t j = 0; j < group; ++j) {
            const std::size_t from = ((b * lk + key) * hq + g * group + j) * d + dd;
            sk += dk_rep[from];
            sv += dv_rep[from];
          }
          const std::size_t at = ((b * lk + key) * hkv + g) * d + dd;
          CHECK(dk[at] == Approx(sk).margin(1e-14));
          CHECK(dv[at] == Approx(sv).margin(1e-14));
        }
      }
    }
  }
}

TEST_CASE("backward oracle: the log-sum-exp reproduces the forward", "[backward][oracle]") {
  // out_i = sum_k exp(s_ik - lse_i) v_k over visible keys: lse is the softmax's normaliser.
  const std::size_t n = 2, lq = 5, lk = 7, h = 3, d = 4;
  const test::MaskKind kind =
      GENERATE(from_range(std::begin(test::kAllMaskKinds), std::end(test::kAllMaskKinds)));
  const test::MaskCase mc = test::make_mask(kind, n, h, lq, lk, 5);
  const detail::MaskRule rule{mc.mask, mc.causal, lq, lk};
  const double scale = 0.4;
  const std::vector<double> q = random_doubles(n * lq * h * d, 21),
                            k = random_doubles(n * lk * h * d, 22),
                            v = random_doubles(n * lk * h * d, 23);
  std::vector<double> lse(n * h * lq), out(q.size());
  reference::attention<double>(cheads(q, n, lq, h, d), cheads(k, n, lk, h, d),
                               cheads(v, n, lk, h, d), heads(out, n, lq, h, d), rule, scale,
                               MaskedRows::zeros, lse.data());
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t hh = 0; hh < h; ++hh) {
      for (std::size_t i = 0; i < lq; ++i) {
        const double l = lse[(b * h + hh) * lq + i];
        std::vector<double> o(d, 0.0);
        bool any = false;
        for (std::size_t key = 0; key < lk; ++key) {
          if (!reference::visible_key(rule, b, hh, i, key)) continue;
          any = true;
          double s = 0;
          for (std::size_t dd = 0; dd < d; ++dd) {
            s += q[((b * lq + i) * h + hh) * d + dd] * k[((b * lk + key) * h + hh) * d + dd];
          }
          const double p = std::exp(s * scale - l);
          for (std::size_t dd = 0; dd < d; ++dd) o[dd] += p * v[((b * lk + key) * h + hh) * d + dd];
        }
        if (!any) CHECK(l == -INFINITY);
        for (std::size_t dd = 0; dd < d; ++dd) {
          CHECK(o[dd] == Approx(out[((b * lq + i) * h + hh) * d + dd]).margin(1e-13));
        }
      }
    }
  }
}

TEST_CASE("backward oracle: module gradients equal finite differences", "[backward][oracle]") {
  const std::size_t n = 2, e = 6, heads_count = 2;
  const auto lengths = GENERATE(std::make_pair<std::size_t, std::size_t>(3, 3),
                                std::make_pair<std::size_t, std::size_t>(2, 4));
  const std::size_t lq = lengths.first, lk = lengths.second;
  const test::MaskKind kind = GENERATE(test::MaskKind::none, test::MaskKind::causal_bottom_right,
                                       test::MaskKind::fully_masked_rows);
  const std::size_t kv_heads = GENERATE(2, 1);  // 1: both query heads read one K/V head
  const std::size_t kv_e = kv_heads * (e / heads_count);
  INFO("Lq " << lq << ", Lk " << lk << ", mask " << test::mask_kind_name(kind) << ", kv_heads "
             << kv_heads);
  const test::MaskCase mc = test::make_mask(kind, n, heads_count, lq, lk, 4);
  const detail::MaskRule rule{mc.mask, mc.causal, lq, lk};
  const double scale = 0.5;
  std::vector<double> values = random_doubles(n * lk * e, 31),
                      keys = random_doubles(n * lk * e, 32), query = random_doubles(n * lq * e, 33),
                      r = random_doubles(n * lq * e, 34);
  std::vector<double> w[4], b[4];
  for (int i = 0; i < 4; ++i) {
    const std::size_t out = i == 1 || i == 2 ? kv_e : e;
    w[i] = random_doubles(out * e, 40 + i);
    for (double& x : w[i]) x *= 0.4;
    b[i] = random_doubles(out, 50 + i);
  }
  const reference::Weights<double> weights{w[0].data(), w[1].data(), w[2].data(),
                                           w[3].data(), b[0].data(), b[1].data(),
                                           b[2].data(), b[3].data(), kv_heads};
  std::vector<double> out(n * lq * e), scratch;
  auto loss = [&] {
    reference::multi_head_attention<double>(values.data(), keys.data(), query.data(), n, lk, lq, e,
                                            heads_count, weights, rule, scale, MaskedRows::uniform,
                                            out.data(), scratch);
    return dot(out, r);
  };
  std::vector<double> dvalues(values.size()), dkeys(keys.size()), dquery(query.size());
  std::vector<double> dw[4], db[4];
  for (int i = 0; i < 4; ++i) {
    dw[i].assign(w[i].size(), 7.0);  // overwritten, not accumulated into
    db[i].assign(b[i].size(), 7.0);
  }
  reference::multi_head_attention_backward<double>(
      values.data(), keys.data(), query.data(), n, lk, lq, e, heads_count, weights, rule, scale,
      MaskedRows::uniform, r.data(), dvalues.data(), dkeys.data(), dquery.data(),
      reference::WeightGradients<double>{dw[0].data(), dw[1].data(), dw[2].data(), dw[3].data(),
                                         db[0].data(), db[1].data(), db[2].data(), db[3].data()});
  CHECK(max_fd_error(values, loss, dvalues) < 1e-8);
  CHECK(max_fd_error(keys, loss, dkeys) < 1e-8);
  CHECK(max_fd_error(query, loss, dquery) < 1e-8);
  for (int i = 0; i < 4; ++i) {
    INFO("projection " << i);
    CHECK(max_fd_error(w[i], loss, dw[i]) < 1e-8);
    CHECK(max_fd_error(b[i], loss, db[i]) < 1e-8);
    CHECK(max_abs(dw[i]) > 1e-2);
  }
}

// ---------------------------------------------------------------------------------------------
// PyTorch parity: the grad_* fixtures of tests/data (tools/make_golden.py, autograd in float64).

namespace {

const char* const kGradientCases[] = {"grad_self",        "grad_cross",
                                      "grad_causal",      "grad_key_padding",
                                      "grad_head_dim_15", "grad_fully_masked_rows",
                                      "grad_mha"};

std::string fixture_meta(const SafetensorsFile& f, const std::string& key) {
  const auto it = f.metadata().find(key);
  return it == f.metadata().end() ? std::string() : it->second;
}

// One gradient fixture: the module, its inputs as the case aliases them, the mask, and
// autograd's gradients in float64 under simdattn's names.
struct GradientFixture {
  MultiHeadAttention module{1, 1};
  std::string inputs;  // "self", "shared_kv" or "distinct"
  std::size_t n = 0, lq = 0, lk = 0, e = 0;
  std::vector<float> query, keys, values, d_out;
  std::vector<std::uint8_t> mask_bytes;
  Mask mask;
  Options options;
  bool mask_equals_causal = false;
  std::vector<double> expected_out;
  // Input gradients by stored tensor ("query", "keys", "values"; absent when not stored).
  std::map<std::string, std::vector<double>> d_input;
  std::vector<double> d_weight[4], d_bias[4];  // Projection order; d_bias empty when absent

  explicit GradientFixture(const std::string& name) {
    const SafetensorsFile f =
        SafetensorsFile::open(std::string(SIMDATTN_TEST_DATA_DIR) + "/" + name + ".safetensors");
    REQUIRE(fixture_meta(f, "case") == name);
    const std::size_t heads = std::stoul(fixture_meta(f, "heads"));
    module = load_multi_head_attention(f, heads, fixture_meta(f, "prefix"));
    e = module.embed_size();
    inputs = fixture_meta(f, "inputs");
    query = f.read_float("query");
    n = f.entry("query").shape[0];
    lq = f.entry("query").shape[1];
    keys = inputs == "distinct" ? f.read_float("keys") : std::vector<float>();
    values = inputs != "self" ? f.read_float("values") : std::vector<float>();
    lk = inputs == "self" ? lq : f.entry("values").shape[1];
    d_out = f.read_float("grad.out");
    if (f.contains("mask")) {
      const SafetensorsEntry& m = f.entry("mask");
      mask_bytes = f.read_bytes("mask");
      mask = Mask{mask_bytes.data(), m.shape[0], m.shape[1], m.shape[2], m.shape[3]};
      mask_equals_causal = fixture_meta(f, "mask_equals_causal") == "top_left";
    }
    const std::string scale = fixture_meta(f, "scale");
    REQUIRE((scale == "scale_embed" || scale == "scale_head_dim"));
    if (scale == "scale_embed") options.scale = tutorial_scale(e);
    expected_out = f.read_double("expected." + scale);
    for (const char* t : {"query", "keys", "values"}) {
      if (f.contains(std::string("grad.") + t))
        d_input[t] = f.read_double(std::string("grad.") + t);
    }
    if (fixture_meta(f, "module") == "MultiheadAttention") {
      const std::vector<double> w = f.read_double("grad.in_proj_weight");
      const std::vector<double> b = f.read_double("grad.in_proj_bias");
      for (int i = 0; i < 3; ++i) {
        d_weight[i].assign(w.begin() + i * e * e, w.begin() + (i + 1) * e * e);
        d_bias[i].assign(b.begin() + i * e, b.begin() + (i + 1) * e);
      }
      d_weight[3] = f.read_double("grad.out_proj.weight");
      d_bias[3] = f.read_double("grad.out_proj.bias");
    } else {
      const char* names[4] = {"queries", "keys", "values", "fc_out"};
      for (int i = 0; i < 4; ++i)
        d_weight[i] = f.read_double(std::string("grad.") + names[i] + ".weight");
      d_bias[3] = f.read_double("grad.fc_out.bias");
    }
  }
  const float* query_data() const { return query.data(); }
  const float* keys_data() const {
    return inputs == "distinct"    ? keys.data()
           : inputs == "shared_kv" ? values.data()
                                   : query.data();
  }
  const float* values_data() const { return inputs == "self" ? query.data() : values.data(); }
};

const Projection kProjections[4] = {Projection::query, Projection::key, Projection::value,
                                    Projection::output};

}  // namespace

TEST_CASE("backward oracle: equals PyTorch autograd on the gradient fixtures",
          "[backward][oracle][golden]") {
  const std::string name =
      GENERATE(from_range(std::begin(kGradientCases), std::end(kGradientCases)));
  INFO("fixture " << name << " (regenerate with /usr/bin/python3 tools/make_golden.py)");
  const GradientFixture fx(name);
  const std::size_t e = fx.e;
  std::vector<double> w[4], b[4];
  for (int i = 0; i < 4; ++i) {
    w[i] = test::to_double(fx.module.weight(kProjections[i]));
    b[i] = test::to_double(fx.module.bias(kProjections[i]));
  }
  auto ptr = [](std::vector<double>& v) { return v.empty() ? nullptr : v.data(); };
  const reference::Weights<double> weights{w[0].data(), w[1].data(), w[2].data(), w[3].data(),
                                           ptr(b[0]),   ptr(b[1]),   ptr(b[2]),   ptr(b[3])};
  const auto values = test::to_double(fx.values_data(), fx.n * fx.lk * e);
  const auto keys = test::to_double(fx.keys_data(), fx.n * fx.lk * e);
  const auto query = test::to_double(fx.query_data(), fx.n * fx.lq * e);
  const auto d_out = test::to_double(fx.d_out);
  const detail::MaskRule rule{fx.mask, Causal::none, fx.lq, fx.lk};
  // PyTorch divides by sqrt(E) or sqrt(D) in float64: the oracle uses that exact scale, not
  // the float that Options holds (which differs in the 8th digit).
  const double scale =
      1.0 / std::sqrt(static_cast<double>(fx.options.scale ? e : fx.module.head_dim()));
  std::vector<double> dv(values.size()), dk(keys.size()), dq(query.size()), dw[4], db[4];
  for (int i = 0; i < 4; ++i) {
    dw[i].resize(e * e);
    db[i].resize(b[i].empty() ? 0 : e);
  }
  reference::multi_head_attention_backward<double>(
      values.data(), keys.data(), query.data(), fx.n, fx.lk, fx.lq, e, fx.module.heads(), weights,
      rule, scale, MaskedRows::uniform, d_out.data(), dv.data(), dk.data(), dq.data(),
      reference::WeightGradients<double>{dw[0].data(), dw[1].data(), dw[2].data(), dw[3].data(),
                                         ptr(db[0]), ptr(db[1]), ptr(db[2]), ptr(db[3])});
  // Inputs passed more than once get the sum of their gradients, as autograd gives them.
  if (fx.inputs == "self") {
    for (std::size_t i = 0; i < dq.size(); ++i) dq[i] += dk[i] + dv[i];
  } else if (fx.inputs == "shared_kv") {
    for (std::size_t i = 0; i < dv.size(); ++i) dv[i] += dk[i];
  }
  auto close = [](const std::vector<double>& got, const std::vector<double>& want,
                  const std::string& what) {
    REQUIRE(got.size() == want.size());
    double diff = 0, ref = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      diff = std::max(diff, std::fabs(got[i] - want[i]));
      ref = std::max(ref, std::fabs(want[i]));
    }
    INFO(what << ": max error " << diff << " of max |ref| " << ref);
    CHECK(diff <= 1e-12 * std::max(ref, 1.0));
    CHECK(ref > 0);
  };
  close(dq, fx.d_input.at("query"), "d query");
  if (fx.d_input.count("values")) close(dv, fx.d_input.at("values"), "d values");
  if (fx.d_input.count("keys")) close(dk, fx.d_input.at("keys"), "d keys");
  for (int i = 0; i < 4; ++i) {
    close(dw[i], fx.d_weight[i], "d weight " + std::to_string(i));
    if (!fx.d_bias[i].empty()) close(db[i], fx.d_bias[i], "d bias " + std::to_string(i));
  }
}

// ---------------------------------------------------------------------------------------------
// The library's core backward against the oracle.

namespace {

// One backward problem: random inputs, and the output and log-sum-exp of the library's training
// forward (the optimized path of the ISA under test).
struct CoreCase {
  std::size_t n, lq, lk, h, d, hkv;
  test::MaskCase mc;
  Options options;
  std::vector<std::uint8_t> padding;  // options.key_padding's bytes, if any
  std::vector<float> q, k, v, out, d_out, lse;

  // hkv: K/V heads (grouped when below h); window and key padding when asked.
  CoreCase(std::size_t n_, std::size_t lq_, std::size_t lk_, std::size_t h_, std::size_t d_,
           test::MaskKind kind, MaskedRows policy, std::uint64_t seed, std::size_t hkv_ = 0,
           std::size_t window = 0, bool key_padding = false)
      : n(n_),
        lq(lq_),
        lk(lk_),
        h(h_),
        d(d_),
        hkv(hkv_ == 0 ? h_ : hkv_),
        mc(test::make_mask(kind, n_, h_, lq_, lk_, seed)) {
    options.causal = mc.causal;
    options.masked_rows = policy;
    if (window != 0) {
      if (options.causal == Causal::none) options.causal = Causal::bottom_right;
      options.window = window;
    }
    if (key_padding) {
      padding.assign(n * lk, 0);
      for (std::size_t b = 0; b < n; ++b) {
        for (std::size_t key = lk - lk / (b + 3); key < lk; ++key) padding[b * lk + key] = 1;
      }
      options.key_padding = {padding.data(), n, lk};
    }
    q = test::random_normal(n * lq * h * d, seed + 1);
    k = test::random_normal(n * lk * hkv * d, seed + 2);
    v = test::random_normal(n * lk * hkv * d, seed + 3);
    d_out = test::random_normal(n * lq * h * d, seed + 4);
    out.resize(q.size());
    lse.resize(n * h * lq);
    scaled_dot_product_attention_forward(qv(), kv(k), kv(v), {out.data(), n, lq, h, d},
                                         {lse.data(), n, h, lq}, mc.mask, options);
  }
  ConstHeadsView qv() const { return {q.data(), n, lq, h, d}; }
  ConstHeadsView kv(const std::vector<float>& x) const { return {x.data(), n, lk, hkv, d}; }
  detail::MaskRule rule() const {
    detail::MaskRule r{mc.mask, options.causal, lq, lk};
    r.window = options.window.value_or(0);
    r.key_padding = options.key_padding;
    return r;
  }

  // The oracle's gradients, [dq, dk, dv].
  std::array<std::vector<double>, 3> oracle() const {
    const auto qd = test::to_double(q), kd = test::to_double(k), vd = test::to_double(v),
               gd = test::to_double(d_out);
    std::array<std::vector<double>, 3> g{std::vector<double>(q.size()),
                                         std::vector<double>(k.size()),
                                         std::vector<double>(v.size())};
    reference::attention_backward<double>(
        cheads(qd, n, lq, h, d), cheads(kd, n, lk, hkv, d), cheads(vd, n, lk, hkv, d),
        cheads(gd, n, lq, h, d), heads(g[0], n, lq, h, d), heads(g[1], n, lk, hkv, d),
        heads(g[2], n, lk, hkv, d), rule(), test::resolved_scale(options, d), options.masked_rows);
    return g;
  }

  // The library's gradients, [dq, dk, dv], with `threads` and `path`.
  std::array<std::vector<float>, 3> run(Path path, int threads) const {
    std::array<std::vector<float>, 3> g{std::vector<float>(q.size(), NAN),
                                        std::vector<float>(k.size(), NAN),
                                        std::vector<float>(v.size(), NAN)};
    Options o = options;
    o.path = path;
    o.threads = threads;
    scaled_dot_product_attention_backward(qv(), kv(k), kv(v), {out.data(), n, lq, h, d},
                                          {d_out.data(), n, lq, h, d}, {lse.data(), n, h, lq},
                                          {g[0].data(), n, lq, h, d}, {g[1].data(), n, lk, hkv, d},
                                          {g[2].data(), n, lk, hkv, d}, mc.mask, o);
    return g;
  }
};

const char* const kGradNames[3] = {"dQ", "dK", "dV"};

void check_core_case(const CoreCase& c, const std::string& what) {
  const auto ref = c.oracle();
  for (Path path : test::kPaths) {
    const auto one = c.run(path, 1);
    for (int i = 0; i < 3; ++i) {
      test::check_close(one[i].data(), ref[i],
                        what + " " + test::path_name(path) + " " + kGradNames[i]);
    }
    if (path == Path::optimized) {
      const auto two = c.run(path, 2);
      for (int i = 0; i < 3; ++i) {
        INFO(what << " " << kGradNames[i] << ": threads 1 and 2 bitwise");
        CHECK(std::memcmp(one[i].data(), two[i].data(), one[i].size() * sizeof(float)) == 0);
      }
    }
  }
}

}  // namespace

TEST_CASE("backward: the core's gradients match the oracle on odd sizes, every mask kind",
          "[backward]") {
  const std::size_t d = GENERATE(1, 3, 15, 17);
  const std::size_t lq = GENERATE(1, 2, 7, 33);
  const std::size_t lk = GENERATE(1, 2, 7, 33);
  const test::MaskKind kind =
      GENERATE(from_range(std::begin(test::kAllMaskKinds), std::end(test::kAllMaskKinds)));
  const MaskedRows policy = GENERATE(MaskedRows::uniform, MaskedRows::zeros);
  const CoreCase c(2, lq, lk, 3, d, kind, policy, 100 + d + lq * 7 + lk * 13);
  std::ostringstream what;
  what << "ISA " << isa_name(active_isa()) << " D=" << d << " Lq=" << lq << " Lk=" << lk << " mask "
       << test::mask_kind_name(kind) << (policy == MaskedRows::uniform ? " uniform" : " zeros");
  check_core_case(c, what.str());
}

TEST_CASE("backward: the core's gradients over several key and query blocks", "[backward]") {
  // Lengths past one key block (64) and one query block (48) with tails; N x H below and above
  // the task count that splits heads into key chunks; head_dim 64 runs rows in place.
  struct Shape {
    std::size_t n, lq, lk, h, d;
  };
  const Shape shape =
      GENERATE(Shape{1, 100, 130, 2, 64}, Shape{2, 130, 100, 4, 64}, Shape{1, 97, 97, 1, 17},
               Shape{2, 64, 200, 4, 32}, Shape{1, 200, 64, 3, 15});
  const test::MaskKind kind =
      GENERATE(from_range(std::begin(test::kAllMaskKinds), std::end(test::kAllMaskKinds)));
  const CoreCase c(shape.n, shape.lq, shape.lk, shape.h, shape.d, kind, MaskedRows::uniform, 77);
  std::ostringstream what;
  what << "ISA " << isa_name(active_isa()) << " N=" << shape.n << " Lq=" << shape.lq
       << " Lk=" << shape.lk << " H=" << shape.h << " D=" << shape.d << " mask "
       << test::mask_kind_name(kind);
  check_core_case(c, what.str());
}

TEST_CASE("backward: grouped K/V heads, sliding window and key padding", "[backward]") {
  // Window 90 over 250 rows: blocks of query rows whose first row sees a whole key block while
  // the window of their last row starts inside it (kernel blocks of 48 rows and 64 keys).
  struct Shape {
    std::size_t n, lq, lk, h, hkv, d, window;
    bool padding;
  };
  const Shape s =
      GENERATE(Shape{2, 70, 130, 4, 2, 16, 0, false}, Shape{1, 33, 33, 6, 1, 17, 0, false},
               Shape{2, 100, 100, 2, 2, 32, 20, false}, Shape{1, 130, 90, 4, 2, 15, 7, false},
               Shape{3, 40, 70, 2, 1, 16, 0, true}, Shape{2, 97, 97, 4, 4, 64, 50, true},
               Shape{1, 250, 250, 2, 1, 16, 90, false});
  const test::MaskKind kind = GENERATE(test::MaskKind::none, test::MaskKind::causal_top_left,
                                       test::MaskKind::fully_masked_rows);
  const MaskedRows policy = GENERATE(MaskedRows::uniform, MaskedRows::zeros);
  const CoreCase c(s.n, s.lq, s.lk, s.h, s.d, kind, policy, 31, s.hkv, s.window, s.padding);
  std::ostringstream what;
  what << "ISA " << isa_name(active_isa()) << " N=" << s.n << " Lq=" << s.lq << " Lk=" << s.lk
       << " H=" << s.h << " H_kv=" << s.hkv << " D=" << s.d << " window " << s.window
       << (s.padding ? " key padding" : "") << " mask " << test::mask_kind_name(kind)
       << (policy == MaskedRows::uniform ? " uniform" : " zeros");
  check_core_case(c, what.str());
}

namespace {

// On both paths: the plain call's output is close to the oracle's, the training forward's
// equals it bit for bit, and its log-sum-exp is the oracle's (-inf where the oracle's is -inf).
void check_training_forward(const ConstHeadsView& q, const ConstHeadsView& k,
                            const ConstHeadsView& v, const Mask& mask, Options options,
                            const test::OracleResult& ref) {
  const std::vector<double>& ref_lse = ref.lse;
  const std::size_t size = q.n * q.l * q.h * q.d;
  for (Path path : test::kPaths) {
    options.path = path;
    std::vector<float> plain(size), out(size), lse(q.n * q.h * q.l, 1234.0f);
    scaled_dot_product_attention(q, k, v, {plain.data(), q.n, q.l, q.h, q.d}, mask, options);
    scaled_dot_product_attention_forward(q, k, v, {out.data(), q.n, q.l, q.h, q.d},
                                         {lse.data(), q.n, q.h, q.l}, mask, options);
    INFO("path " << test::path_name(path));
    test::check_close(plain.data(), ref.out, "output");
    CHECK(std::memcmp(plain.data(), out.data(), out.size() * sizeof(float)) == 0);
    double worst = 0;
    for (std::size_t i = 0; i < lse.size(); ++i) {
      if (std::isinf(ref_lse[i])) {
        CHECK(lse[i] == -INFINITY);
      } else {
        worst =
            std::max(worst, std::fabs(lse[i] - ref_lse[i]) / std::max(1.0, std::fabs(ref_lse[i])));
      }
    }
    CHECK(worst < 1e-6);
  }
}

}  // namespace

TEST_CASE("training forward: the same output as the plain call, and the oracle's log-sum-exp",
          "[backward]") {
  const std::size_t n = 2, h = 3;
  const std::size_t d = GENERATE(1, 15, 64);
  const std::size_t lq = GENERATE(1, 7, 100);
  const std::size_t lk = GENERATE(2, 33, 130);
  const test::MaskKind kind =
      GENERATE(from_range(std::begin(test::kAllMaskKinds), std::end(test::kAllMaskKinds)));
  INFO("ISA " << isa_name(active_isa()) << " D=" << d << " Lq=" << lq << " Lk=" << lk << " mask "
              << test::mask_kind_name(kind));
  const test::MaskCase mc = test::make_mask(kind, n, h, lq, lk, 5);
  Options options;
  options.causal = mc.causal;
  const auto q = test::random_normal(n * lq * h * d, 61),
             k = test::random_normal(n * lk * h * d, 62),
             v = test::random_normal(n * lk * h * d, 63);
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d};
  check_training_forward(qv, kv, vv, mc.mask, options,
                         test::oracle_sdpa_all(qv, kv, vv, mc.mask, options));
}

TEST_CASE("training forward: the log-sum-exp with the score modifications, fully masked rows too",
          "[backward][variants]") {
  // lse_i = log(sum over visible keys of exp(s_k) + exp(sink)) with s the modified scores: a row
  // that sees no key has lse = sink with sinks, -inf without. Decode (Lq <= 4) and tile kernels.
  // Sinks of +-300 lie far beyond float's exp range (about 88): the sink's term must be summed
  // with the larger exponent taken out, or a row's lse overflows to +inf.
  const std::size_t n = 2, h = 2;
  const std::size_t d = GENERATE(3, 16);
  const std::size_t lq = GENERATE(1, 3, 37);
  const std::size_t lk = GENERATE(5, 130);
  const int variant = GENERATE(0, 1, 2, 3, 4);
  const test::MaskCase mc = test::make_mask(test::MaskKind::fully_masked_rows, n, h, lq, lk, 7);
  const auto q = test::random_normal(n * lq * h * d, 71),
             k = test::random_normal(n * lk * h * d, 72),
             v = test::random_normal(n * lk * h * d, 73);
  const std::vector<float> sinks =
      variant == 4 ? std::vector<float>{300.0f, -300.0f} : test::random_normal(h, 74);
  const auto bias = test::random_normal(n * h * lq * lk, 75);
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d};
  Options options;
  const char* names[] = {"sinks", "softcap and ALiBi", "bias and sinks",
                         "window (causal) and sinks", "sinks of +-300"};
  if (variant != 1) options.sinks = {sinks.data(), h};
  if (variant == 1) {
    options.softcap = 2.5f;
    options.alibi.enabled = true;
  }
  if (variant == 2) options.bias = {bias.data(), n, h, lq, lk};
  if (variant == 3) {
    options.causal = Causal::bottom_right;
    options.window = 4;
  }
  INFO("ISA " << isa_name(active_isa()) << " D=" << d << " Lq=" << lq << " Lk=" << lk << ", "
              << names[variant]);
  const test::OracleResult ref = test::oracle_sdpa_all(qv, kv, vv, mc.mask, options);
  // The mask hides every key from some rows: their lse is the sink's (or -inf without sinks).
  std::size_t unseeing = 0;
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    const double sink = variant == 1 ? -INFINITY : sinks[i / lq % h];
    unseeing += ref.lse[i] == sink ? 1 : 0;
  }
  CHECK(unseeing > 0);
  check_training_forward(qv, kv, vv, mc.mask, options, ref);
}

namespace {

// The message of a call refused for an option the backward pass does not have.
std::string not_in_backward(const std::string& where, const char* option) {
  return where + option +
         " is not supported by the backward pass (masks, causal, window, key_padding and grouped "
         "K/V heads are)";
}

}  // namespace

TEST_CASE("backward: bad arguments throw std::invalid_argument naming them", "[backward][errors]") {
  using Catch::Matchers::Message;
  const std::size_t n = 1, lq = 3, lk = 4, h = 2, d = 2;
  std::vector<float> q(n * lq * h * d, 0.5f), k(n * lk * h * d, 0.25f), v(k), out(q), go(q),
      lse(n * h * lq, 0.0f), dq(q.size()), dk(k.size()), dv(k.size());
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d}, ov{out.data(), n, lq, h, d}, gov{go.data(), n, lq, h, d};
  const ConstLseView lv{lse.data(), n, h, lq};
  const HeadsView<float> dqv{dq.data(), n, lq, h, d}, dkv{dk.data(), n, lk, h, d},
      dvv{dv.data(), n, lk, h, d};
  auto call = [&](const ConstHeadsView& q_, const ConstHeadsView& o_, const ConstLseView& l_,
                  const HeadsView<float>& dq_, const HeadsView<float>& dk_) {
    scaled_dot_product_attention_backward(q_, kv, vv, o_, gov, l_, dq_, dk_, dvv);
  };
  REQUIRE_NOTHROW(call(qv, ov, lv, dqv, dkv));
  const std::string w = "simdattn::scaled_dot_product_attention_backward: ";
  CHECK_THROWS_MATCHES(call(qv, ov, ConstLseView{nullptr, n, h, lq}, dqv, dkv),
                       std::invalid_argument, Message(w + "lse.data is null"));
  CHECK_THROWS_MATCHES(call(qv, ov, ConstLseView{lse.data(), n, h, lq + 1}, dqv, dkv),
                       std::invalid_argument,
                       Message(w + "lse has shape [1, 2, 4], [N, H, Lq] = [1, 2, 3] is needed"));
  CHECK_THROWS_MATCHES(call(qv, ConstHeadsView{out.data(), n, lq - 1, h, d}, lv, dqv, dkv),
                       std::invalid_argument,
                       Message(w + "query lengths Lq differ: query has 3, out has 2"));
  CHECK_THROWS_MATCHES(call(qv, ov, lv, HeadsView<float>{dq.data(), n, lq, h, d + 1}, dkv),
                       std::invalid_argument,
                       Message(w + "head_dim D differ: query has 2, d_query has 3"));
  CHECK_THROWS_MATCHES(call(qv, ov, lv, dqv, HeadsView<float>{nullptr, n, lk, h, d}),
                       std::invalid_argument, Message(w + "d_keys.data is null"));
  // A gradient may not overlap an input or another gradient.
  CHECK_THROWS_MATCHES(call(qv, ov, lv, HeadsView<float>{go.data(), n, lq, h, d}, dkv),
                       std::invalid_argument, Message(w + "d_query overlaps d_out"));
  CHECK_THROWS_MATCHES(call(qv, ov, lv, dqv, HeadsView<float>{dv.data(), n, lk, h, d}),
                       std::invalid_argument, Message(w + "d_values overlaps d_keys"));
  CHECK_THROWS_MATCHES(
      call(qv, ov, ConstLseView{reinterpret_cast<const float*>(dq.data()), n, h, lq}, dqv, dkv),
      std::invalid_argument, Message(w + "d_query overlaps lse"));
  // Shapes checked beside the query's or the keys'.
  std::vector<float> wide(n * lk * 3 * (d + 1));
  CHECK_THROWS_MATCHES(
      scaled_dot_product_attention_backward(qv, ConstHeadsView{wide.data(), n, lk, h, d + 1}, vv,
                                            ov, gov, lv, dqv, dkv, dvv),
      std::invalid_argument, Message(w + "head_dim D differ: query has 2, keys has 3"));
  CHECK_THROWS_MATCHES(
      scaled_dot_product_attention_backward(qv, ConstHeadsView{wide.data(), n, lk, 3, d}, vv, ov,
                                            gov, lv, dqv, dkv, dvv),
      std::invalid_argument,
      Message(w + "query heads H = 2 is not a multiple of the keys' and values' heads H = 3 "
                  "(grouped-query attention needs H_q % H_kv == 0)"));
  CHECK_THROWS_MATCHES(
      scaled_dot_product_attention_backward(
          qv, kv, vv, ov, ConstHeadsView{go.data(), n, lq, h, d - 1}, lv, dqv, dkv, dvv),
      std::invalid_argument, Message(w + "head_dim D differ: query has 2, d_out has 1"));
  CHECK_THROWS_MATCHES(call(qv, ov, lv, dqv, HeadsView<float>{dk.data(), n, lk - 1, h, d}),
                       std::invalid_argument,
                       Message(w + "key lengths Lk differ: keys has 4, d_keys has 3"));
  // Every score modification the backward pass does not have, by name.
  const std::vector<float> per_head(h, 0.5f), bias(n * h * lq * lk, 0.5f);
  std::vector<float> weights(n * h * lq * lk);
  Options softcap, with_bias, alibi, sinks, with_weights;
  softcap.softcap = 30.0f;
  with_bias.bias = Bias{bias.data(), n, h, lq, lk};
  alibi.alibi = Alibi{true, {}};
  sinks.sinks = PerHead{per_head.data(), h};
  with_weights.weights = AttentionWeights{weights.data(), weights.size(), false};
  const std::pair<const Options*, const char*> refused[] = {{&softcap, "options.softcap"},
                                                            {&with_bias, "options.bias"},
                                                            {&alibi, "options.alibi"},
                                                            {&sinks, "options.sinks"},
                                                            {&with_weights, "options.weights"}};
  for (const auto& r : refused) {
    CHECK_THROWS_MATCHES(
        scaled_dot_product_attention_backward(qv, kv, vv, ov, gov, lv, dqv, dkv, dvv, {}, *r.first),
        std::invalid_argument, Message(not_in_backward(w, r.second)));
  }
}

// ---------------------------------------------------------------------------------------------
// The module's backward: against PyTorch autograd (the fixtures) and the double oracle.

namespace {

// Largest error over the largest reference magnitude: the parity criterion (<= 1e-5). A
// gradient that is zero in exact arithmetic (the key bias's: it adds one constant to a row of
// scores; anything through the scores with a single key, where P = 1) is float rounding on both
// sides: its error is measured against `scale`, the gradients' magnitude, instead.
double relative_error(const std::vector<float>& got, const std::vector<double>& want,
                      double scale) {
  REQUIRE(got.size() == want.size());
  double diff = 0;
  for (std::size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::fabs(got[i] - want[i]));
  const double ref = max_abs(want);
  return diff / (ref > 1e-6 * scale ? ref : scale);
}

std::vector<float> tensor_data(const Tensor& t) {
  return std::vector<float>(t.data(), t.data() + t.size());
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp must not see the null data() of an empty vector (an unused bias gradient).
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool bitwise_equal(const Gradients& a, const Gradients& b) {
  bool same = bitwise_equal(tensor_data(a.query), tensor_data(b.query)) &&
              bitwise_equal(tensor_data(a.keys), tensor_data(b.keys)) &&
              bitwise_equal(tensor_data(a.values), tensor_data(b.values));
  for (Projection p : kProjections) {
    same = same && bitwise_equal(a.weight(p), b.weight(p)) && bitwise_equal(a.bias(p), b.bias(p));
  }
  return same;
}

}  // namespace

TEST_CASE("module backward: equals PyTorch autograd on the gradient fixtures (float32)",
          "[backward][golden]") {
  const std::string name =
      GENERATE(from_range(std::begin(kGradientCases), std::end(kGradientCases)));
  const Path path = GENERATE(from_range(std::begin(test::kPaths), std::end(test::kPaths)));
  INFO("fixture " << name << ", ISA " << isa_name(active_isa()) << ", " << test::path_name(path));
  const GradientFixture fx(name);
  const ConstTensorView values{fx.values_data(), fx.n, fx.lk, fx.e};
  const ConstTensorView keys{fx.keys_data(), fx.n, fx.lk, fx.e};
  const ConstTensorView query{fx.query_data(), fx.n, fx.lq, fx.e};
  const ConstTensorView d_out{fx.d_out.data(), fx.n, fx.lq, fx.e};
  Options options = fx.options;
  options.path = path;
  options.threads = 1;
  Gradients g;
  fx.module.backward(values, keys, query, d_out, g, fx.mask, options);
  double scale = 0;  // the largest weight gradient element: the gradients' scale
  for (const std::vector<double>& w : fx.d_weight) scale = std::max(scale, max_abs(w));
  auto check = [&](const std::vector<float>& got, const std::vector<double>& want,
                   const std::string& what) {
    const double err = relative_error(got, want, scale);
    INFO(what << ": max error / max |autograd| = " << err << " (max |autograd| " << max_abs(want)
              << ", gradients' scale " << scale << ")");
    CHECK(err <= 1e-5);
  };
  // An input passed as several arguments: each of those fields holds autograd's sum.
  check(tensor_data(g.query), fx.d_input.at("query"), "d query");
  const std::vector<double>& d_values =
      fx.inputs == "self" ? fx.d_input.at("query") : fx.d_input.at("values");
  const std::vector<double>& d_keys = fx.inputs == "distinct" ? fx.d_input.at("keys") : d_values;
  check(tensor_data(g.values), d_values, "d values");
  check(tensor_data(g.keys), d_keys, "d keys");
  for (int i = 0; i < 4; ++i) {
    check(g.weight(kProjections[i]), fx.d_weight[i], "d weight " + std::to_string(i));
    if (!fx.d_bias[i].empty()) {
      check(g.bias(kProjections[i]), fx.d_bias[i], "d bias " + std::to_string(i));
    } else {
      CHECK(g.bias(kProjections[i]).empty());
    }
  }
  if (path == Path::optimized) {
    Gradients two;
    options.threads = 2;
    fx.module.backward(values, keys, query, d_out, two, fx.mask, options);
    INFO("threads 1 and 2 bitwise");
    CHECK(bitwise_equal(g, two));
  }
}

TEST_CASE("module backward: matches the double oracle (aliasing, biases, masks, odd sizes)",
          "[backward]") {
  struct Shape {
    std::size_t e, heads, kv_heads;
  };
  // The last two with grouped K/V heads: one K/V head of 17 for two query heads, two of 3 for
  // four.
  const Shape shape =
      GENERATE(Shape{3, 3, 3}, Shape{15, 1, 1}, Shape{34, 2, 2}, Shape{34, 2, 1}, Shape{12, 4, 2});
  const std::size_t lq = GENERATE(1, 7, 33);
  const std::size_t lk = GENERATE(1, 7, 33);
  const std::string inputs = GENERATE("self", "shared_kv", "keys_is_query", "distinct");
  if (inputs != "distinct" && inputs != "shared_kv" && lq != lk) return;
  const test::MaskKind kind =
      GENERATE(test::MaskKind::none, test::MaskKind::causal_top_left,
               test::MaskKind::causal_bottom_right, test::MaskKind::fully_masked_rows);
  // Both policies where some rows see no key.
  const MaskedRows policy = GENERATE(MaskedRows::uniform, MaskedRows::zeros);
  if (policy == MaskedRows::zeros && kind != test::MaskKind::fully_masked_rows) return;
  const std::size_t e = shape.e, n = 2;
  const std::uint64_t seed = 7 + e * 3 + lq * 5 + lk * 11;
  MultiHeadAttention m(e, shape.heads, KvHeads{shape.kv_heads}, seed);
  const std::size_t kv_e = shape.kv_heads * (e / shape.heads);
  m.set_bias(Projection::query, test::random_normal(e, seed + 1));
  m.set_bias(Projection::value, test::random_normal(kv_e, seed + 2));
  m.set_bias(Projection::output, test::random_normal(e, seed + 3));
  const auto q = test::random_normal(n * lq * e, seed + 4);
  const auto k = test::random_normal(n * lk * e, seed + 5);
  const auto v = test::random_normal(n * lk * e, seed + 6);
  const auto d_out = test::random_normal(n * lq * e, seed + 7);
  const ConstTensorView query{q.data(), n, lq, e};
  const ConstTensorView keys =
      inputs == "self" || inputs == "keys_is_query" ? query : ConstTensorView{k.data(), n, lk, e};
  const ConstTensorView values = inputs == "self"        ? query
                                 : inputs == "shared_kv" ? keys
                                                         : ConstTensorView{v.data(), n, lk, e};
  const test::MaskCase mc = test::make_mask(kind, n, shape.heads, lq, lk, seed + 8);
  Options options;
  options.causal = mc.causal;
  options.masked_rows = policy;

  // The oracle, each use separately, then summed over the uses of each tensor.
  std::vector<double> w[4], b[4], dw[4], db[4];
  for (int i = 0; i < 4; ++i) {
    w[i] = test::to_double(m.weight(kProjections[i]));
    b[i] = test::to_double(m.bias(kProjections[i]));
    dw[i].resize(w[i].size());
    db[i].resize(b[i].size());
  }
  auto ptr = [](std::vector<double>& x) { return x.empty() ? nullptr : x.data(); };
  const auto vd = test::to_double(values.data, n * lk * e);
  const auto kd = test::to_double(keys.data, n * lk * e);
  const auto qd = test::to_double(q.data(), q.size());
  const auto gd = test::to_double(d_out);
  std::vector<double> dv(vd.size()), dk(kd.size()), dq(qd.size());
  detail::MaskRule rule{mc.mask, options.causal, lq, lk};
  reference::multi_head_attention_backward<double>(
      vd.data(), kd.data(), qd.data(), n, lk, lq, e, shape.heads,
      reference::Weights<double>{w[0].data(), w[1].data(), w[2].data(), w[3].data(), ptr(b[0]),
                                 ptr(b[1]), ptr(b[2]), ptr(b[3]), shape.kv_heads},
      rule, test::resolved_scale(options, e / shape.heads), options.masked_rows, gd.data(),
      dv.data(), dk.data(), dq.data(),
      reference::WeightGradients<double>{dw[0].data(), dw[1].data(), dw[2].data(), dw[3].data(),
                                         ptr(db[0]), ptr(db[1]), ptr(db[2]), ptr(db[3])});
  std::vector<double> want_q = dq, want_k = dk, want_v = dv;
  for (std::size_t i = 0; i < want_q.size(); ++i) {
    if (inputs == "self") want_q[i] += dk[i] + dv[i];
    if (inputs == "keys_is_query") want_q[i] += dk[i];
  }
  if (inputs == "self") want_k = want_v = want_q;
  if (inputs == "keys_is_query") want_k = want_q;
  if (inputs == "shared_kv") {
    for (std::size_t i = 0; i < want_k.size(); ++i) want_k[i] += dv[i];
    want_v = want_k;
  }

  // A gradient that is zero in exact arithmetic (with Lk = 1, P = 1: nothing flows through the
  // scores) holds float rounding: checked against the weight gradients' scale instead.
  double scale = 0;
  for (const std::vector<double>& x : dw) scale = std::max(scale, max_abs(x));
  auto check = [&](const float* got, const std::vector<double>& want, const std::string& what) {
    if (max_abs(want) > 1e-6 * scale) {
      test::check_close(got, want, what);
      return;
    }
    double diff = 0;
    for (std::size_t i = 0; i < want.size(); ++i)
      diff = std::max(diff, std::fabs(got[i] - want[i]));
    INFO(what << ": zero in exact arithmetic, max error " << diff << " of scale " << scale);
    CHECK(diff <= 1e-5 * scale);
  };
  std::ostringstream what;
  what << "ISA " << isa_name(active_isa()) << " E=" << e << " H=" << shape.heads
       << " KV=" << shape.kv_heads << " Lq=" << lq << " Lk=" << lk << " " << inputs << " mask "
       << test::mask_kind_name(kind) << (policy == MaskedRows::zeros ? ", zeros" : "");
  for (Path path : test::kPaths) {
    Options o = options;
    o.path = path;
    o.threads = 1;
    Gradients g;
    m.backward(values, keys, query, {d_out.data(), n, lq, e}, g, mc.mask, o);
    const std::string p = what.str() + " " + test::path_name(path);
    check(g.query.data(), want_q, p + " d query");
    check(g.keys.data(), want_k, p + " d keys");
    check(g.values.data(), want_v, p + " d values");
    for (int i = 0; i < 4; ++i) {
      check(g.weight(kProjections[i]).data(), dw[i], p + " dW" + std::to_string(i));
      if (!db[i].empty()) {
        check(g.bias(kProjections[i]).data(), db[i], p + " db" + std::to_string(i));
      }
    }
    CHECK(g.bias(Projection::key).empty());
    if (path == Path::optimized) {
      Gradients two;
      o.threads = 2;
      m.backward(values, keys, query, {d_out.data(), n, lq, e}, two, mc.mask, o);
      INFO(p << ": threads 1 and 2 bitwise");
      CHECK(bitwise_equal(g, two));
    }
  }
}

TEST_CASE("module backward: bad arguments throw std::invalid_argument naming them",
          "[backward][errors]") {
  using Catch::Matchers::Message;
  const std::size_t e = 8, n = 1, l = 4;
  const MultiHeadAttention m(e, 2, 1);
  const auto x = test::random_normal(n * l * e, 2);
  const auto d_out = test::random_normal(n * l * e, 3);
  const ConstTensorView xv{x.data(), n, l, e}, gv{d_out.data(), n, l, e};
  Gradients g;
  const std::string w = "simdattn::MultiHeadAttention::backward: ";
  CHECK_THROWS_MATCHES(m.backward(xv, xv, xv, {d_out.data(), n, l - 1, e}, g),
                       std::invalid_argument,
                       Message(w + "d_out has shape [1, 3, 8], the output is [1, 4, 8]"));
  CHECK_THROWS_MATCHES(m.backward(xv, xv, xv, {nullptr, n, l, e}, g), std::invalid_argument,
                       Message(w + "d_out.data is null"));
  Options softcap;
  softcap.softcap = 30.0f;
  CHECK_THROWS_MATCHES(m.backward(xv, xv, xv, gv, g, {}, softcap), std::invalid_argument,
                       Message(not_in_backward(w, "options.softcap")));
  // Every tensor dense: a view of every other row of a larger buffer is refused.
  const auto wide = test::random_normal(n * l * 2 * e, 4);
  const ConstTensorView strided{wide.data(), n, l, e, 2 * e};
  auto dense = [&](const std::string& name) {
    return w +
           "the backward pass takes dense [N, L, E] tensors (row_stride E, batch_stride L x E); " +
           name + " has row_stride 16 and batch_stride 64 with [L, E] = [4, 8]: pass a copy";
  };
  CHECK_THROWS_MATCHES(m.backward(xv, xv, strided, gv, g), std::invalid_argument,
                       Message(dense("query")));
  CHECK_THROWS_MATCHES(m.backward(xv, xv, xv, strided, g), std::invalid_argument,
                       Message(dense("d_out")));
  // An argument inside the gradients' own storage would be overwritten while it is read.
  m.backward(xv, xv, xv, gv, g);
  const std::string inside =
      w +
      "an argument lies inside grads' tensors (which are reallocated and overwritten): pass a "
      "copy";
  const ConstTensorView in_query{g.query.data(), n, l, e}, in_values{g.values.data(), n, l, e};
  CHECK_THROWS_MATCHES(m.backward(in_query, in_query, in_query, gv, g), std::invalid_argument,
                       Message(inside));
  CHECK_THROWS_MATCHES(m.backward(xv, xv, xv, in_values, g), std::invalid_argument,
                       Message(inside));
}

TEST_CASE("module backward: one Gradients reused by modules of other sizes", "[backward]") {
  // Each call reshapes the gradients it is given: E = 8, then 16 at the same N and L, then 8.
  const std::size_t n = 2, l = 5;
  Gradients reused;
  for (std::size_t e : {8, 16, 8}) {
    INFO("E = " << e);
    const MultiHeadAttention m(e, 2, 30 + e);
    const auto x = test::random_normal(n * l * e, 40 + e);
    const auto d_out = test::random_normal(n * l * e, 50 + e);
    const ConstTensorView xv{x.data(), n, l, e}, gv{d_out.data(), n, l, e};
    Gradients fresh;
    m.backward(xv, xv, xv, gv, fresh);
    m.backward(xv, xv, xv, gv, reused);
    CHECK((reused.query.n() == n && reused.query.l() == l && reused.query.e() == e));
    CHECK(bitwise_equal(reused, fresh));
  }
}
