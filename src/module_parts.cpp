// The parts of MultiHeadAttention::forward() that other forms of it share (the
// sequence-parallel forward projects each rank's rows the same way): the checks of its tensors,
// the input projections and the output projection.
#include <algorithm>
#include <limits>
#include <string>

#include "module_impl.hpp"
#include "module_layout.hpp"
#include "reference/reference.hpp"
#include "validate.hpp"

namespace simdattn {
namespace detail {

ForwardTensors check_forward_tensors(const char* where, std::size_t e,
                                     const ConstTensorView& values, const ConstTensorView& keys,
                                     const ConstTensorView& query, const TensorView<float>& out) {
  ForwardTensors t{check_tensor(where, "values", values, e), check_tensor(where, "keys", keys, e),
                   check_tensor(where, "query", query, e), check_tensor(where, "out", out, e)};
  if (keys.n != values.n || keys.l != values.l) {
    fail(where, "keys " + shape_string(keys.n, keys.l, keys.e) + " and values " +
                    shape_string(values.n, values.l, values.e) + " must have the same shape");
  }
  if (query.n != keys.n) {
    fail(where, "batch sizes differ: query has N = " + std::to_string(query.n) +
                    ", keys and values have N = " + std::to_string(keys.n));
  }
  if (out.n != query.n || out.l != query.l) {
    fail(where, "out has shape " + shape_string(out.n, out.l, out.e) + ", the query needs " +
                    shape_string(query.n, query.l, e));
  }
  return t;
}

void check_forward_overlaps(const char* where, const ForwardTensors& t) {
  // Byte ranges from each view's first element to its last.
  const std::size_t out_bytes = t.out.extent() * sizeof(float);
  for (const Rows<const float>* in : {&t.values, &t.keys, &t.query}) {
    if (overlaps(t.out.data, out_bytes, in->data, in->extent() * sizeof(float))) {
      fail(where,
           "out overlaps an input (values, keys or query): in-place forward is not supported");
    }
  }
}

void check_activations_fit(const char* where, std::size_t n, std::size_t lq, std::size_t lk,
                           std::size_t e) {
  // The factor 2 leaves room for the scratch's rounding.
  const std::size_t largest = std::max(n * lq * e, n * lk * e);
  if (largest > std::numeric_limits<std::size_t>::max() / (4 * 2 * sizeof(float))) {
    fail(where,
         "the scratch of 4 activations of " + std::to_string(largest) + " floats overflows size_t");
  }
}

}  // namespace detail

std::size_t MultiHeadAttention::Impl::projection_floats(std::size_t n, std::size_t lq,
                                                        std::size_t lk) const {
  const std::size_t qkv_size = n * lq * (e + 2 * kv_e());  // self-attention: [N, L, E + 2 kv_e]
  return std::max(qkv_size, n * lq * e + 2 * n * lk * kv_e());
}

detail::ProjectedInputs MultiHeadAttention::Impl::project_inputs(
    const kernels::KernelTable* table, const detail::ForwardTensors& t, float* scratch, int threads,
    detail::InputCopies& copies) const {
  using detail::heads_in;
  const std::size_t n = t.query.n, lq = t.query.l, lk = t.keys.l, d = head_dim();
  const std::size_t kvh = kv_heads, kv_e = this->kv_e();
  const std::size_t q_size = n * lq * e, kv_size = n * lk * kv_e;
  float* kv = scratch + q_size;
  if (table == nullptr) {
    // The reference's linear layers read batch-major rows.
    const auto rm = detail::RowOrder::batch_major;
    const float* x = detail::as_matrix(t.query, copies.query, true).data;
    const float* k = detail::as_matrix(t.keys, copies.keys, true).data;
    const float* v = detail::as_matrix(t.values, copies.values, true).data;
    reference::linear(x, n * lq, e, weight[0].data(), e, detail::bias_or_null(bias[0]), scratch);
    reference::linear(k, n * lk, e, weight[1].data(), kv_e, detail::bias_or_null(bias[1]), kv);
    reference::linear(v, n * lk, e, weight[2].data(), kv_e, detail::bias_or_null(bias[2]),
                      kv + kv_size);
    return {heads_in<const float>(scratch, rm, n, lq, heads, d, e),
            heads_in<const float>(kv, rm, n, lk, kvh, d, kv_e),
            heads_in<const float>(kv + kv_size, rm, n, lk, kvh, d, kv_e)};
  }
  auto linear = [&](const float* x, std::size_t rows, const detail::OwnedPacked& w,
                    const std::vector<float>& b, float* y) {
    detail::run_linear(*table, x, rows, w.view, detail::bias_or_null(b), y, w.view.out, threads);
  };
  const detail::Matrix x = detail::as_matrix(t.query, copies.query);
  if (t.values.same_layout(t.keys) && t.keys.same_layout(t.query)) {
    // Self-attention: one GEMM against [Wq; Wk; Wv], each row of x read once for all three.
    const std::size_t row = e + 2 * kv_e;
    linear(x.data, n * lq, packed_qkv, bias_qkv, scratch);
    return {heads_in<const float>(scratch, x.order, n, lq, heads, d, row),
            heads_in<const float>(scratch + e, x.order, n, lk, kvh, d, row),
            heads_in<const float>(scratch + e + kv_e, x.order, n, lk, kvh, d, row)};
  }
  linear(x.data, n * lq, packed[0], bias[0], scratch);
  const auto q = heads_in<const float>(scratch, x.order, n, lq, heads, d, e);
  const detail::Matrix km = detail::as_matrix(t.keys, copies.keys);
  if (t.values.same_layout(t.keys)) {
    linear(km.data, n * lk, packed_kv, bias_kv, kv);
    return {q, heads_in<const float>(kv, km.order, n, lk, kvh, d, 2 * kv_e),
            heads_in<const float>(kv + kv_e, km.order, n, lk, kvh, d, 2 * kv_e)};
  }
  const detail::Matrix vm = detail::as_matrix(t.values, copies.values);
  linear(km.data, n * lk, packed[1], bias[1], kv);
  linear(vm.data, n * lk, packed[2], bias[2], kv + kv_size);
  return {q, heads_in<const float>(kv, km.order, n, lk, kvh, d, kv_e),
          heads_in<const float>(kv + kv_size, vm.order, n, lk, kvh, d, kv_e)};
}

void MultiHeadAttention::Impl::project_output(const kernels::KernelTable* table, const float* attn,
                                              std::size_t rows, float* out, int threads) const {
  if (table == nullptr) {
    reference::linear(attn, rows, e, weight[3].data(), e, bias[3].data(), out);
    return;
  }
  detail::run_linear(*table, attn, rows, packed[3].view, bias[3].data(), out, e, threads);
}

}  // namespace simdattn
