// scaled_dot_product_attention(): validation, then the attention driver on the kernels the
// call's options choose.
#include "simdattn/attention.hpp"

#include <string>

#include "driver/attention.hpp"
#include "isa/registry.hpp"
#include "validate.hpp"

namespace simdattn {
namespace {

detail::Heads<const float> resolve(const char* name, const ConstHeadsView& view) {
  const char* where = "scaled_dot_product_attention";
  if (view.data == nullptr) detail::fail(where, std::string(name) + ".data is null");
  if (view.n == 0 || view.l == 0 || view.h == 0 || view.d == 0) {
    detail::fail(where, std::string(name) + " has a zero size: [N, L, H, D] = " +
                            detail::shape_string(view.n, view.l, view.h, view.d));
  }
  const std::size_t hd = detail::checked_mul(where, name, view.h, view.d);
  const std::size_t row = view.row_stride == 0 ? hd : view.row_stride;
  if (row < hd) {
    detail::fail(where, std::string(name) + ".row_stride (" + std::to_string(row) +
                            ") is smaller than H * D (" + std::to_string(hd) + ")");
  }
  const std::size_t batch =
      view.batch_stride == 0 ? detail::checked_mul(where, name, view.l, row) : view.batch_stride;
  if (view.n > 1 && batch < (view.l - 1) * row + hd) {
    detail::fail(where, std::string(name) + ".batch_stride (" + std::to_string(batch) +
                            ") makes batches overlap (rows need " +
                            std::to_string((view.l - 1) * row + hd) + ")");
  }
  // The last element's offset must be representable.
  detail::checked_mul(where, name, view.n - 1, batch, 1);
  detail::checked_mul(where, name, view.l, row, 1);
  return {view.data, view.n, view.l, view.h, view.d, row, batch};
}

std::size_t extent_bytes(const detail::Heads<const float>& x) {
  return ((x.n - 1) * x.batch_stride + (x.l - 1) * x.row_stride + x.h * x.d) * sizeof(float);
}

}  // namespace

void scaled_dot_product_attention(const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Mask& mask, const Options& options) {
  const char* where = "scaled_dot_product_attention";
  const auto q = resolve("query", query);
  const auto k = resolve("keys", keys);
  const auto v = resolve("values", values);
  const auto o = resolve("out", ConstHeadsView{out.data, out.n, out.l, out.h, out.d, out.row_stride,
                                               out.batch_stride});
  auto same = [&](const char* what, std::size_t a, std::size_t b, const char* an, const char* bn) {
    if (a != b) {
      detail::fail(where, std::string(what) + " differ: " + an + " has " + std::to_string(a) +
                              ", " + bn + " has " + std::to_string(b));
    }
  };
  same("batch sizes N", q.n, k.n, "query", "keys");
  same("batch sizes N", q.n, v.n, "query", "values");
  same("batch sizes N", q.n, o.n, "query", "out");
  same("heads H", q.h, k.h, "query", "keys");
  same("heads H", q.h, v.h, "query", "values");
  same("heads H", q.h, o.h, "query", "out");
  same("head_dim D", q.d, k.d, "query", "keys");
  same("head_dim D", q.d, v.d, "query", "values");
  same("head_dim D", q.d, o.d, "query", "out");
  same("key lengths Lk", k.l, v.l, "keys", "values");
  same("query lengths Lq", q.l, o.l, "query", "out");
  detail::check_mask(where, mask, q.n, q.h, q.l, k.l);
  const float scale = detail::resolve_scale(where, options, q.d);
  const int threads = detail::resolve_threads(where, options);
  const std::size_t out_bytes = extent_bytes(o);
  for (const auto* in : {&q, &k, &v}) {
    if (detail::overlaps(o.data, out_bytes, in->data, extent_bytes(*in))) {
      detail::fail(where,
                   "out overlaps an input (query, keys or values): in-place attention "
                   "is not supported");
    }
  }
  if (mask.data != nullptr &&
      detail::overlaps(o.data, out_bytes, mask.data, mask.n * mask.h * mask.lq * mask.lk)) {
    detail::fail(where, "out overlaps the mask");
  }
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  detail::AttentionProblem p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = {out.data, o.n, o.l, o.h, o.d, o.row_stride, o.batch_stride};
  p.rule = detail::MaskRule{mask, options.causal, q.l, k.l};
  p.scale = scale;
  p.policy = options.masked_rows;
  detail::run_attention(table, p, threads);
}

}  // namespace simdattn
