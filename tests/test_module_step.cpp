// MultiHeadAttention::step with a KvCache: token-by-token decoding and prefill in chunks of 1, 7,
// 64 and 300 tokens agree with one causal forward over the whole sequence (the double oracle,
// relative error <= 1e-6, bitwise across thread counts), for kv_heads = heads, grouped and
// multi-query modules, f32 and half storage, with ALiBi, soft-capping, sinks and a window; ragged
// batches equal each sequence alone; refused calls leave the cache as it was. CTest runs this
// once per ISA.
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

constexpr int kThreads[] = {1, 2};
// Against the double oracle: the module's projections and attention over an f32 cache.
constexpr double kStepRelTol = 1e-6;
constexpr double kStepMaxTol = 1e-5;

// Runs x [1, L, E] through a fresh cache in chunks of `chunk` tokens; returns out [1, L, E].
std::vector<float> step_chunks(const MultiHeadAttention& m, const Tensor& x, std::size_t chunk,
                               const Options& o, KvStorage storage = KvStorage::f32) {
  const std::size_t l = x.l(), e = x.e();
  KvCache cache(test::cache_config(KvCache::blocks_for(l), m.kv_heads(), m.head_dim(), storage));
  const SequenceId id = cache.add_sequence();
  std::vector<float> out(l * e);
  for (std::size_t p = 0; p < l; p += chunk) {
    const std::size_t t = std::min(chunk, l - p);
    m.step(cache, {id}, {x.data() + p * e, 1, t, e}, {out.data() + p * e, 1, t, e}, o);
  }
  REQUIRE(cache.length(id) == l);
  return out;
}

MultiHeadAttention module_with_biases(std::size_t e, std::size_t heads, std::size_t kv_heads,
                                      std::uint64_t seed) {
  MultiHeadAttention m(e, heads, KvHeads{kv_heads}, seed);
  for (Projection p : {Projection::query, Projection::key, Projection::value}) {
    m.set_bias(p, test::random_normal(m.weight(p).size() / e, seed + static_cast<int>(p), 0.1f));
  }
  return m;
}

}  // namespace

TEST_CASE("module step: token by token and chunked prefill equal one causal forward",
          "[module][kv_cache]") {
  struct Case {
    std::size_t e, heads, kv_heads, l;
    bool biases;
  };
  const Case cases[] = {{64, 4, 4, 300, false},
                        {64, 4, 2, 301, true},
                        {48, 8, 1, 130, false},
                        {51, 3, 3, 70, true},  // head_dim 17
                        {32, 16, 4, 129, false}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const MultiHeadAttention m =
        c.biases ? module_with_biases(c.e, c.heads, c.kv_heads, 10 + index)
                 : MultiHeadAttention(c.e, c.heads, KvHeads{c.kv_heads}, 10 + index);
    const Tensor x(1, c.l, c.e, test::random_normal(c.l * c.e, 20 + index));
    Options causal;
    causal.causal = Causal::top_left;
    const auto ref = test::oracle_forward(m, x, x, x, {}, causal);
    for (Path path : kPaths) {
      for (std::size_t chunk : {1, 7, 64, 300}) {
        std::vector<float> by_threads[2];
        for (int t = 0; t < 2; ++t) {
          INFO("E " << c.e << " heads " << c.heads << " kv_heads " << c.kv_heads << " L " << c.l
                    << ", chunk " << chunk << ", path " << path_name(path) << ", threads "
                    << kThreads[t]);
          Options o;
          o.path = path;
          o.threads = kThreads[t];
          by_threads[t] = step_chunks(m, x, chunk, o);
          test::check_close(by_threads[t].data(), ref, "step", kStepRelTol, kStepMaxTol);
        }
        INFO("chunk " << chunk << ", path " << path_name(path));
        CHECK(test::same_bits(by_threads[0], by_threads[1]));
      }
    }
    ++index;
  }
}

TEST_CASE("module step: ALiBi, softcap and sinks, with a window and GQA, equal one forward",
          "[module][kv_cache][variants]") {
  struct Case {
    std::size_t e, heads, kv_heads, l, window;  // window 0: none
  };
  // head_dim 16, 17 and 3; lengths 33, 7 and 130; kv_heads = heads, grouped, multi-query.
  const Case cases[] = {
      {64, 4, 2, 33, 0}, {51, 3, 3, 7, 0}, {48, 16, 1, 130, 7}, {64, 4, 4, 33, 7}};
  std::size_t index = 0;
  for (const Case& c : cases) {
    const MultiHeadAttention m = module_with_biases(c.e, c.heads, c.kv_heads, 40 + index);
    const Tensor x(1, c.l, c.e, test::random_normal(c.l * c.e, 50 + index));
    const auto sinks = test::random_normal(c.heads, 60 + index, 2.0f);
    ++index;
    for (int mod = 0; mod < 4; ++mod) {
      // ALiBi, softcap, sinks, and the three together.
      Options v;
      if (mod == 0 || mod == 3) v.alibi.enabled = true;
      if (mod == 1 || mod == 3) v.softcap = 1.5f;
      if (mod == 2 || mod == 3) v.sinks = PerHead{sinks.data(), c.heads};
      if (c.window != 0) v.window = c.window;
      Options causal = v;
      causal.causal = Causal::top_left;
      const auto ref = test::oracle_forward(m, x, x, x, {}, causal);
      for (Path path : kPaths) {
        for (std::size_t chunk : {1, 7, 64}) {
          std::vector<float> by_threads[2];
          for (int t = 0; t < 2; ++t) {
            INFO("E " << c.e << " heads " << c.heads << " kv_heads " << c.kv_heads << " L " << c.l
                      << ", window " << c.window << ", variant " << mod << ", chunk " << chunk
                      << ", path " << path_name(path) << ", threads " << kThreads[t]);
            Options o = v;
            o.path = path;
            o.threads = kThreads[t];
            by_threads[t] = step_chunks(m, x, chunk, o);
            test::check_close(by_threads[t].data(), ref, "step", kStepRelTol, kStepMaxTol);
          }
          CHECK(test::same_bits(by_threads[0], by_threads[1]));
        }
      }
    }
  }
}

TEST_CASE("module step: a ragged batch equals each sequence alone", "[module][kv_cache]") {
  const std::size_t e = 32, heads = 4, kv_heads = 2;
  const MultiHeadAttention m(e, heads, KvHeads{kv_heads}, 3);
  const std::size_t histories[] = {1, 5, 64, 1000};
  for (Path path : kPaths) {
    for (std::size_t t : {1, 2, 20}) {
      Options o;
      o.path = path;
      o.threads = 2;
      std::vector<Tensor> xs;
      for (std::size_t i = 0; i < 4; ++i) {
        xs.emplace_back(1, histories[i] + t, e,
                        test::random_normal((histories[i] + t) * e, 70 + i));
      }
      KvCache batch(test::cache_config(40, kv_heads, e / heads));
      std::vector<SequenceId> ids;
      std::vector<float> new_tokens;
      for (std::size_t i = 0; i < 4; ++i) {
        ids.push_back(batch.add_sequence());
        m.step(batch, {ids[i]}, {xs[i].data(), 1, histories[i], e}, o);  // the history
        new_tokens.insert(new_tokens.end(), xs[i].values().end() - t * e, xs[i].values().end());
      }
      const Tensor out = m.step(batch, ids, {new_tokens.data(), 4, t, e}, o);
      for (std::size_t i = 0; i < 4; ++i) {
        INFO("path " << path_name(path) << ", T " << t << ", history " << histories[i]);
        KvCache alone(test::cache_config(20, kv_heads, e / heads));
        const SequenceId id = alone.add_sequence();
        m.step(alone, {id}, {xs[i].data(), 1, histories[i], e}, o);
        const Tensor single = m.step(alone, {id}, {xs[i].data() + histories[i] * e, 1, t, e}, o);
        const std::vector<float> mine(out.values().begin() + i * t * e,
                                      out.values().begin() + (i + 1) * t * e);
        CHECK(test::same_bits(mine, single.values()));
        CHECK(batch.length(ids[i]) == histories[i] + t);
      }
    }
  }
}

TEST_CASE("module step: bf16 and f16 caches within their bounds, forked continuations",
          "[module][kv_cache]") {
  const std::size_t e = 128, heads = 8, kv_heads = 2, l = 200;
  const MultiHeadAttention m(e, heads, KvHeads{kv_heads}, 4);
  const Tensor x(1, l, e, test::random_normal(l * e, 5));
  for (Path path : kPaths) {
    Options o;
    o.path = path;
    const auto f32 = step_chunks(m, x, 50, o);
    const std::vector<double> f32d(f32.begin(), f32.end());
    for (const auto& [storage, bound] :
         {std::pair<KvStorage, double>{KvStorage::bf16, 1e-2}, {KvStorage::f16, 2e-3}}) {
      const auto half = step_chunks(m, x, 50, o, storage);
      const auto c = test::compare(half.data(), f32d.data(), f32d.size());
      INFO(kv_storage_name(storage) << ", path " << path_name(path) << ": " << c.summary());
      CHECK(c.rel_frobenius <= bound);
    }
    // Two continuations of one prompt: a fork shares the prompt's blocks, and each
    // continuation equals running its whole sequence alone.
    KvCache cache(test::cache_config(20, kv_heads, e / heads));
    const SequenceId a = cache.add_sequence();
    m.step(cache, {a}, {x.data(), 1, 100, e}, o);
    const SequenceId b = cache.fork(a);
    const Tensor ya = m.step(cache, {a}, {x.data() + 100 * e, 1, 5, e}, o);
    const Tensor other(1, 5, e, test::random_normal(5 * e, 6));
    const Tensor yb = m.step(cache, {b}, other, o);
    std::vector<float> seq_b(x.values().begin(), x.values().begin() + 100 * e);
    seq_b.insert(seq_b.end(), other.values().begin(), other.values().end());
    const auto alone_b = step_chunks(m, Tensor(1, 105, e, seq_b), 100, o);
    const auto alone_a = step_chunks(
        m, Tensor(1, 105, e, std::vector<float>(x.values().begin(), x.values().begin() + 105 * e)),
        100, o);
    INFO("path " << path_name(path));
    CHECK(test::same_bits(ya.values(), std::vector<float>(alone_a.end() - 5 * e, alone_a.end())));
    CHECK(test::same_bits(yb.values(), std::vector<float>(alone_b.end() - 5 * e, alone_b.end())));
    // Both continuations in one call, in a cache with one block beside the prompt's two: one
    // copies the shared partial block, the other writes into it in place.
    KvCache tight(test::cache_config(3, kv_heads, e / heads));
    const SequenceId ta = tight.add_sequence();
    m.step(tight, {ta}, {x.data(), 1, 100, e}, o);
    const SequenceId tb = tight.fork(ta);
    std::vector<float> both(x.values().begin() + 100 * e, x.values().begin() + 105 * e);
    both.insert(both.end(), other.values().begin(), other.values().end());
    const Tensor y2 = m.step(tight, {ta, tb}, Tensor(2, 5, e, both), o);
    CHECK(tight.free_blocks() == 0);
    CHECK(test::same_bits(std::vector<float>(y2.values().begin(), y2.values().begin() + 5 * e),
                          ya.values()));
    CHECK(test::same_bits(std::vector<float>(y2.values().begin() + 5 * e, y2.values().end()),
                          yb.values()));
  }
}

TEST_CASE("module step: refused calls name the values and leave the cache as it was",
          "[module][kv_cache][errors]") {
  const std::size_t e = 16, heads = 4, kv_heads = 2, d = 4;
  const MultiHeadAttention m(e, heads, KvHeads{kv_heads}, 1);
  KvCache cache(test::cache_config(2, kv_heads, d));
  const SequenceId a = cache.add_sequence();
  const Tensor x = Tensor::randn(2, 100, e, 2);
  m.step(cache, {a}, {x.data(), 1, 70, e});  // 2 blocks: the cache is full
  const auto* p = static_cast<const unsigned char*>(cache.storage_data());
  const std::vector<unsigned char> bytes(p, p + cache.storage_bytes());
  std::vector<float> out(2 * 100 * e);
  auto refused = [&](const std::vector<std::string>& words, auto call) {
    bool threw = false;
    try {
      call();
    } catch (const std::invalid_argument& ex) {
      threw = true;
      for (const std::string& w : words) {
        INFO("message: " << ex.what());
        CHECK(std::string(ex.what()).find(w) != std::string::npos);
      }
    }
    CHECK(threw);
    CHECK(cache.length(a) == 70);
    CHECK(cache.free_blocks() == 0);
    CHECK(std::memcmp(bytes.data(), cache.storage_data(), bytes.size()) == 0);
  };
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const TensorView<float> out1{out.data(), 1, 1, e};
    refused({"out of blocks", "needs 1"}, [&] { m.step(cache, {a}, {x.data(), 1, 60, e}, o); });
    refused({"unknown sequence id 7"}, [&] { m.step(cache, {7}, {x.data(), 1, 1, e}, out1, o); });
    refused({"x has a zero size"}, [&] { m.step(cache, {a}, {x.data(), 1, 0, e}, out1, o); });
    refused({"x has embedding size 8", "embed_size 16"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, 8}, out1, o);
    });
    refused({"2 sequence ids for a batch of N = 1 (x [1, 1, 16])"}, [&] {
      m.step(cache, {a, a + 1}, {x.data(), 1, 1, e}, out1, o);
    });
    refused({"sequence id 0 appears twice"}, [&] {
      m.step(cache, {a, a}, {x.data(), 2, 1, e}, {out.data(), 2, 1, e}, o);
    });
    refused({"out has shape [1, 2, 16], x needs [1, 1, 16]"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, e}, {out.data(), 1, 2, e}, o);
    });
    refused({"out overlaps x"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, e}, {const_cast<float*>(x.data()) + 8, 1, 1, e}, o);
    });
    Options bad = o;
    bad.causal = Causal::top_left;
    refused({"top_left"}, [&] { m.step(cache, {a}, {x.data(), 1, 1, e}, out1, bad); });
    bad = o;
    bad.window = 0;
    refused({"options.window must be >= 1 (unset for no window), got 0"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, e}, out1, bad);
    });
    std::vector<float> bias(1000, 0.0f);
    bad = o;
    bad.bias = Bias{bias.data(), 1, 1, 1, 71};
    refused({"options.bias is set: attention over a KvCache does not support it"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, e}, out1, bad);
    });
    bad = o;
    bad.sinks = PerHead{bias.data(), 3};
    refused({"options.sinks has 3 values, one per query head needs H = 4"}, [&] {
      m.step(cache, {a}, {x.data(), 1, 1, e}, out1, bad);
    });
    const MultiHeadAttention mha(e, heads, 1);
    refused({"the cache holds kv_heads 2 of head_dim 4, the module has kv_heads 4 of head_dim 4"},
            [&] {
              mha.step(cache, {a}, {x.data(), 1, 1, e}, out1, o);
            });
    const MultiHeadAttention other_dim(2 * e, heads, KvHeads{kv_heads}, 1);
    refused({"head_dim 4, the module has kv_heads 2 of head_dim 8"}, [&] {
      other_dim.step(cache, {a}, {x.data(), 1, 1, 2 * e}, {out.data(), 1, 1, 2 * e}, o);
    });
  }
}
