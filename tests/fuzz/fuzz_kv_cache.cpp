// libFuzzer target for KvCache and attention over it (include/simdattn/kv_cache.hpp).
//
// Each input decodes to a cache (kv_heads, head_dim, block size, capacity, storage type) and a
// program of up to 32 operations on it: add_sequence, fork, release, truncate, clear, append,
// scaled_dot_product_attention over the cache and MultiHeadAttention::step (which append too),
// some of them given a bad argument (an unknown, released or repeated id, T = 0, a batch, heads
// or head_dim that do not match, a length past the sequence, a window of 0, top-left causal). A
// model holds every live sequence's keys and values. After each operation the harness checks, and
// aborts (so that libFuzzer keeps the input) where one fails:
//   - the live ids, each length and every key and value read back equal the model's, bit for bit
//     (the values are multiples of 1/8 below 8, exact in f32, bf16 and f16);
//   - a refused call threw std::invalid_argument and left the cache as it was: the same ids,
//     lengths, free blocks and pool bytes; an accepted call was not one that had to be refused;
//   - the blocks in use are those of a model of the cache's blocks (each sequence's list, shared
//     by fork, copied on the first append to a shared, partly filled last block while another
//     sequence holds it, returned by truncate and release), and an empty cache has every block
//     free;
//   - an append that fits in the free blocks, as that model counts the blocks it takes, is
//     accepted, and one that needs more than are free is refused;
//   - attention's output matches a double oracle computed from the model (causal from the end,
//     sliding window, soft-capping, ALiBi, sinks, grouped-query heads), on the optimized path and
//     the naive one, and is the same bit for bit when the call runs again on the other thread count
//     (after the sequences are truncated back);
//   - a module step stores the double projection of its tokens' keys and values (within the
//     storage type's rounding) and its output matches the double oracle through the projections;
//   - NaN and Inf planted in some calls' queries, keys and values (kept in the sequences' history)
//     reach exactly the outputs where the oracle has NaN/Inf, in that call and later ones: never
//     a finite answer there, never NaN/Inf elsewhere, except that the optimized path may spread a
//     NaN or Inf value of a key a row does not see (the window, later tokens of the call) to the
//     rows of its sequence and kv head, as the README states. Some attention calls also make a
//     row whose every score in the call is -inf (a key component +Inf, the query's -Inf).
// ASan and UBSan (the whole library is instrumented in this build) catch the rest.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "random.hpp"
#include "simdattn/simdattn.hpp"

namespace {

using fuzz::describe;
using fuzz::fail;
using simdattn::ConstHeadsView;
using simdattn::HeadsView;
using simdattn::KvCache;
using simdattn::KvCacheConfig;
using simdattn::KvStorage;
using simdattn::Options;
using simdattn::SequenceId;
using simdattn::detail::Random;

// Each live sequence's tokens, [length][kv_heads][head_dim] keys and values, and the blocks the
// cache should hold them in (the model's own block numbers).
struct Sequence {
  std::vector<float> k, v;
  std::vector<std::size_t> blocks;
};
using Model = std::map<SequenceId, Sequence>;

// How many sequences hold each of the model's blocks (blocks in use only), and the next number.
std::map<std::size_t, std::size_t> g_refs;
std::size_t g_next_block = 0;

// The model's side of fork(): the child holds the parent's blocks too.
void hold_blocks(const Sequence& s) {
  for (std::size_t b : s.blocks) ++g_refs[b];
}

// The model's side of truncate() and release(): the sequence keeps its first `keep` blocks.
void drop_blocks(Sequence& s, std::size_t keep) {
  for (std::size_t i = keep; i < s.blocks.size(); ++i) {
    if (--g_refs[s.blocks[i]] == 0) g_refs.erase(s.blocks[i]);
  }
  s.blocks.resize(std::min(keep, s.blocks.size()));
}

// Everything a refused call must leave as it was.
struct Snapshot {
  std::vector<SequenceId> ids;
  std::vector<std::size_t> lengths;
  std::size_t free_blocks = 0;
  std::vector<unsigned char> pool;
};

Snapshot snapshot(const KvCache& cache) {
  Snapshot s;
  s.ids = cache.sequences();
  for (SequenceId id : s.ids) s.lengths.push_back(cache.length(id));
  s.free_blocks = cache.free_blocks();
  const auto* bytes = static_cast<const unsigned char*>(cache.storage_data());
  s.pool.assign(bytes, bytes + cache.storage_bytes());
  return s;
}

void check_unchanged(const KvCache& cache, const Snapshot& before, const char* call) {
  const Snapshot after = snapshot(cache);
  if (after.ids != before.ids || after.lengths != before.lengths) {
    fail(std::string(call) + " was refused but changed the sequences or their lengths");
  }
  if (after.free_blocks != before.free_blocks) {
    fail(std::string(call) + " was refused but changed the free blocks: " +
         std::to_string(before.free_blocks) + " -> " + std::to_string(after.free_blocks));
  }
  if (after.pool != before.pool) fail(std::string(call) + " was refused but changed the pool");
}

// Runs a call that must be refused: std::invalid_argument, and the cache as it was.
template <class Fn>
void expect_refused(const KvCache& cache, const Snapshot& before, const char* name,
                    const Fn& call) {
  try {
    call();
  } catch (const std::invalid_argument&) {
    check_unchanged(cache, before, name);
    return;
  }
  fail(std::string(name) + " with a bad argument was accepted");
}

void check_model(const KvCache& cache, const Model& model) {
  std::vector<SequenceId> ids;
  for (const auto& [id, s] : model) ids.push_back(id);
  if (cache.sequences() != ids) fail("the cache's sequences differ from the model's");
  const std::size_t row = cache.kv_heads() * cache.head_dim();
  std::size_t own_max = 0, own_sum = 0;
  for (const auto& [id, s] : model) {
    const std::size_t length = s.k.size() / row;
    if (cache.length(id) != length) {
      fail("sequence " + std::to_string(id) + " has length " + std::to_string(cache.length(id)) +
           ", the model " + std::to_string(length));
    }
    std::vector<float> k(s.k.size()), v(s.v.size());
    cache.read(id, 0, length, k.data(), v.data());
    if (length != 0 && (std::memcmp(k.data(), s.k.data(), k.size() * sizeof(float)) != 0 ||
                        std::memcmp(v.data(), s.v.data(), v.size() * sizeof(float)) != 0)) {
      fail("sequence " + std::to_string(id) + " reads back other keys or values than appended");
    }
    const std::size_t own = KvCache::blocks_for(length, cache.block_tokens());
    if (s.blocks.size() != own) fail("the model's block list of a sequence has the wrong size");
    own_max = std::max(own_max, own);
    own_sum += own;
  }
  const std::size_t used = cache.capacity_blocks() - cache.free_blocks();
  if (cache.free_blocks() > cache.capacity_blocks() || used != g_refs.size()) {
    fail("blocks in use " + std::to_string(used) + " of " +
         std::to_string(cache.capacity_blocks()) + ", the model has " +
         std::to_string(g_refs.size()) + " (sequences own " + std::to_string(own_max) +
         " at most each and " + std::to_string(own_sum) + " together)");
  }
}

// Ids released or cleared: they must stay unknown (ids are never reused).
std::vector<SequenceId> g_dead;

// Picks a live id, or (bad) one the cache does not have: released before, or never made.
SequenceId pick_id(FuzzedDataProvider& fdp, const Model& model, bool bad) {
  if (bad || model.empty()) {
    if (!g_dead.empty() && fdp.ConsumeBool()) {
      return g_dead[fdp.ConsumeIntegralInRange<std::size_t>(0, g_dead.size() - 1)];
    }
    return 1000000 + fdp.ConsumeIntegral<std::uint8_t>();
  }
  auto it = model.begin();
  std::advance(it, fdp.ConsumeIntegralInRange<std::size_t>(0, model.size() - 1));
  return it->first;
}

// n distinct live ids (fewer if there are fewer).
std::vector<SequenceId> pick_ids(FuzzedDataProvider& fdp, const Model& model, std::size_t n) {
  std::vector<SequenceId> live;
  for (const auto& [id, s] : model) live.push_back(id);
  std::vector<SequenceId> ids;
  while (ids.size() < n && !live.empty()) {
    const std::size_t i = fdp.ConsumeIntegralInRange<std::size_t>(0, live.size() - 1);
    ids.push_back(live[i]);
    live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
  }
  return ids;
}

// Ways to spoil an append or an attention call; each must be refused.
enum class Spoil { none, unknown_id, repeated_id, zero_tokens, batch, heads, head_dim, shapes };

const char* spoil_name(Spoil s) {
  static const char* names[] = {"none",  "unknown id", "repeated id", "T = 0",
                                "batch", "heads",      "head_dim",    "K/V shapes differ"};
  return names[static_cast<int>(s)];
}

struct Call {
  std::vector<SequenceId> ids;
  std::size_t n = 0, t = 0;
  std::vector<float> k, v;  // [n, t, kv_heads, d], multiples of 1/8 in (-8, 8)
  ConstHeadsView kview, vview;
  Spoil spoil = Spoil::none;
};

// A call's ids (1-3 live ones), its T (1 to max_t) and, one time in 8, one of `spoils`: an
// unknown or repeated id is applied to the ids here, the others to the call's tensors.
template <std::size_t kSpoils>
void choose_ids(FuzzedDataProvider& fdp, const Model& model, std::size_t max_t,
                const Spoil (&spoils)[kSpoils], Call& c) {
  c.ids = pick_ids(fdp, model, fdp.ConsumeIntegralInRange<std::size_t>(1, 3));
  c.t = fdp.ConsumeIntegralInRange<std::size_t>(1, max_t);
  if (fdp.ConsumeIntegralInRange(0, 7) == 0) c.spoil = fdp.PickValueInArray(spoils);
  if (c.ids.empty() && c.spoil == Spoil::none) c.spoil = Spoil::unknown_id;
  if (c.spoil == Spoil::unknown_id) c.ids.push_back(pick_id(fdp, model, true));
  if (c.spoil == Spoil::repeated_id) {
    if (c.ids.empty()) c.ids.push_back(pick_id(fdp, model, true));
    c.ids.push_back(c.ids.front());
  }
  c.n = c.ids.size();
}

// Puts up to 2 NaN or +-Inf among the first `size` elements of x.
void plant_nonfinite(FuzzedDataProvider& fdp, std::vector<float>& x, std::size_t size,
                     const char* name) {
  const int count = size == 0 ? 0 : fdp.ConsumeIntegralInRange(0, 2);
  for (int c = 0; c < count; ++c) {
    const std::size_t i = fdp.ConsumeIntegralInRange<std::size_t>(0, size - 1);
    x[i] = fuzz::pick_special(fdp, true);
    describe(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(x[i]));
  }
}

// Makes a row whose scores in this call are all -inf: one component +Inf in every new key of
// one kv head, and -Inf in that component of one query of its group (q [N, T, H, d]). Where the
// row sees only this call's keys (a new sequence, a short window) its softmax is 0 / 0 (NaN), or
// with sinks 0 x v (NaN where a value it sees is NaN or Inf); the decode and paged kernels'
// slices and merges must keep that, and any NaN score among the -inf ones, as the oracle has it.
// q holds the call's h = kv heads x group query heads of head size d.
void poison_column(FuzzedDataProvider& fdp, Call& c, std::vector<float>& q, std::size_t h,
                   std::size_t group, std::size_t d) {
  const ConstHeadsView& kv = c.kview;
  if (kv.n * kv.l * kv.h == 0 || std::min(d, kv.d) == 0) return;
  const std::size_t kh = fdp.ConsumeIntegralInRange<std::size_t>(0, kv.h - 1);
  const std::size_t col = fdp.ConsumeIntegralInRange<std::size_t>(0, std::min(d, kv.d) - 1);
  for (std::size_t token = 0; token < kv.n * kv.l; ++token) {
    c.k[(token * kv.h + kh) * kv.d + col] = INFINITY;
  }
  const std::size_t row = fdp.ConsumeIntegralInRange<std::size_t>(0, kv.n * kv.l - 1);
  const std::size_t qh =
      std::min(h - 1, kh * group + fdp.ConsumeIntegralInRange<std::size_t>(0, group - 1));
  q[(row * h + qh) * d + col] = -INFINITY;
  describe("keys of kv head " + std::to_string(kh) + " +Inf in column " + std::to_string(col) +
           ", query row " + std::to_string(row) + " head " + std::to_string(qh) + " -Inf there");
  // A NaN or Inf value of that head, which the row may see at weight 0 (0 x Inf = NaN).
  const ConstHeadsView& vv = c.vview;
  if (fdp.ConsumeBool() && kh < vv.h && vv.n * vv.l * vv.d != 0) {
    const std::size_t token = fdp.ConsumeIntegralInRange<std::size_t>(0, vv.n * vv.l - 1);
    const std::size_t vcol = fdp.ConsumeIntegralInRange<std::size_t>(0, vv.d - 1);
    const std::size_t at = (token * vv.h + kh) * vv.d + vcol;
    c.v[at] = fuzz::pick_special(fdp, true);
    describe("v[" + std::to_string(at) + "] = " + std::to_string(c.v[at]));
  }
}

Call make_call(FuzzedDataProvider& fdp, const KvCache& cache, const Model& model, Random& rng,
               std::size_t max_t) {
  Call c;
  const std::size_t kvh = cache.kv_heads(), d = cache.head_dim();
  const Spoil spoils[] = {Spoil::unknown_id, Spoil::repeated_id, Spoil::zero_tokens, Spoil::batch,
                          Spoil::heads,      Spoil::head_dim,    Spoil::shapes};
  choose_ids(fdp, model, max_t, spoils, c);
  std::size_t n = c.n, t = c.t, heads = kvh, dim = d;
  if (c.spoil == Spoil::zero_tokens) t = 0;
  if (c.spoil == Spoil::batch) n += 1;
  if (c.spoil == Spoil::heads) heads += 1;
  if (c.spoil == Spoil::head_dim) dim += 1;
  c.k.resize(std::max<std::size_t>(1, n * t * heads * dim));
  c.v.resize(c.k.size() + n * heads * dim);  // room for the longer values of Spoil::shapes
  for (float& x : c.k) x = static_cast<float>(static_cast<int>(rng.uniform(-63.0, 64.0))) / 8.0f;
  for (float& x : c.v) x = static_cast<float>(static_cast<int>(rng.uniform(-63.0, 64.0))) / 8.0f;
  // One call in 8 brings NaN or Inf keys and values. They stay in the sequences' history and
  // must reach exactly the outputs the oracle says they reach, in this call and later ones.
  if (fdp.ConsumeIntegralInRange(0, 7) == 0) {
    plant_nonfinite(fdp, c.k, n * t * heads * dim, "k");
    plant_nonfinite(fdp, c.v, n * t * heads * dim, "v");
  }
  c.kview = {c.k.data(), n, t, heads, dim};
  c.vview = {c.v.data(), n, c.spoil == Spoil::shapes ? t + 1 : t, heads, dim};
  c.t = t;
  return c;
}

// Blocks that appending t tokens to each of ids' sequences takes from the free list: new blocks up
// to each new length, and a copy of each partly filled last block that another sequence holds
// too, except that of holders which all append, one writes into it in place (the model lets the
// last of them do so, the cache the longest; either way each holder ends with a block of its
// own). With `apply`, the model's block lists and counts become the cache's after the append.
std::size_t append_blocks(Model& model, const std::vector<SequenceId>& ids, std::size_t t,
                          std::size_t bt, std::size_t row, bool apply) {
  std::map<std::size_t, std::size_t> refs = g_refs;
  std::map<SequenceId, std::vector<std::size_t>> lists;
  std::size_t next = g_next_block, taken = 0;
  auto take = [&] {
    refs[next] = 1;
    ++taken;
    return next++;
  };
  for (SequenceId id : ids) {
    const Sequence& s = model.at(id);
    std::vector<std::size_t> blocks = s.blocks;
    const std::size_t length = s.k.size() / row;
    if (length % bt != 0 && refs[blocks.back()] > 1) {
      --refs[blocks.back()];
      blocks.back() = take();
    }
    while (blocks.size() < KvCache::blocks_for(length + t, bt)) blocks.push_back(take());
    lists[id] = std::move(blocks);
  }
  if (apply) {
    g_refs = std::move(refs);
    g_next_block = next;
    for (auto& [id, blocks] : lists) model.at(id).blocks = std::move(blocks);
  }
  return taken;
}

// Runs a call that appends t tokens to each of ids' sequences, and checks its verdict: a refusal
// must have a reason (a bad argument, or more blocks needed than are free) and leave the cache
// as it was; an acceptance must have neither. Returns whether the call was accepted.
template <class Fn>
bool appending_call(const KvCache& cache, Model& model, const Snapshot& before, const char* name,
                    bool spoilt, const std::vector<SequenceId>& ids, std::size_t t,
                    const Fn& call) {
  const std::size_t row = cache.kv_heads() * cache.head_dim();
  const std::size_t need =
      spoilt ? 0 : append_blocks(model, ids, t, cache.block_tokens(), row, false);
  try {
    call();
  } catch (const std::invalid_argument&) {
    if (!spoilt && need <= before.free_blocks) {
      fail(std::string(name) + " needing " + std::to_string(need) + " blocks was refused with " +
           std::to_string(before.free_blocks) + " free");
    }
    check_unchanged(cache, before, name);
    return false;
  }
  if (spoilt) fail(std::string(name) + " with a bad argument was accepted");
  if (need > before.free_blocks) {
    fail(std::string(name) + " needing " + std::to_string(need) + " blocks was accepted with " +
         std::to_string(before.free_blocks) + " free");
  }
  return true;
}

void apply_append(Model& model, const Call& c, std::size_t row, std::size_t bt) {
  append_blocks(model, c.ids, c.t, bt, row, true);
  for (std::size_t b = 0; b < c.n; ++b) {
    Sequence& s = model.at(c.ids[b]);
    const float* k = c.k.data() + b * c.t * row;
    const float* v = c.v.data() + b * c.t * row;
    s.k.insert(s.k.end(), k, k + c.t * row);
    s.v.insert(s.v.end(), v, v + c.t * row);
  }
}

// Per-head values that Options point to: ALiBi slopes and sinks.
struct PerHeadValues {
  std::vector<float> slopes, sinks;
};

// Options of an attention call or a module step over h query heads: path, ISA, threads, window,
// soft-capping, ALiBi (standard or given slopes), sinks, scale. Returns what makes them invalid
// (window 0, top-left causal), or nullptr.
const char* decode_options(FuzzedDataProvider& fdp, Random& rng, std::size_t h, Options& o,
                           PerHeadValues& values) {
  o.causal = fdp.PickValueInArray({simdattn::Causal::bottom_right, simdattn::Causal::none,
                                   simdattn::Causal::bottom_right, simdattn::Causal::top_left});
  o.path = fdp.ConsumeBool() ? simdattn::Path::naive : simdattn::Path::optimized;
  o.threads = fdp.ConsumeIntegralInRange(1, 2);
  static const std::vector<simdattn::Isa> isas = simdattn::available_isas();
  o.isa = isas[fdp.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
  if (fdp.ConsumeBool()) o.window = fdp.ConsumeIntegralInRange<std::size_t>(0, 80);
  if (fdp.ConsumeIntegralInRange(0, 3) == 0) {
    o.softcap = 1.0f + fdp.ConsumeIntegral<std::uint8_t>() / 8.0f;
  }
  if (fdp.ConsumeIntegralInRange(0, 3) == 0) {
    o.alibi.enabled = true;
    if (fdp.ConsumeBool()) {
      values.slopes.resize(h);
      for (float& x : values.slopes) x = static_cast<float>(rng.normal() * 0.5);
      o.alibi.slopes = {values.slopes.data(), h};
    }
  }
  if (fdp.ConsumeIntegralInRange(0, 3) == 0) {
    values.sinks.resize(h);
    for (float& x : values.sinks) x = static_cast<float>(rng.normal() * 2.0);
    o.sinks = {values.sinks.data(), h};
  }
  if (fdp.ConsumeBool()) o.scale = 0.05f + fdp.ConsumeIntegral<std::uint8_t>() / 512.0f;
  if (o.window && *o.window == 0) return "window 0";
  if (o.causal == simdattn::Causal::top_left) return "top-left causal";
  return nullptr;
}

std::string options_text(const Options& o) {
  return (o.window ? ", window " + std::to_string(*o.window) : "") +
         (o.softcap ? ", softcap" : "") +
         (o.alibi.enabled ? (o.alibi.slopes.data != nullptr ? ", alibi given" : ", alibi") : "") +
         (o.sinks.data != nullptr ? ", sinks" : "") +
         (o.path == simdattn::Path::naive ? ", naive " : ", optimized ") +
         simdattn::isa_name(*o.isa) + ", threads " + std::to_string(o.threads);
}

// What the oracle says of each output row (b, t, head) beside its values.
struct RowBounds {
  // The bound for float: the scores' rounding (d products summed, the ALiBi term) times the
  // values' range.
  std::vector<double> tol;
  // The row may be NaN/Inf where the oracle is finite: the optimized path multiplies the values
  // of keys the row does not see by zero inside a block of keys, and one of this sequence and kv
  // head is NaN or Inf.
  std::vector<char> may_spread;
};

// Attention of the call's new tokens over each sequence's history (the model after the append),
// in double: causal from the end, the window, soft-capping, ALiBi (query token t at position
// past + t) and sinks of `o`. NaN and Inf take IEEE arithmetic's course as in the library's
// reference: a NaN or +Inf score makes its row NaN, a -Inf score weighs 0 x its value.
std::vector<double> oracle(const Model& model, const Call& c, const std::vector<double>& q,
                           std::size_t h, std::size_t kvh, std::size_t d, const Options& o,
                           RowBounds& rows) {
  std::vector<double> out(c.n * c.t * h * d, 0.0);
  rows.tol.assign(c.n * c.t * h, 0.0);
  rows.may_spread.assign(c.n * c.t * h, 0);
  const double scale = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(d));
  const std::size_t group = h / kvh;
  std::vector<float> slopes;
  if (o.alibi.enabled) {
    slopes = o.alibi.slopes.data != nullptr
                 ? std::vector<float>(o.alibi.slopes.data, o.alibi.slopes.data + h)
                 : simdattn::alibi_slopes(h);
  }
  for (std::size_t b = 0; b < c.n; ++b) {
    const Sequence& s = model.at(c.ids[b]);
    const std::size_t length = s.k.size() / (kvh * d), past = length - c.t;
    std::vector<char> bad_value(length * kvh, 0);  // key k's value in kv head g has NaN/Inf
    for (std::size_t x = 0; x < length * kvh * d; ++x) {
      if (!std::isfinite(s.v[x])) bad_value[x / d] = 1;
    }
    for (std::size_t t = 0; t < c.t; ++t) {
      const std::size_t end = past + t + 1;  // keys [begin, end)
      const std::size_t begin = o.window && *o.window < end ? end - *o.window : 0;
      for (std::size_t head = 0; head < h; ++head) {
        const std::size_t g = head / group;
        const std::size_t r = (b * c.t + t) * h + head;
        for (std::size_t k = 0; k < length; ++k) {
          if ((k < begin || k >= end) && bad_value[k * kvh + g] != 0) {
            rows.may_spread[r] = o.path == simdattn::Path::optimized;
          }
        }
        const double* qr = q.data() + ((b * c.t + t) * h + head) * d;
        std::vector<double> p(end - begin);
        double top = -INFINITY, magnitude = 0;
        for (std::size_t k = begin; k < end; ++k) {
          double dot = 0, terms = 0;
          for (std::size_t x = 0; x < d; ++x) {
            dot += qr[x] * s.k[(k * kvh + g) * d + x];
            terms += std::abs(qr[x] * s.k[(k * kvh + g) * d + x]);
          }
          dot *= scale;
          if (!std::isfinite(terms)) terms = 0;  // the row is NaN, or capped to +-cap exactly
          magnitude = std::max(magnitude, terms * scale);
          if (o.softcap) dot = *o.softcap * std::tanh(dot / *o.softcap);
          if (!slopes.empty()) {
            const double alibi = static_cast<double>(slopes[head]) *
                                 (static_cast<double>(k) - static_cast<double>(past + t));
            dot += alibi;
            magnitude = std::max(magnitude, std::abs(alibi) + terms * scale);
          }
          p[k - begin] = dot;
          top = std::max(top, dot);
        }
        const double sink = o.sinks.data != nullptr ? o.sinks.data[head] : -INFINITY;
        top = std::max(top, sink);
        double sum = std::exp(sink - top);
        for (double& x : p) sum += (x = std::exp(x - top));
        // Values lie in (-8, 8): a score error e moves the output by at most 16 e.
        rows.tol[r] = 16.0 * (1e-6 * magnitude + 1e-6) + 1e-5;
        double* row = out.data() + r * d;
        for (std::size_t k = begin; k < end; ++k) {
          for (std::size_t x = 0; x < d; ++x) {
            row[x] += p[k - begin] / sum * s.v[(k * kvh + g) * d + x];
          }
        }
      }
    }
  }
  return out;
}

// got against the oracle's want, element by element: NaN/Inf exactly where want has them (or,
// where may_spread(i), also where want is finite), elsewhere within bound(i).
template <class Bound, class MaySpread>
void check_output(const std::vector<float>& got, const std::vector<double>& want, const char* what,
                  const Bound& bound, const MaySpread& may_spread) {
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double x = got[i];
    const bool ok = !std::isfinite(want[i])
                        ? !std::isfinite(x)
                        : (std::isfinite(x) ? std::abs(x - want[i]) <= bound(i) : may_spread(i));
    if (!ok) {
      fail(std::string(what) + " " + std::to_string(i) + " is " + std::to_string(got[i]) +
           ", the oracle " + std::to_string(want[i]) + " (tolerance " + std::to_string(bound(i)) +
           (may_spread(i) ? ", may spread NaN)" : ")"));
    }
  }
}

// y[r] = x[r] W^T + bias in double, for rows of `in` floats and W [out, in] (no bias: empty).
std::vector<double> linear(const std::vector<double>& x, std::size_t in,
                           const std::vector<float>& w, const std::vector<float>& bias) {
  const std::size_t out = w.size() / in, rows = x.size() / in;
  std::vector<double> y(rows * out);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t j = 0; j < out; ++j) {
      double sum = bias.empty() ? 0.0 : bias[j];
      for (std::size_t i = 0; i < in; ++i) sum += x[r * in + i] * w[j * in + i];
      y[r * out + j] = sum;
    }
  }
  return y;
}

// The double oracle's multiply-adds for attention of t new tokens in h heads over each of ids'
// sequences (the model's length plus t keys): inputs are skipped above a budget, so that each
// runs in milliseconds under AddressSanitizer.
double attention_work(const Model& model, const std::vector<SequenceId>& ids, std::size_t t,
                      std::size_t h, std::size_t d, std::size_t row) {
  double work = 0;
  for (SequenceId id : ids) {
    const double length = model.count(id) != 0 ? double(model.at(id).k.size() / row) : 0.0;
    work += (length + double(t)) * double(t * h * d);
  }
  return work;
}

// MultiHeadAttention::step over the cache: projects x's tokens, appends their keys and values,
// attends and projects the output. A module whose head_dim differs from the cache's, or a bad
// id, T, batch or option, must be refused. Accepted: the appended keys and values read back as
// the double projection rounded to the storage type, and the output matches the double oracle
// (projections, attention over the model, output projection).
void run_step(FuzzedDataProvider& fdp, KvCache& cache, Model& model, Random& rng,
              const Snapshot& before) {
  const std::size_t kvh = cache.kv_heads(), d = cache.head_dim(), row = kvh * d;
  Call c;  // ids, t and the spoil; K and V come from the projection
  const Spoil spoils[] = {Spoil::unknown_id, Spoil::repeated_id, Spoil::zero_tokens, Spoil::batch,
                          Spoil::head_dim};
  choose_ids(fdp, model, fdp.ConsumeBool() ? 40 : 3, spoils, c);
  const std::size_t h = kvh * fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  const std::size_t e = h * (c.spoil == Spoil::head_dim ? d + 1 : d);
  const std::size_t n = c.n + (c.spoil == Spoil::batch ? 1 : 0);
  const std::size_t t = c.spoil == Spoil::zero_tokens ? 0 : c.t;
  // The oracle's multiply-adds at most: the four projections and the attention.
  if (double(n * t) * 4.0 * double(e * e) + attention_work(model, c.ids, t, h, d, row) > 3e6) {
    return;
  }
  Options o;
  PerHeadValues per_head;
  const char* bad_option = decode_options(fdp, rng, h, o, per_head);
  const bool spoilt = c.spoil != Spoil::none || bad_option != nullptr;
  describe("step T " + std::to_string(c.t) + " over " + std::to_string(c.n) + " sequences, E " +
           std::to_string(e) + " H " + std::to_string(h) + options_text(o) + ", " +
           (bad_option != nullptr ? bad_option : spoil_name(c.spoil)));
  const simdattn::MultiHeadAttention m(e, h, simdattn::KvHeads{kvh}, rng.next());
  std::vector<float> x(std::max<std::size_t>(1, n * t * e)), out(x.size(), -7.0f);
  for (float& v : x) v = static_cast<float>(rng.normal());
  if (!appending_call(cache, model, before, "step", spoilt, c.ids, t, [&] {
        m.step(cache, c.ids, {x.data(), n, t, e}, {out.data(), n, t, e}, o);
      })) {
    return;
  }
  using simdattn::Projection;
  const std::vector<double> xd(x.begin(), x.end());
  const std::vector<double> q =
      linear(xd, e, m.weight(Projection::query), m.bias(Projection::query));
  const std::vector<double> k = linear(xd, e, m.weight(Projection::key), m.bias(Projection::key));
  const std::vector<double> v =
      linear(xd, e, m.weight(Projection::value), m.bias(Projection::value));
  // The appended tokens as stored: the projection within float and the storage type's rounding.
  const double unit = cache.storage() == KvStorage::bf16  ? 1.0 / 256
                      : cache.storage() == KvStorage::f16 ? 1.0 / 2048
                                                          : 1e-6;
  c.k.resize(n * t * row);
  c.v.resize(n * t * row);
  for (std::size_t b = 0; b < n; ++b) {
    const std::size_t length = model.at(c.ids[b]).k.size() / row;
    cache.read(c.ids[b], length, t, c.k.data() + b * t * row, c.v.data() + b * t * row);
  }
  for (std::size_t i = 0; i < c.k.size(); ++i) {
    if (!(std::abs(c.k[i] - k[i]) <= unit * std::abs(k[i]) + 1e-5) ||
        !(std::abs(c.v[i] - v[i]) <= unit * std::abs(v[i]) + 1e-5)) {
      fail("the step stored key/value " + std::to_string(i) + " as " + std::to_string(c.k[i]) +
           "/" + std::to_string(c.v[i]) + ", the projection is " + std::to_string(k[i]) + "/" +
           std::to_string(v[i]));
    }
  }
  apply_append(model, c, row, cache.block_tokens());
  RowBounds rows;
  const std::vector<double> attn = oracle(model, c, q, h, kvh, d, o, rows);
  const std::vector<float>& wo = m.weight(Projection::output);
  const std::vector<double> want = linear(attn, e, wo, m.bias(Projection::output));
  std::vector<double> weight(e, 0.0);  // each output's sum of |Wo|, which scales the heads' error
  for (std::size_t j = 0; j < e; ++j) {
    for (std::size_t i = 0; i < e; ++i) weight[j] += std::abs(double(wo[j * e + i]));
  }
  // Each token's bound and spread from its heads', through the output projection.
  std::vector<double> row_tol(n * t, 0.0);
  std::vector<char> row_spread(n * t, 0);
  for (std::size_t r = 0; r < n * t; ++r) {
    for (std::size_t head = 0; head < h; ++head) {
      row_tol[r] = std::max(row_tol[r], rows.tol[r * h + head]);
      row_spread[r] = row_spread[r] || rows.may_spread[r * h + head];
    }
  }
  check_output(
      out, want, "step output",
      [&](std::size_t i) { return row_tol[i / e] * weight[i % e] + 1e-5; },
      [&](std::size_t i) { return row_spread[i / e] != 0; });
}

void run(FuzzedDataProvider& fdp) {
  Random rng(fdp.ConsumeIntegral<std::uint32_t>());
  KvCacheConfig config;
  config.kv_heads = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
  config.head_dim = fdp.PickValueInArray<std::size_t>({1, 2, 3, 15, 16, 17, 33, 64});
  config.block_tokens = fdp.ConsumeBool() ? 64 : 128;
  config.blocks = fdp.ConsumeIntegralInRange<std::size_t>(1, 6);
  config.storage = fdp.PickValueInArray({KvStorage::f32, KvStorage::bf16, KvStorage::f16});
  describe("kv_heads " + std::to_string(config.kv_heads) + " head_dim " +
           std::to_string(config.head_dim) + " block_tokens " +
           std::to_string(config.block_tokens) + " blocks " + std::to_string(config.blocks) + " " +
           simdattn::kv_storage_name(config.storage));
  KvCache cache(config);
  Model model;
  const std::size_t kvh = config.kv_heads, d = config.head_dim, row = kvh * d;

  for (int op = 0; op < 32 && fdp.remaining_bytes() > 0; ++op) {
    const int kind = fdp.ConsumeIntegralInRange(0, 10);
    const Snapshot before = snapshot(cache);
    switch (kind) {
      case 0:
      case 1: {
        const SequenceId id = cache.add_sequence();
        if (model.count(id) != 0) fail("add_sequence returned a live id");
        model[id];
        describe("add_sequence -> " + std::to_string(id));
        break;
      }
      case 2: {
        const bool bad = fdp.ConsumeIntegralInRange(0, 7) == 0;
        const SequenceId parent = pick_id(fdp, model, bad);
        describe("fork " + std::to_string(parent));
        if (model.count(parent) == 0) {
          expect_refused(cache, before, "fork", [&] { cache.fork(parent); });
          break;
        }
        const SequenceId id = cache.fork(parent);
        if (model.count(id) != 0) fail("fork returned a live id");
        model[id] = model.at(parent);
        hold_blocks(model.at(id));
        break;
      }
      case 3: {
        const bool bad = fdp.ConsumeIntegralInRange(0, 7) == 0;
        const SequenceId id = pick_id(fdp, model, bad);
        describe("release " + std::to_string(id));
        if (model.count(id) == 0) {
          expect_refused(cache, before, "release", [&] { cache.release(id); });
          break;
        }
        cache.release(id);
        drop_blocks(model.at(id), 0);
        model.erase(id);
        g_dead.push_back(id);
        break;
      }
      case 4: {
        const SequenceId id = pick_id(fdp, model, false);
        const std::size_t have = model.count(id) != 0 ? model.at(id).k.size() / row : 0;
        const std::size_t length = fdp.ConsumeIntegralInRange<std::size_t>(0, have + 2);
        describe("truncate " + std::to_string(id) + " to " + std::to_string(length));
        if (model.count(id) == 0 || length > have) {
          expect_refused(cache, before, "truncate", [&] { cache.truncate(id, length); });
          break;
        }
        cache.truncate(id, length);
        drop_blocks(model.at(id), KvCache::blocks_for(length, config.block_tokens));
        model.at(id).k.resize(length * row);
        model.at(id).v.resize(length * row);
        break;
      }
      case 5:
        if (fdp.ConsumeIntegralInRange(0, 3) != 0) break;  // rarely: it ends the program's state
        describe("clear");
        cache.clear();
        for (const auto& [id, seq] : model) g_dead.push_back(id);
        model.clear();
        g_refs.clear();
        break;
      case 6:
      case 7: {
        Call c = make_call(fdp, cache, model, rng, 140);
        describe("append T " + std::to_string(c.t) + " to " + std::to_string(c.n) + " sequences, " +
                 spoil_name(c.spoil));
        const bool spoilt = c.spoil != Spoil::none;
        if (!appending_call(cache, model, before, "append", spoilt, c.ids, c.t,
                            [&] { cache.append(c.ids, c.kview, c.vview); })) {
          break;
        }
        apply_append(model, c, row, cache.block_tokens());
        break;
      }
      case 10:
        run_step(fdp, cache, model, rng, before);
        break;
      default: {  // attention over the cache, which appends the call's keys and values first
        Call c = make_call(fdp, cache, model, rng, fdp.ConsumeBool() ? 70 : 4);
        const std::size_t group = fdp.ConsumeIntegralInRange<std::size_t>(1, 3);
        const std::size_t h = kvh * group;
        if (attention_work(model, c.ids, c.t, h, d, row) > 3e6) break;
        Options o;
        PerHeadValues per_head;
        const char* bad_option = decode_options(fdp, rng, h, o, per_head);
        const bool spoilt = c.spoil != Spoil::none || bad_option != nullptr;
        describe("attention T " + std::to_string(c.t) + " over " + std::to_string(c.n) +
                 " sequences, H " + std::to_string(h) + options_text(o) + ", " +
                 (bad_option != nullptr ? bad_option : spoil_name(c.spoil)));
        const std::size_t n = c.kview.n, t = c.kview.l;
        std::vector<float> q(std::max<std::size_t>(1, n * t * h * d));
        for (float& x : q) x = static_cast<float>(rng.normal());
        if (fdp.ConsumeIntegralInRange(0, 7) == 0) plant_nonfinite(fdp, q, n * t * h * d, "q");
        if (fdp.ConsumeIntegralInRange(0, 7) == 0) poison_column(fdp, c, q, h, group, d);
        std::vector<float> out(q.size(), -7.0f);
        if (!appending_call(cache, model, before, "attention", spoilt, c.ids, c.t, [&] {
              simdattn::scaled_dot_product_attention(cache, c.ids, {q.data(), n, t, h, d}, c.kview,
                                                     c.vview,
                                                     HeadsView<float>{out.data(), n, t, h, d}, o);
            })) {
          break;
        }
        // The same call again on the other thread count, after truncating the sequences back:
        // the same bits (and the cache as after the first call).
        for (std::size_t b = 0; b < c.n; ++b) {
          cache.truncate(c.ids[b], model.at(c.ids[b]).k.size() / row);
        }
        std::vector<float> again(out.size(), -7.0f);
        o.threads = 3 - o.threads;
        simdattn::scaled_dot_product_attention(cache, c.ids, {q.data(), n, t, h, d}, c.kview,
                                               c.vview, HeadsView<float>{again.data(), n, t, h, d},
                                               o);
        if (std::memcmp(again.data(), out.data(), out.size() * sizeof(float)) != 0) {
          fail("attention on 1 and 2 threads gave different bits");
        }
        apply_append(model, c, row, cache.block_tokens());
        RowBounds rows;
        const std::vector<double> want =
            oracle(model, c, std::vector<double>(q.begin(), q.end()), h, kvh, d, o, rows);
        check_output(
            out, want, "attention output", [&](std::size_t i) { return rows.tol[i / d]; },
            [&](std::size_t i) { return rows.may_spread[i / d] != 0; });
        break;
      }
    }
    check_model(cache, model);
  }
  if (model.empty() && cache.free_blocks() != cache.capacity_blocks()) {
    fail("no sequences, but " + std::to_string(cache.free_blocks()) + " of " +
         std::to_string(cache.capacity_blocks()) + " blocks free");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::g_target = "fuzz_kv_cache";
  fuzz::g_case.clear();
  g_dead.clear();
  g_refs.clear();
  g_next_block = 0;
  FuzzedDataProvider fdp(data, size);
  try {
    run(fdp);
  } catch (const std::exception& e) {
    fail(std::string("unexpected exception: ") + e.what());
  }
  return 0;
}
