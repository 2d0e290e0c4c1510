// Layout of weights packed for the GEMM micro-kernels, shared by every ISA.
//
// A weight W [out, in] (PyTorch's nn.Linear layout) is the GEMM's B = W^T [in, out]. It is cut
// into panels of kPanel output columns; panel p holds B[0..in)[p*kPanel .. p*kPanel+kPanel) as
// `in` rows of kPanel contiguous floats, zero-padded past `out`. One 64-byte row per k: the
// AVX-512 kernel reads one panel row as one zmm, AVX2 as two ymm, SSE2 as four xmm, so a single
// packed copy serves every ISA and the module packs once when it gets its weights.
#pragma once

#include <cstddef>

#include "kernels/blocking.hpp"

namespace simdattn::kernels {

/// Floats needed to pack an [out, in] weight.
inline std::size_t packed_weight_floats(std::size_t out, std::size_t in) {
  return (out + kPanel - 1) / kPanel * kPanel * in;
}

/// Packs rows [0, out) of `w` ([out, in] row-major, rows `ldw` floats apart) into `dst`.
void pack_weight(const float* w, std::size_t out, std::size_t in, std::size_t ldw, float* dst);

}  // namespace simdattn::kernels
