// What the libFuzzer targets of the attention core share: the failure report (the decoded case
// printed, then abort so that libFuzzer keeps the input), tensors in buffers of exactly their
// extent with NaN in their stride gaps, masks and options decoded from the input, and the checks
// that a call throws or succeeds. One translation unit per target includes it.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "random.hpp"
#include "reference/reference.hpp"
#include "simdattn/simdattn.hpp"

namespace fuzz {

using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Mask;
using simdattn::Options;
using simdattn::detail::Random;

inline constexpr float kGapSentinel = 1234.5f;
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// What the current input decoded to, for the failure message.
inline std::string g_case;
// The target's name, for the failure message.
inline const char* g_target = "fuzz";

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n  case: %s\n", g_target, what.c_str(), g_case.c_str());
  std::abort();
}

inline void describe(const std::string& what) {
  g_case += what + "; ";
}

inline const char* path_name(simdattn::Path p) {
  return p == simdattn::Path::naive ? "naive" : "optimized";
}

// Specials planted into inputs: non-finite ones make their rows "dirty", huge finite ones make
// them "extreme", denormals must change nothing visible. `nonfinite_only`: NaN and Inf only.
inline float pick_special(FuzzedDataProvider& fdp, bool nonfinite_only = false) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (nonfinite_only) return fdp.PickValueInArray<float>({kNaN, kInf, -kInf});
  return fdp.PickValueInArray<float>({kNaN, kInf, -kInf, 1e30f, -1e30f, 3e38f, 1e-40f, -1e-42f});
}

// One [n, l, h, d] tensor of the attention core in a buffer of its own: heads side by side in
// each row ([N, L, H, D], head_stride 0) or rows inside each head ([N, H, L, D]).
struct Strided {
  std::vector<float> buffer;
  std::size_t offset = 0, n = 0, l = 0, h = 0, d = 0;
  std::size_t row_stride = 0, batch_stride = 0;  // resolved
  std::size_t view_batch_stride = 0;             // what the view says (0: dense default)
  std::size_t head_stride = 0;                   // 0: heads side by side, d apart

  std::size_t index(std::size_t b, std::size_t i, std::size_t j, std::size_t k) const {
    return offset + b * batch_stride + i * row_stride + j * (head_stride == 0 ? d : head_stride) +
           k;
  }
  ConstHeadsView view() const {
    return {buffer.data() + offset, n, l, h, d, row_stride, view_batch_stride, head_stride};
  }
  HeadsView<float> mutable_view() {
    return {buffer.data() + offset, n, l, h, d, row_stride, view_batch_stride, head_stride};
  }
  // Dense [n, l, h, d] copy in double for the oracle.
  std::vector<double> dense() const {
    std::vector<double> out;
    out.reserve(n * l * h * d);
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t i = 0; i < l; ++i)
        for (std::size_t j = 0; j < h; ++j)
          for (std::size_t k = 0; k < d; ++k) out.push_back(buffer[index(b, i, j, k)]);
    return out;
  }
};

inline Strided make_strided(FuzzedDataProvider& fdp, std::size_t n, std::size_t l, std::size_t h,
                            std::size_t d, float gap_fill) {
  Strided s;
  s.n = n, s.l = l, s.h = h, s.d = d;
  s.offset = fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  s.row_stride = h * d + fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  const bool dense_batches = fdp.ConsumeBool();
  s.batch_stride = dense_batches ? l * s.row_stride
                                 : l * s.row_stride + fdp.ConsumeIntegralInRange<std::size_t>(0, 5);
  s.view_batch_stride = dense_batches ? 0 : s.batch_stride;
  s.buffer.assign(s.index(n - 1, l - 1, h - 1, d - 1) + 1, gap_fill);
  return s;
}

// An [n, h, l, d] tensor (PyTorch's and ONNX's layout) as a view with a head stride, each
// stride with a little padding or none.
inline Strided make_head_major(FuzzedDataProvider& fdp, std::size_t n, std::size_t l, std::size_t h,
                               std::size_t d, float gap_fill) {
  Strided s;
  s.n = n, s.l = l, s.h = h, s.d = d;
  s.offset = fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  s.row_stride = d + fdp.ConsumeIntegralInRange<std::size_t>(0, 2);
  s.head_stride = l * s.row_stride + fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  s.batch_stride = h * s.head_stride + fdp.ConsumeIntegralInRange<std::size_t>(0, 3);
  s.view_batch_stride = s.batch_stride;
  s.buffer.assign(s.index(n - 1, l - 1, h - 1, d - 1) + 1, gap_fill);
  return s;
}

// A dense [n, l, h, d] double tensor (Strided::dense) as the reference's input heads, and one
// it writes (the oracle's results).
inline simdattn::reference::Heads<const double> dense_heads(const std::vector<double>& x,
                                                            std::size_t n, std::size_t l,
                                                            std::size_t h, std::size_t d) {
  return {x.data(), n, l, h, d, h * d, l * h * d};
}
inline simdattn::reference::Heads<double> dense_heads_out(std::vector<double>& x, std::size_t n,
                                                          std::size_t l, std::size_t h,
                                                          std::size_t d) {
  return {x.data(), n, l, h, d, h * d, l * h * d};
}

inline void fill_normal(Strided& s, Random& rng, float magnitude) {
  for (std::size_t b = 0; b < s.n; ++b)
    for (std::size_t i = 0; i < s.l; ++i)
      for (std::size_t j = 0; j < s.h; ++j)
        for (std::size_t k = 0; k < s.d; ++k)
          s.buffer[s.index(b, i, j, k)] = static_cast<float>(rng.normal()) * magnitude;
}

inline void plant_specials(FuzzedDataProvider& fdp, Strided& s, const char* name,
                           bool nonfinite_only = false) {
  const int count = fdp.ConsumeIntegralInRange(0, 3);
  for (int c = 0; c < count; ++c) {
    const std::size_t b = fdp.ConsumeIntegralInRange<std::size_t>(0, s.n - 1);
    const std::size_t i = fdp.ConsumeIntegralInRange<std::size_t>(0, s.l - 1);
    const std::size_t j = fdp.ConsumeIntegralInRange<std::size_t>(0, s.h - 1);
    const std::size_t k = fdp.ConsumeIntegralInRange<std::size_t>(0, s.d - 1);
    s.buffer[s.index(b, i, j, k)] = pick_special(fdp, nonfinite_only);
    describe(std::string(name) + "[" + std::to_string(b) + ", " + std::to_string(i) + ", " +
             std::to_string(j) + ", " + std::to_string(k) +
             "] = " + std::to_string(s.buffer[s.index(b, i, j, k)]));
  }
}

// A mask broadcasting over [n, h, lq, lk]: each dimension full or 1, bytes 0 (masked) or one
// of several non-zero values (all mean visible).
inline void make_mask(FuzzedDataProvider& fdp, Random& rng, std::size_t n, std::size_t h,
                      std::size_t lq, std::size_t lk, Mask& mask,
                      std::vector<std::uint8_t>& bytes) {
  mask = Mask{};
  if (!fdp.ConsumeBool()) return;
  const unsigned full = fdp.ConsumeIntegralInRange(0u, 15u);
  mask.n = (full & 1) ? n : 1;
  mask.h = (full & 2) ? h : 1;
  mask.lq = (full & 4) ? lq : 1;
  mask.lk = (full & 8) ? lk : 1;
  const double keep = fdp.PickValueInArray({0.9, 0.5, 0.1, 1.0, 0.0});
  const std::uint8_t visible = fdp.PickValueInArray<std::uint8_t>({1, 255, 2, 0x80});
  bytes.resize(mask.n * mask.h * mask.lq * mask.lk);
  for (auto& m : bytes) m = rng.uniform() < keep ? visible : 0;
  mask.data = bytes.data();
  describe("mask [" + std::to_string(mask.n) + ", " + std::to_string(mask.h) + ", " +
           std::to_string(mask.lq) + ", " + std::to_string(mask.lk) + "] keep " +
           std::to_string(keep));
}

inline std::vector<simdattn::Isa> optimized_isas() {
  std::vector<simdattn::Isa> isas;
  for (const simdattn::Isa isa : simdattn::available_isas()) {
    if (isa != simdattn::Isa::naive) isas.push_back(isa);
  }
  if (isas.empty()) isas.push_back(simdattn::Isa::naive);  // a build without kernels
  return isas;
}

inline Options make_options(FuzzedDataProvider& fdp, std::size_t head_dim) {
  Options o;
  o.causal = fdp.PickValueInArray(
      {simdattn::Causal::none, simdattn::Causal::top_left, simdattn::Causal::bottom_right});
  o.masked_rows = fdp.ConsumeBool() ? simdattn::MaskedRows::zeros : simdattn::MaskedRows::uniform;
  if (fdp.ConsumeBool()) {
    const float factor = fdp.PickValueInArray({0.125f, 0.5f, 2.0f, 4.0f, 1.0f});
    o.scale = factor / std::sqrt(static_cast<float>(head_dim));
  }
  o.threads = fdp.ConsumeIntegralInRange(1, 3);
  // The optimized path on each ISA the registry runs here, chosen per input (no list of ISAs
  // outside the registry).
  static const std::vector<simdattn::Isa> isas = optimized_isas();
  o.isa = isas[fdp.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
  describe("causal " + std::to_string(static_cast<int>(o.causal)) + ", masked_rows " +
           std::to_string(static_cast<int>(o.masked_rows)) + ", scale " +
           (o.scale ? std::to_string(*o.scale) : std::string("default")) + ", threads " +
           std::to_string(o.threads) + ", isa " + simdattn::isa_name(*o.isa));
  return o;
}

inline double scale_of(const Options& o, std::size_t head_dim) {
  return o.scale ? *o.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

template <class Call>
void expect_invalid_argument(const char* what, Call&& call) {
  try {
    call();
  } catch (const std::invalid_argument&) {
    return;
  } catch (const std::exception& e) {
    fail(std::string(what) +
         ": expected std::invalid_argument, got another exception: " + e.what());
  }
  fail(std::string(what) + ": accepted without an error");
}

template <class Call>
void expect_success(const char* what, Call&& call) {
  try {
    call();
  } catch (const std::exception& e) {
    fail(std::string(what) + ": a valid call threw: " + e.what());
  }
}

// "" when a and b hold the same bits, else where and how they first differ.
inline std::string bit_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return "sizes differ";
  for (std::size_t x = 0; x < a.size(); ++x) {
    if (std::memcmp(&a[x], &b[x], sizeof(float)) != 0) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "element %zu of %zu: %.9g vs %.9g", x, a.size(), a[x], b[x]);
      return buf;
    }
  }
  return "";
}

// A float32 denormal (the inputs came from float, so their double copies are exact).
inline bool is_denormal(double x) {
  return x != 0.0 && std::abs(x) < static_cast<double>(std::numeric_limits<float>::min());
}

// The elements of a strided tensor's view, set to `inside`; the rest of its buffer keeps
// kGapSentinel.
inline Strided fresh_output(const Strided& layout, float inside) {
  Strided s = layout;
  s.buffer.assign(layout.buffer.size(), kGapSentinel);
  for (std::size_t b = 0; b < s.n; ++b)
    for (std::size_t i = 0; i < s.l; ++i)
      for (std::size_t j = 0; j < s.h; ++j)
        for (std::size_t t = 0; t < s.d; ++t) s.buffer[s.index(b, i, j, t)] = inside;
  return s;
}

inline void check_gaps(const Strided& s, const char* what) {
  std::vector<char> inside(s.buffer.size(), 0);
  for (std::size_t b = 0; b < s.n; ++b)
    for (std::size_t i = 0; i < s.l; ++i)
      for (std::size_t j = 0; j < s.h; ++j)
        for (std::size_t t = 0; t < s.d; ++t) inside[s.index(b, i, j, t)] = 1;
  for (std::size_t x = 0; x < s.buffer.size(); ++x) {
    if (!inside[x] && s.buffer[x] != kGapSentinel) {
      fail(std::string(what) + ": written outside its view at element " + std::to_string(x) +
           " of its buffer");
    }
  }
}

}  // namespace fuzz
