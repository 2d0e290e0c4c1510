// The ISA registry's internal side: which kernel table a call runs on.
#pragma once

#include "kernels/kernel_table.hpp"
#include "simdattn/types.hpp"

namespace simdattn {
namespace kernels {

/// The kernels of `isa` if this build compiled them and this machine runs them, else nullptr
/// (always nullptr for Isa::naive).
const KernelTable* table_for(Isa isa);

#define SIMDATTN_DECLARE_ISA_KERNELS_(name) const KernelTable* kernels_of_##name();
/// Defined by src/isa/isa_<name>.cpp, or by src/isa/isa_absent.cpp when the build leaves the
/// ISA out: the table, or nullptr.
SIMDATTN_ISA_LIST(SIMDATTN_DECLARE_ISA_KERNELS_)
#undef SIMDATTN_DECLARE_ISA_KERNELS_

}  // namespace kernels

namespace detail {

/// The kernels a call with `options` runs on, chosen once per call by the API layer and passed
/// down: nullptr for the reference path (Path::naive, or Isa::naive). Throws
/// std::invalid_argument naming `where` if options.isa is not an ISA this machine runs, and
/// std::runtime_error if the process's choice (SIMDATTN_ISA) is invalid.
const kernels::KernelTable* kernels_for(const char* where, const Options& options);

}  // namespace detail
}  // namespace simdattn
