// KvCache: the block pool, the sequences' block lists, append (with copy-on-write of a shared
// last block) and read-back. Every change is planned and checked first, then made by code that
// cannot fail, so a refused call leaves the cache as it was.
#include "simdattn/kv_cache.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <set>
#include <string>

#include "driver/parallel.hpp"
#include "half.hpp"
#include "kv_cache_impl.hpp"
#include "validate.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace simdattn {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHugePage = std::size_t{2} << 20;  // x86-64 and most AArch64 kernels
// Rows are padded to this many elements, so that every vector load of a row is aligned and
// whole (16 floats: one zmm; the padding stays zero).
constexpr std::size_t kRowQuantum = 16;
// Block ids are 32-bit; the top value marks "no block".
constexpr std::size_t kMaxBlocks = 0xfffffffeu;

std::string id_text(SequenceId id) {
  return std::to_string(id);
}

// Stores x[0, d) as elements 0, stride, 2 stride, ... of dst, converted to the storage type.
void store(std::byte* dst, std::size_t stride, const float* x, std::size_t d, KvStorage storage) {
  switch (storage) {
    case KvStorage::f32: {
      auto* f = reinterpret_cast<float*>(dst);
      for (std::size_t i = 0; i < d; ++i) f[i * stride] = x[i];
      return;
    }
    case KvStorage::bf16: {
      auto* h = reinterpret_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < d; ++i) h[i * stride] = detail::float_to_bf16(x[i]);
      return;
    }
    case KvStorage::f16: {
      auto* h = reinterpret_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < d; ++i) h[i * stride] = detail::float_to_f16(x[i]);
      return;
    }
  }
}

}  // namespace

const char* kv_storage_name(KvStorage storage) {
  switch (storage) {
    case KvStorage::f32:
      return "f32";
    case KvStorage::bf16:
      return "bf16";
    case KvStorage::f16:
      return "f16";
  }
  return "unknown";
}

void KvCache::Impl::FreeBytes::operator()(std::byte* p) const {
  std::free(p);
}

KvCache::Impl::Sequence& KvCache::Impl::find(const char* where, SequenceId id) {
  const auto it = sequences.find(id);
  if (it == sequences.end()) {
    detail::fail(where, "unknown sequence id " + id_text(id) + " (the cache holds " +
                            std::to_string(sequences.size()) + " sequences)");
  }
  return it->second;
}

const KvCache::Impl::Sequence& KvCache::Impl::find(const char* where, SequenceId id) const {
  return const_cast<Impl*>(this)->find(where, id);
}

KvCache::KvCache(const KvCacheConfig& config) : impl_(std::make_unique<Impl>()) {
  const char* where = "KvCache";
  if (config.blocks == 0) detail::fail(where, "config.blocks must be > 0, got 0");
  if (config.kv_heads == 0) detail::fail(where, "config.kv_heads must be > 0, got 0");
  if (config.head_dim == 0) detail::fail(where, "config.head_dim must be > 0, got 0");
  if (config.block_tokens == 0 || config.block_tokens % 64 != 0) {
    detail::fail(where, "config.block_tokens must be a positive multiple of 64, got " +
                            std::to_string(config.block_tokens));
  }
  if (config.storage != KvStorage::f32 && config.storage != KvStorage::bf16 &&
      config.storage != KvStorage::f16) {
    detail::fail(where, "config.storage is not a KvStorage value (" +
                            std::to_string(static_cast<int>(config.storage)) + ")");
  }
  if (config.blocks > kMaxBlocks) {
    detail::fail(where, "config.blocks (" + std::to_string(config.blocks) + ") exceeds " +
                            std::to_string(kMaxBlocks));
  }
  Impl& c = *impl_;
  c.config = config;
  c.elem_bytes = config.storage == KvStorage::f32 ? 4 : 2;
  c.row_elems = (config.head_dim + kRowQuantum - 1) / kRowQuantum * kRowQuantum;
  if (c.row_elems < config.head_dim) detail::fail(where, "config.head_dim overflows");
  c.key_bytes = detail::checked_mul(where, "block_tokens * head_dim", config.block_tokens,
                                    config.head_dim, c.elem_bytes);
  c.value_bytes = detail::checked_mul(where, "block_tokens * head_dim", config.block_tokens,
                                      c.row_elems, c.elem_bytes);
  const std::size_t block =
      detail::checked_mul(where, "block bytes", config.kv_heads, c.key_bytes + c.value_bytes, 1);
  if (block > std::numeric_limits<std::size_t>::max() - kPage) {
    detail::fail(where, "the block size overflows");
  }
  c.block_bytes = (block + kPage - 1) / kPage * kPage;
  c.pool_bytes = detail::checked_mul(where, "blocks * block bytes", config.blocks, c.block_bytes);
  // A pool of a huge page or more starts on one and asks for transparent huge pages: a decode
  // step reads each block as runs of 16 KiB spread over the pool, and with 4 KiB pages each run
  // costs TLB misses, nested page walks in a VM (f32 decode, Lk = 4096, 16 kv heads, 1 thread,
  // Zen 5 VM: median 1.5 -> 1.1 ms; a plain sequential read gains 3-10%). Only advice: where
  // the kernel has them off, nothing changes. The size is rounded up to the alignment, so the
  // last huge page may hold up to 2 MiB past the pool.
  const std::size_t align = c.pool_bytes >= kHugePage ? kHugePage : kPage;
  const std::size_t allocated = (c.pool_bytes + align - 1) / align * align;
  if (allocated < c.pool_bytes) detail::fail(where, "the pool size overflows");
  auto* p = static_cast<std::byte*>(std::aligned_alloc(align, allocated));
  if (p == nullptr) throw std::bad_alloc();
  c.pool.reset(p);
  // The bookkeeping (8 bytes a block) after the pool: a pool too large to allocate fails at once,
  // before gigabytes of it are written.
  c.refs.assign(config.blocks, 0);
  c.free.resize(config.blocks);
  for (std::size_t i = 0; i < config.blocks; ++i) {
    c.free[i] = static_cast<std::uint32_t>(config.blocks - 1 - i);  // block 0 is taken first
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHugePage) madvise(p, allocated, MADV_HUGEPAGE);
#endif
  // Zero now: the pages are committed here rather than at the first decode steps, and the rows'
  // padding is zero for good (the kernels read whole padded rows).
  std::memset(p, 0, c.pool_bytes);
}

KvCache::~KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;

std::size_t KvCache::blocks_for(std::size_t tokens, std::size_t block_tokens) {
  if (block_tokens == 0) detail::fail("KvCache::blocks_for", "block_tokens must be > 0, got 0");
  return tokens / block_tokens + (tokens % block_tokens != 0 ? 1 : 0);
}

// A moved-from cache (impl_ null) reads as empty through the noexcept getters; every other
// call throws (KvCacheAccess::impl).
const KvCacheConfig& KvCache::config() const noexcept {
  static const KvCacheConfig none{};
  return impl_ ? impl_->config : none;
}

std::size_t KvCache::free_blocks() const noexcept {
  return impl_ ? impl_->free.size() : 0;
}

SequenceId KvCache::add_sequence() {
  Impl& c = detail::KvCacheAccess::impl(*this, "KvCache::add_sequence");
  c.sequences.emplace(c.next_id, Impl::Sequence{});
  return c.next_id++;
}

SequenceId KvCache::fork(SequenceId parent) {
  const char* where = "KvCache::fork";
  Impl& c = detail::KvCacheAccess::impl(*this, where);
  Impl::Sequence copy = c.find(where, parent);
  c.sequences.emplace(c.next_id, std::move(copy));  // may throw: nothing changed yet
  for (std::uint32_t b : c.sequences[c.next_id].blocks) ++c.refs[b];
  return c.next_id++;
}

void KvCache::release(SequenceId id) {
  const char* where = "KvCache::release";
  Impl& c = detail::KvCacheAccess::impl(*this, where);
  Impl::Sequence& s = c.find(where, id);
  for (std::uint32_t b : s.blocks) c.drop_block(b);
  c.sequences.erase(id);
}

void KvCache::truncate(SequenceId id, std::size_t length) {
  const char* where = "KvCache::truncate";
  Impl& c = detail::KvCacheAccess::impl(*this, where);
  Impl::Sequence& s = c.find(where, id);
  if (length > s.length) {
    detail::fail(where, "length " + std::to_string(length) + " exceeds sequence " + id_text(id) +
                            "'s length " + std::to_string(s.length));
  }
  const std::size_t keep = blocks_for(length, c.config.block_tokens);
  for (std::size_t i = keep; i < s.blocks.size(); ++i) c.drop_block(s.blocks[i]);
  s.blocks.resize(keep);
  s.length = length;
}

void KvCache::clear() noexcept {
  if (!impl_) return;
  Impl& c = *impl_;
  for (auto& entry : c.sequences) {
    for (std::uint32_t b : entry.second.blocks) c.drop_block(b);
  }
  c.sequences.clear();
}

bool KvCache::contains(SequenceId id) const noexcept {
  return impl_ && impl_->sequences.count(id) != 0;
}

std::size_t KvCache::length(SequenceId id) const {
  const char* where = "KvCache::length";
  return detail::KvCacheAccess::impl(*this, where).find(where, id).length;
}

std::vector<SequenceId> KvCache::sequences() const {
  const Impl& c = detail::KvCacheAccess::impl(*this, "KvCache::sequences");
  std::vector<SequenceId> out;
  out.reserve(c.sequences.size());
  for (const auto& entry : c.sequences) out.push_back(entry.first);
  return out;
}

void KvCache::append(const std::vector<SequenceId>& ids, const ConstHeadsView& keys,
                     const ConstHeadsView& values) {
  const char* where = "KvCache::append";
  Impl& c = detail::KvCacheAccess::impl(*this, where);
  detail::AppendPlan plan = detail::plan_append(where, c, ids, keys, values);
  detail::commit_append(c, plan);
}

void KvCache::read(SequenceId id, std::size_t begin, std::size_t count, float* keys,
                   float* values) const {
  const char* where = "KvCache::read";
  const Impl& c = detail::KvCacheAccess::impl(*this, where);
  const Impl::Sequence& s = c.find(where, id);
  if (begin > s.length || count > s.length - begin) {
    detail::fail(where, "tokens [" + std::to_string(begin) + ", " + std::to_string(begin) + " + " +
                            std::to_string(count) + ") are not inside sequence " + id_text(id) +
                            " of length " + std::to_string(s.length));
  }
  if (count != 0 && (keys == nullptr || values == nullptr)) {
    detail::fail(where, std::string(keys == nullptr ? "keys" : "values") + " is null");
  }
  // Each output holds count x kv_heads x head_dim floats (a product below the pool's size).
  const std::size_t floats = count * c.config.kv_heads * c.config.head_dim;
  if (detail::overlaps(keys, floats * sizeof(float), values, floats * sizeof(float))) {
    detail::fail(where, "keys and values overlap: each takes " + std::to_string(floats) +
                            " floats ([count, kv_heads, head_dim] = [" + std::to_string(count) +
                            ", " + std::to_string(c.config.kv_heads) + ", " +
                            std::to_string(c.config.head_dim) + "])");
  }
  detail::read_tokens(c, s, begin, count, keys, values, 1);
}

const void* KvCache::storage_data() const noexcept {
  return impl_ ? impl_->pool.get() : nullptr;
}

std::size_t KvCache::storage_bytes() const noexcept {
  return impl_ ? impl_->pool_bytes : 0;
}

namespace detail {

AppendPlan plan_append(const char* where, KvCache::Impl& c, const std::vector<SequenceId>& ids,
                       const ConstHeadsView& keys, const ConstHeadsView& values) {
  AppendPlan plan;
  plan.keys = resolve_heads(where, "keys", keys);
  plan.values = resolve_heads(where, "values", values);
  const auto& k = plan.keys;
  const auto& v = plan.values;
  if (k.n != v.n || k.l != v.l || k.h != v.h || k.d != v.d) {
    fail(where, "keys " + shape_string(k.n, k.l, k.h, k.d) + " and values " +
                    shape_string(v.n, v.l, v.h, v.d) + " must have the same shape [N, T, H, D]");
  }
  if (k.h != c.config.kv_heads || k.d != c.config.head_dim) {
    fail(where, "keys and values " + shape_string(k.n, k.l, k.h, k.d) + " have " +
                    std::to_string(k.h) + " heads of head_dim " + std::to_string(k.d) +
                    ", the cache holds kv_heads " + std::to_string(c.config.kv_heads) +
                    " of head_dim " + std::to_string(c.config.head_dim));
  }
  if (ids.size() != k.n) {
    fail(where, std::to_string(ids.size()) + " sequence ids for a batch of N = " +
                    std::to_string(k.n) + " (keys " + shape_string(k.n, k.l, k.h, k.d) + ")");
  }
  std::set<SequenceId> seen;
  // The call's sequences whose partly filled last block is shared, by block.
  std::map<std::uint32_t, std::vector<std::size_t>> shared_last;
  const std::size_t bt = c.config.block_tokens;
  std::size_t needed = 0;
  plan.undo.entries.reserve(ids.size());
  plan.sequences.reserve(ids.size());
  for (SequenceId id : ids) {
    if (!seen.insert(id).second) {
      fail(where, "sequence id " + id_text(id) + " appears twice in one call");
    }
    KvCache::Impl::Sequence& s = c.find(where, id);
    if (s.length > std::numeric_limits<std::size_t>::max() / 2 - k.l) {
      fail(where, "sequence " + id_text(id) + "'s length overflows");
    }
    const std::size_t new_length = s.length + k.l;
    const std::size_t new_blocks = KvCache::blocks_for(new_length, bt);
    needed += new_blocks - s.blocks.size();
    if (s.length % bt != 0 && c.refs[s.blocks.back()] > 1) {
      shared_last[s.blocks.back()].push_back(plan.sequences.size());
    }
    plan.sequences.push_back(&s);
    AppendUndo::Entry e;
    e.id = id;
    e.old_length = s.length;
    e.old_blocks = s.blocks.size();
    plan.undo.entries.push_back(e);
  }
  // Writing into a partly filled last block that another sequence shares copies it first. Where
  // every holder of the block appends in this call, the longest of them writes into it in place
  // instead (its new tokens go past every other holder's, so taking the append back restores
  // them all), and the others copy it: two forks of one prompt take one copy, not two.
  plan.copy_last.assign(ids.size(), 0);
  for (const auto& [block, holders] : shared_last) {
    // No writer in place where a holder outside the call keeps the block.
    std::size_t in_place = std::numeric_limits<std::size_t>::max();
    if (holders.size() == c.refs[block]) {
      in_place = holders[0];
      for (std::size_t i : holders) {
        if (plan.sequences[i]->length > plan.sequences[in_place]->length) in_place = i;
      }
    }
    for (std::size_t i : holders) {
      if (i != in_place) {
        plan.copy_last[i] = 1;
        ++needed;
      }
    }
  }
  if (needed > c.free.size()) {
    fail(where, "out of blocks: appending " + std::to_string(k.l) + " tokens to " +
                    std::to_string(ids.size()) + " sequences needs " + std::to_string(needed) +
                    " free blocks of " + std::to_string(bt) + " tokens, the cache has " +
                    std::to_string(c.free.size()) + " free of " + std::to_string(c.config.blocks));
  }
  // The only allocations of the append happen here, before anything changes.
  for (std::size_t i = 0; i < ids.size(); ++i) {
    plan.sequences[i]->blocks.reserve(KvCache::blocks_for(plan.sequences[i]->length + k.l, bt));
  }
  return plan;
}

void reserve_append(KvCache::Impl& c, AppendPlan& plan) noexcept {
  const std::size_t bt = c.config.block_tokens;
  for (std::size_t i = 0; i < plan.sequences.size(); ++i) {
    KvCache::Impl::Sequence& s = *plan.sequences[i];
    AppendUndo::Entry& undo = plan.undo.entries[i];
    if (plan.copy_last[i] != 0) {
      const std::uint32_t shared = s.blocks.back();
      std::uint32_t copy;
      c.take_block(copy);
      std::memcpy(c.block(copy), c.block(shared), c.block_bytes);
      --c.refs[shared];  // still > 0: another sequence holds it
      s.blocks.back() = copy;
      undo.replaced = shared;
    }
    const std::size_t new_length = s.length + plan.keys.l;
    while (s.blocks.size() < KvCache::blocks_for(new_length, bt)) {
      std::uint32_t b;
      c.take_block(b);
      s.blocks.push_back(b);  // capacity reserved by plan_append: no allocation
    }
    s.length = new_length;
  }
}

void write_appended(KvCache::Impl& c, const AppendPlan& plan, std::size_t i, std::size_t h_begin,
                    std::size_t h_end, std::size_t pos_begin, std::size_t pos_end) noexcept {
  const std::size_t bt = c.config.block_tokens;
  const auto& k = plan.keys;
  const auto& v = plan.values;
  const KvCache::Impl::Sequence& s = *plan.sequences[i];
  const std::size_t first_new = s.length - k.l;
  const std::size_t begin = std::max(pos_begin, first_new), end = std::min(pos_end, s.length);
  for (std::size_t pos = begin; pos < end; ++pos) {
    const std::size_t t = pos - first_new;
    std::byte* block = c.block(s.blocks[pos / bt]);
    const std::size_t j = pos % bt;
    for (std::size_t h = h_begin; h < h_end; ++h) {
      store(block + c.key_offset(h) + j * c.elem_bytes, bt, k.at(i, t, h), k.d, c.config.storage);
      store(block + c.value_offset(h) + j * c.row_elems * c.elem_bytes, 1, v.at(i, t, h), v.d,
            c.config.storage);
    }
  }
}

void write_all_appended(KvCache::Impl& c, const AppendPlan& plan) noexcept {
  for (std::size_t i = 0; i < plan.sequences.size(); ++i) {
    write_appended(c, plan, i, 0, plan.keys.h, 0, plan.sequences[i]->length);
  }
}

void commit_append(KvCache::Impl& c, AppendPlan& plan) noexcept {
  reserve_append(c, plan);
  write_all_appended(c, plan);
}

void undo_append(KvCache::Impl& c, const AppendUndo& undo) noexcept {
  // Blocks go back in the reverse order of their taking, so the free list is as it was.
  for (auto e = undo.entries.rbegin(); e != undo.entries.rend(); ++e) {
    KvCache::Impl::Sequence& s = c.sequences.find(e->id)->second;
    while (s.blocks.size() > e->old_blocks) {
      c.drop_block(s.blocks.back());
      s.blocks.pop_back();
    }
    if (e->replaced != AppendUndo::kNoBlock) {
      c.drop_block(s.blocks.back());
      ++c.refs[e->replaced];
      s.blocks.back() = e->replaced;
    }
    s.length = e->old_length;
  }
}

namespace {

struct AsFloat {
  float operator()(float x) const { return x; }
};
struct Bf16AsFloat {
  float operator()(std::uint16_t x) const { return bf16_to_float(x); }
};
struct F16AsFloat {
  float operator()(std::uint16_t x) const { return f16_to_float(x); }
};

// Tokens [i0, i0 + n) of one block of one head: keys from the transposed [d][bt] rows, values
// from [bt][row_elems] rows, to float rows `stride` apart. Reads stay inside the block's 2 x
// bt x d elements (L1), the element type is fixed: no per-element dispatch.
template <class E, class Convert>
void read_piece(const std::byte* key_rows, const std::byte* value_rows, std::size_t bt,
                std::size_t row_elems, std::size_t i0, std::size_t n, std::size_t d, float* k,
                float* v, std::size_t stride, Convert convert) {
  const E* kt = reinterpret_cast<const E*>(key_rows);
  const E* vr = reinterpret_cast<const E*>(value_rows);
  for (std::size_t t = 0; t < n; ++t) {
    float* ko = k + t * stride;
    float* vo = v + t * stride;
    const E* vt = vr + (i0 + t) * row_elems;
    for (std::size_t dd = 0; dd < d; ++dd) ko[dd] = convert(kt[dd * bt + i0 + t]);
    for (std::size_t dd = 0; dd < d; ++dd) vo[dd] = convert(vt[dd]);
  }
}

}  // namespace

void read_tokens(const KvCache::Impl& c, const KvCache::Impl::Sequence& s, std::size_t begin,
                 std::size_t count, float* keys, float* values, int threads) {
  const std::size_t bt = c.config.block_tokens, heads = c.config.kv_heads, d = c.config.head_dim;
  if (count == 0) return;
  // Tasks: (block of the range, head); a block's piece is its tokens inside [begin, end).
  const std::size_t first = begin / bt, last = (begin + count - 1) / bt;
  const std::size_t pieces = last - first + 1;
  if (static_cast<double>(count) * heads * d < (1 << 16)) threads = 1;
  parallel_tasks(pieces * heads, threads, /*dynamic=*/false, [&](std::size_t task) {
    const std::size_t piece = first + task / heads, h = task % heads;
    const std::size_t p0 = std::max(begin, piece * bt);
    const std::size_t p1 = std::min(begin + count, (piece + 1) * bt);
    const std::byte* block = c.block(s.blocks[piece]);
    const std::size_t stride = heads * d;
    float* k = keys + (p0 - begin) * stride + h * d;
    float* v = values + (p0 - begin) * stride + h * d;
    const std::byte* kr = block + c.key_offset(h);
    const std::byte* vr = block + c.value_offset(h);
    const std::size_t i0 = p0 % bt, n = p1 - p0;
    switch (c.config.storage) {
      case KvStorage::f32:
        read_piece<float>(kr, vr, bt, c.row_elems, i0, n, d, k, v, stride, AsFloat{});
        break;
      case KvStorage::bf16:
        read_piece<std::uint16_t>(kr, vr, bt, c.row_elems, i0, n, d, k, v, stride, Bf16AsFloat{});
        break;
      case KvStorage::f16:
        read_piece<std::uint16_t>(kr, vr, bt, c.row_elems, i0, n, d, k, v, stride, F16AsFloat{});
        break;
    }
  });
}

}  // namespace detail
}  // namespace simdattn
