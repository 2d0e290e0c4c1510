// Resolved [n, l, h, d] views that every path (reference and optimized) computes on: the API
// layer checks a public HeadsView and fills in its strides.
#pragma once

#include <cstddef>

namespace simdattn::detail {

/// [n, l, h, d] heads with explicit strides in elements: element (b, i, j, k) at
/// data[b * batch_stride + i * row_stride + j * head_stride + k]; head_stride 0 means d (the
/// heads of a row side by side, [N, L, H, D]), so {data, n, l, h, d, row, batch} keeps meaning
/// what it meant before views had a head stride.
template <class T>
struct Heads {
  T* data = nullptr;
  std::size_t n = 0, l = 0, h = 0, d = 0;
  std::size_t row_stride = 0, batch_stride = 0;
  std::size_t head_stride = 0;
  std::size_t heads_apart() const { return head_stride == 0 ? d : head_stride; }
  T* at(std::size_t b, std::size_t i, std::size_t j) const {
    return data + b * batch_stride + i * row_stride + j * heads_apart();
  }
  /// True if the heads of a row sit side by side, head j at row + j * d.
  bool heads_dense() const { return heads_apart() == d; }
};

/// Where attention probabilities go, if anywhere: [N, H, Lq, Lk], or with average_heads their
/// mean over the H query heads, [N, Lq, Lk]. data == nullptr: nowhere.
template <class T>
struct WeightsOut {
  T* data = nullptr;
  bool average_heads = false;
};

}  // namespace simdattn::detail
