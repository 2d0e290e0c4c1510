// Shared helpers of simdattn's Catch2 tests: seeded random data, the double oracle, the error
// measure of the correctness table (README, "Tests and CI"), a random attention problem, and the
// comparisons of results holding NaN or Inf.
//
// The oracle is the naive reference (src/reference/reference.hpp) instantiated on double and fed
// the very same float inputs and weights, converted exactly. The difference between a float
// result and the oracle is therefore the float path's rounding alone, whichever path (naive or
// optimized, any ISA) produced it.
//
// Typical use:
//     const auto q = test::random_normal(n * lq * e, 1);  ...
//     const auto ref = test::oracle_forward(module, values, keys, query, mask, options);
//     test::check_close(out.data(), ref, "self-attention N=3");
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "mask_rule.hpp"
#include "nonfinite_compare.hpp"
#include "random.hpp"
#include "reference/reference.hpp"
#include "simdattn/simdattn.hpp"
#include "validate.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SIMDATTN_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMDATTN_TEST_ASAN 1
#endif
#endif

namespace simdattn::test {

/// Whether an allocation larger than the address space can be tested: under AddressSanitizer it
/// aborts the program unless ASAN_OPTIONS has allocator_may_return_null=1; then it returns null
/// like malloc.
inline bool huge_allocations_testable() {
#ifdef SIMDATTN_TEST_ASAN
  const char* options = std::getenv("ASAN_OPTIONS");
  return options != nullptr && std::strstr(options, "allocator_may_return_null=1") != nullptr;
#else
  return true;
#endif
}

/// The correctness table's tolerances against the double oracle: relative Frobenius error, and
/// the largest element error relative to max |ref|.
constexpr double kRelFrobeniusTol = 1e-5;
constexpr double kMaxElementTol = 1e-4;

/// Both paths, for tests that must hold on each.
constexpr Path kPaths[] = {Path::naive, Path::optimized};
inline const char* path_name(Path p) {
  return p == Path::naive ? "naive" : "optimized";
}

/// `count` standard normal floats (never all zero) from a generator seeded with `seed`, times
/// `scale`. The same seed gives the same numbers with every compiler and standard library.
inline std::vector<float> random_normal(std::size_t count, std::uint64_t seed, float scale = 1.0f) {
  detail::Random rng(seed * 0x9E3779B97F4A7C15ull + 12345);
  std::vector<float> out(count);
  for (float& x : out) x = static_cast<float>(rng.normal()) * scale;
  return out;
}

inline std::vector<double> to_double(const float* data, std::size_t count) {
  return std::vector<double>(data, data + count);
}
inline std::vector<double> to_double(const std::vector<float>& v) {
  return to_double(v.data(), v.size());
}

/// The scale a call with `options` uses. The library resolves the default in float, so the
/// oracle uses that float value too: it is part of the input, not of the rounding under test.
inline double resolved_scale(const Options& options, std::size_t head_dim) {
  const float s = options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  return static_cast<double>(s);
}

/// A dense [n, l, h, d] copy of a (possibly strided) heads view.
template <class T>
std::vector<T> gather(const HeadsView<const float>& v) {
  const auto r = detail::resolve_heads("gather", "view", v);
  std::vector<T> out;
  out.reserve(v.n * v.l * v.h * v.d);
  for (std::size_t b = 0; b < v.n; ++b) {
    for (std::size_t i = 0; i < v.l; ++i) {
      for (std::size_t j = 0; j < v.h; ++j) {
        const float* x = r.at(b, i, j);
        out.insert(out.end(), x, x + v.d);
      }
    }
  }
  return out;
}

/// What the double oracle of scaled_dot_product_attention() computes: a dense [N, Lq, H, Dv]
/// output, each row's log-sum-exp [N, H, Lq], and the weights if options.weights asks for them
/// ([N, H, Lq, Lk] or [N, Lq, Lk]).
struct OracleResult {
  std::vector<double> out, lse, weights;
};

/// The double oracle of scaled_dot_product_attention() with every option (mask, causal, the
/// score modifications, weights), read from `options` as the library reads them.
inline OracleResult oracle_sdpa_all(const ConstHeadsView& q, const ConstHeadsView& k,
                                    const ConstHeadsView& v, const Mask& mask = {},
                                    const Options& options = {}) {
  const auto qd = gather<double>(q), kd = gather<double>(k), vd = gather<double>(v);
  OracleResult r;
  r.out.resize(q.n * q.l * q.h * v.d);
  r.lse.resize(q.n * q.h * q.l);
  detail::WeightsOut<double> w;
  if (options.weights.data != nullptr) {
    w.average_heads = options.weights.average_heads;
    r.weights.resize(q.n * (w.average_heads ? 1 : q.h) * q.l * k.l);
    w.data = r.weights.data();
  }
  const std::size_t hd = q.h * q.d, hv = q.h * v.d;
  const std::size_t kvd = k.h * k.d, kvv = v.h * v.d;  // fewer heads than q with GQA
  using CH = reference::Heads<const double>;
  reference::attention<double>(
      CH{qd.data(), q.n, q.l, q.h, q.d, hd, q.l * hd},
      CH{kd.data(), k.n, k.l, k.h, k.d, kvd, k.l * kvd},
      CH{vd.data(), v.n, v.l, v.h, v.d, kvv, v.l * kvv},
      reference::Heads<double>{r.out.data(), q.n, q.l, q.h, v.d, hv, q.l * hv},
      detail::resolve_rule("oracle", mask, options, q.n, q.h, q.l, k.l),
      resolved_scale(options, q.d), options.masked_rows, r.lse.data(), w);
  return r;
}

/// The double oracle of scaled_dot_product_attention(): a dense [N, Lq, H, Dv] result.
inline std::vector<double> oracle_sdpa(const ConstHeadsView& q, const ConstHeadsView& k,
                                       const ConstHeadsView& v, const Mask& mask = {},
                                       const Options& options = {}) {
  return oracle_sdpa_all(q, k, v, mask, options).out;
}

/// The double oracle of MultiHeadAttention::forward() with the module's current weights:
/// an [N, Lq, E] result. A grouped-query module's K/V heads are each read by their group.
inline std::vector<double> oracle_forward(const MultiHeadAttention& m,
                                          const ConstTensorView& values,
                                          const ConstTensorView& keys, const ConstTensorView& query,
                                          const Mask& mask = {}, const Options& options = {},
                                          double* attention_weights = nullptr) {
  const std::size_t e = m.embed_size();
  std::vector<double> w[4], b[4];
  const Projection projections[4] = {Projection::query, Projection::key, Projection::value,
                                     Projection::output};
  for (int i = 0; i < 4; ++i) {
    w[i] = to_double(m.weight(projections[i]));
    b[i] = to_double(m.bias(projections[i]));  // empty when absent
  }
  auto bias = [](const std::vector<double>& v) { return v.empty() ? nullptr : v.data(); };
  reference::Weights<double> weights{w[0].data(), w[1].data(), w[2].data(), w[3].data(),
                                     bias(b[0]),  bias(b[1]),  bias(b[2]),  bias(b[3])};
  weights.kv_heads = m.kv_heads();
  const auto vd = to_double(values.data, values.n * values.l * e);
  const auto kd = to_double(keys.data, keys.n * keys.l * e);
  const auto qd = to_double(query.data, query.n * query.l * e);
  std::vector<double> out(query.n * query.l * e), scratch;
  reference::multi_head_attention<double>(
      vd.data(), kd.data(), qd.data(), query.n, keys.l, query.l, e, m.heads(), weights,
      detail::resolve_rule("oracle", mask, options, query.n, m.heads(), query.l, keys.l),
      resolved_scale(options, m.head_dim()), options.masked_rows, out.data(), scratch,
      attention_weights == nullptr
          ? detail::WeightsOut<double>{}
          : detail::WeightsOut<double>{attention_weights, options.weights.average_heads});
  return out;
}

/// True if a and b hold the same floats bit for bit.
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// A KvCache's configuration, in one line.
inline KvCacheConfig cache_config(std::size_t blocks, std::size_t kv_heads, std::size_t head_dim,
                                  KvStorage storage = KvStorage::f32,
                                  std::size_t block_tokens = 64) {
  KvCacheConfig c;
  c.blocks = blocks;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.storage = storage;
  c.block_tokens = block_tokens;
  return c;
}

/// How far a float result is from the oracle.
struct Comparison {
  double rel_frobenius = 0;    ///< ||out - ref||_F / ||ref||_F (absolute if ref is all zero)
  double max_rel_element = 0;  ///< max |out - ref| / max |ref| (absolute if ref is all zero)
  std::size_t worst = 0;       ///< index of the largest element error
  float worst_out = 0;
  double worst_ref = 0;
  /// Elements where out and ref are not both finite and equal in kind (NaN, +Inf, -Inf).
  std::size_t nonfinite_mismatches = 0;
  std::size_t first_nonfinite_mismatch = 0;

  bool within(double fro_tol, double max_tol) const {
    return nonfinite_mismatches == 0 && rel_frobenius <= fro_tol && max_rel_element <= max_tol;
  }
  std::string summary() const {
    std::ostringstream s;
    s << "rel Frobenius error " << rel_frobenius << ", max element error " << max_rel_element
      << " x max|ref| (worst at [" << worst << "]: " << worst_out << " vs " << worst_ref << ")";
    if (nonfinite_mismatches != 0) {
      s << ", " << nonfinite_mismatches << " NaN/Inf mismatches (first at ["
        << first_nonfinite_mismatch << "])";
    }
    return s.str();
  }
};

inline Comparison compare(const float* out, const double* ref, std::size_t count) {
  Comparison c;
  double diff2 = 0, ref2 = 0, max_ref = 0, max_diff = -1;
  for (std::size_t i = 0; i < count; ++i) {
    const double o = out[i], r = ref[i];
    if (!std::isfinite(o) || !std::isfinite(r)) {
      const bool same_kind = (std::isnan(o) && std::isnan(r)) || o == r;
      if (!same_kind && c.nonfinite_mismatches++ == 0) c.first_nonfinite_mismatch = i;
      continue;
    }
    const double d = std::fabs(o - r);
    diff2 += d * d;
    ref2 += r * r;
    max_ref = std::max(max_ref, std::fabs(r));
    if (d > max_diff) {
      max_diff = d;
      c.worst = i;
      c.worst_out = out[i];
      c.worst_ref = r;
    }
  }
  c.rel_frobenius = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  c.max_rel_element = max_ref > 0 ? max_diff / max_ref : std::max(max_diff, 0.0);
  return c;
}

/// CHECKs that `out` (count elements) matches `ref` (the same count) within the tolerances,
/// reporting `what` and both errors on failure.
inline void check_close(const float* out, const std::vector<double>& ref, const std::string& what,
                        double fro_tol = kRelFrobeniusTol, double max_tol = kMaxElementTol) {
  const Comparison c = compare(out, ref.data(), ref.size());
  INFO(what << ": " << c.summary());
  CHECK(c.within(fro_tol, max_tol));
}

/// The mask kinds that every accuracy test sweeps.
enum class MaskKind {
  none,
  causal_top_left,      ///< Options::causal, no buffer
  causal_bottom_right,  ///< Options::causal, no buffer
  lower_triangular,     ///< [1, 1, Lq, Lk] buffer, the tutorial's torch.tril mask
  key_padding,          ///< [N, 1, 1, Lk] buffer: batch b sees its first valid_len(b) keys
  full,                 ///< [N, H, Lq, Lk] random buffer, about 30% masked, no empty row
  fully_masked_rows,    ///< [N, H, Lq, Lk] random buffer where some rows mask every key
};
constexpr MaskKind kAllMaskKinds[] = {MaskKind::none,
                                      MaskKind::causal_top_left,
                                      MaskKind::causal_bottom_right,
                                      MaskKind::lower_triangular,
                                      MaskKind::key_padding,
                                      MaskKind::full,
                                      MaskKind::fully_masked_rows};

inline const char* mask_kind_name(MaskKind kind) {
  switch (kind) {
    case MaskKind::none:
      return "none";
    case MaskKind::causal_top_left:
      return "causal top-left";
    case MaskKind::causal_bottom_right:
      return "causal bottom-right";
    case MaskKind::lower_triangular:
      return "[1,1,Lq,Lk] lower-triangular";
    case MaskKind::key_padding:
      return "[N,1,1,Lk] key padding";
    case MaskKind::full:
      return "[N,H,Lq,Lk] random";
    case MaskKind::fully_masked_rows:
      return "[N,H,Lq,Lk] with fully masked rows";
  }
  return "?";
}

/// A mask of one kind with its storage: `mask` points into `bytes`, so a MaskCase moves but
/// never copies. Apply it with `options.causal = causal` and `mask`.
struct MaskCase {
  std::vector<std::uint8_t> bytes;
  Mask mask;
  Causal causal = Causal::none;

  MaskCase() = default;
  MaskCase(MaskCase&&) = default;  // a moved vector keeps its buffer, so `mask` stays valid
  MaskCase& operator=(MaskCase&&) = default;
  MaskCase(const MaskCase&) = delete;
  MaskCase& operator=(const MaskCase&) = delete;
};

/// Builds a mask of `kind` for [n, h, lq, lk]; random kinds are seeded with `seed`.
inline MaskCase make_mask(MaskKind kind, std::size_t n, std::size_t h, std::size_t lq,
                          std::size_t lk, std::uint64_t seed = 7) {
  detail::Random rng(seed);
  MaskCase out;
  auto buffer = [&](std::size_t mn, std::size_t mh, std::size_t mlq, std::size_t mlk) {
    out.bytes.assign(mn * mh * mlq * mlk, 1);
    out.mask = Mask{out.bytes.data(), mn, mh, mlq, mlk};
  };
  switch (kind) {
    case MaskKind::none:
      break;
    case MaskKind::causal_top_left:
      out.causal = Causal::top_left;
      break;
    case MaskKind::causal_bottom_right:
      out.causal = Causal::bottom_right;
      break;
    case MaskKind::lower_triangular:
      buffer(1, 1, lq, lk);
      for (std::size_t i = 0; i < lq; ++i) {
        for (std::size_t k = 0; k < lk; ++k) out.bytes[i * lk + k] = k <= i ? 1 : 0;
      }
      break;
    case MaskKind::key_padding:
      buffer(n, 1, 1, lk);
      for (std::size_t b = 0; b < n; ++b) {
        // Batch 0 keeps every key; the others a shorter prefix (at least one key).
        const std::size_t valid = b == 0 ? lk : 1 + (lk * (b + 1)) / (n + 2);
        for (std::size_t k = valid; k < lk; ++k) out.bytes[b * lk + k] = 0;
      }
      break;
    case MaskKind::full:
    case MaskKind::fully_masked_rows:
      buffer(n, h, lq, lk);
      for (std::size_t row = 0; row < n * h * lq; ++row) {
        std::uint8_t* r = out.bytes.data() + row * lk;
        // Any non-zero byte means visible, not only 1.
        for (std::size_t k = 0; k < lk; ++k) {
          r[k] = rng.uniform() < 0.3 ? 0 : static_cast<std::uint8_t>(1 + rng.next() % 255);
        }
        r[rng.next() % lk] = 1;  // never empty by accident
        const bool empty_row = row % 3 == (n * h * lq > 1 ? 1 : 0);
        if (kind == MaskKind::fully_masked_rows && empty_row) {
          for (std::size_t k = 0; k < lk; ++k) r[k] = 0;
        }
      }
      break;
  }
  return out;
}

/// Random normal q [n, lq, h, d], k and v [n, lk, h, d] in dense buffers (times input_scale),
/// and calls of the public API and the oracle on them.
struct SdpaProblem {
  std::size_t n, lq, lk, h, d;
  std::vector<float> q, k, v;

  SdpaProblem(std::size_t n_, std::size_t lq_, std::size_t lk_, std::size_t h_, std::size_t d_,
              std::uint64_t seed, float input_scale = 1.0f)
      : n(n_), lq(lq_), lk(lk_), h(h_), d(d_) {
    q = random_normal(n * lq * h * d, seed, input_scale);
    k = random_normal(n * lk * h * d, seed + 1, input_scale);
    v = random_normal(n * lk * h * d, seed + 2, input_scale);
  }
  ConstHeadsView qv() const { return {q.data(), n, lq, h, d}; }
  ConstHeadsView kv() const { return {k.data(), n, lk, h, d}; }
  ConstHeadsView vv() const { return {v.data(), n, lk, h, d}; }
  /// Offset of q or out element (b, i, head, t); key rows use k_at.
  std::size_t q_at(std::size_t b, std::size_t i, std::size_t head, std::size_t t) const {
    return ((b * lq + i) * h + head) * d + t;
  }
  std::size_t k_at(std::size_t b, std::size_t key, std::size_t head, std::size_t t) const {
    return ((b * lk + key) * h + head) * d + t;
  }
  /// The call's result; `out` starts as -1 everywhere, so an element never written shows.
  std::vector<float> run(const Mask& mask, const Options& o) const {
    std::vector<float> out(n * lq * h * d, -1.0f);
    scaled_dot_product_attention(qv(), kv(), vv(), {out.data(), n, lq, h, d}, mask, o);
    return out;
  }
  std::vector<double> oracle(const Mask& mask, const Options& o) const {
    return oracle_sdpa(qv(), kv(), vv(), mask, o);
  }
  /// The plain average of v over all keys for (b, head): what a fully masked row returns under
  /// MaskedRows::uniform.
  std::vector<double> mean_v(std::size_t b, std::size_t head) const {
    std::vector<double> m(d, 0.0);
    for (std::size_t key = 0; key < lk; ++key) {
      for (std::size_t j = 0; j < d; ++j) m[j] += v[k_at(b, key, head, j)];
    }
    for (double& x : m) x /= static_cast<double>(lk);
    return m;
  }
};

/// "" if a and b hold the same bits, else the first element where they differ.
inline std::string first_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return "sizes differ";
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
             std::to_string(b[i]);
    }
  }
  return "";
}

/// True if every element is finite.
inline bool all_finite(const std::vector<float>& x) {
  for (float v : x) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

/// CHECKs a NonfiniteComparison: no NaN/Inf lost or spread, finite elements within the
/// correctness table's element tolerance.
inline void check_nonfinite(const NonfiniteComparison& c, const std::string& what) {
  INFO(what << ": oracle NaN/Inf " << c.ref_nonfinite << ", lost " << c.lost << ", spread "
            << c.spread << ", allowed NaN " << c.allowed_nan << ", first bad element "
            << c.first_bad << ", max element error " << c.max_error << " x max|ref|");
  CHECK(c.lost == 0);
  CHECK(c.spread == 0);
  CHECK(c.max_error <= kMaxElementTol);
}

}  // namespace simdattn::test
