// Builds the kernel table of one ISA. Included only by the src/isa/*.cpp translation units, each
// compiled with its own ISA flags; everything reached from here is a template on Arch with
// internal linkage, so no ISA-specific code can leak into another unit through the linker.
#pragma once

#include <xsimd/xsimd.hpp>

#include "kernels/attention/flash.hpp"
#include "kernels/gemm/gemm.hpp"
#include "kernels/kernel_table.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
KernelTable make_table(Isa isa) {
  return KernelTable{isa, &gemm<Arch>, &attention_tiles<Arch>, &attention_decode<Arch>};
}

}  // namespace
}  // namespace simdattn::kernels
