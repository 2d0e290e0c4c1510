// Every block size of the kernels and of the drivers' task split, in one place, each with the
// measurement or the constraint that chose it (BLIS keeps one such file per configuration).
// Tiles are keyed by vector width in floats, not by ISA name, so an ISA with the width of an
// existing one (NEON, 4 floats like SSE2) runs with that one's blocking until it is tuned.
//
// Measurements are on the 2-core AMD EPYC (Zen 5, AVX-512) VM this project is developed on,
// unless a line says otherwise.
#pragma once

#include <cstddef>

namespace simdattn::kernels {

// ---- attention core ----------------------------------------------------------------------

/// Keys per block of the decode kernel, and the most per block of the tile path (which takes
/// fewer by D and ISA: AttentionTileFor::kKeyBlockBytes). s2048 at 1 thread with key blocks of
/// 32 / 64 / 128: 167.6 / 174.6 / 177.3 GFLOP/s; 64 kept, since 128 makes a K block plus a V
/// block at D = 128 (64 KiB) overflow the L1.
inline constexpr std::size_t kKeyBlock = 64;
/// Query rows per attention task at most (the driver splits longer sequences).
inline constexpr std::size_t kMaxTaskRows = 256;
/// Queries per group of the tile path, the largest over ISAs (2 zmm on AVX-512): sizes the
/// score tile of the scratch. Task rows come in whole groups.
inline constexpr std::size_t kMaxQueryGroup = 32;
/// Query lengths up to this are decoding: the driver calls KernelTable::decode.
inline constexpr std::size_t kDecodeMaxLq = 4;
/// Keys per decode slice: slices depend on the shape only, so the merged result does not depend
/// on the thread count; 512 keys keep the per-slice work (512 x D x 2 reads) far above the merge.
/// A call of fewer than kDecodeMinTasks slices (sequences x slices) halves them down to
/// kDecodeTaskSlice keys, so that many cores find work (one sequence at Lk = 4096: 16 tasks, not
/// 8); at 2 threads that cost 0-2% (Lk = 1024, 2048, 4096, E = 1024, K/V from memory, Zen 5,
/// AVX-512, 4 rounds in turn), where 128-key slices for every call cost 1-8% (the merge runs on
/// one thread, and each slice restarts the hardware prefetchers' streams). A call still of a
/// single slice (one sequence of at most 256 keys, or a window) halves them on down to
/// kDecodeMinSlice keys for two, so that two threads share it: 256 keys, H = 16, D = 64, 2
/// threads, 64-65 -> 40-46 us (512 keys, two slices of 256: 122-128 -> 74-76 us).
inline constexpr std::size_t kDecodeSlice = 512;
inline constexpr std::size_t kDecodeMinTasks = 16;
inline constexpr std::size_t kDecodeTaskSlice = 256;
inline constexpr std::size_t kDecodeMinSlice = 128;
/// Keys per step of the decode kernel's output loop: o's vectors stay in registers over them,
/// instead of a load and a store of o per key and head (the store-to-load chain through L1
/// held the kernel to 58 GB/s of K+V with both in L2; 84 GB/s with 8 keys per step, AVX2 on
/// the Zen 5, one thread).
inline constexpr std::size_t kDecodeValueKeys = 8;

/// Register tiles of the attention kernels for vectors of kW floats.
///   kScoreKeys x kQueryVecs: the score micro-kernel's accumulators (keys x query vectors);
///   kRows x kOutVecs: the output micro-kernel's (queries x vectors of D);
///   kKeyBlockBytes: the tile path's packed K and V blocks together at most, which sets its
///   keys per block by D (flash.hpp's tile_key_block: at most kKeyBlock, whole score tiles).
template <std::size_t kW>
struct AttentionTileFor;
/// AVX-512 (32 zmm): scores 8 x 2 = 16 accumulators + 2 Q vectors; output 6 x 4 = 24 + 4 V.
/// K + V blocks 32 KiB of the Zen 5's 48 KiB L1 (64 keys at D = 64): blocks of 32 to 128 keys
/// measured within 2% of each other at D = 64 (one 256-row task, L = 2048 and 4096).
/// Scores 16 x 1 (groups of 16 queries, so that a sliding window's edge blocks compute fewer
/// unseen keys: 271 per 256 seen, not 287) ran slower (Zen 5, one thread, 2 rounds in turn):
/// s2048 47.7-48.5 -> 55.8-56.2 ms, window W = 256 at L = 8192 32.1-32.3 -> 34.9-35.3 ms.
template <>
struct AttentionTileFor<16> {
  static constexpr std::size_t kScoreKeys = 8, kQueryVecs = 2, kRows = 6, kOutVecs = 4;
  static constexpr std::size_t kKeyBlockBytes = 32 * 1024;
};
/// AVX2 (16 ymm): scores 6 x 2 = 12 + 2 Q vectors + 1 broadcast; output 6 x 2 = 12 + 2 V.
/// K + V blocks 18 KiB: 36 keys at D = 64 (6 score tiles), so that a query group's whole
/// working set (K and V blocks, its Q^T, S^T and O tiles: 28 KiB) stays in the 32 KiB 8-way L1
/// of a Zen 3. Forced AVX2 on the Zen 5, blocks of 32 to 96 keys measured within 2% (0.81-0.84
/// of the ymm peak at L = 2048, E = 512), so the smaller L1 decides. On a Zen 3 (a busy host, one
/// thread, a trial build, 2 rounds in turn) none of 12, 24 and 32 KiB beat 18 on all of s2048,
/// bert and cross: -10% to +25% against a 9-21% spread of 18 KiB itself between the rounds.
template <>
struct AttentionTileFor<8> {
  static constexpr std::size_t kScoreKeys = 6, kQueryVecs = 2, kRows = 6, kOutVecs = 2;
  static constexpr std::size_t kKeyBlockBytes = 18 * 1024;
};
/// SSE2 (16 xmm, no FMA): scores 4 x 2, output 4 x 2, leaving registers for the separate
/// multiply and add. AVX2's key block budget (not tuned: SSE2 is the baseline fallback).
template <>
struct AttentionTileFor<4> {
  static constexpr std::size_t kScoreKeys = 4, kQueryVecs = 2, kRows = 4, kOutVecs = 2;
  static constexpr std::size_t kKeyBlockBytes = 18 * 1024;
};

// ---- attention over a paged KV cache (attention/paged_decode.hpp) ------------------------

/// Rows (query heads per kv head x new tokens) of one paged task at most: GQA groups up to 16
/// heads decode in one pass over the cache.
inline constexpr std::size_t kPagedMaxRows = 16;
/// Passes of kPagedMaxRows rows at most over the cache in one call (a few new tokens, or more
/// than 16 query heads per kv head); larger products (prefill chunks) gather the sequence as
/// float and run the tile path. Each pass reads the history again, so where the bound falls
/// depends on the bytes per row. Zen 5, AVX-512, 4096 cached tokens, medians of 15 calls over 6
/// sequences in turn, passes against gathering, ms: 32 query heads on 8 kv heads (D = 128, bf16)
/// at 1 thread, T = 5 3.2 / 15.0, T = 8 4.9 / 15.6, T = 32 (8 passes) 17.9 / 20.0, T = 64 (16)
/// 34.9 / 38.2; 16 on 16 (D = 64, f32) T = 64 (4) 13.8 / 16.9, T = 128 (8) 27.7 / 23.9, at 2
/// threads 14.1 / 11.9; 32 on 1 (T = 1, 2 passes) 0.25 / 0.83 at 2 threads. So at 8 the passes
/// lose up to 16% (one query head per kv head, f32) and gathering beyond it up to 9%.
inline constexpr std::size_t kPagedMaxPasses = 8;
/// Keys per slice of a paged task, fixed by position so that the merged result does not depend
/// on the thread count. 512 keys keep a slice's work (512 x D x 2 elements read) far above its
/// merge. Zen 5, AVX-512, 4 kv heads, f32, Lk = 4096, cold, 2 threads, medians of 3000 calls,
/// binaries in turn (3 rounds): 256-key slices (16 jobs) 200-203 us against 185-190; 1024-key
/// slices in 4 jobs of 2 MiB 170-172 against 164-174, a longer tail (p90 223-227 against 211-220).
/// Unlike the dense decode's, these slices do not shrink for calls of few tasks: the dense rule
/// (256 keys below 16 tasks, then down to 128 for two) slowed a multi-query cache (one kv head,
/// 16 rows per task; one sequence, cold, medians of 1000 calls, 2 rounds in turn) at 2 threads:
/// Lk = 256 11 -> 15-16 us, 512 20 -> 25-26, 4096 88-93 -> 99-100; at 1 thread 4096 148-152 ->
/// 180-185. 2 and 4 kv heads moved within the noise. Prefetching each slice's first two items at
/// its start (every line, into L2) changed nothing. Slices of 4096 keys, for comparison (1
/// thread, 3 rounds): one kv head 149-154 -> 141-143 us, 4 kv heads 317-320 -> 334-354.
inline constexpr std::size_t kPagedSlice = 512;

/// Register tiles of the paged kernel for vectors of kW floats: scores kScoreRows rows x
/// kScoreVecs vectors of keys (keys in lanes); output kOutRows rows x kOutVecs vectors of D.
/// A task of a single row uses kOneRowVecs vectors for both instead: a whole 64-key row of K^T
/// and a whole V row at D = 64, so that each row of a block is read once, in address order.
template <std::size_t kW>
struct PagedTileFor;
/// AVX-512: 4 x 4 = 16 zmm accumulators + 4 key vectors (a 64-key block per pass).
template <>
struct PagedTileFor<16> {
  static constexpr std::size_t kScoreRows = 4, kScoreVecs = 4, kOutRows = 4, kOutVecs = 4;
  static constexpr std::size_t kOneRowVecs = 4;
};
/// AVX2 (16 ymm): 2 x 4 = 8 accumulators + 4 key vectors + a broadcast; one row: 8 accumulators,
/// each vector loaded (and converted) right before its multiply-add. Grouped heads (4 rows per
/// kv head, f32) cost 1.6-2.0 us per 64-key block and kv head with K and V in L2 (Intel Xeon VM,
/// 1 thread; AVX-512 1.15-1.26), which a cold step paid on top of its stream while only the
/// first of the two passes over an item prefetched the next (paged_block shares it out now).
/// Running such rows one at a time over whole 256-byte rows (the one-row tile) measured the same
/// cold (Lk = 4096, 2 threads: 628-663 us against 617-670), and unrolling the loops that have no
/// prefetch the same in L2. A 4 x 2 tile (each K^T or V vector loaded once for four rows, each line
/// read once) ran 1.81 us per block and kv head in L2 against 1.93-2.00, but cold (Lk = 4096, 2
/// threads) 699-707 us against 614-660 (2 rounds); on an AMD EPYC Zen 3, both in turn in one
/// process, 900 against 875 us cold and 541 against 572 with K and V in L3 (2 and 1 threads).
template <>
struct PagedTileFor<8> {
  static constexpr std::size_t kScoreRows = 2, kScoreVecs = 4, kOutRows = 2, kOutVecs = 4;
  static constexpr std::size_t kOneRowVecs = 8;
};
/// SSE2 (16 xmm, no FMA): as AVX2, but a 64-key row is 16 vectors: one row as the others.
template <>
struct PagedTileFor<4> {
  static constexpr std::size_t kScoreRows = 2, kScoreVecs = 4, kOutRows = 2, kOutVecs = 4;
  static constexpr std::size_t kOneRowVecs = 4;
};

// ---- attention backward --------------------------------------------------------------------

/// Query rows per step of the backward kernel: its probability and dS tiles are
/// kBackwardRows x kKeyBlock (12 KiB each). A multiple of every ISA's row tile, so only the
/// last block of a sequence has a row tail.
inline constexpr std::size_t kBackwardRows = 48;
/// The backward's tasks are (batch, K/V head, chunk of key blocks), the chunks chosen from the
/// shape alone (never the thread count) so that results do not depend on it. With at least
/// this many (batch, K/V head) pairs a task takes every key block of its head and owns its dQ
/// rows; with fewer, heads are cut into chunks whose dQ contributions go to separate buffers
/// (at most this many times dQ), summed in chunk order. 8: both cores of this machine busy
/// under dynamic scheduling (s2048 has exactly 8 heads).
inline constexpr std::size_t kBackwardMinTasks = 8;

/// The backward micro-kernel's register tile for vectors of kW floats: kRows x kVecs
/// accumulators, rows broadcast from a tile or a row, kVecs vectors loaded per step.
template <std::size_t kW>
struct BackwardTileFor;
/// AVX-512: 6 x 4 = 24 zmm accumulators + 4 loads + 1 broadcast; 4 vectors = 64 keys or D = 64.
template <>
struct BackwardTileFor<16> {
  static constexpr std::size_t kRows = 6, kVecs = 4;
};
/// AVX2: 6 x 2 = 12 ymm + 2 loads + 1 broadcast (15 of 16).
template <>
struct BackwardTileFor<8> {
  static constexpr std::size_t kRows = 6, kVecs = 2;
};
/// SSE2: 4 x 2, as the forward's output tile.
template <>
struct BackwardTileFor<4> {
  static constexpr std::size_t kRows = 4, kVecs = 2;
};

// ---- projection GEMM -----------------------------------------------------------------------

/// Output columns per packed weight panel: one 64-byte row per k, read as one zmm, two ymm or
/// four xmm, so a single packed copy serves every ISA.
inline constexpr std::size_t kPanel = 16;
/// Rows of B (the packed weight) per pass: the micro-kernel's two B panels (2 x 256 x 64 B =
/// 32 KiB) stay in L1 while the kMr-row strips of A come from L2.
inline constexpr std::size_t kKc = 256;

/// Micro-tile of the GEMM for vectors of kW floats: kMr rows of C x kNp panels.
template <std::size_t kW>
struct GemmTileFor;
/// AVX-512: 12 x 32 = 24 zmm accumulators, 2 B vectors, 1 broadcast (27 of 32 registers).
/// kPackA: A's rows are copied per k block (gemm.hpp says why).
template <>
struct GemmTileFor<16> {
  static constexpr std::size_t kMr = 12, kNp = 2;
  static constexpr bool kPackA = true;
};
/// AVX2: 6 x 16 = 12 ymm accumulators, 2 B vectors, 1 broadcast (15 of 16). Forced AVX2 on the
/// Zen 5: 114 GFLOP/s at 1 thread, its measured ymm peak.
template <>
struct GemmTileFor<8> {
  static constexpr std::size_t kMr = 6, kNp = 1;
  static constexpr bool kPackA = false;  // 6 rows + 4 lines of B per set fit
};
/// SSE2 (16 xmm): 4 x 16 = 16 accumulators; with B and the broadcast some spill. SSE2 is the
/// baseline fallback, not tuned.
template <>
struct GemmTileFor<4> {
  static constexpr std::size_t kMr = 4, kNp = 1;
  static constexpr bool kPackA = false;
};

/// The most panels (B streams) per micro-tile of a call with fewer rows than kMr (gemm.hpp's
/// few_row_panels). Best of 2 / 3 / 6 / 12 on the Zen 5, one thread, against one panel per
/// tile: seed's [2, 256] x [256, 768] 1.34 / 1.49 / 1.44 / 1.45x with AVX2 forced and 1.02 /
/// 1.09 / 1.19 / 1.06x on AVX-512; decode's [1, 1024] x [1024, 3072] 1.31 / 1.45 / 1.64 / 1.54x
/// (AVX2) and 0.99 / 1.10 / 1.19 / 1.13x (AVX-512).
inline constexpr std::size_t kMaxFewRowPanels = 6;

/// The projection driver's task: kGemmTaskRows rows of A (96 x E floats stay in L2 across the
/// panels of the task) x kGemmTaskCols columns (a multiple of every micro-tile's width).
inline constexpr std::size_t kGemmTaskRows = 96;
inline constexpr std::size_t kGemmTaskCols = 256;
/// Task order: consecutive tasks (one thread's next, or the other threads' current ones) share
/// either a row block of A (row-major order: the whole packed weight streams once per row
/// block) or a column block of the weight (column-major: A streams once per column block, a
/// 256-column slab of the weight, 1 MiB at E = 1024, is reused). Column-major above this many
/// bytes of packed weight. AVX2 forced on the Zen 5, 3 rounds interleaved, row-major against
/// column-major: input projections (weight 3E x E) at 1 thread s4096 (12 MiB) 277-284 ->
/// 242-248 ms, bert (6.75 MiB) 74-80 -> 68-70 ms; at 2 threads 141-149 -> 126-131 and 37.6-39.5
/// -> 35.4-38.4 ms; but with a small weight, which stays in cache either way, column-major lost the
/// reuse of A: 2 threads s2048 input (3 MiB) 15.4-16.4 -> 16.4-17.3 ms, bert output (2.25 MiB)
/// 11.5-11.7 -> 11.8-12.8 ms. s4096's output (4 MiB) within the noise either way.
inline constexpr std::size_t kGemmWeightMajorBytes = std::size_t{4} << 20;
/// With fewer row blocks than threads (the tutorial's L = 2, decoding) the columns are split
/// evenly instead, in multiples of this (the widest micro-tile).
inline constexpr std::size_t kGemmMinTaskCols = 32;
/// Row stride of the GEMM's copy of A (gemm.hpp): kKc floats and one cache line more, so that
/// the kMr rows a micro-tile reads fall into kMr different L1 sets whatever lda is.
inline constexpr std::size_t kGemmPackStride = kKc + 16;
/// Floats of the copy: kGemmTaskRows rows of kGemmPackStride.
inline constexpr std::size_t kGemmPackFloats = kGemmTaskRows * kGemmPackStride;

// ---- when to use threads at all ------------------------------------------------------------

/// Below these many multiply-adds a call runs on the calling thread alone. An empty 2-thread
/// OpenMP region measured 3 us (OMP_WAIT_POLICY=active) to 9-12 us (passive, which a shared
/// machine needs) here, and a GEMM of 2^19 multiply-adds takes about 9.4 us on one core at the
/// ymm FMA rate, so a second thread saves less than its region costs below that (the
/// tutorial's [1, 2, 256] call, projections of 2^18.6 and 2^17, ran 3-5x slower on 2 threads
/// than on 1). The attention core's tiles start slower, hence its own limit.
inline constexpr double kGemmSerialWork = 1 << 19;
inline constexpr double kAttentionSerialWork = 1 << 18;

// ---- what the kernels rely on --------------------------------------------------------------

// The decode kernel keeps one kKeyBlock row of scores per head and loads it with aligned
// vector loads: each row must start on a 64-byte boundary.
static_assert(kKeyBlock % 16 == 0, "decode score rows must stay 64-byte aligned");
// Task rows are cut in whole query groups of every ISA.
static_assert(kMaxTaskRows % kMaxQueryGroup == 0);
static_assert(AttentionTileFor<16>::kQueryVecs * 16 <= kMaxQueryGroup);
static_assert(AttentionTileFor<8>::kQueryVecs * 8 <= kMaxQueryGroup);
static_assert(AttentionTileFor<4>::kQueryVecs * 4 <= kMaxQueryGroup);
static_assert(kMaxQueryGroup % (AttentionTileFor<16>::kQueryVecs * 16) == 0);
static_assert(kMaxQueryGroup % (AttentionTileFor<8>::kQueryVecs * 8) == 0);
static_assert(kMaxQueryGroup % (AttentionTileFor<4>::kQueryVecs * 4) == 0);
// Backward row blocks are whole row tiles; key blocks whole key tiles.
static_assert(kBackwardRows % BackwardTileFor<16>::kRows == 0 &&
              kBackwardRows % BackwardTileFor<8>::kRows == 0 &&
              kBackwardRows % BackwardTileFor<4>::kRows == 0);
static_assert(kKeyBlock % (BackwardTileFor<16>::kVecs * 16) == 0 &&
              kKeyBlock % (BackwardTileFor<8>::kVecs * 8) == 0 &&
              kKeyBlock % (BackwardTileFor<4>::kVecs * 4) == 0);
// Decode slices are whole key blocks, and the output loop's steps tile a block.
static_assert(kDecodeSlice % kKeyBlock == 0);
static_assert(kDecodeTaskSlice % kKeyBlock == 0 && kDecodeMinSlice % kKeyBlock == 0);
// Paged slices are whole key blocks, and a key block is whole score tiles of every width.
static_assert(kPagedSlice % kKeyBlock == 0);
static_assert(kKeyBlock % (PagedTileFor<16>::kScoreVecs * 16) == 0);
static_assert(kKeyBlock % (PagedTileFor<8>::kScoreVecs * 8) == 0);
static_assert(kKeyBlock % (PagedTileFor<4>::kScoreVecs * 4) == 0);
static_assert(kKeyBlock % (PagedTileFor<16>::kOneRowVecs * 16) == 0 &&
              kKeyBlock % (PagedTileFor<8>::kOneRowVecs * 8) == 0 &&
              kKeyBlock % (PagedTileFor<4>::kOneRowVecs * 4) == 0);
static_assert(kKeyBlock % kDecodeValueKeys == 0);
// GEMM tasks cover whole micro-tiles of every ISA.
static_assert(kGemmTaskCols % (GemmTileFor<16>::kNp * kPanel) == 0);
static_assert(kGemmMinTaskCols % (GemmTileFor<16>::kNp * kPanel) == 0);
static_assert(kGemmTaskRows % GemmTileFor<16>::kMr == 0 &&
              kGemmTaskRows % GemmTileFor<8>::kMr == 0);

}  // namespace simdattn::kernels
