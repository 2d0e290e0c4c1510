// Small xsimd 8.1 helpers the kernels share: the vector type and width of an Arch, the
// reduction 8.1 lacks (it has hadd, no reduce_max), and compile-time row counts for tails.
#pragma once

#include <cstddef>
#include <type_traits>
#include <xsimd/xsimd.hpp>

/// Inlines a micro-kernel's step lambda: GCC 12 otherwise left one (paged_decode.hpp, bf16 on
/// AVX-512, two rows with keys of their own) out of line, its accumulators in memory.
#define SIMDATTN_ALWAYS_INLINE __attribute__((always_inline))

namespace simdattn::kernels {

#if defined(__AVX512F__)
/// The AVX-512 unit's ymm kernel (the decode kernel, instantiate.hpp's DecodeArch) runs on this
/// architecture, not on xsimd::fma3<xsimd::avx2>: the same instructions under a type of its own.
/// xsimd's templates have external linkage, so an xsimd::exp for fma3<avx2> instantiated here
/// (compiled with AVX-512 flags) and the AVX2 unit's would share one name, and the linker keeps
/// one copy for both units: where it kept this one, the AVX2 path ran AVX-512 instructions on an
/// AVX2-only CPU (SIGILL on a Zen 3 in the sanitizer build, where xsimd::exp is not inlined).
struct avx2_in_avx512_unit : xsimd::fma3<xsimd::avx2> {
  static constexpr char const* name() noexcept { return "fma3+avx2 in the avx512 unit"; }
};
#endif

/// True for the 8-float AVX2 architectures (fma3<avx2> and the AVX-512 unit's alias of it).
template <class Arch>
inline constexpr bool kIsAvx2 = std::is_base_of_v<xsimd::fma3<xsimd::avx2>, Arch>;

template <class Arch>
using Vec = xsimd::batch<float, Arch>;

template <class Arch>
inline constexpr std::size_t kWidth = Vec<Arch>::size;

/// Largest lane of v (NaN lanes may or may not win: callers never rely on it).
template <class Arch>
inline float hmax(const Vec<Arch>& v) {
  alignas(64) float lanes[kWidth<Arch>];
  v.store_aligned(lanes);
  float m = lanes[0];
  for (std::size_t i = 1; i < kWidth<Arch>; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

/// a * b + c; SSE2 has no FMA, and xsimd::fma there is a separate multiply and add.
template <class Arch>
inline Vec<Arch> madd(const Vec<Arch>& a, const Vec<Arch>& b, const Vec<Arch>& c) {
  return xsimd::fma(a, b, c);
}

/// Makes the compiler keep v in a register from here on: a vector loaded once and used by
/// several multiply-adds is otherwise folded into each of them as a memory operand, one load per
/// use (GCC 12 does so in the few-row GEMM tile, where the loads, two per B vector, then held
/// the ymm kernel to 79% of the FMA rate with B in L1). Changes no result.
template <class Arch>
inline void keep_in_register(Vec<Arch>& v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(v.data));
#else
  (void)v;
#endif
}

/// Copies n rows of d floats (rows `stride` floats apart) to dst, rows dp floats apart, and sets
/// columns [d, zero_to) of each copied row to zero: the attention kernels read whole vectors
/// past d (zero_to = dp); the GEMM reads d columns only (zero_to = d).
template <class Arch>
void pack_rows(const float* src, std::size_t stride, std::size_t n, std::size_t d, std::size_t dp,
               float* dst, std::size_t zero_to) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const std::size_t dv = d / kW * kW;
  for (std::size_t j = 0; j < n; ++j) {
    const float* s = src + j * stride;
    float* t = dst + j * dp;
    for (std::size_t c = 0; c < dv; c += kW) V::load_unaligned(s + c).store_aligned(t + c);
    for (std::size_t c = dv; c < d; ++c) t[c] = s[c];
    for (std::size_t c = d; c < zero_to; ++c) t[c] = 0.0f;
  }
}

/// Calls f(std::integral_constant<std::size_t, R>) for the runtime value r in [1, kMax]:
/// micro-kernels are templates on their row count so that every accumulator is a register.
template <std::size_t kMax, class F>
inline void with_rows(std::size_t r, F&& f) {
  if constexpr (kMax >= 1) {
    if (r == kMax) {
      f(std::integral_constant<std::size_t, kMax>{});
    } else {
      with_rows<kMax - 1>(r, f);
    }
  }
}

}  // namespace simdattn::kernels

#if defined(__AVX512F__)
namespace xsimd::types {
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(simdattn::kernels::avx2_in_avx512_unit, avx2);
}  // namespace xsimd::types
#endif
