// MultiHeadAttention's state, private to the library: the parameters as set and their copies
// packed for the optimized GEMM. The module's member functions may live in several files
// (multi_head_attention.cpp holds the parameters and forward); they all see this.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <utility>
#include <vector>

#include "aligned_buffer.hpp"
#include "driver/linear.hpp"
#include "kernels/kernel_table.hpp"
#include "simdattn/multi_head_attention.hpp"
#include "validate.hpp"
#include "views.hpp"

namespace simdattn {
namespace detail {

constexpr int kNumProjections = 4;

/// 0..3 for query, key, value, output; std::invalid_argument naming `where` for another value.
int projection_index(const char* where, Projection p);
const char* projection_name(Projection p);

/// A weight packed for the optimized GEMM, with its own storage.
struct OwnedPacked {
  AlignedBuffer storage;
  PackedWeight view;
};

/// The bias's data, or nullptr for an absent (empty) bias.
inline const float* bias_or_null(const std::vector<float>& b) {
  return b.empty() ? nullptr : b.data();
}

/// forward()'s [N, L, E] tensors, each checked against embed_size e (validate.hpp's
/// check_tensor), with keys and values of one shape, one batch size and out shaped like the
/// query. Shared with the sequence-parallel forward.
struct ForwardTensors {
  Rows<const float> values, keys, query;
  Rows<float> out;
};
ForwardTensors check_forward_tensors(const char* where, std::size_t e,
                                     const ConstTensorView& values, const ConstTensorView& keys,
                                     const ConstTensorView& query, const TensorView<float>& out);
/// Refuses an out that overlaps values, keys or query (no in-place forward).
void check_forward_overlaps(const char* where, const ForwardTensors& t);
/// The scratch holds at most 4 activations. Shapes whose own byte counts fit can still make
/// that count overflow: an error before any allocation, never a wrapped-around small buffer
/// (both paths crashed on such shapes).
void check_activations_fit(const char* where, std::size_t n, std::size_t lq, std::size_t lk,
                           std::size_t e);

/// The projected query, keys and values of one forward, as heads views into a scratch, in the
/// row order of the inputs they came from (module_layout.hpp).
struct ProjectedInputs {
  Heads<const float> q, k, v;
};
/// Batch-major copies of inputs in a layout the projections cannot read in memory order.
struct InputCopies {
  std::vector<float> values, keys, query;
};

}  // namespace detail

struct MultiHeadAttention::Impl {
  std::size_t e = 0;
  std::size_t heads = 0;
  std::size_t kv_heads = 0;                            // == heads without grouped-query attention
  std::vector<float> weight[detail::kNumProjections];  // [out, E] each, PyTorch's [out, in]
  std::vector<float> bias[detail::kNumProjections];    // empty for an absent Q/K/V bias

  // Derived from the above, never set directly. Where E and kv_e are whole GEMM panels (multiples
  // of kPanel, as in most models), packed[0..2] and packed_kv are slices of packed_qkv, whose
  // panels hold Q's, K's and V's packed rows one after the other, and own no storage: a module
  // at E = 1024 then keeps 16 MiB of packed weights, not 36.
  detail::OwnedPacked packed[detail::kNumProjections];
  detail::OwnedPacked packed_qkv;  // [E + 2 kv_e, E]: self-attention's one GEMM
  detail::OwnedPacked packed_kv;   // [2 kv_e, E]: keys and values from the same buffer
  std::vector<float> bias_qkv;     // [E + 2 kv_e], empty when no Q/K/V projection has a bias
  std::vector<float> bias_kv;      // [2 kv_e], likewise for K/V

  std::size_t head_dim() const { return e / heads; }
  /// Out features of the key and value projections: kv_heads x head_dim.
  std::size_t kv_e() const { return kv_heads * head_dim(); }
  /// Out features of projection i (0..3).
  std::size_t out_features(int i) const { return i == 1 || i == 2 ? kv_e() : e; }

  /// Floats of scratch project_inputs() needs for [n, lq, E] queries and [n, lk, E] keys.
  std::size_t projection_floats(std::size_t n, std::size_t lq, std::size_t lk) const;
  /// Q = query Wq^T + bq, K = keys Wk^T + bk, V = values Wv^T + bv into `scratch`: one GEMM
  /// against [Wq; Wk; Wv] for self-attention (one view for all three), one against [Wk; Wv]
  /// when keys and values are one view; each on its input's rows in memory order (batch- or
  /// sequence-major; other layouts are copied to `copies` first). table nullptr: the
  /// reference's linear layers on batch-major rows.
  detail::ProjectedInputs project_inputs(const kernels::KernelTable* table,
                                         const detail::ForwardTensors& t, float* scratch,
                                         int threads, detail::InputCopies& copies) const;
  /// out = attn Wo^T + bo for `rows` rows of E floats.
  void project_output(const kernels::KernelTable* table, const float* attn, std::size_t rows,
                      float* out, int threads) const;

  /// Whether packed[0..2] and packed_kv are slices of packed_qkv (see above).
  bool qkv_slices() const;
  /// Points packed[0..2] and packed_kv at their rows in packed_qkv.
  void slice_qkv();
  /// Recomputes every packed copy and concatenated bias.
  void repack();
  /// Replaces weight i and the packed copies that contain it. Everything that can throw
  /// (allocation) happens before the first change, so a failure leaves the module as it was.
  void replace_weight(int i, std::vector<float> w);
  /// Replaces bias i (empty: none) with the same guarantee.
  void replace_bias(int i, std::vector<float> b);
  Impl clone() const;
};

namespace detail {

/// How the module's member functions and the library's other components (the sequence-parallel
/// forward) reach a module's state. A moved-from module has none: an std::invalid_argument
/// naming `where`, rather than a null dereference.
struct ModuleAccess {
  static const MultiHeadAttention::Impl& impl(const MultiHeadAttention& m, const char* where) {
    if (!m.impl_) fail(where, "the module was moved from (it may only be destroyed or assigned)");
    return *m.impl_;
  }
  static MultiHeadAttention::Impl& impl(MultiHeadAttention& m, const char* where) {
    return const_cast<MultiHeadAttention::Impl&>(impl(std::as_const(m), where));
  }
};

}  // namespace detail
}  // namespace simdattn
