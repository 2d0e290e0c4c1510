// The attention core's driver: the reference, or the tile and decode kernels of a kernel
// table split into tasks on OpenMP threads with per-thread scratch.
#pragma once

#include <cstddef>

#include "kernels/kernel_table.hpp"
#include "mask_rule.hpp"
#include "views.hpp"

namespace simdattn::detail {

/// One call of the attention core, validated. k.h == v.h divides q.h: query head h reads K/V
/// head h / (q.h / k.h) (grouped-query attention; k.h == q.h is plain multi-head attention).
/// q.d == k.d; v.d == out.d may differ from them.
struct AttentionProblem {
  Heads<const float> q, k, v;
  Heads<float> out;
  MaskRule rule;
  float scale = 1.0f;
  MaskedRows policy = MaskedRows::uniform;
  /// Optional [N, H, Lq] output, lse[(b * H + h) * Lq + i]: the log of the row's softmax
  /// denominator, log(sum over visible keys k of exp(s_k) + exp(sink)) with s_k the final
  /// (modified) score and the sink term only with sinks (kernels/attention/merge.hpp); -inf for
  /// a row that sees no key and has no sink. P = exp(s_k - lse) are the row's probabilities.
  float* lse = nullptr;
  /// Optional attention probabilities (opt-in: computed in a second pass from lse).
  WeightsOut<float> weights;
};

/// Runs the problem on `table`'s kernels, or on the float reference when table is nullptr.
void run_attention(const kernels::KernelTable* table, const AttentionProblem& p, int threads);

}  // namespace simdattn::detail
