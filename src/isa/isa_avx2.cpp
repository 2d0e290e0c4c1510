// The optimized kernels instantiated for xsimd::fma3<xsimd::avx2>. Compiled with this ISA's flags
// only.
#include "kernels/instantiate.hpp"

namespace simdattn::kernels {
extern const KernelTable kAvx2Table = make_table<xsimd::fma3<xsimd::avx2>>(Isa::avx2);
}  // namespace simdattn::kernels
