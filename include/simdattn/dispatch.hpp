// simdattn: which instruction set the optimized path runs on, chosen at run time.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {

/// The process's ISA for the optimized path: the one set by set_active_isa(), else the one the
/// environment variable SIMDATTN_ISA names (read once, at first use), else the best that this
/// CPU and its OS support. SIMDATTN_ISA naming an unknown ISA, or one this machine cannot run,
/// makes this (and every optimized call relying on it) throw std::runtime_error naming it.
/// A single call can choose its own ISA with Options::isa.
Isa active_isa();

/// Sets the process's ISA (for calls without Options::isa) from now on, on every thread.
/// Throws std::invalid_argument, changing nothing, if this build or machine cannot run `isa`.
void set_active_isa(Isa isa);

/// Every ISA this build and machine can run, best first, Isa::naive last.
std::vector<Isa> available_isas();

/// The ISA's name as isa_list.hpp spells it (e.g. "avx2"), or "naive": the names SIMDATTN_ISA
/// and bench_attention's --isa take.
const char* isa_name(Isa isa);

/// The ISA named `name` (as isa_name() spells it), whether or not this machine runs it;
/// nullopt for an unknown name.
std::optional<Isa> isa_from_name(const std::string& name);

}  // namespace simdattn
