// KvCache's storage, for the library's own code (the cache's API, the attention drivers over
// it, the module's step). See include/simdattn/kv_cache.hpp for the layout and the guarantees.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "mask_rule.hpp"
#include "simdattn/kv_cache.hpp"
#include "validate.hpp"
#include "views.hpp"

namespace simdattn {

struct KvCache::Impl {
  struct FreeBytes {
    void operator()(std::byte* p) const;
  };
  struct Sequence {
    std::vector<std::uint32_t> blocks;  // blocks.size() == blocks_for(length) always
    std::size_t length = 0;
  };

  KvCacheConfig config;
  std::size_t elem_bytes = 0;   // 4 or 2
  std::size_t row_elems = 0;    // head_dim rounded up to 16: one token's value row of one head
  std::size_t key_bytes = 0;    // one head's keys in a block, transposed: [head_dim][block_tokens]
  std::size_t value_bytes = 0;  // one head's values in a block: [block_tokens][row_elems]
  std::size_t block_bytes = 0;  // kv_heads x (key_bytes + value_bytes), rounded up to 4 KiB
  std::unique_ptr<std::byte, FreeBytes> pool;
  std::size_t pool_bytes = 0;
  std::vector<std::uint32_t> refs;  // per block: how many sequences hold it
  std::vector<std::uint32_t> free;  // free blocks, taken from the back
  std::map<SequenceId, Sequence> sequences;
  SequenceId next_id = 0;

  std::byte* block(std::uint32_t b) const { return pool.get() + b * block_bytes; }
  /// Bytes of one head in a block: its keys, then its values.
  std::size_t head_bytes() const { return key_bytes + value_bytes; }
  /// Byte offsets inside a block of head h's keys (element (dd, t) at dd x block_tokens + t) and
  /// values (element (t, dd) at t x row_elems + dd).
  std::size_t key_offset(std::size_t h) const { return h * head_bytes(); }
  std::size_t value_offset(std::size_t h) const { return key_offset(h) + key_bytes; }

  /// The sequence, or an error naming `where` and the id.
  Sequence& find(const char* where, SequenceId id);
  const Sequence& find(const char* where, SequenceId id) const;

  void take_block(std::uint32_t& out) {
    out = free.back();
    free.pop_back();
    refs[out] = 1;
  }
  void drop_block(std::uint32_t b) noexcept {
    if (--refs[b] == 0) free.push_back(b);
  }
};

namespace detail {

/// A cache's storage; a moved-from cache has none: an std::invalid_argument naming `where`.
struct KvCacheAccess {
  static const KvCache::Impl& impl(const KvCache& c, const char* where) {
    if (!c.impl_) fail(where, "the cache was moved from (it may only be destroyed or assigned)");
    return *c.impl_;
  }
  static KvCache::Impl& impl(KvCache& c, const char* where) {
    return const_cast<KvCache::Impl&>(impl(std::as_const(c), where));
  }
};

/// What an append changed, so that a failure after it (attention over the cache running out of
/// memory for scratch) can put the sequences and the free list back as they were. The bytes of
/// the blocks it had taken are not restored: free blocks hold nothing.
struct AppendUndo {
  static constexpr std::uint32_t kNoBlock = 0xffffffffu;
  struct Entry {
    SequenceId id = 0;
    std::size_t old_length = 0;
    std::size_t old_blocks = 0;
    std::uint32_t replaced = kNoBlock;  // the shared last block that copy-on-write replaced
  };
  std::vector<Entry> entries;  // in the order of the call's ids
};

/// A validated append: the views resolved, the sequences found, room reserved for the undo
/// record and the block lists.
struct AppendPlan {
  Heads<const float> keys, values;
  std::vector<KvCache::Impl::Sequence*> sequences;
  /// Per sequence: its partly filled last block is shared and gets copied before the append.
  std::vector<char> copy_last;
  AppendUndo undo;
};

/// Checks an append of keys/values [N, T, kv_heads, D] to `ids` without changing anything
/// observable; throws std::invalid_argument naming `where` on any problem, including too few
/// free blocks.
AppendPlan plan_append(const char* where, KvCache::Impl& cache, const std::vector<SequenceId>& ids,
                       const ConstHeadsView& keys, const ConstHeadsView& values);

/// Performs a planned append; cannot fail (plan_append allocated everything it needs). Fills
/// plan.undo.
void commit_append(KvCache::Impl& cache, AppendPlan& plan) noexcept;

/// commit_append without the new tokens' bytes: the sequences' lengths and blocks (copy-on-write
/// of a shared last block included) as after it; write_appended fills the bytes in.
void reserve_append(KvCache::Impl& cache, AppendPlan& plan) noexcept;

/// After reserve_append: writes the new keys and values of plan.sequences[i] at positions
/// [pos_begin, pos_end) (those of the new tokens among them) for kv heads [h_begin, h_end).
/// Calls on disjoint heads or positions may run at once.
void write_appended(KvCache::Impl& cache, const AppendPlan& plan, std::size_t i,
                    std::size_t h_begin, std::size_t h_end, std::size_t pos_begin,
                    std::size_t pos_end) noexcept;

/// After reserve_append: writes every new token of every sequence of the plan.
void write_all_appended(KvCache::Impl& cache, const AppendPlan& plan) noexcept;

/// Restores the sequences and the free list as they were before commit_append(plan) or
/// reserve_append(plan).
void undo_append(KvCache::Impl& cache, const AppendUndo& undo) noexcept;

/// Checks the options of a call over the cache with `heads` query heads: causal none or
/// bottom_right (the call is always causal, bottom-right aligned); the sliding window,
/// soft-capping, ALiBi and sinks as every call checks them; no bias, key padding or weights (not
/// supported over a cache: an error naming the option); then scale and threads as every call does.
struct CacheCallOptions {
  float scale;
  int threads;
  /// Causal bottom-right with the call's window, softcap, ALiBi slopes and sinks; lq and lk are
  /// each sequence's own (new_tokens_rule in cached_attention.cpp sets them).
  MaskRule rule;
};
CacheCallOptions check_cache_options(const char* where, const Options& options, std::size_t heads,
                                     std::size_t head_dim);

/// Tokens [begin, begin + count) of a sequence as float, keys and values [count, kv_heads, D],
/// on `threads` threads (a block and head per task).
void read_tokens(const KvCache::Impl& cache, const KvCache::Impl::Sequence& s, std::size_t begin,
                 std::size_t count, float* keys, float* values, int threads);

/// Attention of q [N, T, H, D] over the cache after reserve_append(plan) of T tokens to each of
/// plan.sequences (batch b's history is sequences[b]'s whole length, the last T tokens new),
/// whose keys and values it writes first (the paged kernel's tasks each write theirs right
/// before reading them, so a short sequence's new lines are fetched once, not for a separate
/// write pass and again for the attention):
/// causal, bottom-right aligned, each new token seeing at most the last `rule.window` keys up to
/// itself (0: no window; the keys before the first new token's window are never read), with the
/// rule's soft-capping, ALiBi (key k's position is its index in the history, new token t's is
/// length - T + t) and sinks; query head h reads kv head h / (H / kv_heads). `rule` comes from
/// check_cache_options. On `table`'s kernels, or the reference when it is nullptr. Throws only
/// std::bad_alloc (scratch).
void run_cached_attention(const kernels::KernelTable* table, KvCache::Impl& cache,
                          const AppendPlan& plan, const Heads<const float>& q,
                          const Heads<float>& out, float scale, int threads, const MaskRule& rule);

}  // namespace detail
}  // namespace simdattn
