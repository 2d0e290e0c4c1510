// simdattn: a paged key/value cache for generating tokens one at a time, and attention over it.
//
// A decoder that generates text attends, at each step, from the new token(s) to every earlier
// token of its sequence. Recomputing the earlier tokens' keys and values every step costs
// O(L x E^2); a KV cache keeps them, so a step projects only the new tokens and reads the cache
// once: its time is the cache's bytes over the memory bandwidth.
//
//     simdattn::MultiHeadAttention attn(1024, 16, simdattn::KvHeads{4});  // or any module
//     simdattn::KvCacheConfig config;
//     config.blocks = simdattn::KvCache::blocks_for(/*tokens=*/4096) * 8;  // 8 sequences
//     config.kv_heads = attn.kv_heads();
//     config.head_dim = attn.head_dim();
//     config.storage = simdattn::KvStorage::bf16;  // half the bytes of f32
//     simdattn::KvCache cache(config);
//     const simdattn::SequenceId seq = cache.add_sequence();
//     simdattn::Tensor out = attn.step(cache, {seq}, prompt);  // [1, T, E]: prefill, any T
//     out = attn.step(cache, {seq}, next_token);               // [1, 1, E]: one decode step
//
// Storage (paged, as vLLM's PagedAttention): one pool of `blocks` blocks of `block_tokens`
// tokens, allocated and zeroed once by the constructor (its pages are committed then, not during
// decoding). Each sequence owns a list of blocks, taken from the pool as it grows and returned
// when it is released, so sequences of very different lengths share one cache and one batch
// without padding. fork() starts a sequence that shares its parent's blocks (reference counts);
// the first append to a shared, partly filled last block copies that block only. When every
// holder of such a block appends in one call, the longest writes into it in place and the others
// copy it (two forks of a prompt appending together: one copy).
//
// Layout of a block (why: a decode step must stream contiguous memory; a cache whose token rows
// hold every head, like llama.cpp's, puts one head's keys kv_heads x head_dim elements apart and
// ran at a fifth of the read bandwidth): the keys of head 0 for the block's tokens, transposed
// ([head_dim][block_tokens]: the decode kernel holds 16 keys in a vector and needs no horizontal
// sums), then the values of head 0 token-major ([block_tokens][head_dim], each row padded with
// zeros to a multiple of 16 elements), then the keys and values of head 1, ..., of the last
// head. A block starts on a 4 KiB page, so a decode step reads a block's heads as one run in
// address order (one stream for the hardware prefetchers). The layout is an implementation
// detail: storage_data() exposes it for inspection only.
//
// Element types: f32, or bf16 / f16 (rounded to nearest even on append; f16 overflows to
// infinity beyond 65504 and loses precision below 6.1e-5). The kernels convert half-precision
// elements to float in registers and accumulate in float, so half the bytes is about half the
// decode time. Measured error of attention over a bf16 (f16) cache against the same attention
// over an f32 cache (random normal inputs, head_dim 64, 260 tokens): relative Frobenius error
// 2.3e-3 (2.9e-4), the rounding of the stored keys and values alone; the tests hold it to 1e-2
// (2e-3).
//
// Errors: every function throws std::invalid_argument naming the argument and the values (an
// unknown sequence id, a view whose heads or head_dim differ from the cache's, T = 0, a batch
// whose size differs from the number of ids, a repeated id, more blocks than are free) and then
// leaves the cache exactly as it was: the same lengths, the same bytes, the same free blocks.
// Attention over the cache and MultiHeadAttention::step take scratch memory after their append
// has taken its blocks; if it runs out they throw std::bad_alloc with the append taken back: the
// same sequences, lengths, tokens and free blocks (only rows past a sequence's end, which no call
// reads, may have been written), `out` unspecified.
//
// Threads: const member functions may run concurrently; anything that changes the cache
// (add_sequence, fork, release, truncate, append, and attention over the cache, which appends)
// must not run concurrently with anything else on the same cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {

/// Element type of a KvCache's keys and values.
enum class KvStorage {
  f32,   ///< float: exact
  bf16,  ///< bfloat16: float's exponent range, 8 significant bits
  f16,   ///< IEEE half: 11 significant bits, range +-65504
};

/// "f32", "bf16", "f16".
const char* kv_storage_name(KvStorage storage);

/// A sequence in a KvCache. Ids are never reused: an id stays unknown after release().
using SequenceId = std::uint64_t;

/// What a KvCache holds and how much of it.
struct KvCacheConfig {
  std::size_t blocks = 0;    ///< capacity, in blocks (see KvCache::blocks_for)
  std::size_t kv_heads = 0;  ///< heads of keys and values (the module's kv_heads)
  std::size_t head_dim = 0;  ///< elements per head (the module's head_dim)
  KvStorage storage = KvStorage::f32;
  /// Tokens per block: a multiple of 64 (the kernels' key block). Smaller blocks waste less
  /// memory on the partly filled last block of each sequence.
  std::size_t block_tokens = 64;
};

namespace detail {
struct KvCacheAccess;  // the library's own access to the storage
}  // namespace detail

/// A paged cache of projected keys and values for a batch of independent sequences.
class KvCache {
 public:
  /// Allocates and zeroes blocks x block_tokens x kv_heads x 2 rows. Throws
  /// std::invalid_argument if blocks, kv_heads or head_dim is 0, blocks is above 2^32 - 2 (block
  /// ids are 32-bit), block_tokens is not a positive multiple of 64, storage is not a KvStorage
  /// value, or the size overflows; std::bad_alloc if the memory is not there.
  explicit KvCache(const KvCacheConfig& config);
  ~KvCache();
  /// Moving leaves `other` empty until it is assigned a cache: the noexcept getters describe a
  /// cache of no blocks (zeros, contains() false, storage_data() null), clear() does nothing,
  /// and every other call (and any call that takes it) throws std::invalid_argument saying it
  /// was moved from.
  KvCache(KvCache&& other) noexcept;
  KvCache& operator=(KvCache&& other) noexcept;
  KvCache(const KvCache&) = delete;  // a cache is large: copy sequences with fork() instead
  KvCache& operator=(const KvCache&) = delete;

  /// Blocks needed for a sequence of `tokens` tokens.
  static std::size_t blocks_for(std::size_t tokens, std::size_t block_tokens = 64);

  const KvCacheConfig& config() const noexcept;
  std::size_t kv_heads() const noexcept { return config().kv_heads; }
  std::size_t head_dim() const noexcept { return config().head_dim; }
  KvStorage storage() const noexcept { return config().storage; }
  std::size_t block_tokens() const noexcept { return config().block_tokens; }
  std::size_t capacity_blocks() const noexcept { return config().blocks; }
  /// Blocks not used by any sequence.
  std::size_t free_blocks() const noexcept;

  /// A new, empty sequence (no blocks yet).
  SequenceId add_sequence();
  /// A new sequence with the same tokens as `parent`, sharing its blocks (no copy, no new
  /// block): beam search, or several continuations of one prompt. Throws on an unknown id.
  SequenceId fork(SequenceId parent);
  /// Forgets a sequence and returns the blocks that no other sequence shares.
  void release(SequenceId id);
  /// Keeps the first `length` tokens (length <= current length) and returns the blocks past
  /// them: undoing rejected speculative tokens, say.
  void truncate(SequenceId id, std::size_t length);
  /// Releases every sequence.
  void clear() noexcept;

  bool contains(SequenceId id) const noexcept;
  /// Tokens stored for the sequence. Throws on an unknown id.
  std::size_t length(SequenceId id) const;
  /// Every live sequence, ascending.
  std::vector<SequenceId> sequences() const;

  /// Appends T tokens to each of N sequences: keys and values are [N, T, kv_heads, head_dim]
  /// views (strides as in HeadsView), batch b going to ids[b]. Converts to the storage type.
  /// Throws, with the cache unchanged, on a null view, N != ids.size(), T = 0, heads or head_dim
  /// that differ from the cache's, keys and values of different shapes, an unknown or repeated
  /// id, or when the free blocks do not suffice (the message says how many are needed).
  void append(const std::vector<SequenceId>& ids, const ConstHeadsView& keys,
              const ConstHeadsView& values);

  /// Copies tokens [begin, begin + count) of a sequence out as float, keys and values each
  /// [count, kv_heads, head_dim]. Throws std::invalid_argument if the range is not inside the
  /// sequence, or if keys or values is null or the two overlap.
  void read(SequenceId id, std::size_t begin, std::size_t count, float* keys, float* values) const;

  /// The pool's bytes (see the layout above), for inspection and tests.
  const void* storage_data() const noexcept;
  std::size_t storage_bytes() const noexcept;

  struct Impl;

 private:
  friend struct detail::KvCacheAccess;
  std::unique_ptr<Impl> impl_;
};

/// Attention over a KvCache for already-projected heads (for callers that run their own
/// projections): appends the new keys and values of each sequence to the cache, then computes
/// for each new query softmax(scale * q K^T) V over the sequence's whole history, new tokens
/// included, with causal alignment to the end (bottom-right): new token t of a sequence that
/// held P tokens before the call sees keys [0, P + t]. Prefill in chunks gives the same result
/// as one call with the whole prompt.
///
/// Shapes: query [N, T, H, D], keys and values [N, T, kv_heads, D] (the new tokens), out
/// [N, T, H, D]; ids[b] is batch b's sequence. H must be a multiple of the cache's kv_heads:
/// query head h reads kv head h / (H / kv_heads) (grouped-query attention; kv_heads = 1 is
/// multi-query). options.causal must be none or bottom_right (the call is always causal as
/// above); options.masked_rows does not apply (every query sees at least itself).
/// options.window (sliding window) applies: new token t then sees the last `window` keys up to
/// itself, [P + t + 1 - window, P + t], and keys before the first new token's window are not
/// read at all (a decode step reads min(length, window) keys, rounded out to 64-key blocks).
/// options.softcap, options.alibi and options.sinks apply as in the attention core (types.hpp,
/// "Scores"; slopes and sinks per query head, H of them) with the positions of one causal pass
/// over the whole sequence: key k at its index in the history, new token t at P + t, so ALiBi
/// adds slope_h * (k - P - t) and chunked prefill, token-by-token decoding and one causal call
/// over the whole sequence agree. options.bias, options.key_padding and options.weights (tensors
/// over the keys, whose shape has no fixed meaning over a growing history) are not supported
/// over a cache: setting one is an error naming it.
///
/// Throws std::invalid_argument, with the cache unchanged, on anything append() refuses, a
/// query or out that does not match (N, T, D, H a multiple of kv_heads), a top-left causal
/// option, an unsupported option, a bad window, softcap, slope or sink, a bad scale or thread
/// count, or `out` overlapping an input (the slopes and sinks included); std::bad_alloc, with the
/// append taken back, if scratch memory runs out (see "Errors" above).
void scaled_dot_product_attention(KvCache& cache, const std::vector<SequenceId>& ids,
                                  const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Options& options = {});

}  // namespace simdattn
