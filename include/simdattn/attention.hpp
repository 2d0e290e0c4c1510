// simdattn: the attention core alone, softmax(Q K^T * scale) V per head, on [N, L, H, D] views.
#pragma once

#include <cstddef>
#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {

/// out[b, i, j, :] = sum_k softmax_k(scale * <query[b, i, j, :], keys[b, k, j', :]>) values[b, k,
/// j', :]
///
/// Shapes: query [N, Lq, H, Dk], keys [N, Lk, H_kv, Dk], values [N, Lk, H_kv, Dv], out
/// [N, Lq, H, Dv]. H_kv divides H: query head j reads K/V head j' = j / (H / H_kv)
/// (grouped-query attention; H_kv = H is plain multi-head attention, H_kv = 1 multi-query).
/// The value head size Dv may differ from the key head size Dk (DeepSeek's MLA has 192 and 128).
/// The views' strides let the heads of [N, L, E] buffers, and [N, H, L, D] tensors, be used in
/// place (see HeadsView). The mask, if any, is [N|1, H|1, Lq|1, Lk|1]; a masked key gets no
/// weight (the tutorial's -1e20 fill gives the same unless a visible score is below -1e20), and
/// a row with every key masked follows `options.masked_rows`. The
/// score modifications (soft-capping, bias, ALiBi, sliding window, sinks, key padding) and the
/// optional attention weights are described at Options. `out` must not overlap any input.
///
/// Throws std::invalid_argument (message names the argument and the values) on null pointers,
/// zero sizes, mismatched N/H/D/Lk, a mask or bias that does not broadcast, a bad scale,
/// softcap, window, ALiBi slope, sink or thread count, overlapping output, or sizes whose
/// products overflow; std::bad_alloc if scratch memory runs out (`out` and the attention
/// weights then unspecified). Never allocates memory proportional to Lq x Lk.
void scaled_dot_product_attention(const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Mask& mask = {}, const Options& options = {});

/// The ALiBi paper's slopes for `heads` heads (the default of Options::alibi): for a power of
/// two n, slope_j = 2^(-8 (j + 1) / n); otherwise the n' = 2^floor(log2 heads) slopes of n'
/// followed by every other slope of 2 n' (the odd-numbered ones, 2^(-4 (2 m + 1) / n')), as the
/// paper's reference code does. Throws std::invalid_argument for heads == 0.
std::vector<float> alibi_slopes(std::size_t heads);

}  // namespace simdattn
