// The attention weights (PyTorch's need_weights), opt-in, recomputed after the fused pass from
// each row's log-sum-exp: P[i, k] = exp(s_ik - lse_i), with s_ik the final score (scale,
// soft-capping, bias, ALiBi) of a visible key and 0 for a hidden one. The scores come from the
// projection GEMM (Q_h times K_h packed as a weight), so this pass runs at GEMM speed; memory
// beyond the caller's [N, H, Lq, Lk] (or [N, Lq, Lk]) buffer is one packed K and, when heads
// are averaged, a block of score rows per thread.
#pragma once

#include "driver/attention.hpp"
#include "kernels/kernel_table.hpp"

namespace simdattn::detail {

/// Writes p.weights from p.lse (filled by the fused pass). Tasks own disjoint rows of the
/// output and each element sums its heads in head order, so results do not depend on threads.
void write_attention_weights(const kernels::KernelTable& table, const AttentionProblem& p,
                             int threads);

}  // namespace simdattn::detail
