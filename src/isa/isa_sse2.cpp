// The optimized kernels instantiated for xsimd::sse2. Compiled with this ISA's flags only.
#include "kernels/instantiate.hpp"

namespace simdattn::kernels {
extern const KernelTable kSse2Table = make_table<xsimd::sse2>(Isa::sse2);
}  // namespace simdattn::kernels
