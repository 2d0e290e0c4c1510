// The optimized kernels instantiated for xsimd::avx512bw. Compiled with this ISA's flags only.
#include "kernels/instantiate.hpp"

namespace simdattn::kernels {
extern const KernelTable kAvx512Table = make_table<xsimd::avx512bw>(Isa::avx512);
}  // namespace simdattn::kernels
