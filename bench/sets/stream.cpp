// --set=stream: generating tokens with a KvCache (bench/README.md, "The stream set").
//
//   cache/optimized/decode/...    one decode step of the attention core over the cache
//                                 (scaled_dot_product_attention(KvCache&, ...)): Lk = 4096,
//                                 E = 1024, H = 16, kv_heads 16 and 4, f32 / bf16 / f16 storage
//   cache/optimized/decode_alibi/..., decode_softcap, decode_sinks, decode_mods (the three)
//                                 the f32 step with score modifications, on the same caches
//   dense/optimized/decode/...    the same step on plain [1, Lk, H, D] K/V tensors (no cache),
//                                 through scaled_dot_product_attention on views
//   cache/optimized/batch/...     the same for 8 sequences of 128 to 4096 tokens in one call
//                                 and for 96 sequences of 128 tokens
//   cache/optimized/tokens/...    Lq = 4 to 64 new tokens in one call (speculative decoding's
//                                 drafts, short chunks), kv_heads 4, f32: up to 16 rows (query
//                                 heads per kv head x tokens) in one pass of the paged kernel
//                                 (4 tokens), 2 to 8 passes, then the gathered tile path (64)
//   step/optimized/decode/...     MultiHeadAttention::step of one token at Lk = 4096: the Q/K/V
//                                 projection of the token, the append, the attention and the
//                                 output projection
//   generate/optimized/...        a prompt of 2048 tokens prefilled in chunks of 256, then 256
//                                 decode steps, timed step by step; beside it the module without
//                                 a cache (forward over the whole sequence for each new token)
//
// A decode step reads every cached byte once, so its floor is bytes / read bandwidth. "Cold":
// each timed call uses the next of several layers' caches (and modules), round-robin, so that
// together they exceed cold_bytes() (8x this machine's L3, at least 256 MiB) and each
// call reads its K/V (and weights) from memory, as in a model with many layers. Every call
// appends one token and the sequence is cut back by one afterwards (KvCache::truncate, a few
// nanoseconds), so Lk stays fixed.
//
// Counters: kv_MB (bytes a call reads: K/V, plus the weights for step), GBps (those bytes per
// second), read_gbps (the read bandwidth at the same thread count, measured again right after
// each repetition: see read_gbps_now), frac_read_bw (GBps over read_gbps), floor_ms (bytes /
// read_gbps); generate: prefill_ms, decode_tok_s, p50_ms, p99_ms (per decode step),
// nocache_p50_ms and nocache_speedup.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "huge_buffer.hpp"
#include "registration.hpp"
#include "sets.hpp"

namespace bench {
namespace {

using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::Isa;
using simdattn::KvCache;
using simdattn::KvCacheConfig;
using simdattn::KvHeads;
using simdattn::KvStorage;
using simdattn::MultiHeadAttention;
using simdattn::Options;
using simdattn::Path;
using simdattn::SequenceId;
using simdattn::Tensor;
using Clock = std::chrono::steady_clock;
using OptIsa = std::optional<Isa>;

constexpr std::size_t kE = 1024, kH = 16, kD = kE / kH, kLk = 4096;
// Results against the naive path on the same cache, before timing.
constexpr double kCheckRelTol = 1e-4;

// The number of layers of `bytes_per_layer` that together exceed cold_bytes() (at least 2).
std::size_t cold_layers(double bytes_per_layer) {
  return static_cast<std::size_t>(
      std::max(2.0, std::ceil(static_cast<double>(cold_bytes()) / bytes_per_layer)));
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::size_t elem_bytes(KvStorage s) {
  return s == KvStorage::f32 ? 4 : 2;
}

// The K/V bytes a step reads for sequences of `lengths` tokens.
double cache_bytes(const std::vector<std::size_t>& lengths, std::size_t kv_heads, KvStorage s) {
  double tokens = 0;
  for (std::size_t l : lengths) tokens += static_cast<double>(l);
  return tokens * kv_heads * 2 * kD * elem_bytes(s);
}

double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double d2 = 0, r2 = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    d2 += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    r2 += static_cast<double>(want[i]) * want[i];
  }
  return std::isfinite(d2) ? std::sqrt(d2 / r2) : INFINITY;
}

std::string name_of(const std::string& op, const std::string& c, std::size_t n,
                    const std::string& lk, std::size_t kv_heads, KvStorage s, int threads,
                    OptIsa isa, std::size_t lq = 1) {
  std::string name = op + "/optimized/" + c + "/N:" + std::to_string(n) +
                     "/Lq:" + std::to_string(lq) + "/Lk:" + lk + "/E:" + std::to_string(kE) +
                     "/H:" + std::to_string(kH) + "/KV:" + std::to_string(kv_heads) +
                     "/type:" + kv_storage_name(s) + "/threads:" + std::to_string(threads);
  if (machine().isa_in_names && isa) name += std::string("/isa:") + simdattn::isa_name(*isa);
  return name;
}

// The score modifications of a decode case: none, ALiBi (the paper's slopes), soft-capping at
// 50 (Gemma 2's attention cap), sinks, or the three together.
enum class Mods { none, alibi, softcap, sinks, all };
constexpr Mods kMods[] = {Mods::alibi, Mods::softcap, Mods::sinks, Mods::all};
const char* decode_case(Mods m) {
  const char* names[] = {"decode", "decode_alibi", "decode_softcap", "decode_sinks", "decode_mods"};
  return names[static_cast<int>(m)];
}

Options options_for(int threads, OptIsa isa, Path path = Path::optimized, Mods mods = Mods::none) {
  static const std::vector<float> sinks(kH, 0.5f);
  Options o;
  o.threads = threads;
  o.path = path;
  o.isa = isa;
  if (mods == Mods::alibi || mods == Mods::all) o.alibi.enabled = true;
  if (mods == Mods::softcap || mods == Mods::all) o.softcap = 50.0f;
  if (mods == Mods::sinks || mods == Mods::all) o.sinks = {sinks.data(), sinks.size()};
  return o;
}

// Several layers' caches, each holding the same sequences `tokens` short of their lengths,
// and the new tokens of each sequence.
struct CacheLayers {
  std::vector<std::size_t> lengths;
  std::size_t kv_heads, tokens;
  KvStorage storage;
  std::vector<KvCache> caches;
  std::vector<std::vector<SequenceId>> ids;
  Tensor q, k, v;  // [N, T, H, D] and [N, T, kv_heads, D] as [N, T, E] tensors

  CacheLayers(std::vector<std::size_t> lens, std::size_t kvh, std::size_t t, KvStorage s,
              std::size_t layers)
      : lengths(std::move(lens)), kv_heads(kvh), tokens(t), storage(s) {
    const std::size_t n = lengths.size(),
                      longest = *std::max_element(lengths.begin(), lengths.end());
    q = Tensor::randn(n, t, kE, 1);
    k = Tensor::randn(n, t, kvh * kD, 2);
    v = Tensor::randn(n, t, kvh * kD, 3);
    const Tensor hk = Tensor::randn(1, longest, kvh * kD, 4),
                 hv = Tensor::randn(1, longest, kvh * kD, 5);
    KvCacheConfig config;
    config.kv_heads = kvh;
    config.head_dim = kD;
    config.storage = s;
    for (std::size_t l : lengths) config.blocks += KvCache::blocks_for(l);
    for (std::size_t layer = 0; layer < layers; ++layer) {
      caches.emplace_back(config);
      ids.emplace_back();
      for (std::size_t l : lengths) {
        const SequenceId id = caches.back().add_sequence();
        ids.back().push_back(id);
        caches.back().append({id}, {hk.data(), 1, l - t, kvh, kD}, {hv.data(), 1, l - t, kvh, kD});
      }
    }
  }
  std::size_t n() const { return lengths.size(); }
  void run(std::size_t layer, const Options& o, std::vector<float>& out) {
    const std::size_t t = tokens;
    out.resize(n() * t * kE);
    simdattn::scaled_dot_product_attention(
        caches[layer], ids[layer], {q.data(), n(), t, kH, kD}, {k.data(), n(), t, kv_heads, kD},
        {v.data(), n(), t, kv_heads, kD}, HeadsView<float>{out.data(), n(), t, kH, kD}, o);
    for (std::size_t i = 0; i < n(); ++i) caches[layer].truncate(ids[layer][i], lengths[i] - t);
  }
};

// Each kind of workload below is kept between the repetitions and thread counts of one case
// and freed when a case needs another: one workload (a few hundred MiB) lives at a time.
void release_workloads();

std::unique_ptr<CacheLayers> g_layers;
std::string g_layers_key;

CacheLayers& layers_for(const std::vector<std::size_t>& lengths, std::size_t kvh, std::size_t t,
                        KvStorage s) {
  std::string key = std::to_string(kvh) + kv_storage_name(s) + "/T" + std::to_string(t);
  for (std::size_t l : lengths) key += "/" + std::to_string(l);
  if (!g_layers || g_layers_key != key) {
    release_workloads();
    const double bytes = cache_bytes(lengths, kvh, s);
    const auto layers = cold_layers(bytes);
    g_layers = std::make_unique<CacheLayers>(lengths, kvh, t, s, layers);
    g_layers_key = key;
  }
  return *g_layers;
}

// The read bandwidth at `threads` threads measured now, right after a timed repetition: this
// VM's bandwidth drifts up to 2x within minutes (27 vs 53 GB/s seen at 2 threads), so a figure
// from start-up can sit far from the one the repetition ran under. The same loop and footprint
// as at start-up, on a buffer kept for the run (cold_bytes(): the stream set measures no RSS).
double read_gbps_now(int threads) {
  static const HugeBuffer buffer(read_buffer_floats(), 1.0f);
  return measure_read_gbps(threads, buffer.data());
}

void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds, int threads) {
  const double gbps = bytes / seconds * 1e-9, read = read_gbps_now(threads);
  state.counters["kv_MB"] = bytes * 1e-6;
  state.counters["GBps"] = gbps;
  state.counters["read_gbps"] = read;
  state.counters["frac_read_bw"] = gbps / read;
  state.counters["floor_ms"] = bytes / (read * 1e9) * 1e3;
}

// Checks layer 0's output against the naive path, then times calls on the layers in turn.
// Returns the seconds per call, or a negative number when the check failed.
template <class Layers>
double time_layers(benchmark::State& state, const std::string& name, Layers& w, std::size_t layers,
                   int threads, OptIsa isa, Mods mods = Mods::none) {
  std::vector<float> out, want;
  w.run(0, options_for(threads, isa, Path::naive, mods), want);
  w.run(0, options_for(threads, isa, Path::optimized, mods), out);
  const double err = rel_error(out, want);
  if (!(err <= kCheckRelTol)) {
    report_failed_check(name, "relative error " + std::to_string(err) + " against the naive path");
    state.SkipWithError("output check failed");
    return -1;
  }
  const Options o = options_for(threads, isa, Path::optimized, mods);
  std::size_t layer = 0;
  const auto t0 = Clock::now();
  for (auto _ : state) {
    layer = (layer + 1) % layers;
    w.run(layer, o, out);
    benchmark::ClobberMemory();
  }
  state.counters["rel_err"] = err;
  state.counters["layers"] = static_cast<double>(layers);
  state.SetLabel(simdattn::isa_name(isa.value_or(machine().isa)));
  return seconds_since(t0) / static_cast<double>(state.iterations());
}

// `t` new tokens per sequence (1: a decode step). FLOPs: 4 x T x length x E per sequence, as if
// every new token saw every key (its causal end hides at most T - 1 of them).
void bench_cache(benchmark::State& state, const std::string& name, std::vector<std::size_t> lengths,
                 std::size_t kvh, KvStorage s, int threads, OptIsa isa, Mods mods = Mods::none,
                 std::size_t t = 1) {
  CacheLayers& w = layers_for(lengths, kvh, t, s);
  const double seconds = time_layers(state, name, w, w.caches.size(), threads, isa, mods);
  if (seconds < 0) return;
  double tokens = 0;
  for (std::size_t l : lengths) tokens += static_cast<double>(l);
  set_rate_counters(state, 4.0 * static_cast<double>(t) * tokens * kE, seconds, threads, isa);
  set_bandwidth_counters(state, cache_bytes(lengths, kvh, s), seconds, threads);
}

// Several layers' K/V as plain [1, Lk, H, D] arrays (no cache): the same decode step through
// scaled_dot_product_attention on views, the kernel the grid's decode case times warm. The
// arrays sit on huge pages (HugeBuffer), as the KvCache's pool does: with 4 KiB pages each
// 4 KiB row of K or V is a page of its own and costs a TLB miss.
struct DenseLayers {
  Tensor q;
  std::vector<HugeBuffer> k, v;

  explicit DenseLayers(std::size_t layers) : q(Tensor::randn(1, 1, kE, 11)) {
    for (std::size_t layer = 0; layer < layers; ++layer) {
      for (auto* kv : {&k, &v}) {
        const Tensor t = Tensor::randn(1, kLk, kE, 12 + 2 * layer + (kv == &v ? 1 : 0));
        kv->emplace_back(t.data(), t.size());
      }
    }
  }
  void run(std::size_t layer, const Options& o, std::vector<float>& out) {
    out.resize(kE);
    simdattn::scaled_dot_product_attention(
        {q.data(), 1, 1, kH, kD}, {k[layer].data(), 1, kLk, kH, kD},
        {v[layer].data(), 1, kLk, kH, kD}, HeadsView<float>{out.data(), 1, 1, kH, kD}, {}, o);
  }
};

std::unique_ptr<DenseLayers> g_dense;

void bench_dense(benchmark::State& state, const std::string& name, int threads, OptIsa isa) {
  const double bytes = cache_bytes({kLk}, kH, KvStorage::f32);
  if (!g_dense) {
    release_workloads();
    g_dense = std::make_unique<DenseLayers>(cold_layers(bytes));
  }
  DenseLayers& w = *g_dense;
  const double seconds = time_layers(state, name, w, w.k.size(), threads, isa);
  if (seconds < 0) return;
  set_rate_counters(state, 4.0 * kLk * kE, seconds, threads, isa);
  set_bandwidth_counters(state, bytes, seconds, threads);
}

// Layers of a module and its cache, each cache holding one sequence of Lk - 1 tokens.
struct ModuleLayers {
  std::size_t kv_heads;
  KvStorage storage;
  std::vector<MultiHeadAttention> modules;
  std::vector<KvCache> caches;
  std::vector<SequenceId> ids;
  Tensor x;  // the new token, [1, 1, E]

  ModuleLayers(std::size_t kvh, KvStorage s, std::size_t layers) : kv_heads(kvh), storage(s) {
    x = Tensor::randn(1, 1, kE, 6);
    const Tensor prompt = Tensor::randn(1, kLk - 1, kE, 7);
    KvCacheConfig config;
    config.blocks = KvCache::blocks_for(kLk);
    config.kv_heads = kvh;
    config.head_dim = kD;
    config.storage = s;
    for (std::size_t layer = 0; layer < layers; ++layer) {
      modules.emplace_back(kE, kH, KvHeads{kvh}, 100 + layer);
      caches.emplace_back(config);
      ids.push_back(caches.back().add_sequence());
      modules.back().step(caches.back(), {ids.back()}, prompt);
    }
  }
  void run(std::size_t layer, const Options& o, std::vector<float>& out) {
    out.resize(kE);
    modules[layer].step(caches[layer], {ids[layer]}, x, {out.data(), 1, 1, kE}, o);
    caches[layer].truncate(ids[layer], kLk - 1);
  }
  double weight_bytes() const { return (2.0 * kE * kE + 2.0 * kv_heads * kD * kE) * 4; }
};

std::unique_ptr<ModuleLayers> g_modules;
std::string g_modules_key;

void bench_step(benchmark::State& state, const std::string& name, std::size_t kvh, KvStorage s,
                int threads, OptIsa isa) {
  const std::string key = std::to_string(kvh) + kv_storage_name(s);
  if (!g_modules || g_modules_key != key) {
    release_workloads();
    const double per_layer = cache_bytes({kLk}, kvh, s) + (2.0 * kE * kE + 2.0 * kvh * kD * kE) * 4;
    const auto layers = cold_layers(per_layer);
    g_modules = std::make_unique<ModuleLayers>(kvh, s, layers);
    g_modules_key = key;
  }
  ModuleLayers& w = *g_modules;
  const double seconds = time_layers(state, name, w, w.modules.size(), threads, isa);
  if (seconds < 0) return;
  const double kv_e = static_cast<double>(kvh * kD);
  const double flops = 4.0 * kLk * kE + 2.0 * (2.0 * kE * kE + 2.0 * kv_e * kE);
  set_rate_counters(state, flops, seconds, threads, isa);
  set_bandwidth_counters(state, cache_bytes({kLk}, kvh, s) + w.weight_bytes(), seconds, threads);
}

constexpr std::size_t kPrompt = 2048, kChunk = 256, kDecodeSteps = 256;
// The module without a cache recomputes every key and value per token: it is timed on every
// kNoCacheStride-th step only.
constexpr std::size_t kNoCacheStride = 16;

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

void release_workloads() {
  g_layers.reset();
  g_dense.reset();
  g_modules.reset();
}

void bench_generate(benchmark::State& state, std::size_t kvh, int threads, OptIsa isa) {
  release_workloads();
  const MultiHeadAttention m(kE, kH, KvHeads{kvh}, 9);
  const std::size_t total = kPrompt + kDecodeSteps;
  const Tensor tokens = Tensor::randn(1, total, kE, 10);
  const Options o = options_for(threads, isa);
  KvCacheConfig config;
  config.blocks = KvCache::blocks_for(total);
  config.kv_heads = kvh;
  config.head_dim = kD;
  double prefill_s = 0;
  std::vector<double> latencies, nocache;
  for (auto _ : state) {
    KvCache cache(config);
    const SequenceId id = cache.add_sequence();
    Tensor out(1, kChunk, kE);
    auto t0 = Clock::now();
    for (std::size_t p = 0; p < kPrompt; p += kChunk) {
      m.step(cache, {id}, {tokens.data() + p * kE, 1, kChunk, kE}, out.view(), o);
    }
    prefill_s = seconds_since(t0);
    latencies.clear();
    for (std::size_t i = kPrompt; i < total; ++i) {
      t0 = Clock::now();
      m.step(cache, {id}, {tokens.data() + i * kE, 1, 1, kE}, {out.data(), 1, 1, kE}, o);
      latencies.push_back(seconds_since(t0));
    }
    nocache.clear();
    for (std::size_t i = kPrompt; i < total; i += kNoCacheStride) {
      const simdattn::ConstTensorView seen{tokens.data(), 1, i + 1, kE};
      t0 = Clock::now();
      m.forward(seen, seen, {tokens.data() + i * kE, 1, 1, kE}, {}, {out.data(), 1, 1, kE}, o);
      nocache.push_back(seconds_since(t0));
    }
  }
  double decode_s = 0;
  for (double t : latencies) decode_s += t;
  state.counters["prefill_ms"] = prefill_s * 1e3;
  state.counters["prefill_tok_s"] = kPrompt / prefill_s;
  state.counters["decode_tok_s"] = kDecodeSteps / decode_s;
  state.counters["p50_ms"] = percentile(latencies, 0.5) * 1e3;
  state.counters["p99_ms"] = percentile(latencies, 0.99) * 1e3;
  state.counters["nocache_p50_ms"] = percentile(nocache, 0.5) * 1e3;
  state.counters["nocache_speedup"] = percentile(nocache, 0.5) / percentile(latencies, 0.5);
  state.counters["omp_threads"] = threads;
  state.SetLabel(simdattn::isa_name(isa.value_or(machine().isa)));
}

void add_benchmark(const std::string& name, std::function<void(benchmark::State&)> body) {
  benchmark::RegisterBenchmark(name.c_str(), std::move(body))
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace

void register_set_stream() {
  std::vector<OptIsa> isas;
  for (Isa isa : machine().isas) isas.emplace_back(isa);
  if (isas.empty()) isas.emplace_back();
  const std::vector<std::size_t> batch = {128, 256, 512, 1024, 1536, 2048, 3072, 4096};
  const std::vector<std::size_t> short_batch(96, 128);  // as many bytes, in short sequences
  for (const OptIsa& isa : isas) {
    for (std::size_t kvh : {16, 4}) {
      for (KvStorage s : {KvStorage::f32, KvStorage::bf16, KvStorage::f16}) {
        for (int t : config().threads) {
          const std::string name = name_of("cache", "decode", 1, "4096", kvh, s, t, isa);
          add_benchmark(
              name, [=](benchmark::State& st) { bench_cache(st, name, {kLk}, kvh, s, t, isa); });
        }
        // What the score modifications cost over the plain step, on the same caches.
        if (s != KvStorage::f32) continue;
        for (Mods mods : kMods) {
          for (int t : config().threads) {
            const std::string name = name_of("cache", decode_case(mods), 1, "4096", kvh, s, t, isa);
            add_benchmark(name, [=](benchmark::State& st) {
              bench_cache(st, name, {kLk}, kvh, s, t, isa, mods);
            });
          }
        }
      }
    }
    for (int t : config().threads) {
      const std::string name = name_of("dense", "decode", 1, "4096", kH, KvStorage::f32, t, isa);
      add_benchmark(name, [=](benchmark::State& st) { bench_dense(st, name, t, isa); });
    }
    for (int t : config().threads) {
      const std::string name =
          name_of("cache", "batch", batch.size(), "128-4096", 16, KvStorage::f32, t, isa);
      add_benchmark(name, [=](benchmark::State& st) {
        bench_cache(st, name, batch, 16, KvStorage::f32, t, isa);
      });
    }
    for (int t : config().threads) {
      const std::string name =
          name_of("cache", "batch", short_batch.size(), "128", 16, KvStorage::f32, t, isa);
      add_benchmark(name, [=](benchmark::State& st) {
        bench_cache(st, name, short_batch, 16, KvStorage::f32, t, isa);
      });
    }
    for (std::size_t lq : {4, 5, 8, 16, 32, 64}) {
      for (int t : config().threads) {
        const std::string name =
            name_of("cache", "tokens", 1, "4096", 4, KvStorage::f32, t, isa, lq);
        add_benchmark(name, [=](benchmark::State& st) {
          bench_cache(st, name, {kLk}, 4, KvStorage::f32, t, isa, Mods::none, lq);
        });
      }
    }
    for (std::size_t kvh : {16, 4}) {
      for (KvStorage s : {KvStorage::f32, KvStorage::bf16}) {
        for (int t : config().threads) {
          const std::string name = name_of("step", "decode", 1, "4096", kvh, s, t, isa);
          add_benchmark(name, [=](benchmark::State& st) { bench_step(st, name, kvh, s, t, isa); });
        }
      }
    }
    for (std::size_t kvh : {16, 4}) {
      for (int t : config().threads) {
        std::string name =
            "generate/optimized/prompt2048+256/N:1/E:1024/H:16/KV:" + std::to_string(kvh) +
            "/threads:" + std::to_string(t);
        if (machine().isa_in_names && isa) name += std::string("/isa:") + simdattn::isa_name(*isa);
        benchmark::RegisterBenchmark(name.c_str(),
                                     [=](benchmark::State& st) { bench_generate(st, kvh, t, isa); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond)
            ->Iterations(1)
            ->Repetitions(1);
      }
    }
  }
}

}  // namespace bench
