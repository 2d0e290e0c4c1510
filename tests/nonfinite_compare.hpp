// How a float result holding NaN or Inf relates to a double oracle, element by element. Free
// of Catch2, so that the fuzz targets use it too; tests/common.hpp adds the CHECKs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace simdattn::test {

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

}  // namespace simdattn::test
