// The optimized kernels instantiated for xsimd::fma3<xsimd::avx2>. Compiled with this ISA's
// flags only.
#include "kernels/instantiate.hpp"

SIMDATTN_DEFINE_ISA_KERNELS(avx2, xsimd::fma3<xsimd::avx2>)
