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
  std::vector<float> weight[detail::kNumProjections];  // [E, E] each, PyTorch's [out, in]
  std::vector<float> bias[detail::kNumProjections];    // empty for an absent Q/K/V bias

  // Derived from the above, never set directly.
  detail::OwnedPacked packed[detail::kNumProjections];
  detail::OwnedPacked packed_qkv;  // [3E, E]: self-attention's one GEMM
  detail::OwnedPacked packed_kv;   // [2E, E]: keys and values from the same buffer
  std::vector<float> bias_qkv;     // [3E], empty when no Q/K/V projection has a bias
  std::vector<float> bias_kv;      // [2E], likewise for K/V

  std::size_t head_dim() const { return e / heads; }

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
