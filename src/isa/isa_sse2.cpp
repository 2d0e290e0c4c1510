// The optimized kernels instantiated for xsimd::sse2. Compiled with this ISA's flags only.
#include "kernels/instantiate.hpp"

SIMDATTN_DEFINE_ISA_KERNELS(sse2, xsimd::sse2)
