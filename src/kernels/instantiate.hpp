// Builds the kernel table of one ISA. Included only by the src/isa/*.cpp translation units, each
// compiled with its own ISA flags; everything reached from here is a template on Arch or has
// internal linkage, so no ISA-specific code can leak into another unit through the linker.
#pragma once

#include <xsimd/xsimd.hpp>

#include "kernels/kernel_table.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
KernelTable make_table(Isa isa) {
  return KernelTable{isa, nullptr, nullptr};
}

}  // namespace
}  // namespace simdattn::kernels
