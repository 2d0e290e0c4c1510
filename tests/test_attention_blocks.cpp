// One problem computed in blocks, as a split sequence computes it (a rank's rows against another
// rank's keys, a range of heads): each block reads the whole problem's mask through MaskRule's
// window (mask_head0, mask_row0, mask_col0) and its causal rule through an explicit offset (the
// difference of the blocks' global positions); the key blocks of a row merge with
// merge_partials, and a row that sees no key of any block gets merge_masked_answers of the
// blocks' uniform answers. The result equals the double oracle of the whole problem, for every
// mask kind and both masked-row policies, on the active ISA's kernels and on the reference.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"
#include "driver/attention.hpp"
#include "isa/registry.hpp"
#include "kernels/attention/merge.hpp"

namespace simdattn {
namespace {

struct Range {
  std::size_t begin, length;
};

// The whole problem [N, Lq, H, D] x [N, Lk, H_kv, D] in blocks: query rows x keys x head halves.
std::vector<float> in_blocks(const kernels::KernelTable* table, const std::vector<float>& q,
                             const std::vector<float>& k, const std::vector<float>& v,
                             std::size_t n, std::size_t lq, std::size_t lk, std::size_t h,
                             std::size_t hkv, std::size_t d, const test::MaskCase& mc, float scale,
                             MaskedRows policy) {
  const std::vector<Range> rows{{0, lq / 3}, {lq / 3, lq - lq / 3}};
  const std::vector<Range> keys{{0, lk / 2}, {lk / 2, 1}, {lk / 2 + 1, lk - lk / 2 - 1}};
  const std::size_t group = h / hkv, kv_halves = hkv % 2 == 0 ? 2 : 1;
  const std::ptrdiff_t whole_offset =
      mc.causal == Causal::bottom_right
          ? static_cast<std::ptrdiff_t>(lk) - static_cast<std::ptrdiff_t>(lq)
          : 0;
  const std::size_t parts = keys.size();
  // Per key block: outputs [N, Lq, H, D], log-sum-exps [N, H, Lq], uniform answers [N, H_kv, D].
  std::vector<float> o(parts * n * lq * h * d), lse(parts * n * h * lq),
      uniform(parts * n * hkv * d);
  std::vector<std::uint8_t> seen(n * h * lq, 0);
  for (std::size_t s = 0; s < parts; ++s) {
    const Range kr = keys[s];
    if (kr.length == 0) continue;
    for (std::size_t half = 0; half < kv_halves; ++half) {
      const std::size_t kv0 = half * hkv / kv_halves, kvn = hkv / kv_halves;
      const std::size_t h0 = kv0 * group, hn = kvn * group;
      for (const Range rr : rows) {
        std::vector<float> block_lse(n * hn * rr.length);
        detail::AttentionProblem p;
        p.q = {q.data() + (rr.begin * h + h0) * d, n, rr.length, hn, d, h * d, lq * h * d};
        p.k = {k.data() + (kr.begin * hkv + kv0) * d, n, kr.length, kvn, d, hkv * d, lk * hkv * d};
        p.v = {v.data() + (kr.begin * hkv + kv0) * d, n, kr.length, kvn, d, hkv * d, lk * hkv * d};
        p.out = {o.data() + s * n * lq * h * d + (rr.begin * h + h0) * d,
                 n,
                 rr.length,
                 hn,
                 d,
                 h * d,
                 lq * h * d};
        p.rule = detail::MaskRule{mc.mask, mc.causal, rr.length, kr.length};
        p.rule.mask_head0 = h0;
        p.rule.mask_row0 = rr.begin;
        p.rule.mask_col0 = kr.begin;
        p.rule.causal_offset = static_cast<std::ptrdiff_t>(rr.begin) -
                               static_cast<std::ptrdiff_t>(kr.begin) + whole_offset;
        p.scale = scale;
        p.policy = MaskedRows::zeros;
        p.lse = block_lse.data();
        detail::run_attention(table, p, 2);
        for (std::size_t b = 0; b < n; ++b) {
          for (std::size_t j = 0; j < hn; ++j) {
            const kernels::KeyRule rule = p.rule.for_head(b, j);
            for (std::size_t i = 0; i < rr.length; ++i) {
              const std::size_t at = (b * h + h0 + j) * lq + rr.begin + i;
              lse[s * n * h * lq + at] = block_lse[(b * hn + j) * rr.length + i];
              if (kernels::has_visible_key(rule, i)) {
                seen[at] = 1;
              } else {
                lse[s * n * h * lq + at] = -INFINITY;  // nothing of this block reaches the row
              }
            }
          }
        }
      }
    }
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t j = 0; j < hkv; ++j) {
        kernels::masked_row_answer(MaskedRows::uniform,
                                   v.data() + ((b * lk + kr.begin) * hkv + j) * d, hkv * d,
                                   kr.length, d, uniform.data() + ((s * n + b) * hkv + j) * d);
      }
    }
  }
  std::vector<float> out(n * lq * h * d);
  std::vector<std::size_t> counts;
  for (const Range kr : keys) counts.push_back(kr.length);
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t i = 0; i < lq; ++i) {
      for (std::size_t j = 0; j < h; ++j) {
        float* dst = out.data() + ((b * lq + i) * h + j) * d;
        const std::size_t at = (b * h + j) * lq + i;
        if (seen[at] != 0) {
          kernels::merge_partials(lse.data() + at, n * h * lq,
                                  o.data() + ((b * lq + i) * h + j) * d, n * lq * h * d, parts, d,
                                  dst);
        } else if (policy == MaskedRows::uniform) {
          kernels::merge_masked_answers(uniform.data() + (b * hkv + j / group) * d, n * hkv * d,
                                        counts.data(), parts, d, dst);
        } else {
          std::fill(dst, dst + d, 0.0f);
        }
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("attention in blocks (mask window, explicit causal offset, merges) equals the whole",
          "[driver]") {
  const kernels::KernelTable* active = detail::kernels_for("test", Options{});
  const std::size_t n = 2, h = 4;
  for (const kernels::KernelTable* table :
       {active, static_cast<const kernels::KernelTable*>(nullptr)}) {
    for (std::size_t hkv : {4, 2}) {
      for (std::size_t d : {3, 17}) {
        for (const auto& [lq, lk] :
             {std::pair<std::size_t, std::size_t>{40, 40}, {9, 70}, {70, 9}}) {
          for (test::MaskKind kind : test::kAllMaskKinds) {
            for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
              const std::string what = std::string(table == nullptr ? "reference" : "kernels") +
                                       " H_kv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                                       " Lq=" + std::to_string(lq) + " Lk=" + std::to_string(lk) +
                                       " mask " + test::mask_kind_name(kind);
              const auto q = test::random_normal(n * lq * h * d, 1);
              const auto k = test::random_normal(n * lk * hkv * d, 2);
              const auto v = test::random_normal(n * lk * hkv * d, 3);
              const test::MaskCase mc = test::make_mask(kind, n, h, lq, lk);
              const auto out = in_blocks(table, q, k, v, n, lq, lk, h, hkv, d, mc, 0.41f, policy);
              const auto qd = test::to_double(q), kd = test::to_double(k), vd = test::to_double(v);
              std::vector<double> ref(n * lq * h * d);
              using CH = detail::Heads<const double>;
              reference::attention<double>(
                  CH{qd.data(), n, lq, h, d, h * d, lq * h * d},
                  CH{kd.data(), n, lk, hkv, d, hkv * d, lk * hkv * d},
                  CH{vd.data(), n, lk, hkv, d, hkv * d, lk * hkv * d},
                  detail::Heads<double>{ref.data(), n, lq, h, d, h * d, lq * h * d},
                  detail::MaskRule{mc.mask, mc.causal, lq, lk}, 0.41f, policy);
              test::check_close(out.data(), ref, what);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("merge_masked_answers weighs each part's average by its keys", "[driver]") {
  const std::size_t d = 3;
  const float o[2 * d] = {1, 2, 3, 10, 20, 30};  // averages over 1 and 3 keys
  const std::size_t keys[2] = {1, 3};
  float out[d];
  kernels::merge_masked_answers(o, d, keys, 2, d, out);
  CHECK(out[0] == Approx(7.75f));  // (1 * 1 + 3 * 10) / 4
  CHECK(out[2] == Approx(23.25f));
  const std::size_t none[2] = {0, 3};
  kernels::merge_masked_answers(o, d, none, 2, d, out);
  CHECK(out[1] == 20.0f);  // a part of no keys weighs nothing
}

TEST_CASE("merges: a NaN part reaches the row wherever it stands; a -inf slice passes on 0 x v",
          "[driver][nonfinite]") {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  const std::size_t d = 3;
  const float sink = 0.5f;
  // Two parts in both orders: a NaN one beside a -inf one (whose output is a sum of 0 x v) or
  // beside a finite one. Every merge must give NaN everywhere and return NaN.
  for (float other : {-kInf, 1.5f}) {
    for (int first_nan = 0; first_nan < 2; ++first_nan) {
      const float lse[2] = {first_nan ? kNaN : other, first_nan ? other : kNaN};
      const float o[2 * d] = {0.25f, -1.0f, 2.0f, 0.5f, 0.0f, -3.0f};
      INFO("other part's lse " << other << ", NaN part " << (first_nan ? "first" : "second"));
      float out[d];
      CHECK(std::isnan(kernels::merge_partials(lse, 1, o, d, 2, d, out)));
      for (float x : out) CHECK(std::isnan(x));
      CHECK(std::isnan(kernels::merge_slices(nullptr, lse, 1, o, d, 2, d, out)));
      for (float x : out) CHECK(std::isnan(x));
      CHECK(std::isnan(kernels::merge_slices(&sink, lse, 1, o, d, 2, d, out)));
      for (float x : out) CHECK(std::isnan(x));
    }
  }
  // A finite slice and a -inf one whose 0 x v sum holds NaN in column 1: merge_partials ignores
  // the latter, merge_slices passes its NaN on and leaves the other columns as they were.
  const float lse[2] = {0.75f, -kInf};
  const float o[2 * d] = {1.0f, 2.0f, 3.0f, 0.0f, kNaN, 0.0f};
  for (const float* s : {static_cast<const float*>(nullptr), &sink}) {
    INFO((s != nullptr ? "sink" : "no sink"));
    float plain[d], sliced[d];
    kernels::merge_partials(lse, 1, o, d, 2, d, plain);
    const float got = kernels::merge_slices(s, lse, 1, o, d, 2, d, sliced);
    CHECK(std::isfinite(got));
    CHECK(std::isnan(sliced[1]));
    const float keep = s != nullptr ? 1.0f / (1.0f + std::exp(sink - 0.75f)) : 1.0f;
    CHECK(sliced[0] == Approx(plain[0] * keep));
    CHECK(sliced[2] == Approx(plain[2] * keep));
  }
}

}  // namespace simdattn
