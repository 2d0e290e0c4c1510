// The optimized kernels instantiated for xsimd::avx512bw (xsimd 8.1's avx512f batch needs
// AVX512DQ). Compiled with this ISA's flags only.
#include "kernels/instantiate.hpp"

SIMDATTN_DEFINE_ISA_KERNELS(avx512, xsimd::avx512bw)
