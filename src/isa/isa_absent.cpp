// Stands in for src/isa/isa_<name>.cpp when the build leaves that ISA out (another processor,
// or disabled by its SIMDATTN_ENABLE_<NAME> option): the ISA has no kernels. The build compiles
// this file once per absent ISA with SIMDATTN_ABSENT_ISA=<name>.
#include "isa/registry.hpp"

#define SIMDATTN_ABSENT_KERNELS_(name)     \
  namespace simdattn::kernels {            \
  const KernelTable* kernels_of_##name() { \
    return nullptr;                        \
  }                                        \
  }
#define SIMDATTN_ABSENT_KERNELS(name) SIMDATTN_ABSENT_KERNELS_(name)

SIMDATTN_ABSENT_KERNELS(SIMDATTN_ABSENT_ISA)
