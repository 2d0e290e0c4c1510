// Builds the kernel table of one ISA. Included only by the src/isa/*.cpp translation units, each
// compiled with its own ISA flags; everything reached from here is a template on Arch with
// internal linkage, so no ISA-specific code can leak into another unit through the linker.
// xsimd's own templates have external linkage: each unit instantiates them on architectures no
// other unit uses (simd.hpp, avx2_in_avx512_unit), and CI checks that the units' objects define
// no weak function in common.
#pragma once

#include <xsimd/xsimd.hpp>

#include "isa/registry.hpp"
#include "kernels/attention/backward.hpp"
#include "kernels/attention/flash.hpp"
#include "kernels/attention/paged_decode.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/kernel_table.hpp"

namespace simdattn::kernels {
namespace {

/// y[i] = f(x[i]) for a vector function f; the tail through a padded copy (xsimd 8.1 has no
/// masked loads).
template <class Arch, class F>
void map_array(const float* x, float* y, std::size_t n, F f) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  std::size_t i = 0;
  for (; i + kW <= n; i += kW) f(V::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < n) {
    alignas(64) float buf[kW] = {};
    std::copy(x + i, x + n, buf);
    f(V::load_aligned(buf)).store_aligned(buf);
    std::copy(buf, buf + (n - i), y + i);
  }
}

template <class Arch>
void exp_array(const float* x, float* y, std::size_t n) {
  map_array<Arch>(x, y, n, [](const Vec<Arch>& v) { return xsimd::exp(v); });
}

template <class Arch>
void exp2_array(const float* x, float* y, std::size_t n) {
  map_array<Arch>(x, y, n, [](const Vec<Arch>& v) { return exp2_nonpositive<Arch>(v); });
}

template <class Arch>
void tanh_array(const float* x, float* y, std::size_t n) {
  map_array<Arch>(x, y, n, [](const Vec<Arch>& v) { return tanh_vec<Arch>(v); });
}

/// The architecture of the decode kernel (Lq <= kDecodeMaxLq): the ISA's own, except that
/// AVX-512 runs the ymm kernel. Its score groups are one vector of keys, each key a row of its
/// own (a 4 KiB page at E = 1024); with 16 rows in flight instead of 8 the zmm kernel measured
/// 1.22-1.30x slower, K/V from memory (1.59-1.62 vs 1.24-1.29 ms) and from cache (1.18 vs 0.96
/// ms) alike: Lk = 4096, E = 1024, H = 16, one thread, Zen 5.
template <class Arch>
struct DecodeArch {
  using type = Arch;
};
#if defined(__AVX512F__)
template <>
struct DecodeArch<xsimd::avx512bw> {
  using type = avx2_in_avx512_unit;  // not fma3<avx2> itself: simd.hpp says why
};
#endif

/// Constant-initialised, so that a call from another unit's static initialiser finds it filled.
template <class Arch>
constexpr KernelTable make_table(Isa isa) {
  return KernelTable{isa,
                     &gemm<Arch>,
                     GemmTile<Arch>::kPackA,
                     &attention_tiles<Arch>,
                     &attention_decode<typename DecodeArch<Arch>::type>,
                     &paged_attention<Arch>,
                     &attention_backward<Arch>,
                     &bias_keys_down<Arch>,
                     &exp_array<Arch>,
                     &exp2_array<Arch>,
                     &tanh_array<Arch>};
}

}  // namespace
}  // namespace simdattn::kernels

/// Defines kernels_of_<name>() (isa/registry.hpp) for the ISA `name` with xsimd architecture
/// `Arch`: the whole of a src/isa/isa_<name>.cpp.
#define SIMDATTN_DEFINE_ISA_KERNELS(name, Arch)                        \
  namespace simdattn::kernels {                                        \
  const KernelTable* kernels_of_##name() {                             \
    static constexpr KernelTable kTable = make_table<Arch>(Isa::name); \
    return &kTable;                                                    \
  }                                                                    \
  }
