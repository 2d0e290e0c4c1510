// Attention over a KvCache through the public core API (already-projected heads): decoding token
// by token and prefill in chunks equal one causal pass over the whole sequence (double oracle
// that repeats K/V heads, relative error <= 1e-6, bitwise across thread counts), with a sliding
// window, ALiBi, soft-capping and sinks too; ragged batches equal each sequence alone;
// grouped-query and multi-query heads; bf16/f16 storage within its stated bound; refused calls
// leave the cache as it was. CTest runs this once per ISA.
#include <cfloat>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "half.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

constexpr int kThreads[] = {1, 2};
// Against the double oracle, attention over an f32 cache (any chunking).
constexpr double kCacheRelTol = 1e-6;
constexpr double kCacheMaxTol = 1e-5;

// One sequence's projected heads: q [L, H, D], k and v [L, kv_heads, D].
struct Sequence {
  std::size_t l, h, kvh, d;
  std::vector<float> q, k, v;
  Sequence(std::size_t l_, std::size_t h_, std::size_t kvh_, std::size_t d_, std::uint64_t seed)
      : l(l_),
        h(h_),
        kvh(kvh_),
        d(d_),
        q(test::random_normal(l * h * d, seed)),
        k(test::random_normal(l * kvh * d, seed + 1)),
        v(test::random_normal(l * kvh * d, seed + 2)) {}
};

// The double oracle: one causal pass over the whole sequence with each K/V head repeated for the
// H / kv_heads query heads that read it, with the window and score modifications of `variant`
// (ALiBi positions are indices in the whole sequence); the outputs of tokens [first, L),
// [L - first, H, D]. `k` and `v` are what the cache holds.
std::vector<double> oracle(const Sequence& s, const std::vector<float>& k,
                           const std::vector<float>& v, float scale, const Options& variant = {},
                           std::size_t first = 0) {
  const std::size_t g = s.h / s.kvh;
  std::vector<double> kd(s.l * s.h * s.d), vd(s.l * s.h * s.d);
  for (std::size_t t = 0; t < s.l; ++t) {
    for (std::size_t hh = 0; hh < s.h; ++hh) {
      for (std::size_t i = 0; i < s.d; ++i) {
        kd[(t * s.h + hh) * s.d + i] = k[(t * s.kvh + hh / g) * s.d + i];
        vd[(t * s.h + hh) * s.d + i] = v[(t * s.kvh + hh / g) * s.d + i];
      }
    }
  }
  const std::size_t hd = s.h * s.d, lq = s.l - first;
  const auto qd = test::to_double(s.q.data() + first * hd, lq * hd);
  std::vector<double> out(lq * hd);
  // Bottom-right: the last lq queries of the sequence's causal pass.
  Options causal = variant;
  causal.causal = Causal::bottom_right;
  const detail::MaskRule rule = detail::resolve_rule("oracle", Mask{}, causal, 1, s.h, lq, s.l);
  using CH = reference::Heads<const double>;
  reference::attention<double>(CH{qd.data(), 1, lq, s.h, s.d, hd, 0},
                               CH{kd.data(), 1, s.l, s.h, s.d, hd, 0},
                               CH{vd.data(), 1, s.l, s.h, s.d, hd, 0},
                               reference::Heads<double>{out.data(), 1, lq, s.h, s.d, hd, 0}, rule,
                               static_cast<double>(scale), MaskedRows::uniform);
  return out;
}

// Feeds the sequence to a new cache in chunks of `chunk` tokens; returns the outputs [L, H, D].
std::vector<float> run_chunks(const Sequence& s, std::size_t chunk, KvStorage storage,
                              const Options& options, std::size_t block_tokens = 64) {
  KvCache cache(test::cache_config(KvCache::blocks_for(s.l, block_tokens), s.kvh, s.d, storage,
                                   block_tokens));
  const SequenceId id = cache.add_sequence();
  std::vector<float> out(s.l * s.h * s.d);
  for (std::size_t p = 0; p < s.l; p += chunk) {
    const std::size_t t = std::min(chunk, s.l - p);
    scaled_dot_product_attention(cache, {id}, {s.q.data() + p * s.h * s.d, 1, t, s.h, s.d},
                                 {s.k.data() + p * s.kvh * s.d, 1, t, s.kvh, s.d},
                                 {s.v.data() + p * s.kvh * s.d, 1, t, s.kvh, s.d},
                                 HeadsView<float>{out.data() + p * s.h * s.d, 1, t, s.h, s.d},
                                 options);
  }
  REQUIRE(cache.length(id) == s.l);
  return out;
}

// What a cache of this storage type holds for the sequence's keys and values.
std::pair<std::vector<float>, std::vector<float>> stored(const Sequence& s, KvStorage storage) {
  KvCache cache(test::cache_config(KvCache::blocks_for(s.l), s.kvh, s.d, storage));
  const SequenceId id = cache.add_sequence();
  cache.append({id}, {s.k.data(), 1, s.l, s.kvh, s.d}, {s.v.data(), 1, s.l, s.kvh, s.d});
  std::vector<float> k(s.k.size()), v(s.v.size());
  cache.read(id, 0, s.l, k.data(), v.data());
  return {k, v};
}

}  // namespace

TEST_CASE("cache attention: token by token and chunked prefill equal one causal pass",
          "[kv_cache][attention]") {
  struct Case {
    std::size_t l, h, kvh, d;
  };
  // head_dim 1, 3, 17 and 64; kv_heads = heads, grouped (2, 4) and multi-query (1).
  const Case cases[] = {{300, 4, 4, 64}, {301, 4, 2, 17}, {130, 8, 1, 3},
                        {70, 4, 4, 1},   {129, 6, 3, 15}, {65, 16, 4, 80}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const Sequence s(c.l, c.h, c.kvh, c.d, 100 + 10 * index);
    Options o;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    const auto ref = oracle(s, s.k, s.v, scale);
    for (Path path : kPaths) {
      for (std::size_t chunk : {1, 7, 64, 300}) {
        std::vector<float> by_threads[2];
        for (int t = 0; t < 2; ++t) {
          INFO("L " << c.l << " H " << c.h << " kv_heads " << c.kvh << " D " << c.d << ", chunk "
                    << chunk << ", path " << path_name(path) << ", threads " << kThreads[t]);
          o.path = path;
          o.threads = kThreads[t];
          by_threads[t] = run_chunks(s, chunk, KvStorage::f32, o);
          test::check_close(by_threads[t].data(), ref, "cache attention", kCacheRelTol,
                            kCacheMaxTol);
        }
        INFO("chunk " << chunk << ", path " << path_name(path));
        CHECK(test::same_bits(by_threads[0], by_threads[1]));
      }
    }
    ++index;
  }
}

TEST_CASE("cache attention: a sliding window, token by token and in chunks, equals one pass",
          "[kv_cache][attention][window]") {
  struct Case {
    std::size_t l, h, kvh, d;
  };
  // 1100 tokens: a decode step over several slices of 512 keys, windows that start inside a
  // slice and a block; 8 heads over 1 kv head: chunks of 7 take four passes of the paged kernel,
  // chunks of 300 the gathered path. Window 70 in
  // chunks of 7 (the paged kernel): a key block can lie wholly before the chunk's first token's
  // causal end and wholly inside its window while the last token's window starts within it.
  const Case cases[] = {{1100, 4, 2, 17}, {130, 8, 1, 3}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const Sequence s(c.l, c.h, c.kvh, c.d, 400 + 10 * index++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    for (std::size_t w : {1, 7, 64, 70, 600, 5000}) {
      Options windowed;
      windowed.window = w;
      const auto ref = oracle(s, s.k, s.v, scale, windowed);
      for (Path path : kPaths) {
        for (std::size_t chunk : {1, 7, 300}) {
          std::vector<float> by_threads[2];
          for (int t = 0; t < 2; ++t) {
            INFO("L " << c.l << " H " << c.h << " kv_heads " << c.kvh << " D " << c.d << ", window "
                      << w << ", chunk " << chunk << ", path " << path_name(path) << ", threads "
                      << kThreads[t]);
            Options o;
            o.window = w;
            o.path = path;
            o.threads = kThreads[t];
            by_threads[t] = run_chunks(s, chunk, KvStorage::f32, o);
            test::check_close(by_threads[t].data(), ref, "windowed cache attention", kCacheRelTol,
                              kCacheMaxTol);
          }
          CHECK(test::same_bits(by_threads[0], by_threads[1]));
        }
      }
    }
  }
}

namespace {

// The score modifications that apply over a cache, for h query heads and sequences of l tokens:
// the Options point into the vectors (move-only: a moved vector keeps its buffer).
enum class Mod { alibi, alibi_given, softcap, sinks, all };
constexpr Mod kMods[] = {Mod::alibi, Mod::alibi_given, Mod::softcap, Mod::sinks, Mod::all};
struct CacheVariant {
  std::string name;
  std::vector<float> slopes, sinks;
  Options options;
  CacheVariant(Mod mod, std::size_t h, std::size_t l, std::uint64_t seed) {
    if (mod == Mod::alibi || mod == Mod::all) options.alibi.enabled = true;
    if (mod == Mod::alibi_given) {
      // Slopes of either sign that shrink with the keys' span (a score of hundreds in float is
      // off by more than the tolerance: conditioning, not the code).
      slopes = test::random_normal(h, seed, 0.5f * std::min(1.0f, 33.0f / static_cast<float>(l)));
      options.alibi = Alibi{true, PerHead{slopes.data(), h}};
    }
    if (mod == Mod::softcap) options.softcap = 1.5f;
    if (mod == Mod::all) options.softcap = 2.0f;
    if (mod == Mod::sinks || mod == Mod::all) {
      sinks = test::random_normal(h, seed + 1, 2.0f);
      options.sinks = PerHead{sinks.data(), h};
    }
    const char* names[] = {"ALiBi", "ALiBi, given slopes", "softcap 1.5", "sinks",
                           "softcap 2 + ALiBi + sinks"};
    name = names[static_cast<int>(mod)];
  }
  CacheVariant(CacheVariant&&) = default;
  CacheVariant(const CacheVariant&) = delete;
  CacheVariant& operator=(const CacheVariant&) = delete;
};

}  // namespace

TEST_CASE("cache attention: ALiBi, softcap and sinks, with a window and GQA, equal one pass",
          "[kv_cache][attention][variants]") {
  struct Case {
    std::size_t l, h, kvh, d;
    bool every_mod;  // else the combined one only
  };
  // Lengths 1, 2, 7 and 33 with head_dim 3, 1, 15 and 17, grouped and multi-query heads. 530
  // tokens over 16 heads, for the optimized path: the last decode steps span two slices of 512
  // keys (the sinks join after their merge) and are above the serial limit, so 2 threads split
  // them; only tokens from 460 on are checked (time: the oracle). 24 heads over 1 kv head: decode
  // steps take two paged passes (16 and 8 query heads), chunks of 7 and 64 the gathered path.
  const Case cases[] = {{1, 3, 1, 3, true},   {2, 4, 4, 1, true},      {7, 6, 3, 15, true},
                        {33, 4, 2, 17, true}, {530, 16, 2, 33, false}, {130, 24, 1, 3, false}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const Sequence s(c.l, c.h, c.kvh, c.d, 900 + 10 * index++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    for (Mod mod : kMods) {
      if (!c.every_mod && mod != Mod::all) continue;
      for (std::size_t w : {0, 7}) {
        CacheVariant x(mod, c.h, c.l, 60 + index);
        if (w != 0) x.options.window = w;
        const std::size_t first = c.l > 500 ? 460 : 0;
        const auto ref = oracle(s, s.k, s.v, scale, x.options, first);
        const std::size_t skip = first * c.h * c.d;
        for (Path path : kPaths) {
          if (path == Path::naive && first != 0) continue;
          for (std::size_t chunk : {1, 7, 64}) {
            std::vector<float> by_threads[2];
            for (int t = 0; t < (path == Path::naive ? 1 : 2); ++t) {
              INFO("L " << c.l << " H " << c.h << " kv_heads " << c.kvh << " D " << c.d << ", "
                        << x.name << ", window " << w << ", chunk " << chunk << ", path "
                        << path_name(path) << ", threads " << kThreads[t]);
              Options o = x.options;
              o.path = path;
              o.threads = kThreads[t];
              by_threads[t] = run_chunks(s, chunk, KvStorage::f32, o);
              test::check_close(by_threads[t].data() + skip, ref, "cache attention", kCacheRelTol,
                                kCacheMaxTol);
            }
            if (path == Path::optimized) {
              INFO(x.name << ", window " << w << ", chunk " << chunk);
              CHECK(test::same_bits(by_threads[0], by_threads[1]));
            }
          }
          // Half storage: the kernel's rounding on top of the storage's is as small as f32's.
          if (mod != Mod::all || w != 7) continue;
          for (KvStorage storage : {KvStorage::bf16, KvStorage::f16}) {
            const auto [k, v] = stored(s, storage);
            const auto half_ref = oracle(s, k, v, scale, x.options, first);
            for (std::size_t chunk : {1, 64}) {
              INFO("L " << c.l << " H " << c.h << ", " << x.name << ", window 7, "
                        << kv_storage_name(storage) << ", chunk " << chunk << ", path "
                        << path_name(path));
              Options o = x.options;
              o.path = path;
              test::check_close(run_chunks(s, chunk, storage, o).data() + skip, half_ref,
                                "half storage vs its oracle", kCacheRelTol, kCacheMaxTol);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("cache attention: one query head per kv head decodes as one pass in f32 bf16 and f16",
          "[kv_cache][attention]") {
  // Decoding without grouped heads, where a job of several kv heads runs them two at a time on
  // AVX-512 (each kv head's block a row of one tile): 8 kv heads over 600 tokens make jobs of 4
  // or 2 heads at 1 and 2 threads; head_dim 64 (bf16 read as even and odd halves), 17 and 80
  // (column tails); a last partial block; ALiBi with given slopes, soft-capping and a window
  // (scores changed and hidden per row). Against the double oracle over the values the cache
  // holds, bitwise across thread counts.
  struct Case {
    std::size_t l, h, d;
  };
  const Case cases[] = {{600, 8, 64}, {600, 8, 17}, {200, 8, 80}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const Sequence s(c.l, c.h, c.h, c.d, 700 + 10 * index++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    const std::vector<float> slopes = test::random_normal(c.h, 7, 0.02f);
    for (bool modified : {false, true}) {
      Options o;
      if (modified) {
        o.alibi = Alibi{true, PerHead{slopes.data(), c.h}};
        o.softcap = 2.0f;
        o.window = 100;
      }
      for (KvStorage storage : {KvStorage::f32, KvStorage::bf16, KvStorage::f16}) {
        const auto [k, v] = stored(s, storage);
        const auto ref = oracle(s, k, v, scale, o);
        std::vector<float> by_threads[2];
        for (int t = 0; t < 2; ++t) {
          INFO("L " << c.l << " H " << c.h << " D " << c.d << ", " << kv_storage_name(storage)
                    << (modified ? ", ALiBi + softcap + window" : "") << ", threads "
                    << kThreads[t]);
          o.threads = kThreads[t];
          by_threads[t] = run_chunks(s, 1, storage, o);
          test::check_close(by_threads[t].data(), ref, "one head per kv head", kCacheRelTol,
                            kCacheMaxTol);
        }
        CHECK(test::same_bits(by_threads[0], by_threads[1]));
      }
    }
  }
}

TEST_CASE("cache attention: every row count of the paged tiles, in f32, bf16 and f16",
          "[kv_cache][attention]") {
  // The paged kernel computes a kv head's rows (its query heads x the call's new tokens, up to
  // 16) in tiles of a few rows, per storage type, with whole and partial column tiles (head_dim
  // 64 and 80): query heads per kv head 1 to 8 and 16, chunks of 1, 2 and 3 tokens reach every
  // row count of every tile (larger products take several passes, tested below). Two kv heads, 100
  // tokens (a partial last block). Against the double oracle over the values the cache holds,
  // bitwise across thread counts.
  const std::size_t l = 100, kvh = 2;
  std::size_t index = 0;
  for (std::size_t d : {64, 80}) {
    for (std::size_t group : {1, 2, 3, 4, 5, 6, 7, 8, 16}) {
      const Sequence s(l, group * kvh, kvh, d, 900 + 10 * index++);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      for (KvStorage storage : {KvStorage::f32, KvStorage::bf16, KvStorage::f16}) {
        const auto [k, v] = stored(s, storage);
        const auto ref = oracle(s, k, v, scale);
        for (std::size_t chunk : {1, 2, 3}) {
          std::vector<float> by_threads[2];
          for (int t = 0; t < 2; ++t) {
            INFO("D " << d << " H " << s.h << " kv_heads " << kvh << ", "
                      << kv_storage_name(storage) << ", chunk " << chunk << ", threads "
                      << kThreads[t]);
            Options o;
            o.threads = kThreads[t];
            by_threads[t] = run_chunks(s, chunk, storage, o);
            test::check_close(by_threads[t].data(), ref, "paged tiles", kCacheRelTol, kCacheMaxTol);
          }
          CHECK(test::same_bits(by_threads[0], by_threads[1]));
        }
      }
    }
  }
}

TEST_CASE("cache attention: more rows than one paged pass holds, in several passes",
          "[kv_cache][attention]") {
  // More rows per kv head than the paged kernel's 16 (query heads per kv head x new tokens) take
  // several passes over the cache, up to 8: each over some of the new tokens (every token keeps
  // its causal end and ALiBi position) or some of each kv head's query heads (more than 16, as
  // multi-query models have); more passes gather the sequence. Chunks of 5, 17 and 40 with 4
  // query heads per kv head (2, 5 and 10 passes), of 17, 40 and 130 with 1 (2, 3 and 9), steps
  // of 1, 2, 4 and 5 tokens with 20 (2, 4, 8 and 10) and of 1 and 3 with 32 (2 and 6); plain, and
  // with ALiBi, soft-capping, sinks and a window; f32 and bf16. 1100 tokens with a window of 600:
  // passes over several slices of 512 keys, split between 2 threads (only the last 100 tokens
  // are checked: time, the oracle). Against the double oracle over the values the cache holds,
  // bitwise across thread counts.
  struct Case {
    std::size_t l, h, kvh, d;
    std::vector<std::size_t> chunks;
    std::size_t window, first;  // the modified calls' window; the first token checked
  };
  const Case cases[] = {{90, 8, 2, 17, {5, 17, 40}, 30, 0},
                        {140, 2, 2, 64, {17, 40, 130}, 30, 0},
                        {70, 40, 2, 3, {1, 2, 4, 5}, 30, 0},
                        {70, 32, 1, 16, {1, 3}, 30, 0},
                        {1100, 8, 2, 64, {5, 17}, 600, 1000}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const Sequence s(c.l, c.h, c.kvh, c.d, 300 + 10 * index++);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    for (bool modified : {false, true}) {
      CacheVariant x(Mod::all, c.h, c.l, 40 + index);
      Options o;
      if (modified) {
        o = x.options;
        o.window = c.window;
      }
      for (KvStorage storage : {KvStorage::f32, KvStorage::bf16}) {
        const auto [k, v] = stored(s, storage);
        const auto ref = oracle(s, k, v, scale, o, c.first);
        for (std::size_t chunk : c.chunks) {
          std::vector<float> by_threads[2];
          for (int t = 0; t < 2; ++t) {
            INFO("L " << c.l << " H " << c.h << " kv_heads " << c.kvh << " D " << c.d << ", "
                      << kv_storage_name(storage)
                      << (modified ? ", " + x.name + ", window " + std::to_string(c.window) : "")
                      << ", chunk " << chunk << ", threads " << kThreads[t]);
            o.threads = kThreads[t];
            by_threads[t] = run_chunks(s, chunk, storage, o);
            test::check_close(by_threads[t].data() + c.first * c.h * c.d, ref, "paged passes",
                              kCacheRelTol, kCacheMaxTol);
          }
          CHECK(test::same_bits(by_threads[0], by_threads[1]));
        }
      }
    }
  }
}

TEST_CASE("cache attention: a window bounds the keys read (NaN keys before it never reach out)",
          "[kv_cache][attention][window]") {
  // Tokens [0, 128) hold NaN keys and values. With window 600, tokens from 800 on see keys from
  // 201 on, and the first key block read starts at 192: the NaNs are never read.
  Sequence s(1100, 4, 2, 16, 77);
  std::fill(s.k.begin(), s.k.begin() + 128 * s.kvh * s.d, std::nanf(""));
  std::fill(s.v.begin(), s.v.begin() + 128 * s.kvh * s.d, std::nanf(""));
  const std::size_t w = 600, start = 800;
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  Options windowed;
  windowed.window = w;
  const auto full = oracle(s, s.k, s.v, scale, windowed);
  const std::vector<double> ref(full.begin() + start * s.h * s.d, full.end());
  for (Path path : kPaths) {
    // Decode steps (the paged kernel) and chunks of 50 (the gathered path: 2 x 50 rows).
    for (std::size_t chunk : {1, 50}) {
      INFO("path " << path_name(path) << ", chunk " << chunk);
      KvCache cache(test::cache_config(KvCache::blocks_for(s.l), s.kvh, s.d));
      const SequenceId id = cache.add_sequence();
      Options o;
      o.window = w;
      o.path = path;
      std::vector<float> out(s.l * s.h * s.d);
      for (std::size_t p = 0; p < s.l; p += p < start ? start : chunk) {
        const std::size_t t = p < start ? start : std::min(chunk, s.l - p);
        scaled_dot_product_attention(cache, {id}, {s.q.data() + p * s.h * s.d, 1, t, s.h, s.d},
                                     {s.k.data() + p * s.kvh * s.d, 1, t, s.kvh, s.d},
                                     {s.v.data() + p * s.kvh * s.d, 1, t, s.kvh, s.d},
                                     HeadsView<float>{out.data() + p * s.h * s.d, 1, t, s.h, s.d},
                                     o);
      }
      test::check_close(out.data() + start * s.h * s.d, ref, "after the poisoned keys",
                        kCacheRelTol, kCacheMaxTol);
    }
  }
}

namespace {

// The last token's output on both paths, token by token (the paged decode) and in chunks of 50
// (the gathered tile path), against the oracle's NaN/Inf and values.
// Makes every score of the last token's query of head 0 -inf: a -Inf in its column 3 where every
// key of kv head 0 is positive there.
void last_query_scores_neg_inf(Sequence& s) {
  s.q[((s.l - 1) * s.h + 0) * s.d + 3] = -INFINITY;
  for (std::size_t t = 0; t < s.l; ++t) {
    s.k[t * s.kvh * s.d + 3] = std::abs(s.k[t * s.kvh * s.d + 3]) + 0.1f;
  }
}

void check_last_token(const Sequence& s, Options o, const std::vector<double>& ref) {
  for (Path path : kPaths) {
    for (std::size_t chunk : {std::size_t{1}, std::size_t{50}}) {
      INFO("path " << path_name(path) << ", chunk " << chunk
                   << (o.sinks.data != nullptr ? ", sinks" : ""));
      o.path = path;
      const auto out = run_chunks(s, chunk, KvStorage::f32, o);
      const std::vector<float> got(out.begin() + (s.l - 1) * s.h * s.d, out.end());
      test::check_nonfinite(test::compare_nonfinite(got, ref), "last token");
    }
  }
}

}  // namespace

TEST_CASE("cache attention: a row whose scores are all -inf: NaN, or with sinks 0 x v",
          "[kv_cache][attention][nonfinite]") {
  // The last token's query has a -Inf component where every key of its kv head is positive, so
  // each of its scores is -inf. Without sinks its softmax is 0 / 0: NaN in every column, as in
  // the oracle. With sinks the sink takes all the weight and its output is 0 x v, zeros but NaN
  // in the column where a value it sees is Inf (as in the oracle; not a finite zero).
  Sequence s(150, 2, 1, 8, 91);
  const std::size_t last = s.l - 1, col = 2;
  last_query_scores_neg_inf(s);
  s.v[100 * s.kvh * s.d + col] = INFINITY;
  const std::vector<float> sinks = test::random_normal(s.h, 92);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  for (bool with_sinks : {false, true}) {
    Options o;
    if (with_sinks) o.sinks = PerHead{sinks.data(), s.h};
    const auto ref = oracle(s, s.k, s.v, scale, o, last);  // [1, H, D]
    for (std::size_t h = 0; h < s.h; ++h) {
      for (std::size_t dd = 0; dd < s.d; ++dd) {
        // Head 0: NaN, or with sinks zeros but the value's column; head 1 sees the value with
        // weight: Inf/NaN there.
        CHECK(std::isfinite(ref[h * s.d + dd]) == (dd != col && (h != 0 || with_sinks)));
      }
    }
    check_last_token(s, o, ref);
  }
}

TEST_CASE("cache attention: a NaN key among keys scored -inf makes the row NaN, sinks or not",
          "[kv_cache][attention][nonfinite]") {
  // The last token's query of head 0 has a -Inf component where every key is positive: each of
  // its scores is -inf but that of the NaN key `at`. The paged kernel's running maximum stays
  // -inf, so the NaN must reach the row through its slice's sum; in every slice position.
  for (std::size_t at : {std::size_t{0}, std::size_t{300}, std::size_t{599}}) {
    Sequence s(600, 2, 1, 8, 95);
    const std::size_t last = s.l - 1;
    last_query_scores_neg_inf(s);
    s.k[at * s.kvh * s.d + 5] = NAN;
    const std::vector<float> sinks = test::random_normal(s.h, 96);
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
    for (bool with_sinks : {false, true}) {
      INFO("NaN key " << at);
      Options o;
      if (with_sinks) o.sinks = PerHead{sinks.data(), s.h};
      const auto ref = oracle(s, s.k, s.v, scale, o, last);  // [1, H, D]
      CHECK(std::none_of(ref.begin(), ref.end(), [](double x) { return std::isfinite(x); }));
      check_last_token(s, o, ref);
    }
  }
}

TEST_CASE("cache attention: a key scored -inf in a slice of its own still passes on its NaN",
          "[kv_cache][attention][nonfinite]") {
  // The paged kernel splits a sequence into slices of 512 keys, merged afterwards. Token 512,
  // alone in the second slice, has a +Inf key component where the last token's queries are
  // negative: that slice's scores are all -inf, its log-sum-exp too. Its value's NaN must still
  // reach the output in its column, through the zero weight, as in the oracle.
  Sequence s(513, 2, 1, 8, 93);
  const std::size_t last = s.l - 1, col = 5;
  for (std::size_t h = 0; h < s.h; ++h) {
    float& x = s.q[(last * s.h + h) * s.d + 3];
    x = -std::abs(x) - 0.1f;
  }
  s.k[last * s.kvh * s.d + 3] = INFINITY;
  s.v[last * s.kvh * s.d + col] = NAN;
  const std::vector<float> sinks = test::random_normal(s.h, 94);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  for (bool with_sinks : {false, true}) {
    Options o;
    if (with_sinks) o.sinks = PerHead{sinks.data(), s.h};
    const auto ref = oracle(s, s.k, s.v, scale, o, last);  // [1, H, D]
    for (std::size_t i = 0; i < s.h * s.d; ++i) CHECK(std::isfinite(ref[i]) == (i % s.d != col));
    check_last_token(s, o, ref);
  }
}

TEST_CASE("cache attention: blocks of 128 and 192 tokens give the same results as 64",
          "[kv_cache][attention]") {
  const Sequence s(400, 4, 2, 32, 7);
  Options o;
  for (Path path : kPaths) {
    o.path = path;
    const auto base = run_chunks(s, 37, KvStorage::f32, o, 64);
    for (std::size_t bt : {128, 192}) {
      INFO("block_tokens " << bt << ", path " << path_name(path));
      CHECK(test::same_bits(run_chunks(s, 37, KvStorage::f32, o, bt), base));
    }
  }
}

TEST_CASE("cache attention: query and out as [N, H, T, D] views through a head stride",
          "[kv_cache][attention]") {
  // 2, 5 and 20 new tokens: one pass of the paged kernel, two and five.
  for (const std::size_t t : {2, 5, 20}) {
    const std::size_t h = 8, kvh = 2, d = 16, history = 100;
    const Sequence s(history + t, h, kvh, d, 31);
    // The new tokens' queries, transposed to [H, T, D].
    std::vector<float> qt(h * t * d);
    for (std::size_t i = 0; i < t; ++i) {
      for (std::size_t j = 0; j < h; ++j) {
        std::copy_n(s.q.data() + ((history + i) * h + j) * d, d, qt.data() + (j * t + i) * d);
      }
    }
    for (Path path : kPaths) {
      Options o;
      o.path = path;
      std::vector<float> dense(t * h * d), strided(h * t * d);
      for (int layout = 0; layout < 2; ++layout) {
        KvCache cache(test::cache_config(4, kvh, d));
        const SequenceId id = cache.add_sequence();
        cache.append({id}, {s.k.data(), 1, history, kvh, d}, {s.v.data(), 1, history, kvh, d});
        const ConstHeadsView k{s.k.data() + history * kvh * d, 1, t, kvh, d};
        const ConstHeadsView v{s.v.data() + history * kvh * d, 1, t, kvh, d};
        if (layout == 0) {
          scaled_dot_product_attention(cache, {id}, {s.q.data() + history * h * d, 1, t, h, d}, k,
                                       v, {dense.data(), 1, t, h, d}, o);
        } else {
          scaled_dot_product_attention(cache, {id}, {qt.data(), 1, t, h, d, d, 0, t * d}, k, v,
                                       {strided.data(), 1, t, h, d, d, 0, t * d}, o);
        }
      }
      std::vector<float> back(t * h * d);
      for (std::size_t i = 0; i < t; ++i) {
        for (std::size_t j = 0; j < h; ++j) {
          std::copy_n(strided.data() + (j * t + i) * d, d, back.data() + (i * h + j) * d);
        }
      }
      INFO("path " << path_name(path) << ", T " << t);
      CHECK(test::same_bits(back, dense));
    }
  }
}

TEST_CASE("cache attention: a ragged batch equals each sequence alone", "[kv_cache][attention]") {
  const std::size_t h = 4, kvh = 2, d = 16;
  const std::size_t histories[] = {1, 5, 64, 1000};
  for (Path path : kPaths) {
    for (std::size_t t : {1, 3, 40}) {
      Options o;
      o.path = path;
      o.threads = 2;
      // Each sequence: its history, then T new tokens attended in one batch with the others.
      std::vector<Sequence> seqs;
      for (std::size_t i = 0; i < 4; ++i) seqs.emplace_back(histories[i] + t, h, kvh, d, 50 + i);
      KvCache batch(test::cache_config(40, kvh, d));
      std::vector<SequenceId> ids;
      for (std::size_t i = 0; i < 4; ++i) {
        ids.push_back(batch.add_sequence());
        batch.append({ids[i]}, {seqs[i].k.data(), 1, histories[i], kvh, d},
                     {seqs[i].v.data(), 1, histories[i], kvh, d});
      }
      std::vector<float> q, k, v;
      for (const Sequence& s : seqs) {
        const std::size_t p = s.l - t;
        q.insert(q.end(), s.q.begin() + p * h * d, s.q.end());
        k.insert(k.end(), s.k.begin() + p * kvh * d, s.k.end());
        v.insert(v.end(), s.v.begin() + p * kvh * d, s.v.end());
      }
      std::vector<float> out(4 * t * h * d);
      scaled_dot_product_attention(batch, ids, {q.data(), 4, t, h, d}, {k.data(), 4, t, kvh, d},
                                   {v.data(), 4, t, kvh, d}, {out.data(), 4, t, h, d}, o);
      for (std::size_t i = 0; i < 4; ++i) {
        INFO("path " << path_name(path) << ", T " << t << ", history " << histories[i]);
        const Sequence& s = seqs[i];
        KvCache alone(test::cache_config(20, kvh, d));
        const SequenceId id = alone.add_sequence();
        alone.append({id}, {s.k.data(), 1, histories[i], kvh, d},
                     {s.v.data(), 1, histories[i], kvh, d});
        std::vector<float> single(t * h * d);
        const std::size_t p = histories[i];
        scaled_dot_product_attention(alone, {id}, {s.q.data() + p * h * d, 1, t, h, d},
                                     {s.k.data() + p * kvh * d, 1, t, kvh, d},
                                     {s.v.data() + p * kvh * d, 1, t, kvh, d},
                                     {single.data(), 1, t, h, d}, o);
        const std::vector<float> mine(out.begin() + i * t * h * d,
                                      out.begin() + (i + 1) * t * h * d);
        CHECK(test::same_bits(mine, single));
        CHECK(batch.length(ids[i]) == s.l);
      }
    }
  }
}

TEST_CASE("cache attention: bf16 and f16 storage stay within their stated bounds",
          "[kv_cache][attention]") {
  // The bounds of kv_cache.hpp: relative Frobenius error against the same attention over an
  // f32 cache.
  const std::pair<KvStorage, double> bounds[] = {{KvStorage::bf16, 1e-2}, {KvStorage::f16, 2e-3}};
  const Sequence s(260, 8, 2, 64, 9);
  Options o;
  for (Path path : kPaths) {
    o.path = path;
    const auto f32 = run_chunks(s, 1, KvStorage::f32, o);
    const std::vector<double> f32d(f32.begin(), f32.end());
    for (const auto& [storage, bound] : bounds) {
      for (std::size_t chunk : {1, 64}) {
        const auto half = run_chunks(s, chunk, storage, o);
        const auto c = test::compare(half.data(), f32d.data(), f32d.size());
        INFO(kv_storage_name(storage)
             << ", path " << path_name(path) << ", chunk " << chunk << ": " << c.summary());
        CHECK(c.rel_frobenius <= bound);
        // And the kernel's own rounding on top of the storage's is as small as f32's: against
        // the double oracle over the values the cache holds.
        const auto [k, v] = stored(s, storage);
        test::check_close(half.data(), oracle(s, k, v, 0.125f), "half storage vs its oracle",
                          kCacheRelTol, kCacheMaxTol);
      }
    }
  }
}

TEST_CASE("cache attention: refused calls name the values and leave the cache as it was",
          "[kv_cache][attention][errors]") {
  const std::size_t h = 4, kvh = 2, d = 8;
  KvCache cache(test::cache_config(4, kvh, d));
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  const auto data = test::random_normal(2 * 200 * h * d, 3);
  cache.append({a, b}, {data.data(), 2, 70, kvh, d}, {data.data(), 2, 70, kvh, d});
  std::vector<float> out(2 * 200 * h * d);
  auto heads = [&](std::size_t n, std::size_t t, std::size_t hh, std::size_t dd) {
    return ConstHeadsView{data.data(), n, t, hh, dd};
  };
  auto outv = [&](std::size_t n, std::size_t t, std::size_t hh, std::size_t dd) {
    return HeadsView<float>{out.data(), n, t, hh, dd};
  };
  const auto before = cache.storage_data();
  std::vector<unsigned char> bytes(
      static_cast<const unsigned char*>(before),
      static_cast<const unsigned char*>(before) + cache.storage_bytes());
  auto refused = [&](const std::vector<std::string>& words, auto call) {
    bool threw = false;
    try {
      call();
    } catch (const std::invalid_argument& e) {
      threw = true;
      for (const std::string& w : words) {
        INFO("message: " << e.what());
        CHECK(std::string(e.what()).find(w) != std::string::npos);
      }
    }
    CHECK(threw);
    CHECK(cache.length(a) == 70);
    CHECK(cache.length(b) == 70);
    CHECK(cache.free_blocks() == 0);
    CHECK(std::memcmp(bytes.data(), cache.storage_data(), bytes.size()) == 0);
  };
  Options o;
  for (Path path : kPaths) {
    o.path = path;
    INFO("path " << path_name(path));
    refused({"out of blocks"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 60, h, d), heads(1, 60, kvh, d),
                                   heads(1, 60, kvh, d), outv(1, 60, h, d), o);
    });
    refused({"unknown sequence id 99"}, [&] {
      scaled_dot_product_attention(cache, {99}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, h, d), o);
    });
    refused({"4 heads of head_dim 8", "kv_heads 2"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, 4, d),
                                   heads(1, 1, 4, d), outv(1, 1, h, d), o);
    });
    refused({"query heads H = 3", "kv_heads = 2"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, 3, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, 3, d), o);
    });
    refused({"keys has a zero size"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 0, h, d), heads(1, 0, kvh, d),
                                   heads(1, 0, kvh, d), outv(1, 0, h, d), o);
    });
    refused({"2 sequence ids for a batch of N = 1"}, [&] {
      scaled_dot_product_attention(cache, {a, b}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, h, d), o);
    });
    refused({"query [2, 1, 4, 8] does not match", "[1, 1, 2, 8]"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(2, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(2, 1, h, d), o);
    });
    refused({"query [1, 2, 4, 8] does not match", "[1, 1, 2, 8]"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 2, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 2, h, d), o);
    });
    refused({"out [1, 2, 4, 8] must have the query's shape [1, 1, 4, 8]"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 2, h, d), o);
    });
    refused({"out [1, 1, 2, 8] must have the query's shape [1, 1, 4, 8]"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, 2, d), o);
    });
    refused({"out overlaps an input"}, [&] {
      scaled_dot_product_attention(
          cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d), heads(1, 1, kvh, d),
          HeadsView<float>{const_cast<float*>(data.data()), 1, 1, h, d}, o);
    });
    Options bad = o;
    bad.causal = Causal::top_left;
    refused({"top_left"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, h, d), bad);
    });
    bad = o;
    bad.window = 0;
    refused({"options.window must be >= 1 (unset for no window), got 0"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, h, d), bad);
    });
    // The score modifications that apply over a cache are checked as everywhere else; the
    // options that are tensors over the keys are refused.
    std::vector<float> extra(200 * 200 * 8, 0.0f);
    std::vector<std::uint8_t> padding(200, 0);
    extra[1] = std::nanf("");
    for (const std::string name :
         {"softcap", "alibi", "sinks", "out", "bias", "key_padding", "weights"}) {
      bad = o;
      std::vector<std::string> words;
      if (name == "softcap") {
        bad.softcap = std::nanf("");
        words = {"options.softcap must be finite and > 0 (unset for none), got nan"};
      }
      if (name == "alibi") {
        bad.alibi = Alibi{true, PerHead{extra.data(), 3}};
        words = {"options.alibi.slopes has 3 values, one per query head needs H = 4"};
      }
      if (name == "sinks") {
        bad.sinks = PerHead{extra.data(), h};
        words = {"options.sinks[1] must be finite, got nan"};
      }
      if (name == "out") {  // the sinks are read while out is written
        bad.sinks = PerHead{out.data(), h};
        words = {"out overlaps options.sinks"};
      }
      if (name == "bias") bad.bias = Bias{extra.data(), 1, 1, 1, 71};
      if (name == "key_padding") bad.key_padding = KeyPadding{padding.data(), 1, 71};
      if (name == "weights") bad.weights = AttentionWeights{extra.data(), extra.size(), false};
      if (words.empty()) {
        words = {"options." + name + " is set: attention over a KvCache does not support it",
                 "window, softcap, alibi and sinks do apply"};
      }
      refused(words, [&] {
        scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                     heads(1, 1, kvh, d), outv(1, 1, h, d), bad);
      });
    }
    bad = o;
    bad.threads = -1;
    refused({"options.threads must be in [0, 1024]"}, [&] {
      scaled_dot_product_attention(cache, {a}, heads(1, 1, h, d), heads(1, 1, kvh, d),
                                   heads(1, 1, kvh, d), outv(1, 1, h, d), bad);
    });
  }
}

TEST_CASE("cache attention: every bf16 and f16 value reads back exactly in the kernel",
          "[kv_cache][attention]") {
  // One-hot keys: key j = 30 e_j and query head h = 30 e_h give scores 900 (j == h) and 0, so
  // softmax puts weight exactly 1 on key h and the output of head h is V row h as the kernel
  // converted it. 16 query heads share one K/V head: 16 rows of 64 values per call.
  const std::size_t h = 16, d = 64;
  Options o;
  o.scale = 1.0f;
  for (KvStorage storage : {KvStorage::bf16, KvStorage::f16}) {
    auto to_float = [&](std::uint16_t x) {
      return storage == KvStorage::bf16 ? detail::bf16_to_float(x) : detail::f16_to_float(x);
    };
    std::vector<float> finite, special;
    for (std::uint32_t x = 0; x < 0x10000u; ++x) {
      const float f = to_float(static_cast<std::uint16_t>(x));
      (std::isfinite(f) ? finite : special).push_back(f);
    }
    finite.resize((finite.size() + h * d - 1) / (h * d) * (h * d), 0.0f);
    std::vector<float> keys(h * d, 0.0f), query(h * d, 0.0f), zeros(d, 0.0f);
    for (std::size_t j = 0; j < h; ++j) keys[j * d + j] = query[j * d + j] = 30.0f;
    std::size_t mismatches = 0;
    for (std::size_t first = 0; first < finite.size(); first += h * d) {
      KvCache cache(test::cache_config(1, 1, d, storage));
      const SequenceId id = cache.add_sequence();
      cache.append({id}, {keys.data(), 1, h, 1, d}, {finite.data() + first, 1, h, 1, d});
      std::vector<float> out(h * d);
      scaled_dot_product_attention(cache, {id}, {query.data(), 1, 1, h, d},
                                   {zeros.data(), 1, 1, 1, d}, {zeros.data(), 1, 1, 1, d},
                                   {out.data(), 1, 1, h, d}, o);
      // Exact; -0 comes out as +0 (0 + 1 x -0), and a float subnormal (a bf16 below 2^-126)
      // as 0: the kernels run with denormals flushed.
      for (std::size_t i = 0; i < h * d; ++i) {
        const float want = finite[first + i];
        mismatches += !(out[i] == want || (std::fabs(want) < FLT_MIN && out[i] == 0.0f));
      }
    }
    // Infinities and NaNs, one key and the new token with equal scores: 0.5 v + 0.5 x 0 keeps
    // the sign of an infinity and a NaN a NaN.
    special.resize((special.size() + d - 1) / d * d, NAN);
    for (std::size_t first = 0; first < special.size(); first += d) {
      KvCache cache(test::cache_config(1, 1, d, storage));
      const SequenceId id = cache.add_sequence();
      cache.append({id}, {zeros.data(), 1, 1, 1, d}, {special.data() + first, 1, 1, 1, d});
      std::vector<float> out(d);
      scaled_dot_product_attention(cache, {id}, {zeros.data(), 1, 1, 1, d},
                                   {zeros.data(), 1, 1, 1, d}, {zeros.data(), 1, 1, 1, d},
                                   {out.data(), 1, 1, 1, d}, o);
      for (std::size_t i = 0; i < d; ++i) {
        const float want = special[first + i];
        mismatches += std::isnan(want) ? !std::isnan(out[i]) : out[i] != want;
      }
    }
    INFO("storage " << kv_storage_name(storage));
    CHECK(mismatches == 0);
  }
}
