// The attention core's backward driver: the reference, or the backward kernel of a kernel
// table over tasks on OpenMP threads with per-thread scratch.
#pragma once

#include "kernels/kernel_table.hpp"
#include "mask_rule.hpp"
#include "simdattn/types.hpp"
#include "views.hpp"

namespace simdattn::detail {

/// One backward call, validated (simdattn/training.hpp says what it computes). k.h == v.h
/// divides q.h: query head h reads K/V head h / (q.h / k.h), and the gradient of a K/V head
/// sums over its query heads in head order.
struct BackwardProblem {
  Heads<const float> q, k, v, out, d_out;  // out and d_out shaped like q
  const float* lse = nullptr;              // [N, Hq, Lq], the training forward's
  Heads<float> d_q, d_k, d_v;              // shaped like q, k, v; overwritten
  MaskRule rule;
  float scale = 1.0f;
  MaskedRows policy = MaskedRows::uniform;
};

/// Runs the problem on `table`'s backward kernel, or on the float reference (which recomputes
/// everything from q, k, v and ignores out and lse) when table is nullptr. Results are bitwise
/// the same for every thread count.
void run_attention_backward(const kernels::KernelTable* table, const BackwardProblem& p,
                            int threads);

/// Refuses, naming the option, what the backward pass does not differentiate (score
/// modifications, attention weights out).
void check_backward_options(const char* where, const Options& options);

}  // namespace simdattn::detail
