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

/// A checked TensorView with its strides resolved (a zero stride means dense): row (b, i)
/// starts at data + b * batch_stride + i * row_stride, and no two rows overlap.
template <class T>
struct Rows {
  T* data = nullptr;
  std::size_t n = 0, l = 0, e = 0, row_stride = 0, batch_stride = 0;

  T* row(std::size_t b, std::size_t i) const { return data + b * batch_stride + i * row_stride; }
  /// Floats from the first element to the last, inclusive: the range overlap checks compare.
  std::size_t extent() const { return (n - 1) * batch_stride + (l - 1) * row_stride + e; }
  /// One contiguous [n, l, e] block (the default layout).
  bool batch_major() const {
    return (l == 1 || row_stride == e) && (n == 1 || batch_stride == l * e);
  }
  /// One contiguous [l, n, e] block (PyTorch's batch_first=False).
  bool sequence_major() const {
    return (n == 1 || batch_stride == e) && (l == 1 || row_stride == n * e);
  }
  bool same_layout(const Rows& o) const {
    return data == o.data && n == o.n && l == o.l && e == o.e && row_stride == o.row_stride &&
           batch_stride == o.batch_stride;
  }
};

/// Checks a TensorView `name` of a module with embed size e: data not null, no zero size,
/// embedding size e, sizes and strides whose offsets fit, rows that do not overlap.
Rows<const float> check_tensor(const char* where, const char* name,
                               const TensorView<const float>& t, std::size_t e);
Rows<float> check_tensor(const char* where, const char* name, const TensorView<float>& t,
                         std::size_t e);

/// Refuses a checked view that is not one row-major [n, l, e] block, for an entry point that
/// takes no other layout.
template <class T>
void require_dense(const char* where, const char* name, const Rows<T>& r) {
  if (!r.batch_major()) {
    fail(where, std::string(name) + " must be a row-major [N, L, E] view (row_stride and " +
                    "batch_stride 0), got row_stride " + std::to_string(r.row_stride) +
                    " and batch_stride " + std::to_string(r.batch_stride));
  }
}

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

/// The first score modification or extra output set in `options` ("options.softcap", ...,
/// "options.weights"), or nullptr: for entry points that support none of them.
const char* first_variant_option(const Options& options);

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
