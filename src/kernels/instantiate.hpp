// Builds the kernel table of one ISA. Included only by the src/isa/*.cpp translation units, each
// compiled with its own ISA flags; everything reached from here is a template on Arch with
// internal linkage, so no ISA-specific code can leak into another unit through the linker.
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

/// Constant-initialised, so that a call from another unit's static initialiser finds it filled.
template <class Arch>
constexpr KernelTable make_table(Isa isa) {
  return KernelTable{isa,
                     &gemm<Arch>,
                     &attention_tiles<Arch>,
                     &attention_decode<Arch>,
                     &paged_attention<Arch>,
                     &attention_backward<Arch>,
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
