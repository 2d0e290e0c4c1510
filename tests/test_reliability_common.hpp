// Helpers shared by the tests/test_reliability_*.cpp files, on top of common.hpp.
#pragma once

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

namespace simdattn::test {

/// Random normal q [n, lq, h, d], k and v [n, lk, h, d] in dense buffers, and calls on them.
struct SdpaProblem {
  std::size_t n, lq, lk, h, d;
  std::vector<float> q, k, v;

  SdpaProblem(std::size_t n_, std::size_t lq_, std::size_t lk_, std::size_t h_, std::size_t d_,
              std::uint64_t seed)
      : n(n_), lq(lq_), lk(lk_), h(h_), d(d_) {
    q = random_normal(n * lq * h * d, seed);
    k = random_normal(n * lk * h * d, seed + 1);
    v = random_normal(n * lk * h * d, seed + 2);
  }
  ConstHeadsView qv() const { return {q.data(), n, lq, h, d}; }
  ConstHeadsView kv() const { return {k.data(), n, lk, h, d}; }
  ConstHeadsView vv() const { return {v.data(), n, lk, h, d}; }
  /// Offset of q or out element (b, i, head, t); key rows use k_at.
  std::size_t q_at(std::size_t b, std::size_t i, std::size_t head, std::size_t t) const {
    return ((b * lq + i) * h + head) * d + t;
  }
  std::size_t k_at(std::size_t b, std::size_t key, std::size_t head, std::size_t t) const {
    return ((b * lk + key) * h + head) * d + t;
  }
  /// The call's result; `out` starts as -1 everywhere, so an element never written shows.
  std::vector<float> run(const Mask& mask, const Options& o) const {
    std::vector<float> out(n * lq * h * d, -1.0f);
    scaled_dot_product_attention(qv(), kv(), vv(), {out.data(), n, lq, h, d}, mask, o);
    return out;
  }
  std::vector<double> oracle(const Mask& mask, const Options& o) const {
    return oracle_sdpa(qv(), kv(), vv(), mask, o);
  }
};

/// "" if a and b hold the same bits, else the first element where they differ.
inline std::string first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return "sizes differ";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
    }
  }
  return "";
}

/// True if every element is finite.
inline bool all_finite(const std::vector<float>& x) {
  for (float v : x) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

/// How a result with NaN/Inf relates to the oracle, element by element.
struct NonfiniteComparison {
  std::size_t ref_nonfinite = 0;  ///< elements where the oracle is NaN or Inf
  std::size_t lost = 0;           ///< ... and out is finite: a NaN/Inf was lost
  std::size_t spread = 0;         ///< oracle finite, out NaN/Inf, not allowed
  std::size_t allowed_nan = 0;    ///< oracle finite, out NaN/Inf, allowed by the caller
  std::size_t first_bad = 0;      ///< first element counted in lost or spread
  double max_error = 0;           ///< over elements where both are finite, / max |ref|
};

/// Compares `out` with the oracle: where the oracle is finite, out must be finite and close
/// (unless may_be_nan(i) says a NaN may reach element i there); where it is NaN or Inf, out must
/// be NaN or Inf too.
template <class MayBeNan>
NonfiniteComparison compare_nonfinite(const std::vector<float>& out, const std::vector<double>& ref,
                                      MayBeNan may_be_nan) {
  NonfiniteComparison c;
  double max_ref = 0, max_diff = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const bool ref_ok = std::isfinite(ref[i]), out_ok = std::isfinite(out[i]);
    if (!ref_ok) {
      ++c.ref_nonfinite;
      if (out_ok && c.lost++ == 0 && c.spread == 0) c.first_bad = i;
    } else if (!out_ok) {
      if (may_be_nan(i)) {
        ++c.allowed_nan;
      } else if (c.spread++ == 0 && c.lost == 0) {
        c.first_bad = i;
      }
    } else {
      max_ref = std::max(max_ref, std::fabs(ref[i]));
      max_diff = std::max(max_diff, std::fabs(out[i] - ref[i]));
    }
  }
  c.max_error = max_ref > 0 ? max_diff / max_ref : max_diff;
  return c;
}

inline NonfiniteComparison compare_nonfinite(const std::vector<float>& out,
                                             const std::vector<double>& ref) {
  return compare_nonfinite(out, ref, [](std::size_t) { return false; });
}

/// CHECKs a NonfiniteComparison: no NaN/Inf lost or spread, finite elements within the
/// correctness table's element tolerance.
inline void check_nonfinite(const NonfiniteComparison& c, const std::string& what) {
  INFO(what << ": oracle NaN/Inf " << c.ref_nonfinite << ", lost " << c.lost << ", spread "
            << c.spread << ", allowed NaN " << c.allowed_nan << ", first bad element "
            << c.first_bad << ", max element error " << c.max_error << " x max|ref|");
  CHECK(c.lost == 0);
  CHECK(c.spread == 0);
  CHECK(c.max_error <= kMaxElementTol);
}

}  // namespace simdattn::test
