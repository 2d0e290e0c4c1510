// Denormal handling for the kernels, local to a call.
#pragma once

#include <xmmintrin.h>

namespace simdattn::detail {

/// Flushes denormals to zero (FTZ and DAZ) while alive, then restores the caller's MXCSR
/// exactly: denormal operands cost up to 100x per instruction, and attention's results do not
/// depend on values below 1e-38. One per thread that runs kernels.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kFtzDaz = 0x8040u;
  unsigned saved_;
};

}  // namespace simdattn::detail
