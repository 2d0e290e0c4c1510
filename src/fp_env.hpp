// Denormal handling for the kernels, local to a call.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace simdattn::detail {

/// Flushes denormals to zero while alive, then restores the caller's floating-point control
/// register exactly: denormal operands cost up to 100x per instruction, and attention's
/// results do not depend on values below 1e-38. One per thread that runs kernels.
///   x86: MXCSR's FTZ (bit 15) and DAZ (bit 6).
///   AArch64: FPCR's FZ (bit 24), which flushes denormal inputs and results alike.
///   Elsewhere: nothing (the kernels are then the reference's scalar code).
class FlushDenormals {
 public:
  FlushDenormals() : saved_(read()) { write(saved_ | kFlush); }
  ~FlushDenormals() { write(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__x86_64__) || defined(__i386__)
  static constexpr std::uint64_t kFlush = 0x8040u;
  static std::uint64_t read() {
    return _mm_getcsr();
  }
  static void write(std::uint64_t v) {
    _mm_setcsr(static_cast<unsigned>(v));
  }
#elif defined(__aarch64__)
  static constexpr std::uint64_t kFlush = std::uint64_t{1} << 24;
  static std::uint64_t read() {
    std::uint64_t v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
  }
  static void write(std::uint64_t v) {
    __asm__ volatile("msr fpcr, %0" : : "r"(v));
  }
#else
  static constexpr std::uint64_t kFlush = 0;
  static std::uint64_t read() {
    return 0;
  }
  static void write(std::uint64_t) {}
#endif
  std::uint64_t saved_;
};

}  // namespace simdattn::detail
