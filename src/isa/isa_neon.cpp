// The optimized kernels instantiated for xsimd::neon64 (AArch64's Advanced SIMD: 4 floats, with
// FMA). Compiled with this ISA's flags only (none: every AArch64 processor has it).
#include "kernels/instantiate.hpp"

SIMDATTN_DEFINE_ISA_KERNELS(neon, xsimd::neon64)
