// KvCache's storage: append and read back in every element type, block accounting for ragged
// sequences, fork with copy-on-write, release and truncate, and every refused call leaving the
// cache exactly as it was (bytes, lengths, free blocks, sequences).
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.hpp"
#include "half.hpp"
#include "kv_cache_impl.hpp"

using namespace simdattn;

namespace {

constexpr KvStorage kStorages[] = {KvStorage::f32, KvStorage::bf16, KvStorage::f16};

// What the cache returns for a float after storing it.
float stored(float x, KvStorage storage) {
  switch (storage) {
    case KvStorage::f32:
      return x;
    case KvStorage::bf16:
      return detail::bf16_to_float(detail::float_to_bf16(x));
    case KvStorage::f16:
      return detail::f16_to_float(detail::float_to_f16(x));
  }
  return x;
}

// One sequence's tokens as the test wrote them, [T, heads, d] each.
struct Tokens {
  std::vector<float> keys, values;
};

// Everything a caller can observe about a cache.
struct Snapshot {
  std::vector<unsigned char> bytes;
  std::vector<SequenceId> ids;
  std::vector<std::size_t> lengths;
  std::size_t free_blocks = 0;
  bool operator==(const Snapshot& o) const {
    return bytes == o.bytes && ids == o.ids && lengths == o.lengths && free_blocks == o.free_blocks;
  }
};

Snapshot snapshot(const KvCache& cache) {
  Snapshot s;
  const auto* p = static_cast<const unsigned char*>(cache.storage_data());
  s.bytes.assign(p, p + cache.storage_bytes());
  s.ids = cache.sequences();
  for (SequenceId id : s.ids) s.lengths.push_back(cache.length(id));
  s.free_blocks = cache.free_blocks();
  return s;
}

// Appends T random tokens to each of `ids` and records them in `tokens`.
void append_random(KvCache& cache, const std::vector<SequenceId>& ids, std::size_t t,
                   std::vector<Tokens*> tokens, std::uint64_t seed) {
  const std::size_t h = cache.kv_heads(), d = cache.head_dim(), n = ids.size();
  const auto k = test::random_normal(n * t * h * d, seed);
  const auto v = test::random_normal(n * t * h * d, seed + 1);
  cache.append(ids, {k.data(), n, t, h, d}, {v.data(), n, t, h, d});
  for (std::size_t b = 0; b < n; ++b) {
    const std::size_t row = t * h * d;
    tokens[b]->keys.insert(tokens[b]->keys.end(), k.begin() + b * row, k.begin() + (b + 1) * row);
    tokens[b]->values.insert(tokens[b]->values.end(), v.begin() + b * row,
                             v.begin() + (b + 1) * row);
  }
}

// The sequence reads back as `tokens` converted to the storage type, bit for bit.
void check_contents(const KvCache& cache, SequenceId id, const Tokens& tokens) {
  const std::size_t len = cache.length(id), hd = cache.kv_heads() * cache.head_dim();
  REQUIRE(tokens.keys.size() == len * hd);
  std::vector<float> k(len * hd), v(len * hd);
  cache.read(id, 0, len, k.data(), v.data());
  std::size_t key_mismatches = 0, value_mismatches = 0;
  for (std::size_t i = 0; i < len * hd; ++i) {
    const float ek = stored(tokens.keys[i], cache.storage());
    const float ev = stored(tokens.values[i], cache.storage());
    key_mismatches += std::memcmp(&k[i], &ek, sizeof(float)) != 0;
    value_mismatches += std::memcmp(&v[i], &ev, sizeof(float)) != 0;
  }
  INFO("sequence " << id << ", length " << len << ", storage " << kv_storage_name(cache.storage()));
  CHECK(key_mismatches == 0);
  CHECK(value_mismatches == 0);
}

// Runs `call`, which must throw std::invalid_argument whose message contains every one of
// `words`, and checks that the cache is exactly as before.
template <class Call>
void check_refused(KvCache& cache, const std::vector<std::string>& words, Call call) {
  const Snapshot before = snapshot(cache);
  bool threw = false;
  try {
    call();
  } catch (const std::invalid_argument& e) {
    threw = true;
    const std::string what = e.what();
    for (const std::string& w : words) {
      INFO("message: " << what);
      CHECK(what.find(w) != std::string::npos);
    }
  }
  CHECK(threw);
  CHECK(snapshot(cache) == before);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("f16c"))) std::uint16_t f16c_round(float x) {
  return static_cast<std::uint16_t>(
      _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT), 0));
}
#endif

}  // namespace

TEST_CASE("kv cache: half conversions round to nearest even, as F16C does", "[kv_cache]") {
  // Every half and bfloat16 value survives the trip through float.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto x = static_cast<std::uint16_t>(h);
    const bool f16_nan = (x & 0x7c00u) == 0x7c00u && (x & 0x3ffu) != 0;
    if (!f16_nan) REQUIRE(detail::float_to_f16(detail::f16_to_float(x)) == x);
    const bool bf16_nan = (x & 0x7f80u) == 0x7f80u && (x & 0x7fu) != 0;
    if (!bf16_nan) REQUIRE(detail::float_to_bf16(detail::bf16_to_float(x)) == x);
  }
  // Ties and edges, by hand.
  CHECK(detail::float_to_f16(65504.0f) == 0x7bffu);
  CHECK(detail::float_to_f16(65519.99f) == 0x7bffu);
  CHECK(detail::float_to_f16(65520.0f) == 0x7c00u);  // the tie rounds to even: infinity
  CHECK(detail::float_to_f16(-1e10f) == 0xfc00u);
  CHECK(detail::float_to_f16(std::ldexp(1.0f, -24)) == 0x0001u);
  CHECK(detail::float_to_f16(std::ldexp(1.0f, -25)) == 0x0000u);  // tie to even: zero
  CHECK(detail::float_to_f16(std::ldexp(1.5f, -25)) == 0x0001u);
  CHECK(detail::float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00u);  // tie to even
  CHECK(detail::float_to_f16(1.0f + std::ldexp(3.0f, -11)) == 0x3c02u);  // tie to even
  CHECK(detail::float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80u);
  CHECK(detail::float_to_bf16(1.0f + std::ldexp(3.0f, -8)) == 0x3f82u);
  CHECK(detail::float_to_bf16(3.4e38f) == 0x7f80u);  // rounds past the largest bfloat16
  CHECK(std::isnan(detail::f16_to_float(detail::float_to_f16(NAN))));
  CHECK(std::isnan(detail::bf16_to_float(detail::float_to_bf16(NAN))));
  // Every midpoint between neighbouring finite values (subnormals and the step to infinity
  // included) goes to the even one of the two, either sign; a float either side of it goes to
  // the nearer one.
  std::size_t wrong = 0;
  auto check_midpoint = [&](float below, float mid, float above, std::uint16_t lo,
                            std::uint16_t (*convert)(float)) {
    const std::uint16_t even = (lo & 1u) == 0 ? lo : static_cast<std::uint16_t>(lo + 1);
    const auto sign = static_cast<std::uint16_t>(0x8000u);
    wrong += convert(mid) != even;
    wrong += convert(-mid) != (even | sign);
    wrong += convert(std::nextafter(mid, below)) != lo;
    wrong += convert(std::nextafter(mid, above)) != lo + 1;
  };
  for (std::uint16_t lo = 0; lo < 0x7c00u; ++lo) {
    const float a = detail::f16_to_float(lo);
    const float b =
        lo == 0x7bffu ? 65536.0f : detail::f16_to_float(static_cast<std::uint16_t>(lo + 1));
    check_midpoint(a, a + (b - a) / 2, b, lo, detail::float_to_f16);
  }
  for (std::uint16_t lo = 0; lo < 0x7f80u; ++lo) {
    // The float 0x8000 above a bfloat16's bits is the midpoint to the next one.
    const float mid = detail::bits_float(static_cast<std::uint32_t>(lo) << 16 | 0x8000u);
    check_midpoint(0.0f, mid, INFINITY, lo, detail::float_to_bf16);
  }
  CHECK(wrong == 0);
  // Random floats of every magnitude against the hardware, where the CPU has F16C.
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("f16c")) {
    detail::Random rng(11);
    std::size_t mismatches = 0;
    for (int i = 0; i < 200000; ++i) {
      const auto bits = static_cast<std::uint32_t>(rng.next());
      const float f = detail::bits_float(bits);
      if (std::isnan(f)) continue;
      mismatches += f16c_round(f) != detail::float_to_f16(f);
    }
    CHECK(mismatches == 0);
  }
#endif
}

TEST_CASE("kv cache: append and read back in every storage type, ragged sequences", "[kv_cache]") {
  for (KvStorage storage : kStorages) {
    for (std::size_t d : {1, 3, 17, 64}) {
      INFO("storage " << kv_storage_name(storage) << ", head_dim " << d);
      KvCache cache(test::cache_config(40, 3, d, storage));
      CHECK(cache.free_blocks() == 40);
      const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
      const SequenceId c = cache.add_sequence();
      CHECK(cache.length(a) == 0);
      Tokens ta, tb, tc;
      // Lengths 1, 5, 64 and 1000 grow side by side, in chunks that cross block edges.
      append_random(cache, {a, b, c}, 1, {&ta, &tb, &tc}, 1);
      append_random(cache, {b, c}, 4, {&tb, &tc}, 2);
      append_random(cache, {c}, 59, {&tc}, 3);
      const SequenceId e = cache.add_sequence();
      Tokens te;
      for (std::size_t chunk : {1, 7, 64, 300, 628}) append_random(cache, {e}, chunk, {&te}, chunk);
      CHECK(cache.length(a) == 1);
      CHECK(cache.length(b) == 5);
      CHECK(cache.length(c) == 64);
      CHECK(cache.length(e) == 1000);
      CHECK(cache.free_blocks() == 40 - (1 + 1 + 1 + 16));
      check_contents(cache, a, ta);
      check_contents(cache, b, tb);
      check_contents(cache, c, tc);
      check_contents(cache, e, te);
      // A range in the middle, across a block edge.
      std::vector<float> k(10 * 3 * d), v(10 * 3 * d);
      cache.read(e, 60, 10, k.data(), v.data());
      CHECK(k[0] == stored(te.keys[60 * 3 * d], storage));
      CHECK(v.back() == stored(te.values[70 * 3 * d - 1], storage));
      cache.release(e);
      CHECK(cache.free_blocks() == 40 - 3);
      CHECK_FALSE(cache.contains(e));
      CHECK(cache.sequences() == std::vector<SequenceId>{a, b, c});
    }
  }
}

TEST_CASE("kv cache: strided views, and rows padded with zeros", "[kv_cache]") {
  // Keys and values as the module produces them: slices of one [N, T, 3E] buffer.
  const std::size_t h = 2, d = 5, t = 3, e = h * d;
  const auto qkv = test::random_normal(2 * t * 3 * e, 4);
  KvCache cache(test::cache_config(4, h, d, KvStorage::f16, 128));
  const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  cache.append({b, a}, {qkv.data() + e, 2, t, h, d, 3 * e, t * 3 * e},
               {qkv.data() + 2 * e, 2, t, h, d, 3 * e, t * 3 * e});
  std::vector<float> k(t * e), v(t * e);
  cache.read(a, 0, t, k.data(), v.data());
  for (std::size_t i = 0; i < t; ++i) {
    for (std::size_t j = 0; j < e; ++j) {
      CHECK(k[i * e + j] == stored(qkv[(t + i) * 3 * e + e + j], KvStorage::f16));
      CHECK(v[i * e + j] == stored(qkv[(t + i) * 3 * e + 2 * e + j], KvStorage::f16));
    }
  }
  // Value rows are padded to 16 elements, and only the head_dim elements of each were written.
  const auto& impl = detail::KvCacheAccess::impl(cache, "test");
  std::size_t nonzero_padding = 0;
  for (std::uint32_t b = 0; b < 4; ++b) {
    for (std::size_t hh = 0; hh < h; ++hh) {
      const auto* p = reinterpret_cast<const std::uint16_t*>(impl.block(b) + impl.value_offset(hh));
      for (std::size_t i = 0; i < 128 * 16; ++i) nonzero_padding += i % 16 >= d && p[i] != 0;
    }
  }
  CHECK(impl.row_elems == 16);
  CHECK(nonzero_padding == 0);
}

TEST_CASE("kv cache: fork shares blocks, copy-on-write of a shared partial block", "[kv_cache]") {
  for (KvStorage storage : kStorages) {
    INFO("storage " << kv_storage_name(storage));
    KvCache cache(test::cache_config(10, 2, 8, storage));
    const SequenceId parent = cache.add_sequence();
    Tokens tp;
    append_random(cache, {parent}, 100, {&tp}, 5);  // 2 blocks, the second partly filled
    CHECK(cache.free_blocks() == 8);
    const SequenceId child = cache.fork(parent);
    CHECK(cache.free_blocks() == 8);  // shared, nothing copied
    CHECK(cache.length(child) == 100);
    check_contents(cache, child, tp);
    Tokens tc = tp;
    append_random(cache, {child}, 1, {&tc}, 6);  // copies the shared partial block only
    CHECK(cache.free_blocks() == 7);
    check_contents(cache, parent, tp);
    check_contents(cache, child, tc);
    append_random(cache, {parent}, 30, {&tp}, 7);  // the parent's last block is its own again
    CHECK(cache.free_blocks() == 6);
    check_contents(cache, parent, tp);
    check_contents(cache, child, tc);
    // A fork at a block edge copies nothing on append: the new tokens start a new block.
    const SequenceId edge = cache.add_sequence();
    Tokens te;
    append_random(cache, {edge}, 64, {&te}, 8);
    const SequenceId edge_child = cache.fork(edge);
    Tokens tec = te;
    const std::size_t free_before = cache.free_blocks();
    append_random(cache, {edge_child}, 1, {&tec}, 9);
    CHECK(cache.free_blocks() == free_before - 1);
    check_contents(cache, edge, te);
    check_contents(cache, edge_child, tec);
    // Releasing the parent keeps the child's shared blocks.
    cache.release(parent);
    check_contents(cache, child, tc);
    cache.release(child);
    cache.release(edge);
    cache.release(edge_child);
    CHECK(cache.free_blocks() == 10);
    CHECK(cache.sequences().empty());
  }
}

TEST_CASE("kv cache: holders of a shared block appending in one call copy it once per other holder",
          "[kv_cache]") {
  for (KvStorage storage : kStorages) {
    INFO("storage " << kv_storage_name(storage));
    // A prompt of 100 tokens (blocks 0 and 1, the second partly filled) and two forks of it: three
    // holders of both blocks.
    KvCache cache(test::cache_config(4, 2, 3, storage));
    const SequenceId prompt = cache.add_sequence();
    Tokens tp;
    append_random(cache, {prompt}, 100, {&tp}, 20);
    const SequenceId a = cache.fork(prompt), b = cache.fork(prompt);
    Tokens ta = tp, tb = tp;
    // One free block: two of the holders need a copy each (the third keeps the block), and all
    // three need two (one of them would write in place).
    const SequenceId filler = cache.add_sequence();
    Tokens tf;
    append_random(cache, {filler}, 64, {&tf}, 21);
    REQUIRE(cache.free_blocks() == 1);
    const auto k = test::random_normal(3 * 2 * 3, 22);
    check_refused(cache, {"needs 2 free blocks", "has 1 free of 4"}, [&] {
      cache.append({a, b}, {k.data(), 2, 1, 2, 3}, {k.data(), 2, 1, 2, 3});
    });
    check_refused(cache, {"needs 2 free blocks", "has 1 free of 4"}, [&] {
      cache.append({prompt, a, b}, {k.data(), 3, 1, 2, 3}, {k.data(), 3, 1, 2, 3});
    });
    // Two free blocks: all three append in one call, two copying the shared block and one (the
    // longest; here they are equally long) writing into it in place.
    cache.release(filler);
    REQUIRE(cache.free_blocks() == 2);
    append_random(cache, {prompt, a, b}, 1, {&tp, &ta, &tb}, 23);
    CHECK(cache.free_blocks() == 0);
    check_contents(cache, prompt, tp);
    check_contents(cache, a, ta);
    check_contents(cache, b, tb);
    // Each last block is its own now: the next token of all three takes no block.
    append_random(cache, {prompt, a, b}, 1, {&tp, &ta, &tb}, 24);
    CHECK(cache.free_blocks() == 0);
    check_contents(cache, prompt, tp);
    check_contents(cache, a, ta);
    check_contents(cache, b, tb);
    cache.release(prompt);
    cache.release(a);
    cache.release(b);
    CHECK(cache.free_blocks() == 4);
  }
}

TEST_CASE("kv cache: truncate and clear return blocks", "[kv_cache]") {
  KvCache cache(test::cache_config(6, 1, 4));
  const SequenceId a = cache.add_sequence();
  Tokens ta;
  append_random(cache, {a}, 200, {&ta}, 10);
  CHECK(cache.free_blocks() == 2);
  const SequenceId b = cache.fork(a);
  cache.truncate(b, 65);
  CHECK(cache.length(b) == 65);
  CHECK(cache.free_blocks() == 2);  // a still holds every block
  Tokens tb;
  tb.keys.assign(ta.keys.begin(), ta.keys.begin() + 65 * 4);
  tb.values.assign(ta.values.begin(), ta.values.begin() + 65 * 4);
  append_random(cache, {b}, 3, {&tb}, 11);  // block 1 is shared and partial: copied
  CHECK(cache.free_blocks() == 1);
  check_contents(cache, a, ta);
  check_contents(cache, b, tb);
  cache.truncate(a, 0);
  CHECK(cache.length(a) == 0);
  CHECK(cache.free_blocks() == 4);  // b keeps block 0
  cache.clear();
  CHECK(cache.free_blocks() == 6);
  CHECK(cache.sequences().empty());
  CHECK_FALSE(cache.contains(b));
}

TEST_CASE("kv cache: refused calls name the values and leave the cache as it was",
          "[kv_cache][errors]") {
  for (KvStorage storage : kStorages) {
    INFO("storage " << kv_storage_name(storage));
    const std::size_t h = 2, d = 3;
    KvCache cache(test::cache_config(4, h, d, storage));
    const SequenceId a = cache.add_sequence(), b = cache.add_sequence();
    Tokens ta, tb;
    append_random(cache, {a, b}, 70, {&ta, &tb}, 12);  // 2 blocks each: the pool is full
    const SequenceId c = cache.fork(a);
    const auto k = test::random_normal(2 * 100 * h * d, 13);
    const auto v = test::random_normal(2 * 100 * h * d, 14);
    auto kv = [&](std::size_t n, std::size_t t, std::size_t heads = 2, std::size_t dim = 3) {
      return ConstHeadsView{k.data(), n, t, heads, dim};
    };
    auto vv = [&](std::size_t n, std::size_t t, std::size_t heads = 2, std::size_t dim = 3) {
      return ConstHeadsView{v.data(), n, t, heads, dim};
    };
    // Out of blocks: the fork's shared partial block would need a copy.
    check_refused(cache, {"out of blocks", "needs 1", "0 free of 4"},
                  [&] { cache.append({c}, kv(1, 1), vv(1, 1)); });
    cache.release(b);  // 2 free blocks now
    // The first sequence would fit (it writes into the shared block in place and takes a new
    // one), the second not (a copy of the shared block and a new one): nothing is appended to
    // either.
    check_refused(cache, {"out of blocks", "needs 3", "2 free of 4"}, [&] {
      cache.append({a, c}, kv(2, 60), vv(2, 60));
    });
    check_refused(cache, {"unknown sequence id " + std::to_string(b)}, [&] {
      cache.append({a, b}, kv(2, 1), vv(2, 1));
    });
    check_refused(cache, {"unknown sequence id 12345"},
                  [&] { cache.append({12345}, kv(1, 1), vv(1, 1)); });
    check_refused(cache, {"sequence id " + std::to_string(a) + " appears twice"}, [&] {
      cache.append({a, a}, kv(2, 1), vv(2, 1));
    });
    check_refused(cache, {"4 heads", "kv_heads 2"},
                  [&] { cache.append({a}, kv(1, 1, 4), vv(1, 1, 4)); });
    check_refused(cache, {"head_dim 6", "head_dim 3"},
                  [&] { cache.append({a}, kv(1, 1, 2, 6), vv(1, 1, 2, 6)); });
    check_refused(cache, {"keys has a zero size", "[1, 0, 2, 3]"},
                  [&] { cache.append({a}, kv(1, 0), vv(1, 0)); });
    check_refused(cache, {"2 sequence ids for a batch of N = 1"}, [&] {
      cache.append({a, c}, kv(1, 1), vv(1, 1));
    });
    check_refused(cache, {"1 sequence ids for a batch of N = 2"},
                  [&] { cache.append({a}, kv(2, 1), vv(2, 1)); });
    check_refused(cache, {"must have the same shape", "[1, 2, 2, 3]", "[1, 1, 2, 3]"},
                  [&] { cache.append({a}, kv(1, 2), vv(1, 1)); });
    check_refused(cache, {"values.data is null"}, [&] {
      cache.append({a}, kv(1, 1), ConstHeadsView{nullptr, 1, 1, 2, 3});
    });
    check_refused(cache, {"unknown sequence id " + std::to_string(b)}, [&] { cache.fork(b); });
    check_refused(cache, {"unknown sequence id " + std::to_string(b)}, [&] { cache.release(b); });
    check_refused(cache, {"length 71 exceeds", "length 70"}, [&] { cache.truncate(a, 71); });
    std::vector<float> out(100 * h * d);
    check_refused(cache, {"tokens [69, 69 + 2)", "length 70"},
                  [&] { cache.read(a, 69, 2, out.data(), out.data()); });
    check_refused(cache, {"keys is null"}, [&] { cache.read(a, 0, 1, nullptr, out.data()); });
    check_refused(cache, {"values is null"}, [&] { cache.read(a, 0, 1, out.data(), nullptr); });
    const std::vector<float> out_before = out;
    check_refused(cache, {"keys and values overlap: each takes " + std::to_string(2 * h * d)},
                  [&] { cache.read(a, 0, 2, out.data() + 2 * h * d - 1, out.data()); });
    CHECK(out == out_before);
    cache.read(a, 0, 2, out.data() + 2 * h * d, out.data());  // adjacent: fine
    check_refused(cache, {"unknown sequence id"}, [&] { cache.length(b); });
    check_contents(cache, a, ta);
    check_contents(cache, c, ta);
  }
  for (const auto& [cfg, word] : std::vector<std::pair<KvCacheConfig, std::string>>{
           {test::cache_config(0, 1, 1), "config.blocks must be > 0"},
           {test::cache_config(1, 0, 1), "config.kv_heads must be > 0"},
           {test::cache_config(1, 1, 0), "config.head_dim must be > 0"},
           {test::cache_config(1, 1, 1, KvStorage::f32, 0), "multiple of 64, got 0"},
           {test::cache_config(1, 1, 1, KvStorage::f32, 100), "multiple of 64, got 100"},
           {test::cache_config(1, 1, 1, static_cast<KvStorage>(3)),
            "config.storage is not a KvStorage value (3)"},
           {test::cache_config(4294967295, 1, 1), "config.blocks (4294967295) exceeds 4294967294"},
           {test::cache_config(std::size_t(1) << 31, 64, std::size_t(1) << 30), "overflows"}}) {
    INFO(word);
    CHECK_THROWS_WITH(KvCache(cfg), Catch::Contains(word));
  }
}

TEST_CASE("kv cache: an undone append restores sequences and the free list", "[kv_cache]") {
  KvCache cache(test::cache_config(8, 1, 4, KvStorage::bf16));
  auto& impl = detail::KvCacheAccess::impl(cache, "test");
  const SequenceId a = cache.add_sequence();
  Tokens ta;
  append_random(cache, {a}, 70, {&ta}, 15);
  const SequenceId b = cache.fork(a);
  const SequenceId c = cache.add_sequence();
  const std::vector<std::uint32_t> free_before = impl.free;
  const auto blocks_a = impl.sequences[a].blocks, blocks_b = impl.sequences[b].blocks;
  const auto k = test::random_normal(2 * 130 * 4, 16);
  // b's shared partial block is copied, both sequences take new blocks.
  auto plan =
      detail::plan_append("test", impl, {b, c}, {k.data(), 2, 130, 1, 4}, {k.data(), 2, 130, 1, 4});
  detail::commit_append(impl, plan);
  CHECK(cache.length(b) == 200);
  CHECK(impl.sequences[b].blocks[1] != blocks_b[1]);
  detail::undo_append(impl, plan.undo);
  CHECK(cache.length(b) == 70);
  CHECK(cache.length(c) == 0);
  CHECK(impl.free == free_before);
  CHECK(impl.sequences[a].blocks == blocks_a);
  CHECK(impl.sequences[b].blocks == blocks_b);
  CHECK(impl.refs[blocks_a[1]] == 2);
  check_contents(cache, a, ta);
  check_contents(cache, b, ta);
}
