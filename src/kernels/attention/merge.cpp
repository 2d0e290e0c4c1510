#include "kernels/attention/merge.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace simdattn::kernels {
namespace {

// The sink as one more part (lse = sink, output 0) of a merged row with a finite lse.
float add_sink(float sink, float lse, std::size_t d, float* o) {
  const float top = lse > sink ? lse : sink;
  const float keys = std::exp(lse - top);
  const float total = keys + std::exp(sink - top);
  const float scale = keys / total;
  for (std::size_t dd = 0; dd < d; ++dd) o[dd] *= scale;
  return top + std::log(total);
}

}  // namespace

float merge_partials(const float* lse, std::size_t lse_stride, const float* o, std::size_t o_stride,
                     std::size_t parts, std::size_t d, float* out) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  if (parts == 1 && std::isfinite(lse[0])) {
    // One part (a decode whose keys fit one slice, as the tutorial's 2 keys): w = exp(0) = 1
    // and sum = 1, so the general path below computes 0 + o, times 1, and lse + log(1): the same
    // bits without its exp and log (a quarter of the attention core's instructions in the
    // tutorial's call).
    for (std::size_t dd = 0; dd < d; ++dd) out[dd] = 0.0f + o[dd];
    return lse[0];
  }
  float m = kNegInf;
  for (std::size_t s = 0; s < parts; ++s) {
    const float x = lse[s * lse_stride];
    if (std::isnan(x)) {  // it must reach the row (a later -inf part compares false with it)
      std::fill(out, out + d, x);
      return x;
    }
    if (x > m) m = x;
  }
  std::fill(out, out + d, 0.0f);
  if (m == kNegInf) {
    std::fill(out, out + d, std::numeric_limits<float>::quiet_NaN());
    return kNegInf;
  }
  float sum = 0.0f;
  for (std::size_t s = 0; s < parts; ++s) {
    const float x = lse[s * lse_stride];
    if (x == kNegInf) continue;  // nothing in this part (its o may be anything)
    const float w = std::exp(x - m);
    sum += w;
    const float* os = o + s * o_stride;
    for (std::size_t dd = 0; dd < d; ++dd) out[dd] += w * os[dd];
  }
  const float inv = 1.0f / sum;
  for (std::size_t dd = 0; dd < d; ++dd) out[dd] *= inv;
  return m + std::log(sum);
}

void add_zero_weighted(const float* part, std::size_t d, float* out) {
  for (std::size_t dd = 0; dd < d; ++dd) out[dd] += 0.0f * part[dd];
}

float merge_slices(const float* sink, const float* lse, std::size_t lse_stride, const float* o,
                   std::size_t o_stride, std::size_t parts, std::size_t d, float* out) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const float keys_lse = merge_partials(lse, lse_stride, o, o_stride, parts, d, out);
  if (std::isnan(keys_lse)) return keys_lse;  // the output is NaN already
  if (keys_lse == kNegInf) {
    if (sink == nullptr) return keys_lse;  // NaN: 0 / 0, as the reference's row
    // The sink takes all the weight; the keys' zero weights still carry their values' NaN/Inf.
    std::fill(out, out + d, 0.0f);
  }
  // A slice whose visible scores are all -inf weighs nothing, but its 0 x v products reach
  // the row as in the reference (0 x Inf = NaN); a finite sum gains only zeros.
  for (std::size_t s = 0; s < parts; ++s) {
    if (lse[s * lse_stride] != kNegInf) continue;
    add_zero_weighted(o + s * o_stride, d, out);
  }
  if (sink == nullptr) return keys_lse;
  return keys_lse == kNegInf ? *sink : add_sink(*sink, keys_lse, d, out);
}

void masked_row_answer(MaskedRows policy, const float* v, std::size_t v_stride, std::size_t lk,
                       std::size_t d, float* out) {
  std::fill(out, out + d, 0.0f);
  if (policy == MaskedRows::zeros) return;
  const float p = 1.0f / static_cast<float>(lk);
  for (std::size_t k = 0; k < lk; ++k) {
    const float* vk = v + k * v_stride;
    for (std::size_t dd = 0; dd < d; ++dd) out[dd] += p * vk[dd];
  }
}

void merge_masked_answers(const float* o, std::size_t o_stride, const std::size_t* keys,
                          std::size_t parts, std::size_t d, float* out) {
  std::fill(out, out + d, 0.0f);
  double total = 0;
  for (std::size_t s = 0; s < parts; ++s) total += static_cast<double>(keys[s]);
  for (std::size_t s = 0; s < parts; ++s) {
    if (keys[s] == 0) continue;
    const float w = static_cast<float>(static_cast<double>(keys[s]) / total);
    const float* os = o + s * o_stride;
    for (std::size_t dd = 0; dd < d; ++dd) out[dd] += w * os[dd];
  }
}

}  // namespace simdattn::kernels
