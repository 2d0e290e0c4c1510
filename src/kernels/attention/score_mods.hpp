// The score modifications of one (batch, head), applied where a score is final and before the
// softmax, in this order (as Gemma 2 and ggml do it):
//     s = scale * q . k                         (computed by the caller)
//     s = softcap * tanh(s / softcap)           soft-capping, if softcap > 0
//     s = s + bias[i][k] + slope * (k - p_i)    the float bias (KeyRule::bias), ALiBi
// where p_i = i + KeyRule::offset is query i's position among the keys. Which keys are visible
// stays the KeyRule's business (a -inf bias hides its key there); the sink is not a score but a
// term of the row's softmax denominator, exp(sink), added once per row after every key (merges
// of partial results add it after merging).
//
// Plain data and scalar arithmetic, templated on the scalar type: the reference instantiates it
// on float and on double (the tests' oracle).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

#include "kernels/key_rule.hpp"

namespace simdattn::kernels {

struct ScoreMods {
  float softcap = 0.0f;                                  // 0: no soft-capping
  float alibi_slope = 0.0f;                              // 0: no ALiBi (a zero slope adds nothing)
  float sink = -std::numeric_limits<float>::infinity();  // -inf: no sink
};

namespace {

inline bool has_sink(const ScoreMods& m) {
  return m.sink != -std::numeric_limits<float>::infinity();
}

/// True if scores need any change beyond scale * q . k (soft-capping, bias or ALiBi).
inline bool changes_scores(const KeyRule& r, const ScoreMods& m) {
  return m.softcap != 0.0f || m.alibi_slope != 0.0f || r.bias != nullptr;
}

/// The final score of query row i and key k from s = scale * q . k; brow = bias_row(r, i).
template <class T>
T modified_score(const KeyRule& r, const ScoreMods& m, const float* brow, std::size_t i,
                 std::size_t k, T s) {
  if (m.softcap != 0.0f) {
    const T cap = static_cast<T>(m.softcap);
    s = cap * std::tanh(s / cap);
  }
  if (brow != nullptr) s += static_cast<T>(brow[k]);
  if (m.alibi_slope != 0.0f) {
    // Exact in integers (sizes are far below 2^53), one rounding to T.
    const std::ptrdiff_t dist =
        static_cast<std::ptrdiff_t>(k) - static_cast<std::ptrdiff_t>(i) - r.offset;
    s += static_cast<T>(m.alibi_slope) * static_cast<T>(dist);
  }
  return s;
}

}  // namespace
}  // namespace simdattn::kernels
