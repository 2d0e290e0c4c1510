// Argument checking shared by the public entry points. Every failure throws
// std::invalid_argument with "simdattn::<function>: <argument> ..." and the values involved.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mask_rule.hpp"
#include "simdattn/types.hpp"
#include "views.hpp"

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

/// `view` checked (data not null, no zero size, strides that never put two elements at one
/// address, every offset representable) with its zero strides filled in (see HeadsView).
/// Errors name `where` and `name`.
Heads<const float> resolve_heads(const char* where, const char* name, const ConstHeadsView& view);
inline Heads<float> resolve_heads(const char* where, const char* name,
                                  const HeadsView<float>& view) {
  const auto r =
      resolve_heads(where, name,
                    ConstHeadsView{view.data, view.n, view.l, view.h, view.d, view.row_stride,
                                   view.batch_stride, view.head_stride});
  return {view.data, r.n, r.l, r.h, r.d, r.row_stride, r.batch_stride, r.head_stride};
}

/// Bytes from the first element of a resolved view to past its last.
template <class T>
std::size_t extent_bytes(const Heads<T>& x) {
  return ((x.n - 1) * x.batch_stride + (x.l - 1) * x.row_stride + (x.h - 1) * x.heads_apart() +
          x.d) *
         sizeof(float);
}

/// The call's rule: `mask`, options.causal and the score modifications of `options` (bias,
/// window, key padding, softcap, ALiBi, sinks), each checked against [n, h, lq, lk] with h the
/// query heads: an error names the option and the values.
MaskRule resolve_rule(const char* where, const Mask& mask, const Options& options, std::size_t n,
                      std::size_t h, std::size_t lq, std::size_t lk);

/// Checks options.weights (if any) against [n, h, lq, lk]; true if the caller wants weights.
bool check_weights(const char* where, const Options& options, std::size_t n, std::size_t h,
                   std::size_t lq, std::size_t lk);

/// A byte range of the caller's memory that a call reads or writes.
struct ByteRange {
  const void* data;
  std::size_t bytes;
  const char* name;
};
/// The caller's memory that the options make a call read: mask, bias, key padding, slopes,
/// sinks (those present).
std::vector<ByteRange> option_inputs(const Mask& mask, const Options& options, std::size_t n,
                                     std::size_t lk);
/// Throws, naming both, if `output` overlaps any of `inputs`.
void check_apart(const char* where, const ByteRange& output, const std::vector<ByteRange>& inputs);

/// An error "<what> differ: <an> has <a>, <bn> has <b>" unless a == b.
void check_same(const char* where, const char* what, std::size_t a, std::size_t b, const char* an,
                const char* bn);

/// Checks a log-sum-exp buffer: data not null, shape [N, H, Lq] of the query `q`.
void check_lse(const char* where, const float* data, std::size_t n, std::size_t h, std::size_t l,
               const Heads<const float>& q);

/// True if the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap.
bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes);

std::string shape_string(std::size_t n, std::size_t l, std::size_t e);
std::string shape_string(std::size_t n, std::size_t l, std::size_t h, std::size_t d);

}  // namespace simdattn::detail
