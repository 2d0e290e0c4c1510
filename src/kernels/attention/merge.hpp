// Partial attention results and the one way they are merged.
//
// A partial result of one query row over some subset of the keys (a decode slice today; a
// chunk of a prompt, a ring step over another rank's keys, the backward's saved statistics)
// is its log-sum-exp and its normalised output:
//     lse = log(sum over the part's visible keys k of exp(scale * q . k_k))   (natural log)
//     o   = sum_k exp(scale * q . k_k - lse) v_k
// lse = -inf when the part has no visible key (or every visible score is -inf). Two parts
// combine exactly: lse = log(exp(lse_1) + exp(lse_2)), o = sum_s exp(lse_s - lse) o_s.
//
// Baseline code in a .cpp of its own (the drivers call it; no ISA flags), scalar and in a fixed
// order, so a merged result depends on the parts only, never on which thread made them.
#pragma once

#include <cstddef>

#include "simdattn/types.hpp"

namespace simdattn::kernels {

/// Merges `parts` partial results of one query row in the order given: part s has log-sum-exp
/// lse[s * lse_stride] and output o + s * o_stride (d floats). Writes the merged output to
/// `out` and returns the merged lse. A NaN lse, wherever it stands, makes the output NaN and is
/// returned. Parts with lse = -inf weigh nothing; when every part is -inf the output is NaN
/// (0 / 0, as the reference gives a row whose visible scores are all -inf) and -inf is
/// returned: a row that sees no key at all is the caller's to answer (masked_row_answer),
/// decided by the key rule, not by the numbers.
float merge_partials(const float* lse, std::size_t lse_stride, const float* o, std::size_t o_stride,
                     std::size_t parts, std::size_t d, float* out);

/// merge_partials for the slices of one row's keys that the decode and paged kernels leave: a
/// slice with lse = -inf holds its unnormalised sum of p x v (zeros where it summed nothing),
/// not anything. Such a slice weighs nothing, but its 0 x v products are added, so that a NaN or
/// Inf value that the row sees at a -inf score reaches it, as in the reference (0 x Inf = NaN).
/// With a sink (an attention sink: a logit with no value, one more part with lse = *sink and
/// output 0; nullptr for none) the keys' output scales by exp(lse - lse') and the returned lse'
/// = log(exp(lse) + exp(*sink)); where every slice's lse is -inf the sink takes all the weight
/// and the output is the sum of the 0 x v products: zeros, but NaN where a value the row sees
/// holds NaN or Inf. Without a sink that case gives NaN and -inf, as merge_partials does. A NaN
/// lse stays NaN.
float merge_slices(const float* sink, const float* lse, std::size_t lse_stride, const float* o,
                   std::size_t o_stride, std::size_t parts, std::size_t d, float* out);

/// out += 0 x part, element by element: what a part that weighs nothing (lse = -inf) still adds
/// to a row, zeros except where it holds NaN or Inf (0 x Inf = NaN).
void add_zero_weighted(const float* part, std::size_t d, float* out);

/// The answer for a query row that sees no key: zeros, or under MaskedRows::uniform what the
/// tutorial's -1e20 fill gives, equal scores, so the plain average of the lk values (rows
/// v_stride floats apart), summed as the reference does (1/lk times v, in key order).
void masked_row_answer(MaskedRows policy, const float* v, std::size_t v_stride, std::size_t lk,
                       std::size_t d, float* out);

/// The uniform masked-row answer over the union of several parts' keys from each part's answer
/// over its own keys[s] keys (the average of its values, o + s * o_stride): the key-count-weighted
/// average, sum_s (keys[s] / sum keys) o_s, in the order given. Equal to masked_row_answer over
/// all the keys up to rounding; for a row that sees no key of any part (a split sequence).
void merge_masked_answers(const float* o, std::size_t o_stride, const std::size_t* keys,
                          std::size_t parts, std::size_t d, float* out);

}  // namespace simdattn::kernels
