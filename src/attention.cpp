// scaled_dot_product_attention() and its training form that also writes the log-sum-exp:
// validation, then the attention driver on the kernels the call's options choose.
#include "simdattn/attention.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "driver/attention.hpp"
#include "isa/registry.hpp"
#include "simdattn/training.hpp"
#include "validate.hpp"

namespace simdattn {
std::vector<float> alibi_slopes(std::size_t heads) {
  if (heads == 0) detail::fail("alibi_slopes", "heads must be > 0, got 0");
  std::size_t pow2 = 1;
  while (pow2 * 2 <= heads) pow2 *= 2;
  std::vector<float> s(heads);
  // 2^(-8 (j + 1) / pow2) for the first pow2 heads, then 2^(-4 (2 m + 1) / pow2).
  for (std::size_t j = 0; j < heads; ++j) {
    const double e =
        j < pow2 ? 8.0 * static_cast<double>(j + 1) / static_cast<double>(pow2)
                 : 4.0 * static_cast<double>(2 * (j - pow2) + 1) / static_cast<double>(pow2);
    s[j] = static_cast<float>(std::exp2(-e));
  }
  return s;
}

namespace {

// Both forms of the forward: validation, then the driver. `lse_view` is null for the plain form.
void attention_forward(const char* where, const ConstHeadsView& query, const ConstHeadsView& keys,
                       const ConstHeadsView& values, const HeadsView<float>& out,
                       const LseView<float>* lse_view, const Mask& mask, const Options& options) {
  const auto q = detail::resolve_heads(where, "query", query);
  const auto k = detail::resolve_heads(where, "keys", keys);
  const auto v = detail::resolve_heads(where, "values", values);
  const auto o = detail::resolve_heads(where, "out", out);
  auto same = [&](const char* what, std::size_t a, std::size_t b, const char* an, const char* bn) {
    detail::check_same(where, what, a, b, an, bn);
  };
  same("batch sizes N", q.n, k.n, "query", "keys");
  same("batch sizes N", q.n, v.n, "query", "values");
  same("batch sizes N", q.n, o.n, "query", "out");
  same("heads H", k.h, v.h, "keys", "values");
  same("heads H", q.h, o.h, "query", "out");
  if (q.h % k.h != 0) {
    detail::fail(
        where, "query heads H = " + std::to_string(q.h) +
                   " is not a multiple of the keys' and values' heads H = " + std::to_string(k.h) +
                   " (grouped-query attention needs H_q % H_kv == 0)");
  }
  same("head_dim D", q.d, k.d, "query", "keys");
  same("value head_dim Dv", v.d, o.d, "values", "out");
  same("key lengths Lk", k.l, v.l, "keys", "values");
  same("query lengths Lq", q.l, o.l, "query", "out");
  detail::MaskRule rule = detail::resolve_rule(where, mask, options, q.n, q.h, q.l, k.l);
  const bool weights = detail::check_weights(where, options, q.n, q.h, q.l, k.l);
  const float scale = detail::resolve_scale(where, options, q.d);
  const int threads = detail::resolve_threads(where, options);
  const std::size_t out_bytes = detail::extent_bytes(o);
  for (const auto* in : {&q, &k, &v}) {
    if (detail::overlaps(o.data, out_bytes, in->data, detail::extent_bytes(*in))) {
      detail::fail(where,
                   "out overlaps an input (query, keys or values): in-place attention "
                   "is not supported");
    }
  }
  std::vector<detail::ByteRange> inputs = detail::option_inputs(mask, options, q.n, k.l);
  detail::check_apart(where, {o.data, out_bytes, "out"}, inputs);
  float* lse = nullptr;
  if (lse_view != nullptr) {
    detail::check_lse(where, lse_view->data, lse_view->n, lse_view->h, lse_view->l, q);
    lse = lse_view->data;
    std::vector<detail::ByteRange> read = inputs;
    read.push_back({q.data, detail::extent_bytes(q), "query"});
    read.push_back({k.data, detail::extent_bytes(k), "keys"});
    read.push_back({v.data, detail::extent_bytes(v), "values"});
    read.push_back({o.data, out_bytes, "out"});
    detail::check_apart(where, {lse, q.n * q.h * q.l * sizeof(float), "lse"}, read);
  }
  if (weights) {
    if (lse != nullptr) inputs.push_back({lse, q.n * q.h * q.l * sizeof(float), "lse"});
    inputs.push_back({q.data, detail::extent_bytes(q), "query"});
    inputs.push_back({k.data, detail::extent_bytes(k), "keys"});
    inputs.push_back({v.data, detail::extent_bytes(v), "values"});
    inputs.push_back({o.data, out_bytes, "out"});
    detail::check_apart(
        where, {options.weights.data, options.weights.size * sizeof(float), "options.weights"},
        inputs);
  }
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  detail::AttentionProblem p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = o;
  p.rule = std::move(rule);
  p.scale = scale;
  p.policy = options.masked_rows;
  p.lse = lse;
  if (weights) p.weights = {options.weights.data, options.weights.average_heads};
  detail::run_attention(table, p, threads);
}

}  // namespace

void scaled_dot_product_attention(const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Mask& mask, const Options& options) {
  attention_forward("scaled_dot_product_attention", query, keys, values, out, nullptr, mask,
                    options);
}

void scaled_dot_product_attention_forward(const ConstHeadsView& query, const ConstHeadsView& keys,
                                          const ConstHeadsView& values, const HeadsView<float>& out,
                                          const LseView<float>& lse, const Mask& mask,
                                          const Options& options) {
  attention_forward("scaled_dot_product_attention_forward", query, keys, values, out, &lse, mask,
                    options);
}

}  // namespace simdattn
