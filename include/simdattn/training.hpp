// simdattn: training. The attention core's forward that saves what its backward pass needs,
// and the backward pass (the gradients of a loss with respect to query, keys and values).
//
//     // forward, saving the per-row log-sum-exp of the scores
//     simdattn::scaled_dot_product_attention_forward(q, k, v, out, lse, mask, options);
//     // ... loss, d_out = dLoss/dout ...
//     simdattn::scaled_dot_product_attention_backward(q, k, v, out, d_out, lse, d_q, d_k, d_v,
//                                                     mask, options);
//
// The backward pass is FlashAttention-2's: it recomputes the attention probabilities block by
// block from Q, K and the saved log-sum-exp, so it never holds an Lq x Lk matrix either. Its
// extra memory: two floats per query row (N x H x Lq); where N x kv_heads is below 8, the keys
// are split among tasks and each keeps its own dQ sums, up to 8 x N x H x Lq x D floats (D
// rounded up to a multiple of 16); and per thread, the packed Q, dOut and dQ rows of one kv
// head's query heads (3 x G x Lq x D floats, G = H / kv_heads) and a few key blocks. Results are
// bitwise identical for every thread count (no thread adds into another's gradient).
#pragma once

#include <cstddef>
#include <vector>

#include "simdattn/multi_head_attention.hpp"
#include "simdattn/types.hpp"

namespace simdattn {

/// The per-row log-sum-exp of the scores, row-major and dense, [n, h, l] (l = Lq): element
/// (b, j, i) is data[(b * h + j) * l + i]. For query row i of batch b and head j,
///     lse = log(sum over the keys k visible to the row of exp(s_k) + exp(sink_j))
/// in natural log, with s_k the score after the options' modifications (types.hpp, "Scores":
/// scale * <q_i, k_k> without them) and the sink term only with options.sinks. A row that sees
/// no key (a fully masked row) has lse = -inf, or sink_j with sinks.
template <class T>
struct LseView {
  T* data = nullptr;
  std::size_t n = 0;
  std::size_t h = 0;
  std::size_t l = 0;
};
using ConstLseView = LseView<const float>;

/// scaled_dot_product_attention() (attention.hpp) that also writes the log-sum-exp of every
/// query row into `lse` ([N, H, Lq]): the training forward. `out` is bitwise the plain call's.
/// Throws std::invalid_argument as the plain call does, and if lse.data is null, lse's shape is
/// not [N, H, Lq], or lse overlaps the inputs, `out` or the mask.
void scaled_dot_product_attention_forward(const ConstHeadsView& query, const ConstHeadsView& keys,
                                          const ConstHeadsView& values, const HeadsView<float>& out,
                                          const LseView<float>& lse, const Mask& mask = {},
                                          const Options& options = {});

/// The gradients of a loss with respect to query, keys and values, given d_out (the loss's
/// gradient with respect to `out`) and what the training forward saw and saved:
///
///     P = softmax(scale Q K^T, masked) (from lse)      dV = P^T dOut      dP = dOut V^T
///     dS = P * (dP - rowsum(dOut * out))               dQ = scale dS K    dK = scale dS^T Q
///
/// query, keys, values, out, mask and options (scale, causal, masked_rows, window, key_padding)
/// must be the forward's; out and lse are what it returned. d_query has query's shape, d_keys and
/// d_values keys'; they are overwritten, not added to. Not supported (an error naming the option):
/// options.softcap, bias, alibi, sinks and weights, although the training forward takes them; and
/// values whose head_dim differs from the keys' (the forward's Dv != Dk). Masks: a masked key gets
/// no gradient through its score. A fully masked query row gets dQ = 0 and gives no key a dK, under
/// both MaskedRows policies; its output depends on V only under MaskedRows::uniform (the average of
/// all values), so there every value row receives dOut_i / Lk, as autograd gives for the tutorial's
/// module; under MaskedRows::zeros the row contributes nothing at all.
///
/// Path::naive recomputes everything in the scalar reference (it reads neither out nor lse).
///
/// Throws std::invalid_argument (message names the argument and the values) on anything the
/// forward rejects, on the options and shapes above that it does not support, on shapes that do
/// not match (d_out and out like query, lse [N, H, Lq]), and if a gradient overlaps an input or
/// another gradient. The inputs may alias each other.
void scaled_dot_product_attention_backward(const ConstHeadsView& query, const ConstHeadsView& keys,
                                           const ConstHeadsView& values, const ConstHeadsView& out,
                                           const ConstHeadsView& d_out, const ConstLseView& lse,
                                           const HeadsView<float>& d_query,
                                           const HeadsView<float>& d_keys,
                                           const HeadsView<float>& d_values, const Mask& mask = {},
                                           const Options& options = {});

/// The gradients of MultiHeadAttention::backward(), reused call after call (storage kept when
/// the shapes repeat). values, keys, query: dLoss/d(the tensor passed as that argument),
/// [N, Lk, E] or [N, Lq, E]; when one tensor is passed as several arguments (same data, same
/// shape), each of those fields holds the sum over all its uses (self-attention: the three
/// fields are equal). weight(p) is shaped like the module's weight(p), bias(p) like bias(p)
/// (empty when the module has no such bias).
class Gradients {
 public:
  Tensor values, keys, query;
  const std::vector<float>& weight(Projection p) const;
  const std::vector<float>& bias(Projection p) const;

 private:
  friend class MultiHeadAttention;
  std::vector<float> weight_[4], bias_[4];
};

}  // namespace simdattn
