// The instruction sets simdattn has optimized kernels for, best first: the one list of them.
// The Isa enum (types.hpp), the names, the run-time detection and choice (dispatch.hpp), the
// build's per-ISA translation units and CTest's per-ISA runs all derive from it. Adding an ISA
// means a row here, its CPU check in src/isa/registry.cpp, its unit src/isa/isa_<name>.cpp and
// its compile flags in CMakeLists.txt.
#pragma once

#define SIMDATTN_ISA_LIST(X) X(avx512) X(avx2) X(sse2) X(neon)
