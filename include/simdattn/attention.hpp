// simdattn: the attention core alone, softmax(Q K^T * scale) V per head, on [N, L, H, D] views.
#pragma once

#include "simdattn/types.hpp"

namespace simdattn {

/// out[b, i, j, :] = sum_k softmax_k(scale * <query[b, i, j, :], keys[b, k, j, :]>) values[b, k, j,
/// :]
///
/// Shapes: query [N, Lq, H, D], keys and values [N, Lk, H, D], out [N, Lq, H, D]; the views'
/// strides let the heads of [N, L, E] buffers be used in place (see HeadsView). The mask, if
/// any, is [N|1, H|1, Lq|1, Lk|1]; masked scores are -1e20 as in the tutorial, and a row with
/// every key masked follows `options.masked_rows`. `out` must not overlap any input.
///
/// Throws std::invalid_argument (message names the argument and the values) on null pointers,
/// zero sizes, mismatched N/H/D/Lk, a mask that does not broadcast, a bad scale or thread
/// count, overlapping output, or sizes whose products overflow. Never allocates memory
/// proportional to Lq x Lk.
void scaled_dot_product_attention(const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Mask& mask = {}, const Options& options = {});

}  // namespace simdattn
