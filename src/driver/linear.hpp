// The projection driver: y = x W^T + b on the packed GEMM of a kernel table.
#pragma once

#include <cstddef>

#include "kernels/kernel_table.hpp"

namespace simdattn::detail {

/// A weight packed for the optimized GEMM (see kernels/gemm/pack.hpp): panels of kPanel output
/// features, each [in][kPanel], zero-padded past `out`.
struct PackedWeight {
  std::size_t in = 0;
  std::size_t out = 0;
  const float* data = nullptr;  // owned by the module's storage
};

/// y[r, :] = x[r, :] W^T + bias for r < rows (x rows `in` floats apart, y rows ldy apart), on
/// `table`'s GEMM with `threads` threads. Inputs are validated.
void run_linear(const kernels::KernelTable& table, const float* x, std::size_t rows,
                const PackedWeight& w, const float* bias, float* y, std::size_t ldy, int threads);

}  // namespace simdattn::detail
