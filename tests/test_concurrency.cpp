// Reliability: one MultiHeadAttention shared by several std::threads that call forward() at the
// same time, scaled_dot_product_attention() called from several threads on shared inputs, and
// decoding over KvCaches (one per std::thread) whose steps' tasks write the new tokens they read.
//
// forward() is const and documented as callable from several threads at once; the library's
// scratch is per thread. Each thread's calls must give the same bits as the same calls made
// serially beforehand with the same options (thread-count independence is
// test_determinism.cpp's subject, not this file's). Inputs are shared by every
// thread, outputs are per thread, shapes differ between jobs so that the per-thread scratch
// grows and is reused while other threads run.
//
// Under ThreadSanitizer (tests/tsan/run_tsan.sh) this file is built with clang and LLVM's libomp,
// and the calls use OpenMP teams of 2 inside each std::thread: libomp loads its Archer tool
// (libarcher.so) automatically in a TSan program, which tells TSan about OpenMP's barriers, so
// the teams are checked as well as the std::threads. GCC's libgomp is not instrumented: under
// a g++ TSan build every parallel region reports false races, hence clang for that build.
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"
#include "simdattn/kv_cache.hpp"

namespace simdattn {
namespace {

constexpr int kThreads = 4;
constexpr int kRounds = 3;

// One forward() call: its inputs (shared by all threads), mask, options, and serial result.
struct Job {
  std::string name;
  std::size_t n = 0, lq = 0, lk = 0;
  std::vector<float> query, keys, values;  // keys/values empty: use query (self-attention)
  test::MaskCase mask;
  Options options;
  std::vector<float> expected;

  const float* k() const { return keys.empty() ? query.data() : keys.data(); }
  const float* v() const { return values.empty() ? k() : values.data(); }
};

Job make_job(std::string name, std::size_t e, std::size_t heads, std::size_t n, std::size_t lq,
             std::size_t lk, int sharing, test::MaskKind kind, int threads, Path path,
             std::uint64_t seed) {
  Job j;
  j.name = std::move(name);
  j.n = n, j.lq = lq, j.lk = lk;
  j.query = test::random_normal(n * lq * e, seed);
  if (sharing < 2) j.keys = test::random_normal(n * lk * e, seed + 1);    // 2: self-attention
  if (sharing < 1) j.values = test::random_normal(n * lk * e, seed + 2);  // 1: keys = values
  j.mask = test::make_mask(kind, n, heads, lq, lk, seed);
  j.options.causal = j.mask.causal;
  j.options.threads = threads;
  j.options.path = path;
  return j;
}

void run_job(const MultiHeadAttention& m, const Job& j, std::vector<float>& out) {
  const std::size_t e = m.embed_size();
  out.assign(j.n * j.lq * e, 0.0f);
  m.forward({j.v(), j.n, j.lk, e}, {j.k(), j.n, j.lk, e}, {j.query.data(), j.n, j.lq, e},
            j.mask.mask, {out.data(), j.n, j.lq, e}, j.options);
}

// Runs body(t) on kThreads std::threads released together, so that their calls overlap.
// Catch's macros are not thread-safe: bodies record, the caller checks after join().
template <class Body>
void run_together(Body body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      body(t);
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace

TEST_CASE("one module, several threads calling forward at once: results equal serial calls",
          "[reliability][concurrency]") {
  // E = 60, H = 5 (head_dim 12, not a multiple of any vector width). L >= 64 puts both the
  // GEMMs and the attention core above their serial-work limits, so threads = 2 really runs
  // OpenMP teams inside each std::thread.
  const std::size_t e = 60, heads = 5;
  MultiHeadAttention m(e, heads, 11);
  m.set_bias(Projection::key, test::random_normal(e, 3));
  std::vector<Job> jobs;
  jobs.push_back(make_job("self, causal, 2 threads", e, heads, 2, 70, 70, 2,
                          test::MaskKind::causal_top_left, 2, Path::optimized, 100));
  jobs.push_back(make_job("cross, key padding, 1 thread", e, heads, 3, 9, 67, 0,
                          test::MaskKind::key_padding, 1, Path::optimized, 200));
  jobs.push_back(make_job("shared keys/values, fully masked rows, 2 threads", e, heads, 2, 66, 81,
                          1, test::MaskKind::fully_masked_rows, 2, Path::optimized, 300));
  jobs.push_back(make_job("decode Lq = 1, bottom-right, 2 threads", e, heads, 2, 1, 300, 0,
                          test::MaskKind::causal_bottom_right, 2, Path::optimized, 400));
  jobs.push_back(make_job("naive path, full mask", e, heads, 1, 13, 17, 0, test::MaskKind::full, 1,
                          Path::naive, 500));
  for (Job& j : jobs) {
    run_job(m, j, j.expected);
    // The serial results are right, so equality below means right results, not merely equal.
    test::check_close(j.expected.data(),
                      test::oracle_forward(m, {j.v(), j.n, j.lk, e}, {j.k(), j.n, j.lk, e},
                                           {j.query.data(), j.n, j.lq, e}, j.mask.mask, j.options),
                      j.name);
  }

  std::vector<std::vector<int>> mismatches(kThreads, std::vector<int>(jobs.size(), 0));
  std::vector<std::string> errors(kThreads);
  run_together([&](int t) {
    std::vector<float> out;
    try {
      for (int round = 0; round < kRounds; ++round) {
        for (std::size_t x = 0; x < jobs.size(); ++x) {
          const std::size_t job = (x + static_cast<std::size_t>(t)) % jobs.size();
          run_job(m, jobs[job], out);
          if (std::memcmp(out.data(), jobs[job].expected.data(), out.size() * sizeof(float)) != 0) {
            ++mismatches[t][job];
          }
        }
      }
    } catch (const std::exception& ex) {
      errors[t] = ex.what();
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(errors[t].empty());
    for (std::size_t job = 0; job < jobs.size(); ++job) {
      INFO("job: " << jobs[job].name);
      CHECK(mismatches[t][job] == 0);
    }
  }
}

TEST_CASE("scaled_dot_product_attention from several threads on shared inputs",
          "[reliability][concurrency]") {
  const std::size_t n = 2, lq = 67, lk = 75, h = 3, d = 20;
  const auto q = test::random_normal(n * lq * h * d, 1);
  const auto k = test::random_normal(n * lk * h * d, 2);
  const auto v = test::random_normal(n * lk * h * d, 3);
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d};
  // Thread t runs mask kind t, with threads = 1 + t % 2 inside the call.
  std::vector<test::MaskCase> masks;
  std::vector<Options> options(kThreads);
  std::vector<std::vector<float>> expected(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    masks.push_back(test::make_mask(test::kAllMaskKinds[t + 1], n, h, lq, lk, 9));
    options[t].causal = masks[t].causal;
    options[t].threads = 1 + t % 2;
    expected[t].assign(n * lq * h * d, 0.0f);
    scaled_dot_product_attention(qv, kv, vv, {expected[t].data(), n, lq, h, d}, masks[t].mask,
                                 options[t]);
    test::check_close(expected[t].data(), test::oracle_sdpa(qv, kv, vv, masks[t].mask, options[t]),
                      test::mask_kind_name(test::kAllMaskKinds[t + 1]));
  }
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::string> errors(kThreads);
  run_together([&](int t) {
    std::vector<float> out(n * lq * h * d);
    try {
      for (int round = 0; round < 2 * kRounds; ++round) {
        scaled_dot_product_attention(qv, kv, vv, {out.data(), n, lq, h, d}, masks[t].mask,
                                     options[t]);
        if (std::memcmp(out.data(), expected[t].data(), out.size() * sizeof(float)) != 0) {
          ++mismatches[t];
        }
      }
    } catch (const std::exception& ex) {
      errors[t] = ex.what();
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t << ", mask " << test::mask_kind_name(test::kAllMaskKinds[t + 1]));
    CHECK(errors[t].empty());
    CHECK(mismatches[t] == 0);
  }
}

TEST_CASE("decoding over a KvCache with a team of threads, in several std::threads",
          "[reliability][concurrency][kv_cache]") {
  // Each call's tasks write the new tokens of their own slice and kv heads of the cache right
  // before reading them; the sequences' slices (512 keys) and heads split the work between the
  // team's threads. Every std::thread decodes its own cache with threads = 2 inside the call;
  // outputs and the caches' contents must equal the same steps run with threads = 1.
  const std::size_t heads = 8, kvh = 2, d = 32, steps = 3, chunk = 3;
  const std::vector<std::size_t> lengths = {1, 70, 1500};  // enough work for a team of 2
  const std::size_t n = lengths.size();
  struct Run {
    std::vector<float> outputs;                    // every step's output, one after another
    std::vector<std::vector<float>> keys, values;  // each sequence's whole cache at the end
    bool mirrored = true;  // the cache holds what append() of the same tokens holds
  };
  auto run = [&](int t, int threads) {
    KvCacheConfig config;
    config.kv_heads = kvh;
    config.head_dim = d;
    config.storage = t % 2 == 0 ? KvStorage::f32 : KvStorage::bf16;
    for (std::size_t l : lengths) config.blocks += KvCache::blocks_for(l + steps + chunk);
    KvCache cache(config), mirror(config);  // mirror: the same tokens through append()
    std::vector<SequenceId> ids, mirror_ids;
    for (std::size_t b = 0; b < n; ++b) {
      ids.push_back(cache.add_sequence());
      mirror_ids.push_back(mirror.add_sequence());
      const auto k = test::random_normal(lengths[b] * kvh * d, 40 + t * 8 + b);
      const auto v = test::random_normal(lengths[b] * kvh * d, 80 + t * 8 + b);
      cache.append({ids.back()}, {k.data(), 1, lengths[b], kvh, d},
                   {v.data(), 1, lengths[b], kvh, d});
      mirror.append({mirror_ids.back()}, {k.data(), 1, lengths[b], kvh, d},
                    {v.data(), 1, lengths[b], kvh, d});
    }
    Options o;
    o.threads = threads;
    Run r;
    for (std::size_t step = 0; step <= steps; ++step) {
      const std::size_t tn = step < steps ? 1 : chunk;  // decode steps, then a short chunk
      const auto q = test::random_normal(n * tn * heads * d, 200 + t * 16 + step);
      const auto k = test::random_normal(n * tn * kvh * d, 300 + t * 16 + step);
      const auto v = test::random_normal(n * tn * kvh * d, 400 + t * 16 + step);
      std::vector<float> out(n * tn * heads * d);
      scaled_dot_product_attention(cache, ids, {q.data(), n, tn, heads, d},
                                   {k.data(), n, tn, kvh, d}, {v.data(), n, tn, kvh, d},
                                   {out.data(), n, tn, heads, d}, o);
      r.outputs.insert(r.outputs.end(), out.begin(), out.end());
      mirror.append(mirror_ids, {k.data(), n, tn, kvh, d}, {v.data(), n, tn, kvh, d});
    }
    for (std::size_t b = 0; b < n; ++b) {
      const std::size_t l = cache.length(ids[b]);
      r.keys.emplace_back(l * kvh * d);
      r.values.emplace_back(l * kvh * d);
      cache.read(ids[b], 0, l, r.keys.back().data(), r.values.back().data());
      std::vector<float> mk(l * kvh * d), mv(l * kvh * d);
      mirror.read(mirror_ids[b], 0, l, mk.data(), mv.data());
      r.mirrored = r.mirrored && mk == r.keys.back() && mv == r.values.back();
    }
    return r;
  };
  std::vector<Run> expected;
  for (int t = 0; t < kThreads; ++t) expected.push_back(run(t, 1));
  std::vector<Run> got(kThreads);
  std::vector<std::string> errors(kThreads);
  run_together([&](int t) {
    try {
      got[t] = run(t, 2);
    } catch (const std::exception& ex) {
      errors[t] = ex.what();
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(errors[t].empty());
    CHECK(expected[t].mirrored);
    CHECK(got[t].mirrored);
    CHECK(got[t].outputs == expected[t].outputs);
    CHECK(got[t].keys == expected[t].keys);
    CHECK(got[t].values == expected[t].values);
    for (std::size_t b = 0; b < n; ++b) {
      CHECK(got[t].keys[b].size() == (lengths[b] + steps + chunk) * kvh * d);
    }
  }
}

}  // namespace simdattn
