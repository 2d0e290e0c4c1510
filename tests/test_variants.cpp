// Attention variants: additive float bias, ALiBi, sliding window, logit soft-capping, attention
// sinks, key padding, Dv != Dk, [N, H, L, D] layouts and the attention weights, each alone and
// combined with causal alignments, every mask kind, grouped K/V heads and each other, on odd
// sizes, through both paths (the suite runs once per ISA), threads 1, 2 and 3 bitwise equal;
// those that apply over a KvCache (ALiBi, softcap, sinks, window) there too.
//
// Two oracles: the double reference (test::oracle_sdpa_all, the library's reference on double)
// for every case, and, for the semantics themselves, brute_force() below: the documented
// formulas (types.hpp, "Scores") written out again on a full [Lq, Lk] score matrix, sharing no
// code with the library, so that a wrong reference fails too.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

#define CHECK_INVALID(expr, message) \
  CHECK_THROWS_MATCHES(expr, std::invalid_argument, Catch::Matchers::Message(message))

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Random normal q [n, lq, h, dk], k [n, lk, hkv, dk], v [n, lk, hkv, dv], dense [N, L, H, D].
struct Problem {
  std::size_t n, lq, lk, h, hkv, dk, dv;
  std::vector<float> q, k, v;

  Problem(std::size_t n_, std::size_t lq_, std::size_t lk_, std::size_t h_, std::size_t hkv_,
          std::size_t dk_, std::size_t dv_, std::uint64_t seed)
      : n(n_), lq(lq_), lk(lk_), h(h_), hkv(hkv_), dk(dk_), dv(dv_) {
    q = test::random_normal(n * lq * h * dk, seed);
    k = test::random_normal(n * lk * hkv * dk, seed + 1);
    v = test::random_normal(n * lk * hkv * dv, seed + 2);
  }
  ConstHeadsView qv() const { return {q.data(), n, lq, h, dk}; }
  ConstHeadsView kv() const { return {k.data(), n, lk, hkv, dk}; }
  ConstHeadsView vv() const { return {v.data(), n, lk, hkv, dv}; }
  std::size_t out_size() const { return n * lq * h * dv; }
  std::vector<float> run(const Mask& mask, const Options& o) const {
    std::vector<float> out(out_size(), std::nanf(""));
    scaled_dot_product_attention(qv(), kv(), vv(), HeadsView<float>{out.data(), n, lq, h, dv}, mask,
                                 o);
    return out;
  }
  test::OracleResult oracle(const Mask& mask, const Options& o) const {
    return test::oracle_sdpa_all(qv(), kv(), vv(), mask, o);
  }
  std::size_t weights_size(bool average) const { return n * (average ? 1 : h) * lq * lk; }
};

// The caller's memory behind one set of options: a move-only bundle whose Options point into
// its own vectors (a moved vector keeps its buffer).
struct Variant {
  std::string name;
  std::vector<float> bias, slopes, sinks;
  std::vector<std::uint8_t> padding;
  Options options;

  Variant() = default;
  Variant(Variant&&) = default;
  Variant& operator=(Variant&&) = default;
  Variant(const Variant&) = delete;
  Variant& operator=(const Variant&) = delete;
};

enum class Kind {
  bias_full,       // [N, H, Lq, Lk] with some -inf entries
  bias_broadcast,  // [1, H, 1, Lk]
  bias_rows,       // [N, 1, Lq, Lk], a whole row of -inf in batch 0
  alibi,           // the standard slopes
  alibi_given,     // slopes of the caller, one negative
  softcap,
  sinks,
  key_padding,  // batch 1 all padding: rows with no visible key
  window,       // needs causal
  everything,   // soft-capping, bias, ALiBi, window, sinks, padding together
};
constexpr Kind kKinds[] = {
    Kind::bias_full, Kind::bias_broadcast, Kind::bias_rows,   Kind::alibi,  Kind::alibi_given,
    Kind::softcap,   Kind::sinks,          Kind::key_padding, Kind::window, Kind::everything};

bool needs_causal(Kind kind) {
  return kind == Kind::window || kind == Kind::everything;
}

// Options of `kind` for a problem of [n, h, lq, lk] (h query heads); `window` for the kinds
// that have one.
Variant make_variant(Kind kind, std::size_t n, std::size_t h, std::size_t lq, std::size_t lk,
                     std::size_t window = 7, std::uint64_t seed = 11) {
  Variant x;
  detail::Random rng(seed);
  auto add_bias = [&](std::size_t bn, std::size_t bh, std::size_t blq, double hidden) {
    x.bias = test::random_normal(bn * bh * blq * lk, seed + 1);
    for (float& b : x.bias) {
      if (rng.uniform() < hidden) b = -kInf;
    }
    x.options.bias = Bias{x.bias.data(), bn, bh, blq, lk};
  };
  auto add_sinks = [&] {
    x.sinks = test::random_normal(h, seed + 2, 2.0f);
    x.options.sinks = PerHead{x.sinks.data(), h};
  };
  auto add_padding = [&] {
    x.padding.assign(n * lk, 0);
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t k = 0; k < lk; ++k) {
        // Batch 1 is all padding; others pad about a third, with "padding" any nonzero byte.
        const bool pad = b == 1 || rng.uniform() < 0.3;
        x.padding[b * lk + k] = pad ? static_cast<std::uint8_t>(1 + rng.next() % 255) : 0;
      }
    }
    x.options.key_padding = KeyPadding{x.padding.data(), n, lk};
  };
  switch (kind) {
    case Kind::bias_full:
      x.name = "bias [N,H,Lq,Lk]";
      add_bias(n, h, lq, 0.15);
      break;
    case Kind::bias_broadcast:
      x.name = "bias [1,H,1,Lk]";
      add_bias(1, h, 1, 0.0);
      break;
    case Kind::bias_rows:
      x.name = "bias [N,1,Lq,Lk] with a -inf row";
      add_bias(n, 1, lq, 0.1);
      std::fill(x.bias.begin(), x.bias.begin() + lk, -kInf);
      break;
    case Kind::alibi:
      x.name = "ALiBi";
      x.options.alibi.enabled = true;
      break;
    case Kind::alibi_given:
      x.name = "ALiBi, given slopes";
      // Slopes shrink with the keys' span: slope x distance up to a few tens, not hundreds (a
      // score of 500 in float is 3e-5 off, the output about 1e-5: conditioning, not the code).
      x.slopes = test::random_normal(h, seed + 3, 0.5f * std::min(1.0f, 33.0f / lk));
      x.options.alibi = Alibi{true, PerHead{x.slopes.data(), h}};
      break;
    case Kind::softcap:
      x.name = "softcap 1.5";
      x.options.softcap = 1.5f;
      break;
    case Kind::sinks:
      x.name = "sinks";
      add_sinks();
      break;
    case Kind::key_padding:
      x.name = "key padding";
      add_padding();
      break;
    case Kind::window:
      x.name = "window " + std::to_string(window);
      x.options.window = window;
      break;
    case Kind::everything:
      x.name = "softcap + bias + ALiBi + window " + std::to_string(window) + " + sinks + padding";
      x.options.softcap = 2.0f;
      add_bias(n, 1, lq, 0.1);
      x.options.alibi.enabled = true;
      x.options.window = window;
      add_sinks();
      add_padding();
      break;
  }
  return x;
}

// ---- brute force: the documented semantics on a full score matrix, nothing shared -----------

// The ALiBi paper's get_slopes(n), recursion and all.
std::vector<double> paper_slopes(std::size_t n) {
  auto pow2_slopes = [](std::size_t m) {
    const double start = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(m)) - 3)));
    std::vector<double> s;
    for (std::size_t i = 0; i < m; ++i)
      s.push_back(start * std::pow(start, static_cast<double>(i)));
    return s;
  };
  const double l2 = std::log2(static_cast<double>(n));
  if (l2 == std::floor(l2)) return pow2_slopes(n);
  const std::size_t closest = std::size_t{1} << static_cast<std::size_t>(std::floor(l2));
  std::vector<double> s = pow2_slopes(closest);
  const std::vector<double> more = paper_slopes(2 * closest);
  for (std::size_t i = 0; s.size() < n; i += 2) s.push_back(more[i]);
  return s;
}

struct Brute {
  std::vector<double> out, weights;  // weights [N, H, Lq, Lk]
};

Brute brute_force(const Problem& p, const Mask& mask, const Options& o) {
  const std::size_t group = p.h / p.hkv;
  const double scale = test::resolved_scale(o, p.dk);
  const std::ptrdiff_t offset =
      o.causal == Causal::bottom_right
          ? static_cast<std::ptrdiff_t>(p.lk) - static_cast<std::ptrdiff_t>(p.lq)
          : 0;
  std::vector<double> slopes;
  if (o.alibi.enabled) {
    slopes = o.alibi.slopes.data != nullptr
                 ? std::vector<double>(o.alibi.slopes.data, o.alibi.slopes.data + p.h)
                 : paper_slopes(p.h);
  }
  Brute r;
  r.out.assign(p.out_size(), 0.0);
  r.weights.assign(p.n * p.h * p.lq * p.lk, 0.0);
  for (std::size_t b = 0; b < p.n; ++b) {
    for (std::size_t h = 0; h < p.h; ++h) {
      const std::size_t kh = h / group;
      for (std::size_t i = 0; i < p.lq; ++i) {
        const std::ptrdiff_t pos = static_cast<std::ptrdiff_t>(i) + offset;
        std::vector<double> s(p.lk);
        std::vector<bool> seen(p.lk);
        for (std::size_t k = 0; k < p.lk; ++k) {
          const auto kk = static_cast<std::ptrdiff_t>(k);
          bool vis = true;
          if (o.causal != Causal::none) vis = vis && kk <= pos;
          if (o.window) vis = vis && kk > pos - static_cast<std::ptrdiff_t>(*o.window);
          if (mask.data != nullptr) {
            const std::size_t at =
                (((mask.n == 1 ? 0 : b) * mask.h + (mask.h == 1 ? 0 : h)) * mask.lq +
                 (mask.lq == 1 ? 0 : i)) *
                    mask.lk +
                (mask.lk == 1 ? 0 : k);
            vis = vis && mask.data[at] != 0;
          }
          if (o.key_padding.data != nullptr) vis = vis && o.key_padding.data[b * p.lk + k] == 0;
          double bias = 0;
          if (o.bias.data != nullptr) {
            const Bias& bb = o.bias;
            bias = bb.data[(((bb.n == 1 ? 0 : b) * bb.h + (bb.h == 1 ? 0 : h)) * bb.lq +
                            (bb.lq == 1 ? 0 : i)) *
                               bb.lk +
                           k];
            vis = vis && bias != -std::numeric_limits<double>::infinity();
          }
          seen[k] = vis;
          if (!vis) continue;
          double dot = 0;
          for (std::size_t d = 0; d < p.dk; ++d) {
            dot += static_cast<double>(p.q[((b * p.lq + i) * p.h + h) * p.dk + d]) *
                   p.k[((b * p.lk + k) * p.hkv + kh) * p.dk + d];
          }
          double x = scale * dot;
          if (o.softcap) x = *o.softcap * std::tanh(x / *o.softcap);
          x += bias;
          if (o.alibi.enabled) x += slopes[h] * static_cast<double>(kk - pos);
          s[k] = x;
        }
        const bool sink = o.sinks.data != nullptr;
        double denom = sink ? std::exp(static_cast<double>(o.sinks.data[h])) : 0.0;
        bool any = false;
        for (std::size_t k = 0; k < p.lk; ++k) {
          if (seen[k]) {
            denom += std::exp(s[k]);
            any = true;
          }
        }
        double* w = r.weights.data() + ((b * p.h + h) * p.lq + i) * p.lk;
        for (std::size_t k = 0; k < p.lk; ++k) {
          if (!any) {
            w[k] = o.masked_rows == MaskedRows::zeros || sink ? 0.0 : 1.0 / p.lk;
          } else {
            w[k] = seen[k] ? std::exp(s[k]) / denom : 0.0;
          }
          for (std::size_t d = 0; d < p.dv; ++d) {
            r.out[((b * p.lq + i) * p.h + h) * p.dv + d] +=
                w[k] * p.v[((b * p.lk + k) * p.hkv + kh) * p.dv + d];
          }
        }
      }
    }
  }
  return r;
}

// The head-average of [N, H, Lq, Lk] weights.
std::vector<double> average_heads(const std::vector<double>& w, std::size_t n, std::size_t h,
                                  std::size_t lq, std::size_t lk) {
  std::vector<double> a(n * lq * lk, 0.0);
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t j = 0; j < h; ++j) {
      for (std::size_t x = 0; x < lq * lk; ++x) a[b * lq * lk + x] += w[(b * h + j) * lq * lk + x];
    }
  }
  for (double& x : a) x /= static_cast<double>(h);
  return a;
}

// Runs `o` at threads 1, 2 and 3 on `path`: checks the three results bitwise equal, returns one.
std::vector<float> run_threads(const Problem& p, const Mask& mask, Options o, Path path,
                               std::vector<float>* weights = nullptr) {
  o.path = path;
  std::vector<float> first, first_w;
  for (int threads : {1, 2}) {
    o.threads = threads;
    std::vector<float> w;
    if (weights != nullptr) {
      w.assign(o.weights.size, std::nanf(""));
      o.weights.data = w.data();
    }
    const auto out = p.run(mask, o);
    if (threads == 1) {
      first = out;
      first_w = w;
    } else {
      INFO("threads " << threads << " vs 1");
      CHECK(std::memcmp(first.data(), out.data(), out.size() * sizeof(float)) == 0);
      if (!w.empty()) CHECK(std::memcmp(first_w.data(), w.data(), w.size() * sizeof(float)) == 0);
    }
  }
  if (weights != nullptr) *weights = first_w;
  return first;
}

std::string shape_name(const Problem& p) {
  return "N=" + std::to_string(p.n) + " Lq=" + std::to_string(p.lq) +
         " Lk=" + std::to_string(p.lk) + " H=" + std::to_string(p.h) +
         " H_kv=" + std::to_string(p.hkv) + " Dk=" + std::to_string(p.dk) +
         " Dv=" + std::to_string(p.dv);
}

// The optimized path at 1 and 2 threads against the oracle: `kind` (window w where it has one)
// with `causal` and a mask of kind mk.
void check_optimized(const Problem& p, Kind kind, std::size_t w, Causal causal, test::MaskKind mk) {
  test::MaskCase m = test::make_mask(mk, p.n, p.h, p.lq, p.lk);
  Variant x = make_variant(kind, p.n, p.h, p.lq, p.lk, w);
  Options o = x.options;
  o.causal = causal;
  const auto ref = p.oracle(m.mask, o);
  INFO(shape_name(p) << ", " << x.name << ", causal " << static_cast<int>(causal) << ", mask "
                     << test::mask_kind_name(mk));
  const auto out = run_threads(p, m.mask, o, Path::optimized);
  test::check_close(out.data(), ref.out, "vs oracle");
}

}  // namespace

TEST_CASE("variants: every variant on odd sizes, with every mask kind, against the oracle",
          "[variants]") {
  for (std::size_t d : {1, 3, 15, 17}) {
    for (std::size_t lq : {1, 2, 7, 33}) {
      for (std::size_t lk : {1, 2, 7, 33}) {
        // Grouped K/V heads and Dv != Dk on alternate shapes.
        const std::size_t hkv = (lq + lk) % 2 == 0 ? 4 : 2;
        const std::size_t dv = lq == lk ? d + 2 : d;
        const Problem p(2, lq, lk, 4, hkv, d, dv, 100 + d * 7 + lq * 3 + lk);
        for (Kind kind : kKinds) {
          for (test::MaskKind mk : test::kAllMaskKinds) {
            test::MaskCase m = test::make_mask(mk, p.n, p.h, lq, lk);
            Variant x = make_variant(kind, p.n, p.h, lq, lk);
            Options o = x.options;
            o.causal = m.causal;
            if (needs_causal(kind) && o.causal == Causal::none) o.causal = Causal::top_left;
            for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
              o.masked_rows = policy;
              const auto ref = p.oracle(m.mask, o);
              for (Path path : kPaths) {
                INFO(shape_name(p) << ", " << x.name << ", mask " << test::mask_kind_name(mk)
                                   << ", causal " << static_cast<int>(o.causal) << ", policy "
                                   << static_cast<int>(policy) << ", " << path_name(path));
                const auto out = run_threads(p, m.mask, o, path);
                test::check_close(out.data(), ref.out, "vs oracle");
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("variants: windows 1, 7, 64 and longer than L, both alignments, with masks and GQA",
          "[variants][window]") {
  for (std::size_t d : {1, 3, 15, 17}) {
    for (std::size_t lq : {1, 2, 7, 33}) {
      for (std::size_t lk : {1, 2, 7, 33, 200}) {
        const Problem p(2, lq, lk, 4, 2, d, d, 300 + d + lq * 5 + lk);
        for (std::size_t w : {1, 7, 64, 1000}) {
          for (Causal causal : {Causal::top_left, Causal::bottom_right}) {
            for (test::MaskKind mk : {test::MaskKind::none, test::MaskKind::key_padding,
                                      test::MaskKind::fully_masked_rows}) {
              test::MaskCase m = test::make_mask(mk, p.n, p.h, lq, lk);
              Options o;
              o.causal = causal;
              o.window = w;
              const auto ref = p.oracle(m.mask, o);
              for (Path path : kPaths) {
                INFO(shape_name(p)
                     << ", window " << w << ", causal " << static_cast<int>(causal) << ", mask "
                     << test::mask_kind_name(mk) << ", " << path_name(path));
                test::check_close(run_threads(p, m.mask, o, path).data(), ref.out, "vs oracle");
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("variants: the fused kernels over many key blocks, row tasks and decode slices",
          "[variants][window][kernels]") {
  // Large enough that the kernels run in parallel (work above the serial limit), that a row
  // task covers several key blocks of 64 keys and a head several row tasks of <= 256 rows
  // (Lq = 300), and that a decode step covers several slices of 512 keys (Lk = 1100): windows
  // that skip blocks and slices, start inside them, or cover everything.
  // N = 1 and 4 heads: 2 threads split a head's rows into more tasks than 1 thread does.
  // N = 1, Lq = 77: a bias with rows shared by the heads makes too few row blocks for its
  // keys-down copy at 2 threads (3 blocks of 32 rows), so the heads' rows run as two tasks each.
  struct Shape {
    std::size_t n, lq, lk, h, d, dv;
  };
  for (const Shape& s :
       {Shape{2, 300, 300, 4, 17, 15}, Shape{1, 300, 300, 4, 17, 17}, Shape{2, 77, 300, 4, 17, 17},
        Shape{1, 77, 300, 4, 17, 17}, Shape{2, 1, 1100, 8, 33, 31}, Shape{2, 3, 1100, 8, 33, 33}}) {
    const Problem p(s.n, s.lq, s.lk, s.h, 2, s.d, s.dv, 500 + s.lq + s.d);
    for (Kind kind : kKinds) {
      const bool windowed = needs_causal(kind);
      for (std::size_t w : {1, 7, 64, 600, 2000}) {
        if (!windowed && w != 1) continue;  // one run of each kind without a window
        for (Causal causal : {Causal::none, Causal::top_left, Causal::bottom_right}) {
          if (windowed && causal == Causal::none) continue;
          for (test::MaskKind mk : {test::MaskKind::none, test::MaskKind::full}) {
            if (mk == test::MaskKind::full && causal == Causal::top_left) continue;
            check_optimized(p, kind, w, causal, mk);
          }
        }
      }
    }
  }
}

TEST_CASE("variants: a short decode step in several slices, against the oracle and bitwise",
          "[variants][kernels][determinism]") {
  // One sequence makes fewer than 16 slices of 512 keys: the driver halves them to 256 keys
  // (1100 keys: 5 slices, the last of 76 keys; 500 keys: 2), and a single one on down to 128 so
  // that there are two (129 keys: 128 and 1; windows of 64 keep one). Every variant, per-head
  // masks and biases, grouped heads, at threads 1, 2, 3 and 5 bit for bit.
  for (std::size_t lk : {129, 500, 1100}) {
    for (std::size_t lq : {1, 3}) {
      for (std::size_t hkv : {2, 8}) {
        const Problem p(1, lq, lk, 8, hkv, 33, 31, 900 + lk + lq + hkv);
        for (Kind kind : kKinds) {
          const bool windowed = needs_causal(kind);
          for (test::MaskKind mk : {test::MaskKind::none, test::MaskKind::full}) {
            test::MaskCase m = test::make_mask(mk, p.n, p.h, p.lq, p.lk);
            Variant x = make_variant(kind, p.n, p.h, p.lq, p.lk, 64);
            Options o = x.options;
            o.causal = windowed ? Causal::bottom_right : m.causal;
            const auto ref = p.oracle(m.mask, o);
            INFO(shape_name(p) << ", " << x.name << ", mask " << test::mask_kind_name(mk));
            o.threads = 1;
            const auto first = p.run(m.mask, o);
            // The paper's slopes without causal over 1100 keys make scores up to 550, 3e-5 off in
            // float whatever the code (see alibi_given in make_variant): the output 1.0-1.5e-5.
            const bool large_scores = kind == Kind::alibi && o.causal == Causal::none && lk > 512;
            test::check_close(first.data(), ref.out, "vs oracle",
                              large_scores ? 3e-5 : test::kRelFrobeniusTol);
            for (int threads : {2, 3, 5}) {
              INFO("threads " << threads << " vs 1");
              o.threads = threads;
              CHECK(test::same_bits(first, p.run(m.mask, o)));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("variants: a row-wise bias past Lk = 8192 against the oracle",
          "[variants][bias][kernels]") {
  // Up to Lk = 8192 a task copies its bias rows keys down; past it a bias per head is transposed
  // in the tiles, piece by piece (a window of 7 brings the copy back), and a bias shared by the
  // heads is still copied, one query group of rows per task. Grouped K/V heads (2 over 1).
  const Problem p(2, 40, 8300, 2, 1, 17, 15, 777);
  for (Kind kind : {Kind::bias_full, Kind::bias_rows, Kind::everything}) {
    for (std::size_t w : {7, 9000}) {
      if (!needs_causal(kind) && w != 7) continue;
      for (Causal causal : {Causal::none, Causal::bottom_right}) {
        if (needs_causal(kind) && causal == Causal::none) continue;
        for (test::MaskKind mk : {test::MaskKind::none, test::MaskKind::full}) {
          check_optimized(p, kind, w, causal, mk);
        }
      }
    }
  }
}

TEST_CASE("variants: over a KvCache, ALiBi, softcap, sinks and window equal one causal call",
          "[variants][kv_cache]") {
  // A cache holds the first Lk - Lq tokens of 2 sequences; one call attends from the last Lq:
  // the same as one bottom-right causal call over all Lk keys (the oracle), ALiBi positions
  // included. Grouped K/V heads (4 over 2); bias, key padding and weights are refused over a
  // cache (tests/test_kv_cache_attention.cpp).
  const Kind kinds[] = {Kind::alibi, Kind::alibi_given, Kind::softcap, Kind::sinks, Kind::window};
  for (std::size_t d : {1, 3, 15, 17}) {
    for (std::size_t lq : {1, 2, 7, 33}) {
      for (std::size_t lk : {2, 7, 33, 40}) {
        if (lk <= lq) continue;  // the cache holds at least one token
        const std::size_t history = lk - lq;
        const Problem p(2, lq, lk, 4, 2, d, d, 600 + d * 7 + lq * 3 + lk);
        for (int which = 0; which < 6; ++which) {
          // The five kinds alone, then softcap + given ALiBi + sinks + window together.
          Variant x = make_variant(which < 5 ? kinds[which] : Kind::alibi_given, p.n, p.h, lq, lk);
          Variant sinks = make_variant(Kind::sinks, p.n, p.h, lq, lk);
          Options o = x.options;
          if (which == 5) {
            o.softcap = 2.0f;
            o.sinks = sinks.options.sinks;
            o.window = 7;
          }
          o.causal = Causal::bottom_right;
          const auto ref = p.oracle({}, o);
          const std::size_t kv_row = p.hkv * d, kv_batch = lk * kv_row;
          for (Path path : kPaths) {
            std::vector<float> first;
            for (int threads : {1, 2}) {
              INFO(shape_name(p) << ", "
                                 << (which < 5 ? x.name : "softcap + ALiBi + sinks + window")
                                 << ", " << path_name(path) << ", threads " << threads);
              KvCache cache(test::cache_config(2, p.hkv, d));
              const std::vector<SequenceId> ids = {cache.add_sequence(), cache.add_sequence()};
              cache.append(ids, {p.k.data(), p.n, history, p.hkv, d, kv_row, kv_batch},
                           {p.v.data(), p.n, history, p.hkv, d, kv_row, kv_batch});
              std::vector<float> out(p.out_size(), std::nanf(""));
              Options call = o;
              call.path = path;
              call.threads = threads;
              scaled_dot_product_attention(
                  cache, ids, p.qv(),
                  {p.k.data() + history * kv_row, p.n, lq, p.hkv, d, kv_row, kv_batch},
                  {p.v.data() + history * kv_row, p.n, lq, p.hkv, d, kv_row, kv_batch},
                  HeadsView<float>{out.data(), p.n, lq, p.h, d}, call);
              test::check_close(out.data(), ref.out, "vs oracle");
              if (threads == 1)
                first = out;
              else
                CHECK(test::same_bits(first, out));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("variants: the double oracle follows the documented semantics (brute force)",
          "[variants]") {
  // Lq < Lk, Lq > Lk and Lq == Lk; GQA; Dv != Dk.
  const std::size_t shapes[][2] = {{5, 9}, {9, 4}, {7, 7}, {1, 6}};
  for (const auto& s : shapes) {
    const Problem p(3, s[0], s[1], 6, 3, 5, 4, 40 + s[0] * 10 + s[1]);
    for (Kind kind : kKinds) {
      for (std::size_t w : {1, 3, 100}) {
        if (!needs_causal(kind) && w != 1) continue;
        for (test::MaskKind mk : test::kAllMaskKinds) {
          test::MaskCase m = test::make_mask(mk, p.n, p.h, p.lq, p.lk);
          Variant x = make_variant(kind, p.n, p.h, p.lq, p.lk, w);
          Options o = x.options;
          o.causal = m.causal;
          if (needs_causal(kind) && o.causal == Causal::none) o.causal = Causal::bottom_right;
          for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
            o.masked_rows = policy;
            INFO(shape_name(p) << ", " << x.name << ", mask " << test::mask_kind_name(mk)
                               << ", policy " << static_cast<int>(policy));
            std::vector<float> wbuf(p.weights_size(false));
            o.weights = AttentionWeights{wbuf.data(), wbuf.size(), false};
            const test::OracleResult ref = p.oracle(m.mask, o);
            const Brute bf = brute_force(p, m.mask, o);
            auto near = [](const std::vector<double>& a, const std::vector<double>& b) {
              double worst = 0;
              for (std::size_t i = 0; i < a.size(); ++i) {
                worst = std::max(worst, std::fabs(a[i] - b[i]));
              }
              return worst;
            };
            CHECK(near(ref.out, bf.out) < 1e-12);
            CHECK(near(ref.weights, bf.weights) < 1e-12);
            o.weights.average_heads = true;
            o.weights.size = p.weights_size(true);
            CHECK(near(p.oracle(m.mask, o).weights,
                       average_heads(bf.weights, p.n, p.h, p.lq, p.lk)) < 1e-12);
          }
        }
      }
    }
  }
}

TEST_CASE("variants: ALiBi slopes are the paper's geometric series", "[variants][alibi]") {
  CHECK(alibi_slopes(8) == std::vector<float>{0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f,
                                              0.0078125f, 0.00390625f});
  for (std::size_t n : {1, 2, 3, 5, 6, 7, 12, 16, 20, 64, 96}) {
    INFO("heads " << n);
    const auto got = alibi_slopes(n);
    const auto want = paper_slopes(n);
    REQUIRE(got.size() == n);
    for (std::size_t j = 0; j < n; ++j) CHECK(got[j] == static_cast<float>(want[j]));
  }
  // 12 heads: the 8 slopes of 8, then slopes 1, 3, 5, 7 of 16 (ggml's m1^(2m+1)).
  const auto s12 = alibi_slopes(12);
  CHECK(s12[8] == std::pow(2.0f, -0.5f));
  CHECK(s12[11] == std::pow(2.0f, -3.5f));
}

TEST_CASE("variants: ALiBi equals a bias tensor of slope * (k - q position)", "[variants][alibi]") {
  const Problem p(2, 6, 10, 4, 4, 5, 5, 80);
  const auto slopes = alibi_slopes(p.h);
  for (Causal causal : {Causal::none, Causal::top_left, Causal::bottom_right}) {
    const std::ptrdiff_t offset = causal == Causal::bottom_right ? 4 : 0;
    std::vector<float> bias(p.h * p.lq * p.lk);
    for (std::size_t j = 0; j < p.h; ++j) {
      for (std::size_t i = 0; i < p.lq; ++i) {
        for (std::size_t k = 0; k < p.lk; ++k) {
          bias[(j * p.lq + i) * p.lk + k] =
              slopes[j] * static_cast<float>(static_cast<std::ptrdiff_t>(k) -
                                             static_cast<std::ptrdiff_t>(i) - offset);
        }
      }
    }
    for (Path path : kPaths) {
      INFO("causal " << static_cast<int>(causal) << " " << path_name(path));
      Options a;
      a.path = path;
      a.causal = causal;
      a.alibi.enabled = true;
      Options b = a;
      b.alibi.enabled = false;
      b.bias = Bias{bias.data(), 1, p.h, p.lq, p.lk};
      const auto with_alibi = p.run({}, a);
      test::check_close(with_alibi.data(), test::to_double(p.run({}, b)), "ALiBi vs bias tensor");
      // The slopes matter: zero slopes give plain attention, which differs.
      const std::vector<float> zero(p.h, 0.0f);
      Options z = a;
      z.alibi.slopes = PerHead{zero.data(), p.h};
      Options plain = a;
      plain.alibi.enabled = false;
      test::check_close(p.run({}, z).data(), test::to_double(p.run({}, plain)), "zero slopes");
      CHECK(with_alibi != p.run({}, plain));
    }
  }
}

TEST_CASE("variants: a -inf bias is a mask, including for fully masked rows", "[variants][bias]") {
  const Problem p(2, 7, 9, 3, 3, 4, 4, 90);
  const auto m = test::make_mask(test::MaskKind::fully_masked_rows, p.n, p.h, p.lq, p.lk);
  std::vector<float> bias(m.bytes.size());
  for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = m.bytes[i] == 0 ? -kInf : 0.0f;
  for (Path path : kPaths) {
    for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
      INFO(path_name(path) << " policy " << static_cast<int>(policy));
      Options o;
      o.path = path;
      o.masked_rows = policy;
      const auto with_mask = p.run(m.mask, o);
      o.bias = Bias{bias.data(), p.n, p.h, p.lq, p.lk};
      test::check_close(p.run({}, o).data(), test::to_double(with_mask), "-inf bias vs mask");
    }
  }
}

TEST_CASE("variants: bias broadcast shapes equal their expansion", "[variants][bias]") {
  const Problem p(2, 5, 7, 3, 3, 4, 4, 95);
  for (int shape = 0; shape < 8; ++shape) {
    const std::size_t bn = shape & 1 ? p.n : 1, bh = shape & 2 ? p.h : 1,
                      blq = shape & 4 ? p.lq : 1;
    const auto small = test::random_normal(bn * bh * blq * p.lk, 96 + shape);
    std::vector<float> full(p.n * p.h * p.lq * p.lk);
    for (std::size_t b = 0; b < p.n; ++b) {
      for (std::size_t j = 0; j < p.h; ++j) {
        for (std::size_t i = 0; i < p.lq; ++i) {
          for (std::size_t k = 0; k < p.lk; ++k) {
            full[((b * p.h + j) * p.lq + i) * p.lk + k] =
                small[(((bn == 1 ? 0 : b) * bh + (bh == 1 ? 0 : j)) * blq + (blq == 1 ? 0 : i)) *
                          p.lk +
                      k];
          }
        }
      }
    }
    for (Path path : kPaths) {
      INFO("bias [" << bn << ", " << bh << ", " << blq << ", Lk] " << path_name(path));
      Options o;
      o.path = path;
      o.bias = Bias{small.data(), bn, bh, blq, p.lk};
      const auto out = p.run({}, o);
      o.bias = Bias{full.data(), p.n, p.h, p.lq, p.lk};
      test::check_close(out.data(), test::to_double(p.run({}, o)), "broadcast vs expanded");
    }
  }
}

TEST_CASE("variants: the window is a band of the causal mask", "[variants][window]") {
  const std::size_t shapes[][2] = {{9, 9}, {5, 12}, {12, 5}, {1, 20}};
  for (const auto& s : shapes) {
    const Problem p(2, s[0], s[1], 2, 2, 3, 3, 120 + s[0]);
    for (Causal causal : {Causal::top_left, Causal::bottom_right}) {
      for (std::size_t w : {1, 2, 4, 30}) {
        const std::ptrdiff_t offset =
            causal == Causal::bottom_right ? static_cast<std::ptrdiff_t>(p.lk - p.lq) : 0;
        std::vector<std::uint8_t> band(p.lq * p.lk);
        for (std::size_t i = 0; i < p.lq; ++i) {
          for (std::size_t k = 0; k < p.lk; ++k) {
            const std::ptrdiff_t pos = static_cast<std::ptrdiff_t>(i) + offset;
            const auto kk = static_cast<std::ptrdiff_t>(k);
            band[i * p.lk + k] = kk <= pos && kk > pos - static_cast<std::ptrdiff_t>(w);
          }
        }
        for (Path path : kPaths) {
          INFO("Lq " << p.lq << " Lk " << p.lk << " window " << w << " causal "
                     << static_cast<int>(causal) << " " << path_name(path));
          Options o;
          o.path = path;
          o.causal = causal;
          o.window = w;
          const auto out = p.run({}, o);
          Options m;
          m.path = path;
          test::check_close(out.data(), test::to_double(p.run({band.data(), 1, 1, p.lq, p.lk}, m)),
                            "window vs band mask");
          if (w >= p.lk + p.lq) {
            Options c = m;
            c.causal = causal;
            // A window longer than any row's keys changes nothing.
            test::check_close(out.data(), test::to_double(p.run({}, c)), "long window");
          }
        }
      }
    }
  }
}

TEST_CASE("variants: sinks join the denominator; a row with no key returns zeros",
          "[variants][sinks]") {
  const Problem p(2, 6, 8, 3, 3, 4, 5, 130);
  const std::vector<float> sinks = {0.5f, -1.0f, 3.0f};
  for (Path path : kPaths) {
    for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
      INFO(path_name(path) << " policy " << static_cast<int>(policy));
      Options o;
      o.path = path;
      o.masked_rows = policy;
      const auto plain = p.run({}, o);
      o.sinks = PerHead{sinks.data(), p.h};
      // Every row sees every key. The sink only shrinks the output:
      // out = plain * sum_k e^s_k / (sum_k e^s_k + e^sink).
      const auto lse = p.oracle({}, Options{}).lse;
      const auto out = p.run({}, o);
      for (std::size_t b = 0; b < p.n; ++b) {
        for (std::size_t i = 0; i < p.lq; ++i) {
          for (std::size_t j = 0; j < p.h; ++j) {
            const double l = lse[(b * p.h + j) * p.lq + i];
            const double keep = 1.0 / (1.0 + std::exp(sinks[j] - l));
            for (std::size_t d = 0; d < p.dv; ++d) {
              const std::size_t at = ((b * p.lq + i) * p.h + j) * p.dv + d;
              CHECK(out[at] == Approx(plain[at] * keep).margin(1e-6));
            }
          }
        }
      }
      // Rows with no visible key: zeros under both policies.
      std::vector<std::uint8_t> none(p.lk, 0);
      const auto empty = p.run({none.data(), 1, 1, 1, p.lk}, o);
      for (float x : empty) CHECK(x == 0.0f);
    }
  }
}

TEST_CASE("variants: key_padding is PyTorch's (nonzero = padding) and ANDs with the mask",
          "[variants][padding]") {
  const Problem p(3, 5, 9, 2, 2, 6, 6, 140);
  Variant x = make_variant(Kind::key_padding, p.n, p.h, p.lq, p.lk);
  std::vector<std::uint8_t> keep(p.n * p.lk);
  for (std::size_t i = 0; i < keep.size(); ++i) keep[i] = x.padding[i] == 0;
  const auto full = test::make_mask(test::MaskKind::full, p.n, p.h, p.lq, p.lk);
  std::vector<std::uint8_t> both = full.bytes;
  for (std::size_t row = 0; row < p.n * p.h * p.lq; ++row) {
    const std::size_t b = row / (p.h * p.lq);
    for (std::size_t k = 0; k < p.lk; ++k) {
      both[row * p.lk + k] = both[row * p.lk + k] != 0 && keep[b * p.lk + k] != 0;
    }
  }
  for (Path path : kPaths) {
    INFO(path_name(path));
    Options o;
    o.path = path;
    const auto as_mask = p.run({keep.data(), p.n, 1, 1, p.lk}, o);
    Options padded = o;
    padded.key_padding = x.options.key_padding;
    test::check_close(p.run({}, padded).data(), test::to_double(as_mask), "padding vs mask");
    test::check_close(p.run(full.mask, padded).data(),
                      test::to_double(p.run({both.data(), p.n, p.h, p.lq, p.lk}, o)),
                      "padding AND mask");
  }
}

TEST_CASE("variants: Dv != Dk equals attention of each slice of V", "[variants][dv]") {
  // Output column c depends on V column c only: Dv = 7 at once equals Dv = 3 and Dv = 4 apart.
  const Problem p(2, 9, 11, 4, 2, 5, 7, 150);
  for (Path path : kPaths) {
    for (test::MaskKind mk : test::kAllMaskKinds) {
      const auto m = test::make_mask(mk, p.n, p.h, p.lq, p.lk);
      Options o;
      o.path = path;
      o.causal = m.causal;
      const auto out = p.run(m.mask, o);
      for (std::size_t c0 : {0, 3}) {
        const std::size_t cw = c0 == 0 ? 3 : 4;
        INFO(path_name(path) << " mask " << test::mask_kind_name(mk) << " columns " << c0);
        const ConstHeadsView vs{p.v.data() + c0,     p.n, p.lk, p.hkv, cw, p.hkv * p.dv,
                                p.lk * p.hkv * p.dv, p.dv};
        std::vector<float> part(p.n * p.lq * p.h * cw);
        scaled_dot_product_attention(p.qv(), p.kv(), vs,
                                     HeadsView<float>{part.data(), p.n, p.lq, p.h, cw}, m.mask, o);
        std::vector<float> mine;
        for (std::size_t r = 0; r < p.n * p.lq * p.h; ++r) {
          mine.insert(mine.end(), out.begin() + r * p.dv + c0, out.begin() + r * p.dv + c0 + cw);
        }
        test::check_close(mine.data(), test::to_double(part), "column slice");
      }
    }
  }
}

TEST_CASE("variants: [N, H, L, D] tensors in place through a head stride", "[variants][layout]") {
  for (std::size_t lq : {1, 2, 7, 33}) {
    const std::size_t lk = lq == 1 ? 700 : 33;  // 700 keys: a decode over two slices
    const Problem p(2, lq, lk, 4, 2, 15, 17, 160 + lq);
    // The same numbers in [N, H, L, D] order.
    auto to_nhld = [](const std::vector<float>& x, std::size_t n, std::size_t l, std::size_t h,
                      std::size_t d) {
      std::vector<float> y(x.size());
      for (std::size_t b = 0; b < n; ++b) {
        for (std::size_t i = 0; i < l; ++i) {
          for (std::size_t j = 0; j < h; ++j) {
            std::copy_n(x.begin() + ((b * l + i) * h + j) * d, d,
                        y.begin() + ((b * h + j) * l + i) * d);
          }
        }
      }
      return y;
    };
    const auto q = to_nhld(p.q, p.n, lq, p.h, p.dk);
    const auto k = to_nhld(p.k, p.n, lk, p.hkv, p.dk);
    const auto v = to_nhld(p.v, p.n, lk, p.hkv, p.dv);
    for (Path path : kPaths) {
      for (test::MaskKind mk : test::kAllMaskKinds) {
        const auto m = test::make_mask(mk, p.n, p.h, lq, lk);
        Variant x = make_variant(Kind::everything, p.n, p.h, lq, lk, 500);
        for (bool variants : {false, true}) {
          INFO("Lq " << lq << " " << path_name(path) << " mask " << test::mask_kind_name(mk)
                     << (variants ? " with every variant" : ""));
          Options o = variants ? x.options : Options{};
          o.path = path;
          o.causal = m.causal == Causal::none && variants ? Causal::bottom_right : m.causal;
          std::vector<float> out(p.out_size(), std::nanf(""));
          for (int threads : {1, 2}) {
            o.threads = threads;
            scaled_dot_product_attention(nhld_view(q.data(), p.n, p.h, lq, p.dk),
                                         nhld_view(k.data(), p.n, p.hkv, lk, p.dk),
                                         nhld_view(v.data(), p.n, p.hkv, lk, p.dv),
                                         nhld_view(out.data(), p.n, p.h, lq, p.dv), m.mask, o);
            const auto dense = p.run(m.mask, o);
            test::check_close(to_nhld(dense, p.n, lq, p.h, p.dv).data(), test::to_double(out),
                              "[N, H, L, D] vs [N, L, H, D]");
          }
        }
      }
    }
  }
}

TEST_CASE("variants: attention weights, full and head-averaged, against the oracle",
          "[variants][weights]") {
  for (std::size_t d : {1, 3, 17}) {
    for (std::size_t lq : {1, 2, 7, 33, 70}) {
      for (std::size_t lk : {1, 7, 33, 130}) {
        const Problem p(2, lq, lk, 4, 2, d, d + 1, 170 + d + lq + lk);
        for (Kind kind : {Kind::bias_full, Kind::sinks, Kind::everything, Kind::alibi}) {
          for (test::MaskKind mk : {test::MaskKind::none, test::MaskKind::causal_bottom_right,
                                    test::MaskKind::fully_masked_rows}) {
            const auto m = test::make_mask(mk, p.n, p.h, lq, lk);
            Variant x = make_variant(kind, p.n, p.h, lq, lk, 5);
            for (bool with_variant : {false, true}) {
              // Plain attention once per shape; the policy matters where rows see no key.
              if (!with_variant && kind != Kind::bias_full) continue;
              for (bool average : {false, true}) {
                for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
                  if (policy == MaskedRows::zeros && mk != test::MaskKind::fully_masked_rows &&
                      kind != Kind::everything) {
                    continue;
                  }
                  Options o = with_variant ? x.options : Options{};
                  o.causal = m.causal;
                  if (with_variant && needs_causal(kind) && o.causal == Causal::none) {
                    o.causal = Causal::top_left;
                  }
                  o.masked_rows = policy;
                  o.weights = AttentionWeights{nullptr, p.weights_size(average), average};
                  std::vector<float> scratch(o.weights.size);
                  Options ro = o;
                  ro.weights.data = scratch.data();  // only tells the oracle the shape
                  const test::OracleResult ref = p.oracle(m.mask, ro);
                  for (Path path : kPaths) {
                    INFO(shape_name(p)
                         << ", " << (with_variant ? x.name : "plain") << ", mask "
                         << test::mask_kind_name(mk) << ", " << (average ? "averaged" : "per head")
                         << ", policy " << static_cast<int>(policy) << ", " << path_name(path));
                    std::vector<float> w;
                    const auto out = run_threads(p, m.mask, o, path, &w);
                    test::check_close(out.data(), ref.out, "output with weights");
                    test::check_close(w.data(), ref.weights, "weights");
                  }
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("variants: weights times V is the output; rows sum to 1 without sinks",
          "[variants][weights]") {
  const Problem p(2, 40, 50, 3, 3, 8, 8, 180);
  for (Path path : kPaths) {
    INFO(path_name(path));
    Options o;
    o.path = path;
    o.causal = Causal::bottom_right;
    std::vector<float> w(p.weights_size(false));
    o.weights = AttentionWeights{w.data(), w.size(), false};
    const auto out = p.run({}, o);
    for (std::size_t b = 0; b < p.n; ++b) {
      for (std::size_t j = 0; j < p.h; ++j) {
        for (std::size_t i = 0; i < p.lq; ++i) {
          const float* row = w.data() + ((b * p.h + j) * p.lq + i) * p.lk;
          double sum = 0;
          for (std::size_t k = 0; k < p.lk; ++k) sum += row[k];
          CHECK(sum == Approx(1.0).margin(1e-5));
          for (std::size_t k = i + p.lk - p.lq + 1; k < p.lk; ++k) CHECK(row[k] == 0.0f);
          for (std::size_t c = 0; c < p.dv; ++c) {
            double x = 0;
            for (std::size_t k = 0; k < p.lk; ++k)
              x += row[k] * p.v[((b * p.lk + k) * p.h + j) * p.dv + c];
            CHECK(out[((b * p.lq + i) * p.h + j) * p.dv + c] == Approx(x).margin(1e-5));
          }
        }
      }
    }
  }
}

TEST_CASE("variants: the module takes key_padding, bias, ALiBi and weights", "[variants][module]") {
  const std::size_t n = 3, lq = 8, lk = 12, e = 30, heads = 3;
  const MultiHeadAttention module(e, heads, 190);
  const Tensor kv = Tensor::randn(n, lk, e, 191);
  const Tensor query = Tensor::randn(n, lq, e, 192);
  for (Kind kind : kKinds) {
    Variant x = make_variant(kind, n, heads, lq, lk, 4);
    for (bool average : {false, true}) {
      for (Path path : kPaths) {
        INFO(x.name << " " << path_name(path) << (average ? " averaged" : ""));
        Options o = x.options;
        o.path = path;
        if (needs_causal(kind)) o.causal = Causal::bottom_right;
        std::vector<float> w(n * (average ? 1 : heads) * lq * lk, std::nanf(""));
        o.weights = AttentionWeights{w.data(), w.size(), average};
        std::vector<double> ref_w(w.size());
        const auto ref = test::oracle_forward(module, kv, kv, query, {}, o, ref_w.data());
        test::check_close(module.forward(kv, kv, query, {}, o).data(), ref, "cross");
        test::check_close(w.data(), ref_w, "weights");
      }
    }
  }
}

TEST_CASE("variants: option magnitudes up to the 1e30 bound agree with the oracle",
          "[variants][errors]") {
  // Above it (3e38) the base-2 kernels gave NaN, and a cap of 1e38 or 1e-39 was lost, while the
  // reference was right: such values are refused (next test case). At the bound every path is
  // right. Lq > 4 for the tile kernels, Lq = 1 for the decode kernel.
  for (std::size_t lq : {9, 1}) {
    const Problem p(2, lq, 13, 4, 2, 5, 5, 300 + lq);
    const std::vector<float> big = {1e30f, -1e30f, 1e30f, -1e30f};
    std::vector<std::pair<std::string, Options>> cases(5);
    cases[0].first = "scale 1e30";
    cases[0].second.scale = 1e30f;
    cases[1].first = "softcap 1e30";
    cases[1].second.softcap = 1e30f;
    cases[2].first = "softcap 1e-30";
    cases[2].second.softcap = 1e-30f;
    cases[3].first = "slopes +-1e30";
    cases[3].second.alibi = Alibi{true, PerHead{big.data(), 4}};
    cases[4].first = "sinks +-1e30";
    cases[4].second.sinks = PerHead{big.data(), 4};
    for (auto& [name, o] : cases) {
      const auto ref = p.oracle({}, o).out;
      for (Path path : kPaths) {
        INFO(name << ", Lq " << lq << ", " << path_name(path));
        o.path = path;
        test::check_close(p.run({}, o).data(), ref, name);
      }
    }
  }
}

TEST_CASE("variants: bad options are rejected with the values named", "[variants][errors]") {
  const std::string where = "simdattn::scaled_dot_product_attention: ";
  const Problem p(2, 3, 5, 4, 2, 3, 3, 200);
  std::vector<float> out(p.out_size());
  auto call = [&](const Options& o) {
    scaled_dot_product_attention(p.qv(), p.kv(), p.vv(),
                                 HeadsView<float>{out.data(), p.n, p.lq, p.h, p.dv}, {}, o);
  };
  auto rejects = [&](const Options& o, const std::string& message) {
    INFO(message);
    CHECK_THROWS_MATCHES(call(o), std::invalid_argument, Catch::Matchers::Message(where + message));
  };
  const std::vector<float> bias(2 * 4 * 3 * 5), four(4, 0.5f), three(3, 0.5f);
  Options o;
  o.bias = Bias{bias.data(), 2, 4, 3, 1};
  rejects(o,
          "options.bias of shape [2, 4, 3, 1] does not broadcast to [N, H, Lq, Lk] = "
          "[2, 4, 3, 5] (N, H and Lq must be 1 or the full size, Lk the full size)");
  o.bias = Bias{bias.data(), 1, 2, 3, 5};
  rejects(o,
          "options.bias of shape [1, 2, 3, 5] does not broadcast to [N, H, Lq, Lk] = "
          "[2, 4, 3, 5] (N, H and Lq must be 1 or the full size, Lk the full size)");
  o = {};
  o.window = 0;
  rejects(o, "options.window must be >= 1 (unset for no window), got 0");
  o.window = 4;
  rejects(o,
          "options.window = 4 needs options.causal (top_left or bottom_right): the window "
          "ends at each query's causal end");
  o = {};
  o.softcap = std::numeric_limits<float>::infinity();
  rejects(o, "options.softcap must be finite and > 0 (unset for none), got inf");
  o.softcap = -2.0f;
  rejects(o, "options.softcap must be finite and > 0 (unset for none), got -2");
  o.softcap = std::nanf("");
  rejects(o, "options.softcap must be finite and > 0 (unset for none), got nan");
  o = {};
  o.alibi = Alibi{true, PerHead{three.data(), 3}};
  rejects(o, "options.alibi.slopes has 3 values, one per query head needs H = 4");
  std::vector<float> bad = four;
  bad[2] = std::nanf("");
  o.alibi = Alibi{true, PerHead{bad.data(), 4}};
  rejects(o, "options.alibi.slopes[2] must be finite, got nan");
  o.alibi = Alibi{false, PerHead{four.data(), 4}};
  rejects(o, "options.alibi.slopes is set but options.alibi.enabled is false");
  o.alibi = Alibi{false, PerHead{nullptr, 4}};  // a size alone is a slope list too
  rejects(o, "options.alibi.slopes is set but options.alibi.enabled is false");
  // Magnitudes whose scores the base-2 kernels could not hold (they gave NaN or ignored the cap
  // on the optimized path while the reference was right).
  std::vector<float> huge = four;
  huge[1] = -3e38f;
  o.alibi = Alibi{true, PerHead{huge.data(), 4}};
  rejects(o,
          "options.alibi.slopes[1] must be at most 1e30 in magnitude (the kernels scale scores by "
          "log2(e) in float), got -3e+38");
  o = {};
  o.sinks = PerHead{huge.data(), 4};
  rejects(o,
          "options.sinks[1] must be at most 1e30 in magnitude (the kernels scale scores by "
          "log2(e) in float), got -3e+38");
  o = {};
  o.scale = 3e38f;
  rejects(o,
          "options.scale must be at most 1e30 in magnitude (the kernels scale scores by log2(e) "
          "in float), got 3e+38");
  o = {};
  o.softcap = 1e38f;
  rejects(o,
          "options.softcap must be at most 1e30 in magnitude (the kernels scale scores by "
          "log2(e) in float), got 1e+38");
  o.softcap = 1e-39f;
  rejects(o,
          "options.softcap must be at least 1e-30 (the kernels multiply by its reciprocal in "
          "float), got 1e-39");
  o = {};
  o.sinks = PerHead{three.data(), 3};
  rejects(o, "options.sinks has 3 values, one per query head needs H = 4");
  bad[2] = -std::numeric_limits<float>::infinity();
  o.sinks = PerHead{bad.data(), 4};
  rejects(o, "options.sinks[2] must be finite, got -inf");
  o.sinks = PerHead{nullptr, 4};
  rejects(o, "options.sinks.data is null but options.sinks.size is 4");
  o = {};
  const std::vector<std::uint8_t> pad(10);
  o.key_padding = KeyPadding{pad.data(), 2, 4};
  rejects(o, "options.key_padding of shape [2, 4] must be [N, Lk] = [2, 5]");
  o.key_padding = KeyPadding{pad.data(), 1, 5};
  rejects(o, "options.key_padding of shape [1, 5] must be [N, Lk] = [2, 5]");
  o = {};
  std::vector<float> w(2 * 4 * 3 * 5);
  o.weights = AttentionWeights{w.data(), 2 * 3 * 5, false};
  rejects(o, "options.weights.size is 30 floats, [N, H, Lq, Lk] = [2, 4, 3, 5] needs 120");
  o.weights = AttentionWeights{w.data(), 120, true};
  rejects(o, "options.weights.size is 120 floats, [N, Lq, Lk] = [2, 3, 5] needs 30");
  o.weights = AttentionWeights{nullptr, 120, false};
  rejects(o, "options.weights.data is null but options.weights.size is 120");
  o.weights = AttentionWeights{out.data(), 30, true};
  rejects(o, "options.weights overlaps out");
  o = {};
  std::vector<float> shared(200);
  o.bias = Bias{shared.data(), 1, 1, 1, 5};
  scaled_dot_product_attention(p.qv(), p.kv(), p.vv(),
                               HeadsView<float>{out.data(), p.n, p.lq, p.h, p.dv}, {}, o);
  CHECK_INVALID(
      scaled_dot_product_attention(
          p.qv(), p.kv(), p.vv(), HeadsView<float>{shared.data() + 2, p.n, p.lq, p.h, p.dv}, {}, o),
      where + "out overlaps options.bias");
  o = {};
  o.key_padding = KeyPadding{reinterpret_cast<const std::uint8_t*>(shared.data() + 8), 2, 5};
  CHECK_INVALID(
      scaled_dot_product_attention(p.qv(), p.kv(), p.vv(),
                                   HeadsView<float>{shared.data(), p.n, p.lq, p.h, p.dv}, {}, o),
      where + "out overlaps options.key_padding");
  SECTION("head strides that put two elements at one address") {
    // The query [N, L, H, D] = [n, 3, 4, 3] with rows 3 apart and the given head stride.
    auto with_query = [&](std::size_t n, std::size_t batch_stride, std::size_t head_stride) {
      const ConstHeadsView q{p.q.data(), n, 3, 4, 3, 3, batch_stride, head_stride};
      scaled_dot_product_attention(q, p.kv(), p.vv(),
                                   HeadsView<float>{out.data(), 1, p.lq, p.h, p.dv});
    };
    CHECK_INVALID(with_query(1, 0, 2), where + "query.head_stride (2) is smaller than D (3)");
    CHECK_INVALID(with_query(1, 0, 6),
                  where +
                      "query.head_stride (6) makes elements overlap: [N, L, H] = 1 x stride 24, "
                      "3 x stride 3, 4 x stride 6 with D = 3");
    // One element shared: the rows of a head end at 9, the next head starts at 8.
    CHECK_INVALID(with_query(1, 0, 8),
                  where +
                      "query.head_stride (8) makes elements overlap: [N, L, H] = 1 x stride 32, "
                      "3 x stride 3, 4 x stride 8 with D = 3");
    // The last batch's offset, 2 x 2^63, does not fit in size_t.
    CHECK_INVALID(with_query(3, std::size_t{1} << 63, 12),
                  where + "query overflows: 2 * 9223372036854775808 does not fit in size_t");
  }
}
