// The arguments of the attention backward kernel (kernels/attention/backward.hpp), shared by the
// driver and every ISA.
#pragma once

#include <cstddef>

#include "kernels/blocking.hpp"
#include "kernels/key_rule.hpp"

namespace simdattn::kernels {

/// One call: the keys [key_begin, key_end) (at most kKeyBlock of them) of one (batch, key/value
/// head), against every query row of the `group` query heads that read that key/value head.
/// Writes the block's dK and dV rows (scale dS^T Q and P^T dO, summed over the group's heads in
/// head order, then query order) and adds scale dS K to every query row's dQ accumulator.
struct BackwardArgs {
  // Query side. Query head j of the group is at + j * *_head_stride, its row i at
  // + i * *_stride. Rows are read (q, d_out) and updated (d_q) as whole vectors of
  // round_up(d, width) floats: when d is not a multiple of the width, the driver passes
  // zero-padded copies.
  const float* q = nullptr;
  std::size_t q_stride = 0;
  std::size_t q_head_stride = 0;
  const float* d_out = nullptr;
  std::size_t d_out_stride = 0;
  std::size_t d_out_head_stride = 0;
  float* d_q = nullptr;  // accumulated into
  std::size_t d_q_stride = 0;
  std::size_t d_q_head_stride = 0;
  // Per-row statistics, head j's row i at [j * lq + i]: the forward's log-sum-exp (+inf for a
  // row without a visible key, so that its probabilities are exactly 0) and
  // delta = rowsum(dO * O).
  const float* lse = nullptr;
  const float* delta = nullptr;

  // Key side: key 0 of this (batch, key/value head); key rows are read in place.
  const float* k = nullptr;
  std::size_t k_stride = 0;
  const float* v = nullptr;
  std::size_t v_stride = 0;
  float* d_k = nullptr;  // rows [key_begin, key_end) are written, d floats each
  std::size_t d_k_stride = 0;
  float* d_v = nullptr;
  std::size_t d_v_stride = 0;
  const float* d_v_extra = nullptr;  // [d] added to every d_v row, or nullptr

  std::size_t lq = 0;
  std::size_t lk = 0;
  std::size_t d = 0;
  std::size_t group = 1;
  std::size_t key_begin = 0;
  std::size_t key_end = 0;
  KeyRule rule;  // query head 0's; head j's mask rows are at rule.mask + j * mask_head_stride
  std::size_t mask_head_stride = 0;
  float scale = 1.0f;
  float* scratch = nullptr;  // backward_scratch_floats(d) floats, 64-byte aligned
};

/// Floats of scratch one backward call needs: K^T and V^T of the key block,
/// a zero-padded copy of its K rows, the dK and dV accumulators, and the probability and dS
/// tiles. O(kKeyBlock x D), independent of Lq and Lk.
inline std::size_t backward_scratch_floats(std::size_t d) {
  const std::size_t dp = (d + 15) / 16 * 16;
  return 5 * dp * kKeyBlock + 2 * kBackwardRows * kKeyBlock + 64;
}

}  // namespace simdattn::kernels
