#include "validate.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>

namespace simdattn::detail {

void fail(const char* where, const std::string& what) {
  throw std::invalid_argument(std::string("simdattn::") + where + ": " + what);
}

std::size_t checked_mul(const char* where, const char* what, std::size_t a, std::size_t b) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) {
    fail(where, std::string(what) + " overflows: " + std::to_string(a) + " * " + std::to_string(b) +
                    " does not fit in size_t");
  }
  return a * b;
}

std::size_t checked_mul(const char* where, const char* what, std::size_t a, std::size_t b,
                        std::size_t c) {
  // Products of sizes also become element offsets and byte counts: keep 4 bytes of headroom.
  const std::size_t r = checked_mul(where, what, checked_mul(where, what, a, b), c);
  checked_mul(where, what, r, sizeof(float));
  return r;
}

float resolve_scale(const char* where, const Options& options, std::size_t head_dim) {
  if (!options.scale) return 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float s = *options.scale;
  if (!std::isfinite(s) || !(s > 0.0f)) {
    fail(where, "options.scale must be finite and > 0, got " + std::to_string(s));
  }
  return s;
}

namespace {

// Each switch lists every enumerator and has no default, so that -Wswitch (an error in CI)
// points here when an enumerator is added. A value outside the enumeration (Causal(7)) falls
// through to false.
bool known(Causal c) {
  switch (c) {
    case Causal::none:
    case Causal::top_left:
    case Causal::bottom_right:
      return true;
  }
  return false;
}

bool known(MaskedRows m) {
  switch (m) {
    case MaskedRows::uniform:
    case MaskedRows::zeros:
      return true;
  }
  return false;
}

bool known(Path p) {
  switch (p) {
    case Path::optimized:
    case Path::naive:
      return true;
  }
  return false;
}

template <class Enum>
void check_known(const char* where, const char* field, Enum value, const char* values) {
  if (!known(value)) {
    fail(where, std::string("options.") + field + " has the unknown value " +
                    std::to_string(static_cast<long long>(value)) + " (" + values + ")");
  }
}

}  // namespace

int resolve_threads(const char* where, const Options& options) {
  check_known(where, "causal", options.causal, "none, top_left, bottom_right");
  check_known(where, "masked_rows", options.masked_rows, "uniform, zeros");
  check_known(where, "path", options.path, "optimized, naive");
  if (options.threads < 0 || options.threads > kMaxThreads) {
    fail(where, "options.threads must be in [0, " + std::to_string(kMaxThreads) +
                    "] (0 = OpenMP's default), got " + std::to_string(options.threads));
  }
  return options.threads == 0 ? std::min(omp_get_max_threads(), kMaxThreads) : options.threads;
}

void check_mask(const char* where, const Mask& mask, std::size_t n, std::size_t h, std::size_t lq,
                std::size_t lk) {
  if (mask.data == nullptr) return;
  auto dim_ok = [](std::size_t m, std::size_t full) { return m == 1 || m == full; };
  if (!dim_ok(mask.n, n) || !dim_ok(mask.h, h) || !dim_ok(mask.lq, lq) || !dim_ok(mask.lk, lk)) {
    fail(where, "mask of shape " + shape_string(mask.n, mask.h, mask.lq, mask.lk) +
                    " does not broadcast to [N, H, Lq, Lk] = " + shape_string(n, h, lq, lk) +
                    " (each mask dimension must be 1 or the full size)");
  }
  checked_mul(where, "mask size", checked_mul(where, "mask size", mask.n, mask.h), mask.lq,
              mask.lk);
}

bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a);
  const auto pb = reinterpret_cast<std::uintptr_t>(b);
  return a_bytes != 0 && b_bytes != 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

std::string shape_string(std::size_t n, std::size_t l, std::size_t e) {
  return "[" + std::to_string(n) + ", " + std::to_string(l) + ", " + std::to_string(e) + "]";
}

std::string shape_string(std::size_t n, std::size_t l, std::size_t h, std::size_t d) {
  return "[" + std::to_string(n) + ", " + std::to_string(l) + ", " + std::to_string(h) + ", " +
         std::to_string(d) + "]";
}

}  // namespace simdattn::detail
