// How the rows of the module's [N, L, E] inputs and output lie in memory, and the copies that
// make an unusual layout contiguous. A TensorView is one contiguous matrix of N * L rows in two
// layouts: batch-major ([N, L, E], the default) and sequence-major ([L, N, E], PyTorch's
// batch_first=False). Projections run on such a matrix in its memory order, so their results
// keep the layout and the attention core reads them through strided heads: no copy. Any other
// strides (padded rows, a slice of a wider buffer) are copied to batch-major first.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "validate.hpp"
#include "views.hpp"

namespace simdattn::detail {

enum class RowOrder { batch_major, sequence_major };

/// An activation of n x l rows of `ld` floats (ld >= e: a wider row holds several
/// projections), in `order`, seen as [n, l, h, d] heads.
template <class T>
Heads<T> heads_in(T* data, RowOrder order, std::size_t n, std::size_t l, std::size_t h,
                  std::size_t d, std::size_t ld) {
  return order == RowOrder::batch_major ? Heads<T>{data, n, l, h, d, ld, l * ld}
                                        : Heads<T>{data, n, l, h, d, n * ld, ld};
}

/// The rows of a checked view as one contiguous matrix: `data` itself when it is one, else a
/// batch-major copy in `copy`.
struct Matrix {
  const float* data;
  RowOrder order;
};

/// Copies the rows of `r` into `to`, batch-major.
template <class T>
void gather_rows(const Rows<T>& r, float* to) {
  for (std::size_t b = 0; b < r.n; ++b) {
    for (std::size_t i = 0; i < r.l; ++i) {
      std::copy(r.row(b, i), r.row(b, i) + r.e, to + (b * r.l + i) * r.e);
    }
  }
}

/// `r` as a contiguous matrix; `batch_major_only` also copies a sequence-major one.
inline Matrix as_matrix(const Rows<const float>& r, std::vector<float>& copy,
                        bool batch_major_only = false) {
  if (r.batch_major()) return {r.data, RowOrder::batch_major};
  if (r.sequence_major() && !batch_major_only) return {r.data, RowOrder::sequence_major};
  copy.resize(r.n * r.l * r.e);
  gather_rows(r, copy.data());
  return {copy.data(), RowOrder::batch_major};
}

/// Copies a batch-major [n, l, e] result into the rows of `r`.
inline void scatter_rows(const float* from, const Rows<float>& r) {
  for (std::size_t b = 0; b < r.n; ++b) {
    for (std::size_t i = 0; i < r.l; ++i) {
      const float* row = from + (b * r.l + i) * r.e;
      std::copy(row, row + r.e, r.row(b, i));
    }
  }
}

}  // namespace simdattn::detail
