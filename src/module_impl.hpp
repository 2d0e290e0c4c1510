// MultiHeadAttention's state, private to the library: the parameters as set and their copies
// packed for the optimized GEMM. The module's member functions may live in several files
// (multi_head_attention.cpp holds the parameters and forward); they all see this.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <vector>

#include "aligned_buffer.hpp"
#include "driver/linear.hpp"
#include "simdattn/multi_head_attention.hpp"

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

}  // namespace detail

struct MultiHeadAttention::Impl {
  std::size_t e = 0;
  std::size_t heads = 0;
  std::size_t kv_heads = 0;                            // == heads without grouped-query attention
  std::vector<float> weight[detail::kNumProjections];  // [out, E] each, PyTorch's [out, in]
  std::vector<float> bias[detail::kNumProjections];    // empty for an absent Q/K/V bias

  // Derived from the above, never set directly.
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

  /// Recomputes every packed copy and concatenated bias.
  void repack();
  /// Replaces weight i and the packed copies that contain it. Everything that can throw
  /// (allocation) happens before the first change, so a failure leaves the module as it was.
  void replace_weight(int i, std::vector<float> w);
  /// Replaces bias i (empty: none) with the same guarantee.
  void replace_bias(int i, std::vector<float> b);
  Impl clone() const;
};

}  // namespace simdattn
