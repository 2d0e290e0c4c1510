// simdattn: which instruction set the optimized path runs on.
#pragma once

#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {

/// The ISA the optimized path uses in this process, chosen once at first use: the best one
/// that this CPU and its OS support, unless the environment variable SIMDATTN_ISA names one
/// (avx512, avx2, sse2 or naive). Naming an ISA this machine cannot run throws
/// std::runtime_error on first use rather than crashing later.
Isa active_isa();

/// Every ISA this machine can run, best first, `Isa::naive` last.
std::vector<Isa> available_isas();

/// "avx512", "avx2", "sse2", "naive".
const char* isa_name(Isa isa);

}  // namespace simdattn
