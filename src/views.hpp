// Resolved [n, l, h, d] views that every path (reference and optimized) computes on: the API
// layer checks a public HeadsView and fills in its strides.
#pragma once

#include <cstddef>

namespace simdattn::detail {

/// [n, l, h, d] heads with explicit strides in elements: element (b, i, j, k) at
/// data[b * batch_stride + i * row_stride + j * d + k].
template <class T>
struct Heads {
  T* data = nullptr;
  std::size_t n = 0, l = 0, h = 0, d = 0;
  std::size_t row_stride = 0, batch_stride = 0;
  T* at(std::size_t b, std::size_t i, std::size_t j) const {
    return data + b * batch_stride + i * row_stride + j * d;
  }
};

}  // namespace simdattn::detail
