// Argument checking shared by the public entry points. Every failure throws
// std::invalid_argument with "simdattn::<function>: <argument> ..." and the values involved.
#pragma once

#include <cstddef>
#include <string>

#include "simdattn/types.hpp"

namespace simdattn::detail {

[[noreturn]] void fail(const char* where, const std::string& what);

/// a * b, or an error naming `what` if the product overflows std::size_t.
std::size_t checked_mul(const char* where, const char* what, std::size_t a, std::size_t b);
std::size_t checked_mul(const char* where, const char* what, std::size_t a, std::size_t b,
                        std::size_t c);

/// The scale to use: options.scale if set (finite and > 0, else an error), else 1/sqrt(d).
float resolve_scale(const char* where, const Options& options, std::size_t head_dim);
/// The thread count to use: options.threads if > 0, OpenMP's default (at most kMaxThreads) if 0,
/// an error if < 0 or > kMaxThreads. Every entry point calls it once, so it also refuses the
/// enumerations of Options holding a value outside their enumerators (Causal(7)); options.scale
/// is resolve_scale's, options.isa the registry's.
int resolve_threads(const char* where, const Options& options);

/// Checks that a mask (if any) broadcasts over [n, h, lq, lk].
void check_mask(const char* where, const Mask& mask, std::size_t n, std::size_t h, std::size_t lq,
                std::size_t lk);

/// True if the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap.
bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes);

std::string shape_string(std::size_t n, std::size_t l, std::size_t e);
std::string shape_string(std::size_t n, std::size_t l, std::size_t h, std::size_t d);

}  // namespace simdattn::detail
