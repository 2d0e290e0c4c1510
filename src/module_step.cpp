// MultiHeadAttention::step(): one step of generation with a KvCache. Projects the new tokens
// only (one GEMM against [Wq; Wk; Wv]), appends their keys and values to the cache, attends over
// each sequence's history (the cache's drivers), and applies the output projection.
#include <algorithm>
#include <limits>
#include <string>

#include "driver/linear.hpp"
#include "driver/scratch.hpp"
#include "isa/registry.hpp"
#include "kv_cache_impl.hpp"
#include "module_impl.hpp"
#include "reference/reference.hpp"
#include "simdattn/kv_cache.hpp"
#include "simdattn/multi_head_attention.hpp"
#include "validate.hpp"

namespace simdattn {
void MultiHeadAttention::step(KvCache& cache, const std::vector<SequenceId>& ids,
                              const ConstTensorView& x, const TensorView<float>& out,
                              const Options& options) const {
  const char* where = "MultiHeadAttention::step";
  const Impl& m = detail::ModuleAccess::impl(*this, where);
  const std::size_t e = m.e, heads = m.heads, kvh = m.kv_heads, d = m.head_dim();
  const std::size_t kv_e = m.kv_e(), row = e + 2 * kv_e;
  KvCache::Impl& c = detail::KvCacheAccess::impl(cache, where);
  detail::require_dense(where, "x", detail::check_tensor(where, "x", x, e));
  detail::require_dense(where, "out", detail::check_tensor(where, "out", out, e));
  if (out.n != x.n || out.l != x.l) {
    detail::fail(where, "out has shape " + detail::shape_string(out.n, out.l, out.e) +
                            ", x needs " + detail::shape_string(x.n, x.l, e));
  }
  if (ids.size() != x.n) {  // before plan_append, whose message would name the projected keys
    detail::fail(where, std::to_string(ids.size()) +
                            " sequence ids for a batch of N = " + std::to_string(x.n) + " (x " +
                            detail::shape_string(x.n, x.l, x.e) + ")");
  }
  if (c.config.kv_heads != kvh || c.config.head_dim != d) {
    detail::fail(where, "the cache holds kv_heads " + std::to_string(c.config.kv_heads) +
                            " of head_dim " + std::to_string(c.config.head_dim) +
                            ", the module has kv_heads " + std::to_string(kvh) + " of head_dim " +
                            std::to_string(d));
  }
  const auto [scale, threads, rule] = detail::check_cache_options(where, options, heads, d);
  const std::size_t bytes = x.n * x.l * e * sizeof(float);
  if (detail::overlaps(out.data, bytes, x.data, bytes)) {
    detail::fail(where, "out overlaps x: an in-place step is not supported");
  }
  detail::check_apart(where, {out.data, bytes, "out"},
                      detail::option_inputs(Mask{}, options, x.n, 0));
  const std::size_t rows = x.n * x.l;
  if (rows > std::numeric_limits<std::size_t>::max() / (2 * sizeof(float)) / (row + e)) {
    detail::fail(where, "the scratch of " + std::to_string(rows) + " projected rows overflows");
  }
  const kernels::KernelTable* table = detail::kernels_for(where, options);

  // Scratch: the new tokens' projections [rows][Q | K | V] and the heads' output [rows][E].
  float* qkv = detail::thread_scratch(detail::ScratchSlot::activations, rows * (row + e));
  float* attn = qkv + rows * row;
  const std::size_t n = x.n, t = x.l;
  const ConstHeadsView k_view{qkv + e, n, t, kvh, d, row, t * row};
  const ConstHeadsView v_view{qkv + e + kv_e, n, t, kvh, d, row, t * row};
  // Checks ids, shapes and free blocks; nothing changes until reserve_append.
  detail::AppendPlan plan = detail::plan_append(where, c, ids, k_view, v_view);

  using detail::bias_or_null;
  if (table != nullptr) {
    detail::run_linear(*table, x.data, rows, m.packed_qkv.view, bias_or_null(m.bias_qkv), qkv, row,
                       threads);
  } else {
    // The reference, projection by projection, into the same [Q | K | V] rows.
    std::vector<float> y;
    for (int i = 0; i < 3; ++i) {
      const std::size_t out_features = m.out_features(i), offset = i == 0 ? 0 : e + (i - 1) * kv_e;
      y.resize(rows * out_features);
      reference::linear<float>(x.data, rows, e, m.weight[i].data(), out_features,
                               bias_or_null(m.bias[i]), y.data());
      for (std::size_t r = 0; r < rows; ++r) {
        std::copy(y.begin() + r * out_features, y.begin() + (r + 1) * out_features,
                  qkv + r * row + offset);
      }
    }
  }
  detail::reserve_append(c, plan);
  // The output projection too may take scratch (a thread's first GEMM), so a failure there
  // also takes the append back.
  try {
    detail::run_cached_attention(table, c, plan, {qkv, n, t, heads, d, row, t * row},
                                 {attn, n, t, heads, d, e, t * e}, scale, threads, rule);
    if (table != nullptr) {
      detail::run_linear(*table, attn, rows, m.packed[3].view, m.bias[3].data(), out.data, e,
                         threads);
    } else {
      reference::linear<float>(attn, rows, e, m.weight[3].data(), e, m.bias[3].data(), out.data);
    }
  } catch (...) {
    detail::undo_append(c, plan.undo);
    throw;
  }
}

Tensor MultiHeadAttention::step(KvCache& cache, const std::vector<SequenceId>& ids,
                                const ConstTensorView& x, const Options& options) const {
  // Validate x before sizing the result from it.
  const char* where = "MultiHeadAttention::step";
  const std::size_t e = detail::ModuleAccess::impl(*this, where).e;
  detail::check_tensor(where, "x", x, e);
  Tensor out(x.n, x.l, e);
  step(cache, ids, x, out.view(), options);
  return out;
}

}  // namespace simdattn
