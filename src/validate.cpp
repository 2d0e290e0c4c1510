#include "validate.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <utility>

#include "simdattn/attention.hpp"

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

namespace {

std::string float_string(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
  return buf;
}

// The optimized kernels work in base 2 (scores times log2(e)) and multiply by 1 / softcap, so the
// options' magnitudes are bounded well inside float's range: past about 2.4e38 a scaled score or
// sink becomes infinite, and past about 6e37 (or below 1e-38) a cap, times log2(e), has a
// reciprocal (or is) below FLT_MIN, which flush-to-zero makes 0.
constexpr float kMaxOptionMagnitude = 1e30f;

// The message is built only on failure: these checks run on every call.
[[noreturn]] void fail_magnitude(const char* where, const std::string& what, float x) {
  fail(where, what + " must be at most 1e30 in magnitude (the kernels scale scores by log2(e) " +
                  "in float), got " + float_string(x));
}

}  // namespace

float resolve_scale(const char* where, const Options& options, std::size_t head_dim) {
  if (!options.scale) return 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float s = *options.scale;
  if (!std::isfinite(s) || !(s > 0.0f)) {
    fail(where, "options.scale must be finite and > 0, got " + std::to_string(s));
  }
  if (s > kMaxOptionMagnitude) fail_magnitude(where, "options.scale", s);
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

namespace {

std::size_t checked_add(const char* where, const char* what, std::size_t a, std::size_t b) {
  if (b > std::numeric_limits<std::size_t>::max() - a) {
    fail(where, std::string(what) + " overflows: " + std::to_string(a) + " + " + std::to_string(b) +
                    " does not fit in size_t");
  }
  return a + b;
}

template <class T>
Rows<T> check_tensor_impl(const char* where, const char* name, const TensorView<T>& t,
                          std::size_t e) {
  // The size first: an empty Tensor has no data to point to, and its size is what is wrong.
  if (t.n == 0 || t.l == 0 || t.e == 0) {
    fail(where, std::string(name) + " has a zero size: " + shape_string(t.n, t.l, t.e));
  }
  if (t.data == nullptr) fail(where, std::string(name) + ".data is null");
  if (t.e != e) {
    fail(where, std::string(name) + " has embedding size " + std::to_string(t.e) + " (shape " +
                    shape_string(t.n, t.l, t.e) + "), the module has embed_size " +
                    std::to_string(e));
  }
  checked_mul(where, name, t.n, t.l, t.e);
  Rows<T> r{t.data, t.n, t.l, t.e, t.row_stride, t.batch_stride};
  if (r.row_stride == 0) r.row_stride = e;
  if (r.batch_stride == 0) r.batch_stride = checked_mul(where, name, t.l, r.row_stride);
  // The last element's offset, and with it every other, must fit (4 bytes of headroom, as for
  // the sizes).
  const std::size_t last =
      checked_add(where, name, checked_mul(where, name, t.n - 1, r.batch_stride),
                  checked_add(where, name, checked_mul(where, name, t.l - 1, r.row_stride), e));
  checked_mul(where, name, last, sizeof(float));
  // Rows nested one way or the other; the products below are at most `last`.
  const bool batch_outer = (t.l == 1 || r.row_stride >= e) &&
                           (t.n == 1 || r.batch_stride >= (t.l - 1) * r.row_stride + e);
  const bool sequence_outer = (t.n == 1 || r.batch_stride >= e) &&
                              (t.l == 1 || r.row_stride >= (t.n - 1) * r.batch_stride + e);
  if (!batch_outer && !sequence_outer) {
    fail(where, std::string(name) + ".row_stride " + std::to_string(r.row_stride) +
                    " and batch_stride " + std::to_string(r.batch_stride) +
                    " make the rows of [N, L, E] = " + shape_string(t.n, t.l, t.e) +
                    " overlap (a zero stride reads as dense)");
  }
  return r;
}

}  // namespace

Rows<const float> check_tensor(const char* where, const char* name,
                               const TensorView<const float>& t, std::size_t e) {
  return check_tensor_impl(where, name, t, e);
}

Rows<float> check_tensor(const char* where, const char* name, const TensorView<float>& t,
                         std::size_t e) {
  return check_tensor_impl(where, name, t, e);
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

namespace {

std::string dims(std::size_t count, std::size_t stride) {
  return std::to_string(count) + " x stride " + std::to_string(stride);
}

// Checks a per-head parameter: `size` == h, finite values; `what` names it.
void check_per_head(const char* where, const char* what, const PerHead& p, std::size_t h) {
  if (p.data == nullptr) {
    fail(where,
         std::string(what) + ".data is null but " + what + ".size is " + std::to_string(p.size));
  }
  if (p.size != h) {
    fail(where, std::string(what) + " has " + std::to_string(p.size) +
                    " values, one per query head needs H = " + std::to_string(h));
  }
  for (std::size_t j = 0; j < h; ++j) {
    if (!std::isfinite(p.data[j])) {
      fail(where, std::string(what) + "[" + std::to_string(j) + "] must be finite, got " +
                      float_string(p.data[j]));
    }
    if (std::fabs(p.data[j]) > kMaxOptionMagnitude) {
      fail_magnitude(where, std::string(what) + "[" + std::to_string(j) + "]", p.data[j]);
    }
  }
}

}  // namespace

Heads<const float> resolve_heads(const char* where, const char* name, const ConstHeadsView& view) {
  if (view.n == 0 || view.l == 0 || view.h == 0 || view.d == 0) {
    fail(where, std::string(name) + " has a zero size: [N, L, H, D] = " +
                    shape_string(view.n, view.l, view.h, view.d));
  }
  if (view.data == nullptr) fail(where, std::string(name) + ".data is null");
  const std::size_t hd = checked_mul(where, name, view.h, view.d);
  const std::size_t hs = view.head_stride == 0 ? view.d : view.head_stride;
  const bool heads_in_row = hs == view.d;
  if (hs < view.d && view.h > 1) {
    fail(where, std::string(name) + ".head_stride (" + std::to_string(hs) +
                    ") is smaller than D (" + std::to_string(view.d) + ")");
  }
  const std::size_t row = view.row_stride != 0 ? view.row_stride : heads_in_row ? hd : view.d;
  if (heads_in_row && view.l > 1 && row < hd) {
    fail(where, std::string(name) + ".row_stride (" + std::to_string(row) +
                    ") is smaller than H * D (" + std::to_string(hd) + ")");
  }
  const std::size_t batch = view.batch_stride != 0 ? view.batch_stride
                                                   : std::max(checked_mul(where, name, view.l, row),
                                                              checked_mul(where, name, view.h, hs));
  // The end of the last element, in bytes, must be representable (extent_bytes), and with it
  // every other offset.
  const std::size_t last = checked_add(
      where, name, checked_mul(where, name, view.n - 1, batch),
      checked_add(where, name, checked_mul(where, name, view.l - 1, row),
                  checked_add(where, name, checked_mul(where, name, view.h - 1, hs), view.d)));
  checked_mul(where, name, last, sizeof(float));
  // No element twice: nested from the smallest stride up, each stride must clear the extent of
  // the dimensions inside it (rows inside heads, heads inside rows, or any order of batches).
  struct Dim {
    std::size_t count, stride;
    const char* what;
  };
  Dim ds[] = {
      {view.l, row, "row_stride"}, {view.h, hs, "head_stride"}, {view.n, batch, "batch_stride"}};
  // A stable insertion sort of the three: std::stable_sort allocates a buffer on every call,
  // about a fifth of a tiny call's instructions (the tutorial's [1, 2, 256] attention: 3.4K of
  // 18.5K; its time went 1.46-1.53 -> 1.33-1.42 us without it).
  for (std::size_t i = 1; i < 3; ++i) {
    for (std::size_t j = i; j > 0 && ds[j].stride < ds[j - 1].stride; --j)
      std::swap(ds[j], ds[j - 1]);
  }
  std::size_t extent = view.d;
  for (const Dim& dm : ds) {
    if (dm.count == 1) continue;
    if (dm.stride < extent) {
      if (heads_in_row && std::string(dm.what) == "batch_stride") {
        fail(where, std::string(name) + ".batch_stride (" + std::to_string(batch) +
                        ") makes batches overlap (rows need " + std::to_string(extent) + ")");
      }
      fail(where, std::string(name) + "." + dm.what + " (" + std::to_string(dm.stride) +
                      ") makes elements overlap: [N, L, H] = " + dims(view.n, batch) + ", " +
                      dims(view.l, row) + ", " + dims(view.h, hs) +
                      " with D = " + std::to_string(view.d));
    }
    extent = (dm.count - 1) * dm.stride + extent;
  }
  return {view.data, view.n, view.l, view.h, view.d, row, batch, hs};
}

MaskRule resolve_rule(const char* where, const Mask& mask, const Options& options, std::size_t n,
                      std::size_t h, std::size_t lq, std::size_t lk) {
  check_mask(where, mask, n, h, lq, lk);
  MaskRule rule{mask, options.causal, lq, lk};
  const Bias& bias = options.bias;
  if (bias.data != nullptr) {
    auto dim_ok = [](std::size_t m, std::size_t full) { return m == 1 || m == full; };
    if (!dim_ok(bias.n, n) || !dim_ok(bias.h, h) || !dim_ok(bias.lq, lq) || bias.lk != lk) {
      fail(where, "options.bias of shape " + shape_string(bias.n, bias.h, bias.lq, bias.lk) +
                      " does not broadcast to [N, H, Lq, Lk] = " + shape_string(n, h, lq, lk) +
                      " (N, H and Lq must be 1 or the full size, Lk the full size)");
    }
    checked_mul(where, "options.bias size", checked_mul(where, "options.bias size", bias.n, bias.h),
                bias.lq, bias.lk);
    rule.bias = bias;
  }
  if (options.window) {
    const std::size_t w = *options.window;
    if (w == 0) fail(where, "options.window must be >= 1 (unset for no window), got 0");
    if (options.causal == Causal::none) {
      fail(where, "options.window = " + std::to_string(w) +
                      " needs options.causal (top_left or bottom_right): the window ends at each "
                      "query's causal end");
    }
    rule.window = w;
  }
  const KeyPadding& pad = options.key_padding;
  if (pad.data != nullptr) {
    if (pad.n != n || pad.lk != lk) {
      fail(where, "options.key_padding of shape [" + std::to_string(pad.n) + ", " +
                      std::to_string(pad.lk) + "] must be [N, Lk] = [" + std::to_string(n) + ", " +
                      std::to_string(lk) + "]");
    }
    rule.key_padding = pad;
  }
  if (options.softcap) {
    const float c = *options.softcap;
    if (!std::isfinite(c) || !(c > 0.0f)) {
      fail(where,
           "options.softcap must be finite and > 0 (unset for none), got " + float_string(c));
    }
    if (c > kMaxOptionMagnitude) fail_magnitude(where, "options.softcap", c);
    if (c < 1.0f / kMaxOptionMagnitude) {
      fail(where,
           "options.softcap must be at least 1e-30 (the kernels multiply by its "
           "reciprocal in float), got " +
               float_string(c));
    }
    rule.softcap = c;
  }
  if (options.alibi.enabled) {
    if (options.alibi.slopes.data == nullptr && options.alibi.slopes.size == 0) {
      rule.alibi = alibi_slopes(h);
    } else {
      check_per_head(where, "options.alibi.slopes", options.alibi.slopes, h);
      rule.alibi.assign(options.alibi.slopes.data, options.alibi.slopes.data + h);
    }
  } else if (options.alibi.slopes.data != nullptr || options.alibi.slopes.size != 0) {
    fail(where, "options.alibi.slopes is set but options.alibi.enabled is false");
  }
  if (options.sinks.data != nullptr || options.sinks.size != 0) {
    check_per_head(where, "options.sinks", options.sinks, h);
    rule.sinks = options.sinks.data;
  }
  return rule;
}

const char* first_variant_option(const Options& options) {
  return options.softcap            ? "options.softcap"
         : options.bias.data        ? "options.bias"
         : options.alibi.enabled    ? "options.alibi"
         : options.window           ? "options.window"
         : options.sinks.data       ? "options.sinks"
         : options.key_padding.data ? "options.key_padding"
         : options.weights.data     ? "options.weights"
                                    : nullptr;
}

bool check_weights(const char* where, const Options& options, std::size_t n, std::size_t h,
                   std::size_t lq, std::size_t lk) {
  const AttentionWeights& w = options.weights;
  if (w.data == nullptr) {
    if (w.size != 0) {
      fail(where,
           "options.weights.data is null but options.weights.size is " + std::to_string(w.size));
    }
    return false;
  }
  const std::size_t heads = w.average_heads ? 1 : h;
  const std::size_t need =
      checked_mul(where, "options.weights size", checked_mul(where, "", n, heads), lq, lk);
  if (w.size != need) {
    fail(where, "options.weights.size is " + std::to_string(w.size) + " floats, " +
                    (w.average_heads ? "[N, Lq, Lk] = " + shape_string(n, lq, lk)
                                     : "[N, H, Lq, Lk] = " + shape_string(n, h, lq, lk)) +
                    " needs " + std::to_string(need));
  }
  return true;
}

std::vector<ByteRange> option_inputs(const Mask& mask, const Options& options, std::size_t n,
                                     std::size_t lk) {
  std::vector<ByteRange> r;
  if (mask.data != nullptr)
    r.push_back({mask.data, mask.n * mask.h * mask.lq * mask.lk, "the mask"});
  const Bias& b = options.bias;
  if (b.data != nullptr) {
    r.push_back({b.data, b.n * b.h * b.lq * b.lk * sizeof(float), "options.bias"});
  }
  if (options.key_padding.data != nullptr) {
    r.push_back({options.key_padding.data, n * lk, "options.key_padding"});
  }
  if (options.alibi.slopes.data != nullptr) {
    r.push_back({options.alibi.slopes.data, options.alibi.slopes.size * sizeof(float),
                 "options.alibi.slopes"});
  }
  if (options.sinks.data != nullptr) {
    r.push_back({options.sinks.data, options.sinks.size * sizeof(float), "options.sinks"});
  }
  return r;
}

void check_apart(const char* where, const ByteRange& output, const std::vector<ByteRange>& inputs) {
  for (const ByteRange& in : inputs) {
    if (overlaps(output.data, output.bytes, in.data, in.bytes)) {
      fail(where, std::string(output.name) + " overlaps " + in.name);
    }
  }
}

void check_same(const char* where, const char* what, std::size_t a, std::size_t b, const char* an,
                const char* bn) {
  if (a != b) {
    fail(where, std::string(what) + " differ: " + an + " has " + std::to_string(a) + ", " + bn +
                    " has " + std::to_string(b));
  }
}

void check_lse(const char* where, const float* data, std::size_t n, std::size_t h, std::size_t l,
               const Heads<const float>& q) {
  if (data == nullptr) fail(where, "lse.data is null");
  if (n != q.n || h != q.h || l != q.l) {
    fail(where, "lse has shape [" + std::to_string(n) + ", " + std::to_string(h) + ", " +
                    std::to_string(l) + "], [N, H, Lq] = [" + std::to_string(q.n) + ", " +
                    std::to_string(q.h) + ", " + std::to_string(q.l) + "] is needed");
  }
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
