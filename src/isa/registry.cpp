// The ISA registry: for every ISA of SIMDATTN_ISA_LIST, its name, its CPU check and its kernel
// table, and the run-time choice among them. Compiled with baseline flags only: nothing here
// may execute an instruction the oldest CPU of the architecture lacks. xsimd 8.1's own x86
// detection reads the AVX bit from the wrong CPUID leaf and never asks the OS (XCR0) whether
// AVX/AVX-512 state is enabled, so we read CPUID and XGETBV ourselves.
#include "isa/registry.hpp"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "simdattn/dispatch.hpp"
#include "validate.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace simdattn {
namespace {

// ---- CPU checks: one per ISA of the list, named cpu_has_<name> -----------------------------

struct X86Features {
  bool sse2 = false;
  bool avx2 = false;    // AVX2 + FMA + F16C, with OS support for ymm state
  bool avx512 = false;  // F + CD + DQ + BW, with OS support for zmm and opmask state
};

X86Features detect_x86() {
  X86Features s;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return s;
  s.sse2 = (d & bit_SSE2) != 0;
  const bool fma = (c & bit_FMA) != 0;
  const bool f16c = (c & bit_F16C) != 0;  // every AVX2 CPU has it; the KV cache's f16 loads
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
  s.avx2 = avx && avx2 && fma && f16c && os_ymm;
  s.avx512 = s.avx2 && f && dq && cd && bw && os_zmm;
#endif
  return s;
}

const X86Features& x86() {
  static const X86Features f = detect_x86();
  return f;
}

bool cpu_has_avx512() {
  return x86().avx512;
}
bool cpu_has_avx2() {
  return x86().avx2;
}
bool cpu_has_sse2() {
  return x86().sse2;
}

// Advanced SIMD (NEON) is part of every AArch64 processor.
bool cpu_has_neon() {
#if defined(__aarch64__)
  return true;
#else
  return false;
#endif
}

// ---- the registry --------------------------------------------------------------------------

struct Entry {
  Isa isa;
  const char* name;
  bool (*cpu_has)();
  const kernels::KernelTable* (*kernels)();  // nullptr: not compiled into this build
};

#define SIMDATTN_REGISTRY_ROW_(name) \
  {Isa::name, #name, &cpu_has_##name, &kernels::kernels_of_##name},
const Entry kRegistry[] = {SIMDATTN_ISA_LIST(SIMDATTN_REGISTRY_ROW_)};
#undef SIMDATTN_REGISTRY_ROW_

const Entry* entry_of(Isa isa) {
  for (const Entry& e : kRegistry) {
    if (e.isa == isa) return &e;
  }
  return nullptr;
}

bool runnable(Isa isa) {
  if (isa == Isa::naive) return true;
  const Entry* e = entry_of(isa);
  return e != nullptr && e->kernels() != nullptr && e->cpu_has();
}

std::string list(const std::vector<Isa>& isas) {
  std::string out;
  for (Isa isa : isas) out += (out.empty() ? "" : ", ") + std::string(isa_name(isa));
  return out;
}

std::vector<Isa> known_isas() {
  std::vector<Isa> out;
  for (const Entry& e : kRegistry) out.push_back(e.isa);
  out.push_back(Isa::naive);
  return out;
}

// The process's default before any set_active_isa(): SIMDATTN_ISA, else the best available.
Isa choose_from_environment() {
  const char* forced = std::getenv("SIMDATTN_ISA");
  if (forced == nullptr || *forced == '\0') return available_isas().front();
  const std::string name(forced);
  const std::optional<Isa> isa = isa_from_name(name);
  if (!isa) {
    throw std::runtime_error("simdattn: SIMDATTN_ISA=" + name + " is not one of " +
                             list(known_isas()) + " (available here: " + list(available_isas()) +
                             ")");
  }
  if (!runnable(*isa)) {
    throw std::runtime_error(
        "simdattn: SIMDATTN_ISA=" + name +
        " names an ISA this build or CPU cannot run (available: " + list(available_isas()) + ")");
  }
  return *isa;
}

constexpr int kNoOverride = -1;
std::atomic<int> g_override{kNoOverride};

// The one check behind set_active_isa and Options::isa; `name` is the argument as the caller
// wrote it.
void check_isa(const char* where, const char* name, Isa isa) {
  if (isa != Isa::naive && entry_of(isa) == nullptr) {
    detail::fail(where, std::string(name) + " has the unknown value " +
                            std::to_string(static_cast<int>(isa)));
  }
  if (!runnable(isa)) {
    detail::fail(
        where, std::string(name) + " = " + isa_name(isa) +
                   " cannot run on this build or CPU (available: " + list(available_isas()) + ")");
  }
}

}  // namespace

Isa active_isa() {
  const int set = g_override.load(std::memory_order_relaxed);
  if (set != kNoOverride) return static_cast<Isa>(set);
  static const Isa from_environment = choose_from_environment();
  return from_environment;
}

void set_active_isa(Isa isa) {
  check_isa("set_active_isa", "isa", isa);
  g_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : known_isas()) {
    if (runnable(isa)) out.push_back(isa);
  }
  return out;
}

const char* isa_name(Isa isa) {
  if (isa == Isa::naive) return "naive";
  const Entry* e = entry_of(isa);
  return e != nullptr ? e->name : "unknown";
}

std::optional<Isa> isa_from_name(const std::string& name) {
  for (Isa isa : known_isas()) {
    if (name == isa_name(isa)) return isa;
  }
  return std::nullopt;
}

namespace kernels {

const KernelTable* table_for(Isa isa) {
  if (isa == Isa::naive || !runnable(isa)) return nullptr;
  return entry_of(isa)->kernels();
}

}  // namespace kernels

namespace detail {

const kernels::KernelTable* kernels_for(const char* where, const Options& options) {
  // A bad options.isa is an error on either path: Path::naive does not read it, but a caller
  // who set it expects it to mean something.
  if (options.isa) check_isa(where, "options.isa", *options.isa);
  if (options.path == Path::naive) return nullptr;
  return kernels::table_for(options.isa ? *options.isa : active_isa());
}

}  // namespace detail
}  // namespace simdattn
