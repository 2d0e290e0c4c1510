// Run-time choice of the ISA. Compiled with baseline flags only: nothing here may execute an
// instruction the oldest x86-64 lacks. xsimd 8.1's own detection reads the AVX bit from the
// wrong CPUID leaf and never asks the OS (XCR0) whether AVX/AVX-512 state is enabled, so we
// read CPUID and XGETBV ourselves.
#include "simdattn/dispatch.hpp"

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/kernel_table.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace simdattn {
namespace kernels {
#ifdef SIMDATTN_HAVE_SSE2
extern const KernelTable kSse2Table;
#endif
#ifdef SIMDATTN_HAVE_AVX2
extern const KernelTable kAvx2Table;
#endif
#ifdef SIMDATTN_HAVE_AVX512
extern const KernelTable kAvx512Table;
#endif
}  // namespace kernels

namespace {

struct CpuSupport {
  bool sse2 = false;
  bool avx2 = false;    // AVX2 + FMA, with OS support for ymm state
  bool avx512 = false;  // F + CD + DQ + BW, with OS support for zmm and opmask state
};

CpuSupport detect_cpu() {
  CpuSupport s;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return s;
  s.sse2 = (d & bit_SSE2) != 0;
  const bool fma = (c & bit_FMA) != 0;
  const bool avx = (c & bit_AVX) != 0;
  std::uint64_t xcr0 = 0;
  if ((c & bit_OSXSAVE) != 0) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // SSE and AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;  // plus opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return s;
  const bool avx2 = (b & (1u << 5)) != 0;
  const bool f = (b & (1u << 16)) != 0, dq = (b & (1u << 17)) != 0;
  const bool cd = (b & (1u << 28)) != 0, bw = (b & (1u << 30)) != 0;
  s.avx2 = avx && avx2 && fma && os_ymm;
  s.avx512 = s.avx2 && f && dq && cd && bw && os_zmm;
#endif
  return s;
}

bool runnable(Isa isa) {
  static const CpuSupport cpu = detect_cpu();
  switch (isa) {
    case Isa::naive:
      return true;
    case Isa::sse2:
#ifdef SIMDATTN_HAVE_SSE2
      return cpu.sse2;
#else
      return false;
#endif
    case Isa::avx2:
#ifdef SIMDATTN_HAVE_AVX2
      return cpu.avx2;
#else
      return false;
#endif
    case Isa::avx512:
#ifdef SIMDATTN_HAVE_AVX512
      return cpu.avx512;
#else
      return false;
#endif
  }
  return false;
}

std::string available_list() {
  std::string out;
  for (Isa isa : available_isas()) out += (out.empty() ? "" : ", ") + std::string(isa_name(isa));
  return out;
}

Isa choose_isa() {
  const char* forced = std::getenv("SIMDATTN_ISA");
  if (forced != nullptr && *forced != '\0') {
    const std::string name(forced);
    for (Isa isa : {Isa::avx512, Isa::avx2, Isa::sse2, Isa::naive}) {
      if (name != isa_name(isa)) continue;
      if (!runnable(isa)) {
        throw std::runtime_error(
            "simdattn: SIMDATTN_ISA=" + name +
            " names an ISA this build or CPU cannot run (available: " + available_list() + ")");
      }
      return isa;
    }
    throw std::runtime_error(
        "simdattn: SIMDATTN_ISA=" + name +
        " is not one of avx512, avx2, sse2, naive (available here: " + available_list() + ")");
  }
  return available_isas().front();
}

}  // namespace

Isa active_isa() {
  static const Isa isa = choose_isa();
  return isa;
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::sse2, Isa::naive}) {
    if (runnable(isa)) out.push_back(isa);
  }
  return out;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::naive:
      return "naive";
    case Isa::sse2:
      return "sse2";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "unknown";
}

namespace kernels {

const KernelTable* kernel_table(Isa isa) {
  if (!runnable(isa)) return nullptr;
  switch (isa) {
#ifdef SIMDATTN_HAVE_SSE2
    case Isa::sse2:
      return &kSse2Table;
#endif
#ifdef SIMDATTN_HAVE_AVX2
    case Isa::avx2:
      return &kAvx2Table;
#endif
#ifdef SIMDATTN_HAVE_AVX512
    case Isa::avx512:
      return &kAvx512Table;
#endif
    default:
      return nullptr;
  }
}

}  // namespace kernels
}  // namespace simdattn
