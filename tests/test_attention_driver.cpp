// The attention driver's contract beyond the public API: each row's log-sum-exp (the partial
// result that merges, training and ring attention build on), grouped K/V heads (query head h
// reads K/V head h / (H / H_kv)) on the tile and decode kernels, and merge_partials itself.
// On the active ISA's kernels (CTest runs the suite once per ISA) and on the reference.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"
#include "driver/attention.hpp"
#include "isa/registry.hpp"
#include "kernels/attention/merge.hpp"

namespace simdattn {
namespace {

struct Oracle {
  std::vector<double> out, lse;
};

// The double reference on dense [N, L, H, D] / [N, L, H_kv, D] data.
Oracle oracle(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
              std::size_t n, std::size_t lq, std::size_t lk, std::size_t h, std::size_t hkv,
              std::size_t d, const detail::MaskRule& rule, double scale, MaskedRows policy) {
  const auto qd = test::to_double(q), kd = test::to_double(k), vd = test::to_double(v);
  Oracle o;
  o.out.resize(n * lq * h * d);
  o.lse.resize(n * h * lq);
  using CH = detail::Heads<const double>;
  reference::attention<double>(CH{qd.data(), n, lq, h, d, h * d, lq * h * d},
                               CH{kd.data(), n, lk, hkv, d, hkv * d, lk * hkv * d},
                               CH{vd.data(), n, lk, hkv, d, hkv * d, lk * hkv * d},
                               detail::Heads<double>{o.out.data(), n, lq, h, d, h * d, lq * h * d},
                               rule, scale, policy, o.lse.data());
  return o;
}

void check_lse(const std::vector<float>& lse, const std::vector<double>& ref,
               const std::string& what) {
  INFO(what);
  REQUIRE(lse.size() == ref.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref[i])) {
      bad += !(std::isinf(lse[i]) && lse[i] < 0);
    } else {
      bad += !(std::fabs(lse[i] - ref[i]) <= 2e-5 * (1.0 + std::fabs(ref[i])));
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("run_attention: output and log-sum-exp match the oracle, with grouped K/V heads",
          "[driver]") {
  const kernels::KernelTable* active = kernels::table_for(active_isa());
  const std::size_t n = 2, h = 4;
  for (std::size_t hkv : {4, 2, 1}) {
    for (std::size_t d : {1, 3, 17}) {
      for (std::size_t lq : {1, 2, 7, 33}) {
        for (std::size_t lk : {1, 7, 33, 600}) {  // 600 keys: two decode slices
          for (test::MaskKind kind : test::kAllMaskKinds) {
            for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
              const std::string what = "H_kv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                                       " Lq=" + std::to_string(lq) + " Lk=" + std::to_string(lk) +
                                       " mask " + test::mask_kind_name(kind);
              const auto q = test::random_normal(n * lq * h * d, 1);
              const auto k = test::random_normal(n * lk * hkv * d, 2);
              const auto v = test::random_normal(n * lk * hkv * d, 3);
              const test::MaskCase mc = test::make_mask(kind, n, h, lq, lk);
              detail::AttentionProblem p;
              p.q = {q.data(), n, lq, h, d, h * d, lq * h * d};
              p.k = {k.data(), n, lk, hkv, d, hkv * d, lk * hkv * d};
              p.v = {v.data(), n, lk, hkv, d, hkv * d, lk * hkv * d};
              p.rule = detail::MaskRule{mc.mask, mc.causal, lq, lk};
              p.scale = 0.37f;
              p.policy = policy;
              const Oracle ref = oracle(q, k, v, n, lq, lk, h, hkv, d, p.rule, p.scale, policy);
              std::vector<float> first;
              for (int threads : {1, 2}) {
                std::vector<float> out(n * lq * h * d, -7.0f), lse(n * h * lq, -7.0f);
                p.out = {out.data(), n, lq, h, d, h * d, lq * h * d};
                p.lse = lse.data();
                detail::run_attention(active, p, threads);
                test::check_close(out.data(), ref.out, what);
                check_lse(lse, ref.lse, what);
                if (threads == 1) {
                  first = out;
                } else {
                  CHECK(std::memcmp(first.data(), out.data(), out.size() * 4) == 0);
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("merge_partials: parts over disjoint key ranges merge into the whole", "[driver]") {
  // Three parts of one row, each the reference over its own keys (its own lse and output).
  const std::size_t d = 5, lk = 40;
  const std::size_t bounds[] = {0, 9, 10, 40};
  const auto q = test::random_normal(d, 1), k = test::random_normal(lk * d, 2),
             v = test::random_normal(lk * d, 3);
  auto part = [&](std::size_t b, std::size_t e, std::vector<float>& o) {
    const auto qd = test::to_double(q), kd = test::to_double(k), vd = test::to_double(v);
    std::vector<double> out(d), lse(1);
    using CH = detail::Heads<const double>;
    reference::attention<double>(
        CH{qd.data(), 1, 1, 1, d, d, d}, CH{kd.data() + b * d, 1, e - b, 1, d, d, (e - b) * d},
        CH{vd.data() + b * d, 1, e - b, 1, d, d, (e - b) * d},
        detail::Heads<double>{out.data(), 1, 1, 1, d, d, d},
        detail::MaskRule{{}, Causal::none, 1, e - b}, 0.5, MaskedRows::uniform, lse.data());
    o.assign(out.begin(), out.end());
    return static_cast<float>(lse[0]);
  };
  std::vector<float> o(3 * d), lse(3), tmp;
  for (int s = 0; s < 3; ++s) {
    lse[s] = part(bounds[s], bounds[s + 1], tmp);
    std::copy(tmp.begin(), tmp.end(), o.begin() + s * d);
  }
  std::vector<float> whole;
  const float whole_lse = part(0, lk, whole);
  std::vector<float> merged(d);
  const float merged_lse = kernels::merge_partials(lse.data(), 1, o.data(), d, 3, d, merged.data());
  CHECK(merged_lse == Approx(whole_lse).epsilon(1e-6));
  for (std::size_t i = 0; i < d; ++i) CHECK(merged[i] == Approx(whole[i]).epsilon(1e-5));

  SECTION("a part with nothing visible weighs nothing, whatever its output holds") {
    lse[1] = -std::numeric_limits<float>::infinity();
    o[d] = std::numeric_limits<float>::quiet_NaN();
    kernels::merge_partials(lse.data(), 1, o.data(), d, 3, d, merged.data());
    for (float x : merged) CHECK(std::isfinite(x));
  }
  SECTION("a NaN log-sum-exp reaches the output") {
    lse[2] = std::numeric_limits<float>::quiet_NaN();
    CHECK(std::isnan(kernels::merge_partials(lse.data(), 1, o.data(), d, 3, d, merged.data())));
    for (float x : merged) CHECK(std::isnan(x));
  }
  SECTION("every part -inf: NaN output (0 / 0), -inf returned; the caller answers masked rows") {
    for (float& x : lse) x = -std::numeric_limits<float>::infinity();
    CHECK(kernels::merge_partials(lse.data(), 1, o.data(), d, 3, d, merged.data()) ==
          -std::numeric_limits<float>::infinity());
    for (float x : merged) CHECK(std::isnan(x));
  }
}

}  // namespace simdattn
