// Attention over a paged KV cache for one task: for each of a few kv heads side by side in the
// cache, the G query heads that share it, times the T new tokens (rows = G x T <= kPagedMaxRows),
// against one slice of its keys, read once from the cache's blocks (see
// include/simdattn/kv_cache.hpp for the layout). The loop runs over key blocks, and inside each
// over the task's heads, whose keys and values follow each other in the block: one run of
// heads x 32 KiB (f32, D = 64) per block. 16 KiB pieces spread over the pool streamed at 17 GB/s
// on one Zen 5 core; two runs (all keys, then all values) 25-27; one run about 10% faster still.
//
// Why this shape: a decode step is memory-bound (each cached byte is used G x T times, a few
// FLOPs per byte), so the kernel's job is to stream each (sequence, kv head)'s bytes once, in
// order. Grouped-query heads are rows of one small tile against the shared K/V stream, not G
// passes over it (ONNX Runtime's loop over query heads gains 1.3x from 4x fewer bytes).
//
// On AVX-512 a task of one row per kv head runs two kv heads' blocks as the two rows of one tile
// (paged_attention_typed says why); on AVX-512 and AVX2 bf16 vectors are loaded in pairs
// (kBf16Pairs).
//
// Per block of kKeyBlock = 64 keys: scores S[row][key] with keys in vector lanes, from the
// transposed keys K^T[d][key] (a K^T row of 64 keys is contiguous): for each d, kScoreVecs
// vectors of keys are loaded once and multiplied by each row's q[d] broadcast; no horizontal
// sums. Then the online softmax along each row (vectorised over the 64 keys), then
// O[row][:] += P[row][key] V[key][:] with V rows (padded to 16 elements) read once per group of
// kOutRows rows. bf16 and f16 elements are converted to float in registers right after the load
// (bf16: a 16-bit shift; f16: vcvtph2ps with F16C / AVX-512, integer arithmetic on SSE2); every
// product and sum is in float.
//
// Causality through the key rule (kernels/key_rule.hpp): row (t, g) sees keys [key_begin(rule,
// t), key_end(rule, t)), with the rule's offset length - T for new tokens that end the sequence
// (key_begin > 0 under a sliding window). Scores of keys outside them (and past the sequence)
// become -inf before the softmax, and no V row past the sequence is read; the driver starts the
// slices at the first row's window, so keys before it are not read at all. Soft-capping and
// ALiBi (score_mods_vec.hpp; row (t, g) sits at position t + offset) change a block's scores
// before that hiding; the sinks join each row's denominator in the driver, after the slices
// merge. The task writes one record per row, the slice's log-sum-exp and normalised output,
// that the driver merges across slices in slice order (merge.hpp), so results do not depend on
// the thread count. Block sizes:
// blocking.hpp (PagedTileFor, kPagedMaxRows, kPagedSlice). Single-threaded, no allocation, scratch
// from the driver.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/attention/score_mods_vec.hpp"
#include "kernels/blocking.hpp"
#include "kernels/exp2.hpp"
#include "kernels/kernel_table.hpp"
#include "kernels/key_rule.hpp"
#include "kernels/simd.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace simdattn::kernels {
namespace {

template <class Arch>
using PagedTile = PagedTileFor<kWidth<Arch>>;

inline std::size_t paged_round_up(std::size_t x, std::size_t m) {
  return (x + m - 1) / m * m;
}

struct Bf16 {
  std::uint16_t bits;
};
struct F16 {
  std::uint16_t bits;
};

/// kWidth<Arch> elements at p (aligned to their own size times the width) as floats.
template <class Arch>
Vec<Arch> load_elems(const float* p) {
  return Vec<Arch>::load_aligned(p);
}

#if defined(__AVX512F__)
template <class Arch>
std::enable_if_t<std::is_same_v<Arch, xsimd::avx512bw>, Vec<Arch>> load_elems(const Bf16* p) {
  const __m256i h = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <class Arch>
std::enable_if_t<std::is_same_v<Arch, xsimd::avx512bw>, Vec<Arch>> load_elems(const F16* p) {
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}
#elif defined(__AVX2__)
template <class Arch>
std::enable_if_t<kIsAvx2<Arch>, Vec<Arch>> load_elems(const Bf16* p) {
  const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <class Arch>
std::enable_if_t<kIsAvx2<Arch>, Vec<Arch>> load_elems(const F16* p) {
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
}
#elif defined(__SSE2__)
template <class Arch>
std::enable_if_t<std::is_same_v<Arch, xsimd::sse2>, Vec<Arch>> load_elems(const Bf16* p) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));  // h << 16 per lane
}
/// IEEE half to float in integer arithmetic (SSE2 has no F16C). Exact for every input: normal
/// halves get their exponent re-biased; subnormal halves are computed as (2^-14 + m 2^-24) -
/// 2^-14 in float, which stays exact with denormals flushed; infinity and NaN keep exponent 255.
template <class Arch>
std::enable_if_t<std::is_same_v<Arch, xsimd::sse2>, Vec<Arch>> load_elems(const F16* p) {
  const __m128i h =
      _mm_unpacklo_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
  const __m128i sign = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16);
  const __m128i exponent = _mm_and_si128(h, _mm_set1_epi32(0x7c00));
  const __m128i em = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x7fff)), 13);
  const __m128i rebias = _mm_set1_epi32((127 - 15) << 23);
  __m128i normal = _mm_add_epi32(em, rebias);
  const __m128i is_special = _mm_cmpeq_epi32(exponent, _mm_set1_epi32(0x7c00));
  normal = _mm_add_epi32(normal, _mm_and_si128(is_special, rebias));  // exponent 31 -> 255
  const __m128 subnormal =
      _mm_sub_ps(_mm_castsi128_ps(_mm_add_epi32(em, _mm_set1_epi32(113 << 23))),
                 _mm_castsi128_ps(_mm_set1_epi32(113 << 23)));
  const __m128i is_sub = _mm_cmpeq_epi32(exponent, _mm_setzero_si128());
  const __m128i bits = _mm_or_si128(_mm_and_si128(is_sub, _mm_castps_si128(subnormal)),
                                    _mm_andnot_si128(is_sub, normal));
  return _mm_castsi128_ps(_mm_or_si128(bits, sign));
}
#else
/// Any other ISA: the scalar conversions of every other path, through a buffer.
template <class Arch>
Vec<Arch> load_elems(const Bf16* p) {
  alignas(64) float f[kWidth<Arch>];
  for (std::size_t i = 0; i < kWidth<Arch>; ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(p[i].bits) << 16;
    std::memcpy(&f[i], &bits, sizeof(float));
  }
  return Vec<Arch>::load_aligned(f);
}
template <class Arch>
Vec<Arch> load_elems(const F16* p) {
  alignas(64) float f[kWidth<Arch>];
  for (std::size_t i = 0; i < kWidth<Arch>; ++i) {
    const std::uint32_t h = p[i].bits, sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu;
    const std::uint32_t m = h & 0x3ffu;
    std::uint32_t bits = sign | ((e == 0x1f ? 0xffu : e + 112u) << 23) | (m << 13);
    if (e == 0) {  // zero or subnormal: m x 2^-24, exact in float
      const float x = static_cast<float>(m) * 5.9604645e-8f;
      std::memcpy(&bits, &x, sizeof bits);
      bits |= sign;
    }
    std::memcpy(&f[i], &bits, sizeof(float));
  }
  return Vec<Arch>::load_aligned(f);
}
#endif

/// Asks for the cache line at p. The micro-kernels prefetch the task's item two ahead (the keys
/// and values of a head two heads on, or of a head in the next block: another block of the pool,
/// a jump the hardware prefetchers do not follow), kPrefetchLines lines per kPrefetchRows rows
/// of the rows they read; the hardware prefetchers fetch the lines between. Measured on the
/// Zen 5 (AVX-512, 1 thread, kv_heads 4, f32, cold): no prefetch 410-430 us per step, every line
/// of the next item 370-500, one line per 4 rows of the next item 340-360, of the item two ahead
/// 331-343; kv_heads 16, f32, 1 thread: 1.27-1.54 ms without prefetch, 0.99-1.23 ms with it.
/// Two-byte elements want two lines per row, every line of a 64-key row of K^T or a 64-wide row
/// of V (128 bytes). With one line per 4 rows as for f32, AVX-512 (2 threads, cold, 3 rounds
/// interleaved) ran kv_heads 4 bf16 at 175-192 us per step against 139-161, and AVX2 left the
/// prefetches out, being slower with them; with two lines per row AVX2 gains too, kv_heads 16
/// bf16 506-681 -> 356-484 us (5 rounds), kv_heads 4 unchanged. f32 with two lines per row, in
/// turn, ran 1.3-1.4x slower (kv_heads 16, 1 thread: 0.95-1.15 -> 1.39-1.45 ms).
/// kToL2: into L2 only (prefetcht1), else into L1 (prefetcht0).
/// prefetchnta in place of prefetcht1 (Zen 5, AVX-512, 4 kv heads, f32, 2 threads, cold, binaries
/// in turn, 4 rounds of 7): 258-272 us against 261-272, no gain.
/// An asm statement, not __builtin_prefetch: GCC 12 deduced a helper made of prefetches alone to
/// be const and dropped its calls, so the kernel had no prefetch at all. The address goes in a
/// register, not as a memory operand: an asm that reads a char may read any object, so GCC
/// stored every accumulator of a micro-kernel to the stack before each prefetch (8 stores per
/// step of the bf16 one-row tile). Without them (Zen 5, AVX-512, cold, median of 600 calls,
/// 3 rounds in turn): 16 kv heads f32 at 1 thread 848-867 -> 750-792 us, 4 kv heads f32 at
/// 2 threads 204-213 -> 185-189 us, 16 kv heads bf16 at 2 threads 329-344 -> 313-332 us.
template <bool kToL2>
inline void prefetch_line(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (kToL2) {
    asm volatile("prefetcht1 (%0)" : : "r"(p));
  } else {
    asm volatile("prefetcht0 (%0)" : : "r"(p));
  }
#else
  __builtin_prefetch(p, 0, kToL2 ? 2 : 3);
#endif
}
template <class E>
inline constexpr std::size_t kPrefetchRows = sizeof(E) == 4 ? 4 : 1;
template <class E>
inline constexpr std::size_t kPrefetchLines = sizeof(E) == 4 ? 1 : 2;
inline constexpr std::size_t kPrefetchItemsAhead = 2;

/// What a micro-kernel of kR rows, reading kCols elements of each row with vectors of kW floats,
/// prefetches of the later item. Above, one row per kv head. With several (grouped heads, new
/// tokens) each d or key step holds kR times the multiply-adds between its loads, so the
/// out-of-order window covers fewer of the lines in flight and the stream slows: on the Zen 5
/// (AVX-512, one thread, f32, cold), kv_heads 4 of 16 query heads took 1.75-1.9 us per 64-key
/// block and kv head, against 1.1-1.2 with one query head per kv head, though both take 0.5 us
/// with K and V in cache. There AVX-512 asks for every line the call reads, into L2 (two 16 KiB
/// items ahead in L1 would evict the one in use). The core's decode over a 4096-token cache,
/// kv_heads 4, f32, binaries in turn: over 12 caches (median of 400 calls, 5 rounds) 2 threads
/// 209-217 -> 173-208 us; bench_attention --set=stream (32 caches, 6 rounds) 278-340 -> 256-300
/// us, and within the noise in 4 other rounds; 1 thread unchanged on a quiet machine (343-387
/// against 356-402 us), 354-389 -> 282-290 us while the other core was busy. bf16 and f16, already
/// two lines per row, unchanged (2 threads 102-106 us both). AVX2, whose tile computes twice as
/// long per block, ran no faster with it (2 threads 277-280 against 262-282 us), so it keeps the
/// rule above, as do SSE2 and NEON (for one pass; several share the item out, paged_block).
/// The prefetches cost the tiles their peak where the lines are near already: the 4 x 4 score and
/// output tiles alone over one f32 item (32 KiB of K^T and V) take 0.32 us from L1, the FMA peak;
/// cycling over 8 items in L2, 0.31 us without the prefetches and 0.45 us with them (Zen 5,
/// AVX-512, one thread). Cold, fewer of them (the first one or two lines of each row, or every
/// line of every other row) ran the 4-kv-head step no faster: 1.26-1.62x, 1.34-1.92x and
/// 1.38-1.61x its floor against 1.24-1.43x for this plan (bench_attention, 2 threads, 3 rounds in
/// turn, memory at 75 GB/s).
/// What the prefetches leave (AVX-512, cold, interleaved runs; timing-only builds): with the
/// arithmetic taken out, each item's lines only touched once under the same prefetches, the
/// 4-kv-head f32 step took 196 us at 2 threads (1.16x its bytes over the read bandwidth) against
/// 318 us for the kernel, and the 16-head bf16 step 284-324 us against 403-437; the 16-head f32
/// step took 665 us both ways. Where an item's arithmetic is large beside its bytes (grouped
/// heads, two-byte elements) a step costs about the stream plus that arithmetic, and more or
/// further prefetching does not change it. bf16, one row, 2 threads: every line two items ahead
/// (this plan) 340-384 us, one line per row 480-586, per 2 rows 434-466, per 4 rows 392-436; one
/// or three items ahead, or into L2 two or four ahead: within the noise. 4 kv heads, 4 or 8 items
/// ahead: within the noise, from memory and with the cache in L3.
/// Overlap is possible all the same: a stand-alone loop of this kernel's shape (the 4 x 4 tile,
/// 64-key items of K^T then V, these prefetches, a polynomial softmax) read 8 MiB at 2 threads in
/// 1.00-1.11x the time it took without its arithmetic (168-181 us against 151-181; the arithmetic
/// alone, in cache, about 70 us). Put in place of paged_block (timing only) it ran the 4-kv-head
/// f32 step in 196-199 us against 210-226, and the 16-head bf16 one-row step (its own loop) in
/// 367-370 against 398-403; leaving the softmax out of paged_block (timing only) recovered 3-18%.
/// Hence paged_softmax_rows (2^x, one vector exp for the rows' rescale factors), the query rows
/// read in place and no hiding pass over wholly visible blocks: a 4-kv-head f32 block with K and V
/// in cache 0.61 -> 0.54 us (1 thread); bench_attention, cold, interleaved, 3 rounds: the 4-kv-head
/// f32 step 208-236 -> 199-208 us at 2 threads, 334-374 -> 324-342 at 1, the others within the
/// noise. Starting each block's exponentials from the previous maximum, so that they need not wait
/// for this block's, gained nothing.
/// A stand-alone 4 x 4 tile loop without a softmax (2 threads, 32 KiB items, 8 MiB cold; its
/// arithmetic alone 46 us in cache) took 147-153 us against 118-132 for its stream alone: there too
/// a step cost its stream plus about half its arithmetic.
/// What that leaves two-byte storage (a stand-alone loop of the one-row AVX-512 step, two heads
/// per tile, 16 kv heads, Lk = 4096, 2 threads, cold, medians of 1000 steps, variants in turn,
/// ratios to the f32 step of the same round, 561-659 us): bf16 with only the stream (each line
/// loaded once, no arithmetic) 0.47-0.54 without software prefetches and 0.54-0.60 with this
/// plan (9 rounds each), before any arithmetic; with these pairs 0.68-0.74 (3 rounds), as the
/// library's step. So half the bytes leave almost nothing of a budget of 0.55 of f32 for the
/// arithmetic, which overlaps the stream only in part.
template <class E, std::size_t kR, std::size_t kCols, std::size_t kW>
struct PrefetchPlan {
  static constexpr bool kEveryLine = kR > 1 && kW == 16;
  static constexpr std::size_t kRowsPer = kEveryLine ? 1 : kPrefetchRows<E>;
  static constexpr std::size_t kLines =
      kEveryLine ? (kCols * sizeof(E) + 63) / 64 : kPrefetchLines<E>;
};

/// step(i) for i in [0, n), with Plan::kLines lines from the start of row i of `next` (rows
/// `stride` elements apart; nullptr: none), and of the kStreams - 1 streams after it
/// (`next_stream` elements apart), prefetched per Plan::kRowsPer rows: whole groups,
/// then the rest, so that the loop holding a micro-kernel's accumulators has no branch.
template <class Plan, std::size_t kStreams = 1, class E, class Step>
inline void rows_with_prefetch(std::size_t n, const E* next, std::size_t stride, const Step& step,
                               std::size_t next_stream = 0) {
  constexpr std::size_t kRows = Plan::kRowsPer;
  std::size_t i = 0;
  for (; next != nullptr && i + kRows <= n; i += kRows) {
#pragma GCC unroll 4
    for (std::size_t h = 0; h < kStreams; ++h) {
      const char* row = reinterpret_cast<const char*>(next + h * next_stream + i * stride);
      for (std::size_t c = 0; c < Plan::kLines; ++c) {
        prefetch_line<Plan::kEveryLine>(row + 64 * c);
      }
    }
    for (std::size_t u = 0; u < kRows; ++u) step(i + u);
  }
  for (; i < n; ++i) step(i);
}

/// step(i) for i in [0, n), with the `lines` consecutive cache lines from `next` prefetched
/// spread evenly over the steps (whole lines per step, in order).
template <class E, class Step>
inline void rows_with_spread_prefetch(std::size_t n, const E* next, std::size_t lines,
                                      const Step& step) {
  const char* line = reinterpret_cast<const char*>(next);
  std::size_t credit = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (credit += lines; credit >= n; credit -= n, line += 64) prefetch_line<false>(line);
    step(i);
  }
}

/// rows_with_prefetch for a micro-kernel of kR rows over kCols columns (kW per vector) of `next`:
/// rows that share one source (query heads of one kv head) prefetch it as one stream of kR rows'
/// use; rows with their own keys (kOwn) are kR streams, `row` elements apart, each prefetched as
/// a single row's. With next_lines != 0, `next` is instead the first of next_lines consecutive
/// lines to prefetch over the steps (a share of a later item, PrefetchShares).
template <class E, std::size_t kR, std::size_t kCols, std::size_t kW, bool kOwn, class Step>
SIMDATTN_ALWAYS_INLINE inline void tile_rows_with_prefetch(std::size_t n, const E* next,
                                                           std::size_t stride, const Step& step,
                                                           std::size_t row,
                                                           std::size_t next_lines = 0) {
  if (next != nullptr && next_lines != 0) {
    rows_with_spread_prefetch(n, next, next_lines, step);
    return;
  }
  rows_with_prefetch<PrefetchPlan<E, kOwn ? 1 : kR, kCols, kW>, kOwn ? kR : 1>(n, next, stride,
                                                                               step, row);
}

/// A later item's K^T or V (`lines` consecutive cache lines from p) shared out among the `calls`
/// micro-kernel calls over the current item's K^T or V, call c prefetching its share while it
/// runs: the stream then goes on through every pass over the item, not only through the first.
struct PrefetchShares {
  const char* p = nullptr;  // nullptr: no later item
  std::size_t lines = 0, calls = 1;
  std::size_t per_call() const { return (lines + calls - 1) / calls; }
  template <class E>
  const E* at(std::size_t c) const {
    const std::size_t first = std::min(lines, c * per_call());
    return p == nullptr || first == lines ? nullptr : reinterpret_cast<const E*>(p + 64 * first);
  }
  std::size_t count(std::size_t c) const {
    const std::size_t first = std::min(lines, c * per_call());
    return std::min(per_call(), lines - first);
  }
};

/// p + offset, or nullptr for no p (a later item to prefetch, ALiBi slopes).
template <class E>
inline const E* offset_or_null(const E* p, std::size_t offset) {
  return p == nullptr ? nullptr : p + offset;
}

/// acc = 0, for a micro-kernel's accumulators.
template <class V, std::size_t kR, std::size_t kN>
SIMDATTN_ALWAYS_INLINE inline void zero_tile(V (&acc)[kR][kN]) {
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; ++c) acc[r][c] = V(0.0f);
  }
}

/// bf16 vectors in pairs (AVX-512 and AVX2): one load of 2W elements holds lane i's elements 2i
/// (low half) and 2i + 1 (high half), so a shift gives the even elements as floats and a mask
/// the odd ones: one load and two integer operations per 2W elements, against two loads, two
/// widenings (vpmovzxwd, a shuffle each) and two shifts. The sums come out split into even and
/// odd elements and are interleaved back once per call. AVX-512, 4 kv heads, bf16, Lk = 4096,
/// cold, 2 threads (median of 600 calls, 4 rounds in turn): 120 -> 110 us while memory was
/// fast, unchanged while it was slow (149 both); in cache alone (an earlier trial) 5% faster
/// per item. AVX2 (forced on an Intel Xeon VM; one thread, 16 query heads, Lk = 512 in cache,
/// median of 200 x 50 calls, 3 rounds in turn): 4 kv heads 80-106 -> 68-74 us, 16 kv heads
/// 163-209 -> 127-158 us; cold at Lk = 4096 the same within the noise (memory-bound there).
/// vdpbf16ps (AVX-512 BF16) would need K^T and V stored with pairs of d and of keys interleaved.
/// In the stand-alone loop above it ran the 16-head bf16 step in 384-432 us with Q and P rounded
/// to bf16 and 416-453 with each split into high and low bf16 parts (float accuracy), against
/// 395-446 for these pairs (3 rounds): no gain worth a second cache layout.
template <class Arch, class = void>
struct Bf16Pairs {
  static constexpr bool kOn = false;
};
#if defined(__AVX512F__)
template <>
struct Bf16Pairs<xsimd::avx512bw> {
  static constexpr bool kOn = true;
  using R = __m512;
  /// The even elements (as floats) of the 32 bf16 at p, and the odd ones.
  static void load(const Bf16* p, R& even, R& odd) {
    __m512i x = _mm512_loadu_si512(p);
    asm("" : "+v"(x));  // one load: GCC would fold it into both operations (see keep_in_register)
    even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    odd =
        _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  /// Elements 0-15 (lo) and 16-31 (hi) in order, from their even and odd ones.
  static void interleave(R even, R odd, R& lo, R& hi) {
    const __m512i ilo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ihi =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    lo = _mm512_permutex2var_ps(even, ilo, odd);
    hi = _mm512_permutex2var_ps(even, ihi, odd);
  }
  /// The even and odd elements of 32 in order (lo: 0-15, hi: 16-31).
  static void split(R lo, R hi, R& even, R& odd) {
    const __m512i ieven =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i iodd =
        _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    even = _mm512_permutex2var_ps(lo, ieven, hi);
    odd = _mm512_permutex2var_ps(lo, iodd, hi);
  }
};
#endif
#if defined(__AVX2__)
template <class Arch>
struct Bf16Pairs<Arch, std::enable_if_t<kIsAvx2<Arch>>> {
  static constexpr bool kOn = true;
  using R = __m256;
  /// The even elements (as floats) of the 16 bf16 at p, and the odd ones.
  static void load(const Bf16* p, R& even, R& odd) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    asm("" : "+x"(x));  // one load, as above
    even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    odd =
        _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  /// Elements 0-7 (lo) and 8-15 (hi) in order: unpacking gives (e0 o0 e1 o1 | e4 o4 e5 o5) and
  /// (e2 o2 e3 o3 | e6 o6 e7 o7), whose 128-bit halves are then regrouped.
  static void interleave(R even, R odd, R& lo, R& hi) {
    const __m256 a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);
    lo = _mm256_permute2f128_ps(a, b, 0x20);
    hi = _mm256_permute2f128_ps(a, b, 0x31);
  }
  /// The even and odd elements of 16 in order (lo: 0-7, hi: 8-15).
  static void split(R lo, R hi, R& even, R& odd) {
    const __m256 a = _mm256_permute2f128_ps(lo, hi, 0x20), b = _mm256_permute2f128_ps(lo, hi, 0x31);
    even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  }
};
#endif

template <class Arch, class E, std::size_t kVecs>
inline constexpr bool kBf16Pairs =
    std::conjunction_v<std::bool_constant<Bf16Pairs<Arch>::kOn>, std::is_same<E, Bf16>,
                       std::bool_constant<kVecs % 2 == 0>>;

/// Row r's elements in a micro-kernel step: its own row (kOwn, rows `row` elements apart) or the
/// one row every query row shares.
template <bool kOwn, class E>
SIMDATTN_ALWAYS_INLINE inline const E* row_source(const E* src, std::size_t r, std::size_t row) {
  return kOwn ? src + r * row : src;
}

/// One step of a pairs micro-kernel: acc[r][c] += x[r x x_stride] times the elements of row r
/// (at src + r x row with kOwn, else at src for every row), acc[r][c] the even elements of pair
/// c / 2 (c even) or its odd ones.
template <class Arch, std::size_t kR, std::size_t kN, bool kOwn>
SIMDATTN_ALWAYS_INLINE inline void madd_bf16_pairs(const float* x, std::size_t x_stride,
                                                   const Bf16* src, std::size_t row,
                                                   Vec<Arch> (&acc)[kR][kN]) {
  using V = Vec<Arch>;
  using P = Bf16Pairs<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr bool kInline = kOwn || kR == 1;  // as madd_rows
  typename P::R e[kInline ? 1 : kN];         // a shared row, loaded once for every row
  if constexpr (!kInline) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; c += 2) P::load(src + c * kW, e[c], e[c + 1]);
  }
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V xr(x[r * x_stride]);
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; c += 2) {
      typename P::R even, odd;
      if constexpr (kInline) {
        P::load(row_source<kOwn>(src, r, row) + c * kW, even, odd);
      } else {
        even = e[c];
        odd = e[c + 1];
      }
      acc[r][c] = madd<Arch>(xr, V(even), acc[r][c]);
      acc[r][c + 1] = madd<Arch>(xr, V(odd), acc[r][c + 1]);
    }
  }
}

/// dst[r x dst_stride, + kN x W) = the pairs of acc[r] (as madd_bf16_pairs holds them) times
/// `scale`, interleaved back into order.
template <class Arch, std::size_t kR, std::size_t kN>
inline void store_bf16_pairs(const Vec<Arch> (&acc)[kR][kN], const Vec<Arch>& scale, float* dst,
                             std::size_t dst_stride) {
  using P = Bf16Pairs<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; c += 2) {
      typename P::R lo, hi;
      P::interleave(acc[r][c] * scale, acc[r][c + 1] * scale, lo, hi);
      Vec<Arch>(lo).store_aligned(dst + r * dst_stride + c * kW);
      Vec<Arch>(hi).store_aligned(dst + r * dst_stride + c * kW + kW);
    }
  }
}

/// paged_score_ukernel for kBf16Pairs.
template <class Arch, class E, std::size_t kR, std::size_t kV, bool kOwn>
void paged_score_pairs(const float* q, std::size_t q_stride, const E* kt, std::size_t kt_stride,
                       std::size_t d, float scale, float* s, const E* next, std::size_t kt_row,
                       std::size_t next_lines) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kV];
  zero_tile(acc);
  auto step = [&](std::size_t dd) SIMDATTN_ALWAYS_INLINE {
    madd_bf16_pairs<Arch, kR, kV, kOwn>(q + dd, q_stride, kt + dd * kt_stride, kt_row, acc);
  };
  tile_rows_with_prefetch<E, kR, kV * kW, kW, kOwn>(d, next, kt_stride, step, kt_row, next_lines);
  store_bf16_pairs<Arch, kR, kV>(acc, V(scale), s, kKeyBlock);
}

/// paged_output_ukernel for kBf16Pairs.
template <class Arch, class E, std::size_t kR, std::size_t kC, bool kOwn>
void paged_output_pairs(const float* p, const E* v, std::size_t v_stride, std::size_t nkeys,
                        const float* alpha, float* o, std::size_t o_stride, const E* next,
                        std::size_t v_row, std::size_t next_lines) {
  using V = Vec<Arch>;
  using P = Bf16Pairs<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kC];
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V a(alpha[r]);
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kC; c += 2) {
      typename P::R even, odd;
      P::split(V::load_aligned(o + r * o_stride + c * kW),
               V::load_aligned(o + r * o_stride + c * kW + kW), even, odd);
      acc[r][c] = V(even) * a;
      acc[r][c + 1] = V(odd) * a;
    }
  }
  auto step = [&](std::size_t j) SIMDATTN_ALWAYS_INLINE {
    madd_bf16_pairs<Arch, kR, kC, kOwn>(p + j, kKeyBlock, v + j * v_stride, v_row, acc);
  };
  tile_rows_with_prefetch<E, kR, kC * kW, kW, kOwn>(nkeys, next, v_stride, step, v_row, next_lines);
  store_bf16_pairs<Arch, kR, kC>(acc, V(1.0f), o, o_stride);  // x 1: exact
}

/// A shared vector of a micro-kernel step (load_elems), kept in a register for all its rows.
/// GCC folds such a vector into each row's multiply-add as a memory operand: the AVX2 2 x 4
/// tile of grouped heads then made 8 vector loads and 2 broadcasts per 8 multiply-adds, where 4
/// and 2 suffice. keep_in_register after the load let GCC move the next steps' loads ahead and
/// spill the accumulators (the step 1.2-4x slower); a volatile asm load keeps the program order.
/// On an AMD EPYC Zen 3 (4 kv heads, 16 query heads, f32, Lk = 4096, 2 threads, the two builds
/// in turn, 3 rounds): with K and V in L3 (one cache, not the stream set's many) 340-388 ->
/// 277-324 us; cold within the noise (900-1081 against 876-1060 us). Results bitwise the same.
template <class Arch, class E>
SIMDATTN_ALWAYS_INLINE inline Vec<Arch> load_shared(const E* p) {
#if defined(__AVX2__)
  if constexpr (kIsAvx2<Arch> && std::is_same_v<E, float>) {
    __m256 x;
    asm volatile("vmovaps %1, %0" : "=x"(x) : "m"(*reinterpret_cast<const __m256*>(p)));
    return x;
  }
#endif
  return load_elems<Arch>(p);
}

/// One step of a micro-kernel: acc[r][c] += x[r x x_stride] times vector c of the elements of
/// row r (at src + r x row with kOwn, else at src for every row, loaded once). Each vector is
/// loaded right before its multiply-adds where it serves one row only (kOwn, or a single row), so
/// that a converted vector needs one register, not kN. The two-row tiles hold 8 chains of
/// multiply-adds, just what the latency asks for; two sets of accumulators taking the steps in
/// turn (16 chains) measured within the noise (AVX-512, Zen 5, 16 kv heads, Lk = 128 and 512 in
/// cache, one thread: bf16 6.6-6.7 against 6.8-7.0 us and 32.5-33.6 against 33.6-33.9).
template <class Arch, std::size_t kR, std::size_t kN, bool kOwn, class E>
SIMDATTN_ALWAYS_INLINE inline void madd_rows(const float* x, std::size_t x_stride, const E* src,
                                             std::size_t row, Vec<Arch> (&acc)[kR][kN]) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr bool kInline = kOwn || kR == 1;
  V e[kInline ? 1 : kN];
  if constexpr (!kInline) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; ++c) e[c] = load_shared<Arch>(src + c * kW);
  }
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V xr(x[r * x_stride]);
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kN; ++c) {
      if constexpr (kInline) {
        acc[r][c] =
            madd<Arch>(xr, load_elems<Arch>(row_source<kOwn>(src, r, row) + c * kW), acc[r][c]);
      } else {
        acc[r][c] = madd<Arch>(xr, e[c], acc[r][c]);
      }
    }
  }
}

/// s[r][j] = scale * sum_d q[r][d] K^T[d][j] for kR rows and kV vectors of keys; the same
/// columns of a later item's K^T (next, or nullptr) are prefetched.
template <class Arch, class E, std::size_t kR, std::size_t kV, bool kOwn = false>
void paged_score_ukernel(const float* q, std::size_t q_stride, const E* kt, std::size_t kt_stride,
                         std::size_t d, float scale, float* s, const E* next,
                         std::size_t kt_row = 0, std::size_t next_lines = 0) {
  if constexpr (kBf16Pairs<Arch, E, kV>) {
    paged_score_pairs<Arch, E, kR, kV, kOwn>(q, q_stride, kt, kt_stride, d, scale, s, next, kt_row,
                                             next_lines);
    return;
  }
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kV];
  zero_tile(acc);
  auto step = [&](std::size_t dd) SIMDATTN_ALWAYS_INLINE {
    madd_rows<Arch, kR, kV, kOwn>(q + dd, q_stride, kt + dd * kt_stride, kt_row, acc);
  };
  tile_rows_with_prefetch<E, kR, kV * kW, kW, kOwn>(d, next, kt_stride, step, kt_row, next_lines);
  const V vs(scale);
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kV; ++c) (acc[r][c] * vs).store_aligned(s + r * kKeyBlock + c * kW);
  }
}

/// o[r][c0, c0 + kC W) = alpha[r] o[r] + sum_{j < nkeys} p[r][j] v[j] for kR rows; the same
/// columns of a later item's V rows (next, or nullptr) are prefetched.
template <class Arch, class E, std::size_t kR, std::size_t kC, bool kOwn = false>
void paged_output_ukernel(const float* p, const E* v, std::size_t v_stride, std::size_t nkeys,
                          const float* alpha, float* o, std::size_t o_stride, const E* next,
                          std::size_t v_row = 0, std::size_t next_lines = 0) {
  if constexpr (kBf16Pairs<Arch, E, kC>) {
    paged_output_pairs<Arch, E, kR, kC, kOwn>(p, v, v_stride, nkeys, alpha, o, o_stride, next,
                                              v_row, next_lines);
    return;
  }
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kC];
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V a(alpha[r]);
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kC; ++c) acc[r][c] = V::load_aligned(o + r * o_stride + c * kW) * a;
  }
  auto step = [&](std::size_t j) SIMDATTN_ALWAYS_INLINE {
    madd_rows<Arch, kR, kC, kOwn>(p + j, kKeyBlock, v + j * v_stride, v_row, acc);
  };
  tile_rows_with_prefetch<E, kR, kC * kW, kW, kOwn>(nkeys, next, v_stride, step, v_row, next_lines);
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kC; ++c) acc[r][c].store_aligned(o + r * o_stride + c * kW);
  }
}

/// The calls paged_output_columns makes over columns [0, dv).
template <class Arch>
constexpr std::size_t paged_output_calls(std::size_t dv) {
  constexpr std::size_t kW = kWidth<Arch>, kC = PagedTile<Arch>::kOutVecs;
  return dv / (kC * kW) + dv % (kC * kW) / kW;
}

/// Output columns [c0, dv) of kR rows (paged_output_ukernel's arguments, o and next_vb at
/// column 0): PagedTile::kOutVecs vectors at a time, then one. With `shares` (a later item's V),
/// the calls prefetch its shares from `call` on instead of next_vb's columns; returns the next
/// share's index.
template <class Arch, class E, std::size_t kR, bool kOwn>
std::size_t paged_output_columns(const float* p, const E* vb, std::size_t v_stride,
                                 std::size_t nkeys, const float* alpha, float* o,
                                 std::size_t o_stride, const E* next_vb, std::size_t v_row,
                                 std::size_t c0, std::size_t dv, const PrefetchShares& shares = {},
                                 std::size_t call = 0) {
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kC = PagedTile<Arch>::kOutVecs;
  auto next_of = [&](std::size_t c) {
    return shares.p != nullptr ? shares.at<E>(call) : offset_or_null(next_vb, c);
  };
  for (; c0 + kC * kW <= dv; c0 += kC * kW, ++call) {
    paged_output_ukernel<Arch, E, kR, kC, kOwn>(p, vb + c0, v_stride, nkeys, alpha, o + c0,
                                                o_stride, next_of(c0), v_row, shares.count(call));
  }
  for (; c0 < dv; c0 += kW, ++call) {
    paged_output_ukernel<Arch, E, kR, 1, kOwn>(p, vb + c0, v_stride, nkeys, alpha, o + c0, o_stride,
                                               next_of(c0), v_row, shares.count(call));
  }
  return call;
}

/// The largest lane of v (any lane if one is NaN: the row's sum turns NaN through that score).
template <class Arch>
inline float paged_block_max(const Vec<Arch>& v) {
#if defined(__AVX512F__)
  if constexpr (kWidth<Arch> == 16) return _mm512_reduce_max_ps(v);
#endif
  return hmax<Arch>(v);
}

/// The online-softmax step of a block for rows [0, rows) (row r's scores at s + r x kKeyBlock,
/// its running max and sum at rec0 + r x rec: [1], [2]): s <- exp(s - m_new) (scores of hidden
/// keys are -inf and give 0), l = l alpha + sum, m = m_new, alpha[r] = exp(m_old - m_new). A row
/// with nothing visible yet keeps m = -inf, gets p = 0 and alpha = 1 and computes no
/// exp(-inf - -inf); a NaN score reaches the row through its sum.
/// exp(x) = 2^(x log2(e)) with the tile path's 2^x (exp2.hpp): the scores stay in natural units
/// (the score modifications and the records use them), and the product rounds relative to
/// s - m, not to s. The rows' alphas come from one vector exp2. With grouped heads (4 rows of
/// 64 keys per block), xsimd::exp and a scalar std::exp per row took a sixth of a block's time
/// with K and V in cache.
template <class Arch>
void paged_softmax_rows(float* s, std::size_t rows, float* rec0, std::size_t rec, float* alpha) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kLog2e = 1.44269504088896341f;
  // The exponents of the alphas, m_old - m_new (0 where alpha is 1), whole vectors of them.
  alignas(64) float shift[(kPagedMaxRows + 15) / 16 * 16];
  std::fill(shift, shift + paged_round_up(rows, kW), 0.0f);
  for (std::size_t r = 0; r < rows; ++r) {
    float* sr = s + r * kKeyBlock;
    float& m = rec0[r * rec + 1];
    float& l = rec0[r * rec + 2];
    V vmax = V::load_aligned(sr);
    for (std::size_t j = kW; j < kKeyBlock; j += kW) {
      vmax = xsimd::max(vmax, V::load_aligned(sr + j));
    }
    const float bmax = paged_block_max<Arch>(vmax);
    const float m_new = bmax > m ? bmax : m;
    if (m_new == kNegInf) {
      for (std::size_t j = 0; j < kKeyBlock; ++j) {
        if (std::isnan(sr[j])) l = sr[j];
        sr[j] = 0.0f;
      }
      alpha[r] = 0.0f;  // no sum; its shift stays 0, so l is kept as it is
      continue;
    }
    const V vm(m_new), unit(kLog2e);
    V sum(0.0f);
    for (std::size_t j = 0; j < kKeyBlock; j += kW) {
      const V p = exp2_nonpositive<Arch>((V::load_aligned(sr + j) - vm) * unit);
      p.store_aligned(sr + j);
      sum += p;
    }
    shift[r] = (m - m_new) * kLog2e;  // m = -inf: exp2(-inf) = 0, nothing to keep
    alpha[r] = xsimd::hadd(sum);      // this block's sum, for now
    m = m_new;
  }
  for (std::size_t r = 0; r < rows; r += kW) {
    exp2_nonpositive<Arch>(V::load_aligned(shift + r)).store_aligned(shift + r);
  }
  for (std::size_t r = 0; r < rows; ++r) {
    float& l = rec0[r * rec + 2];
    l = l * shift[r] + alpha[r];
    alpha[r] = shift[r];
  }
}

/// One key block [k0, k0 + nk) of one kv head (keys kt, values vb): scores, softmax and output
/// of every row, with row r's running max, sum and unnormalised output in its record (rec0 + r x
/// rec: [1], [2], from [16]). next_kt / next_vb: a later item of the task, prefetched.
/// With `paired` (one row per kv head), the block of two kv heads, i and i + 1, their keys and
/// values kt_head and vb_head elements apart, as two rows (records, query rows and slopes of
/// head i + 1 after head i's); the next items too.
template <class Arch, class E>
void paged_block(const PagedAttentionArgs& a, const float* q, std::size_t q_stride, float* s,
                 float* alpha, const float* alibi, const E* kt, const E* vb, const E* next_kt,
                 const E* next_vb, std::size_t k0, std::size_t nk, float* rec0, bool paired,
                 std::size_t kt_head, std::size_t vb_head) {
  constexpr std::size_t kW = kWidth<Arch>;
  using Tile = PagedTile<Arch>;
  constexpr std::size_t kScoreKeys = Tile::kScoreVecs * kW;
  // A single row (decoding without grouped heads) on AVX2 reads each row of K^T and of V (256
  // bytes in f32, 128 in bf16 or f16) once, not as halves in two passes (blocking.hpp); the same
  // sums in the same order. A row's vectors are loaded (and converted) one at a time, right
  // before their multiply-adds (madd_rows): loaded all first, 8 converted vectors beside 8
  // accumulators spilled (bf16 step 0.89 -> 1.25 ms), so two-byte rows took two passes of 4
  // vectors, each with 4 chains of dependent multiply-adds. One pass of 8 (Intel Xeon VM, 16
  // kv heads, Lk = 4096, cold, 4 rounds in turn): bf16 745-782 -> 647-688 us at 2 threads,
  // 1436-1503 -> 1234-1292 at 1; f16 698-727 -> 607-622 and 1373-1450 -> 1191-1224; f32 the same.
  constexpr std::size_t kOneRowVecs = Tile::kOneRowVecs;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const std::size_t rows = paired ? 2 : a.groups * a.tokens, d = a.d;
  const std::size_t rec = partial_record_floats(d);
  const std::size_t dv = paged_round_up(d, kW);  // output vectors: inside the padded V rows
  const bool modify = a.softcap != 0.0f || alibi != nullptr;
  // Row r's new token, for the key rule, and its slope.
  auto token_of = [&](std::size_t r) { return paired ? 0 : r / a.groups; };
  auto slope_of = [&](std::size_t r) { return alibi[paired ? r : r % a.groups]; };
  // Keys past the block's end belong to no one (or to another sequence): the whole 64-key
  // tile is computed and the scores past nk hidden below.
  const bool one_row = rows == 1 && kOneRowVecs > Tile::kScoreVecs;
  for (std::size_t j0 = 0; one_row && j0 < kKeyBlock; j0 += kOneRowVecs * kW) {
    paged_score_ukernel<Arch, E, 1, kOneRowVecs>(q, q_stride, kt + j0, a.block_tokens, d, a.scale,
                                                 s + j0, offset_or_null(next_kt, j0));
  }
  if constexpr (kW == 16) {
    for (std::size_t j0 = 0; paired && j0 < kKeyBlock; j0 += kScoreKeys) {
      paged_score_ukernel<Arch, E, 2, Tile::kScoreVecs, true>(q, q_stride, kt + j0, a.block_tokens,
                                                              d, a.scale, s + j0,
                                                              offset_or_null(next_kt, j0), kt_head);
    }
  }
  // Several row groups (grouped heads, new tokens) pass over the item more than once. With the
  // 2-row tiles (all but AVX-512's) each pass then prefetches its share of the later item
  // (PrefetchShares) when its K^T is whole lines in a row (blocks of kKeyBlock tokens): the
  // stream runs on under the passes that find the item in cache, where with the first pass alone
  // prefetching the memory idled under the others and a step cost its stream plus its
  // arithmetic. AMD EPYC Zen 3, 4 kv heads of 16 query heads, Lk = 4096, cold (48 caches), both
  // ways in turn in one process, medians of 288-480 calls: AVX2 f32 733 -> 454 us at 2 threads
  // and 1212 -> 760 at 1, bf16 494 -> 366, f16 380 -> 300; SSE2 f32 1253 -> 928, bf16 742 -> 657;
  // 16 kv heads (one row, untouched) 1673 and 1646. Otherwise the first pass prefetches the later
  // item's columns. AVX-512's 4 x 4 tile passes once per 4 rows; its 4 rows as two 2-row passes
  // with shares ran slower (Intel Xeon VM, 4 kv heads, cold, 2 threads, in turn: f32 382 against
  // 319 us, 342 without shares; bf16 213 against 180).
  const std::size_t groups = (rows + Tile::kScoreRows - 1) / Tile::kScoreRows;
  const bool share = kW != 16 && !one_row && groups > 1 && a.block_tokens == kKeyBlock;
  PrefetchShares kt_shares, vb_shares;
  if (share) {
    kt_shares = {reinterpret_cast<const char*>(next_kt), (d * kKeyBlock * sizeof(E) + 63) / 64,
                 groups * (kKeyBlock / kScoreKeys)};
    vb_shares = {reinterpret_cast<const char*>(next_vb),
                 (kKeyBlock * a.row_elems * sizeof(E) + 63) / 64,
                 (rows + Tile::kOutRows - 1) / Tile::kOutRows * paged_output_calls<Arch>(dv)};
  }
  for (std::size_t r0 = 0, call = 0; !one_row && !paired && r0 < rows; r0 += Tile::kScoreRows) {
    const std::size_t nr = std::min(Tile::kScoreRows, rows - r0);
    for (std::size_t j0 = 0; j0 < kKeyBlock; j0 += kScoreKeys, ++call) {
      // Without shares the first row group prefetches; the others find the item in cache.
      const E* next = share     ? kt_shares.at<E>(call)
                      : r0 == 0 ? offset_or_null(next_kt, j0)
                                : nullptr;
      with_rows<Tile::kScoreRows>(nr, [&](auto r) {
        paged_score_ukernel<Arch, E, decltype(r)::value, Tile::kScoreVecs>(
            q + r0 * q_stride, q_stride, kt + j0, a.block_tokens, d, a.scale,
            s + r0 * kKeyBlock + j0, next, 0, kt_shares.count(call));
      });
    }
  }
  // Every row sees the whole block (a full block before every row's causal end and inside its
  // window): nothing to hide.
  const bool whole =
      nk == kKeyBlock && key_end(a.rule, 0) >= k0 + nk && key_begin(a.rule, a.tokens - 1) <= k0;
  std::size_t used = whole ? nk : 0;  // keys of this block that some row sees
  for (std::size_t r = 0; r < rows && (modify || !whole); ++r) {
    if (modify) {  // the scores are final here; hiding comes after
      ScoreMods mods;
      mods.softcap = a.softcap;
      if (alibi != nullptr) mods.alibi_slope = slope_of(r);
      modify_score_row<Arch>(a.rule, mods, token_of(r), k0, nk, s + r * kKeyBlock);
    }
    if (whole) continue;
    const std::size_t row_end = key_end(a.rule, token_of(r));
    const std::size_t visible = row_end <= k0 ? 0 : std::min(nk, row_end - k0);
    used = std::max(used, visible);
    std::fill(s + r * kKeyBlock + visible, s + (r + 1) * kKeyBlock, kNegInf);
    // Keys before the row's window (a sliding window), if any in this block.
    const std::size_t row_begin = key_begin(a.rule, token_of(r));
    const std::size_t before = row_begin <= k0 ? 0 : std::min(visible, row_begin - k0);
    std::fill(s + r * kKeyBlock, s + r * kKeyBlock + before, kNegInf);
  }
  paged_softmax_rows<Arch>(s, rows, rec0, rec, alpha);
  if constexpr (kW == 16) {
    if (paired) {
      paged_output_columns<Arch, E, 2, true>(s, vb, a.row_elems, used, alpha, rec0 + 16, rec,
                                             next_vb, vb_head, 0, dv);
      return;
    }
  }
  for (std::size_t r0 = 0, call = 0; r0 < rows; r0 += Tile::kOutRows) {
    const std::size_t nr = std::min(Tile::kOutRows, rows - r0);
    float* o = rec0 + r0 * rec + 16;
    const E* next = r0 == 0 ? next_vb : nullptr;
    std::size_t c0 = 0;
    for (; one_row && c0 + kOneRowVecs * kW <= dv; c0 += kOneRowVecs * kW) {
      paged_output_ukernel<Arch, E, 1, kOneRowVecs>(s, vb + c0, a.row_elems, used, alpha, o + c0,
                                                    rec, offset_or_null(next, c0));
    }
    with_rows<Tile::kOutRows>(nr, [&](auto r) {
      call = paged_output_columns<Arch, E, decltype(r)::value, false>(
          s + r0 * kKeyBlock, vb, a.row_elems, used, alpha + r0, o, rec, next, 0, c0, dv, vb_shares,
          call);
    });
  }
}

template <class Arch, class E>
void paged_attention_typed(const PagedAttentionArgs& a) {
  constexpr std::size_t kW = kWidth<Arch>;
  using Tile = PagedTile<Arch>;
  static_assert(kKeyBlock % (Tile::kScoreVecs * kW) == 0, "a key block is whole score tiles");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const std::size_t rows = a.groups * a.tokens, d = a.d, rec = partial_record_floats(d);
  // Scratch: q rows [rows][d] (copied for several new tokens only), scores [rows][kKeyBlock],
  // alpha [rows], then the running records [heads][rows][rec].
  float* q = a.scratch;
  float* s = q + paged_round_up(kPagedMaxRows * d, 16);
  float* alpha = s + kPagedMaxRows * kKeyBlock;
  float* running = a.scratch + paged_running_offset(d);
  auto records = [&](std::size_t i) { return running + i * rows * rec; };
  // While the slice runs, a row's record holds its running max at [1] and sum at [2], and its
  // output unnormalised from [16]. The records live in the thread's scratch and reach a.partial
  // (shared by every job, read by the driver's merge on the calling thread) once, at the end.
  // Updated there block by block, the same kernel ran slower at 2 threads (Zen 5, cold, time over
  // the bytes at the read bandwidth, 4 interleaved rounds: 4 kv heads f32 1.62-2.01 against
  // 1.48-1.70 now, bf16 1.96-2.20 against 1.37-1.87; 16 kv heads bf16 1.38-1.54 against 1.24-1.66).
  for (std::size_t i = 0; i < a.heads; ++i) {
    for (std::size_t r = 0; r < rows; ++r) {
      float* rr = records(i) + r * rec;
      std::fill(rr, rr + rec, 0.0f);
      rr[1] = kNegInf;
    }
  }
  const std::size_t end = std::min(a.key_end, key_end(a.rule, a.tokens - 1));
  const E* pool = reinterpret_cast<const E*>(a.pool);
  const std::size_t block_elems = a.block_bytes / sizeof(E);
  const std::size_t key_head = a.key_head_bytes / sizeof(E);
  const std::size_t value_head = a.value_head_bytes / sizeof(E);
  auto keys_at = [&](std::size_t k, std::size_t i) {
    return pool + a.blocks[k / a.block_tokens] * block_elems + a.key_offset / sizeof(E) +
           i * key_head + k % a.block_tokens;
  };
  auto values_at = [&](std::size_t k, std::size_t i) {
    return pool + a.blocks[k / a.block_tokens] * block_elems + a.value_offset / sizeof(E) +
           i * value_head + k % a.block_tokens * a.row_elems;
  };
  // Heads inside key blocks: the task's heads lie side by side in a block, so each key block
  // is read as one run of heads x (keys, values) in address order, which the hardware
  // prefetchers follow, not as 16 KiB pieces scattered over the pool.
  // The reads keep that order: the next item's scores computed before this item's outputs
  // (so that the softmax's dependent steps overlap independent multiply-adds) read the next
  // head's K before this head's V, and ran slower (cold, 2 threads, AVX-512: 16 kv heads bf16
  // 439-459 us against 361-363, 4 kv heads f32 254-260 against 192-198).
  // One row per kv head (decoding without grouped heads), AVX-512: two kv heads' blocks at a
  // time, as the two rows of one tile, each row with its own keys and values. A single row's
  // tile has 4 accumulators, each a chain of dependent multiply-adds (latency 4), and its
  // softmax a chain of reductions: two independent rows run side by side. Same sums in the same
  // order per row. Measured on the Zen 5 (16 kv heads, Lk = 4096, cold, 2 threads, median of 600
  // calls, old and new in turn, 4-5 rounds; with the bf16 pair loads above): f32 554-628 ->
  // 501-559 us in three windows and 751 -> 653 in a slow one; bf16 and f16 3-12% less while
  // memory was fast (bf16 389-398 -> 352-381), unchanged while it was slow (479 both); with K
  // and V in cache (2 kv heads, Lk = 2048, 1 thread) bf16 18.5 -> 15.3 us, f16 18.8 -> 16.4.
  // AVX2 has 16 registers, too few for two rows' tiles (its single f32 row already reads whole
  // 256-byte rows, kOneRowVecs).
  const bool paired = kW == 16 && rows == 1 && a.heads % 2 == 0;
  const std::size_t heads_per_step = paired ? 2 : 1;
  for (std::size_t k0 = a.key_begin; k0 < end; k0 += kKeyBlock) {
    const std::size_t nk = std::min(kKeyBlock, end - k0);
    for (std::size_t i = 0; i < a.heads; i += heads_per_step) {
      const E* next_kt = nullptr;  // a later item, to prefetch while this one runs
      const E* next_vb = nullptr;
      const std::size_t ni = i + kPrefetchItemsAhead, nk0 = k0 + ni / a.heads * kKeyBlock;
      if (nk0 < end) {
        next_kt = keys_at(nk0, ni % a.heads);
        next_vb = values_at(nk0, ni % a.heads);
      }
      // One token: the head's rows are read in place, a head stride apart.
      const float* qi = a.q + i * a.groups * a.q_head_stride;
      std::size_t q_stride = a.q_head_stride;
      if (a.tokens > 1) {
        for (std::size_t t = 0; t < a.tokens; ++t) {
          for (std::size_t g = 0; g < a.groups; ++g) {
            const float* row = a.q + (i * a.groups + g) * a.q_head_stride + t * a.q_stride;
            std::copy(row, row + d, q + (t * a.groups + g) * d);
          }
        }
        qi = q;
        q_stride = d;
      }
      const float* alibi = offset_or_null(a.alibi, i * a.groups);
      paged_block<Arch, E>(a, qi, q_stride, s, alpha, alibi, keys_at(k0, i), values_at(k0, i),
                           next_kt, next_vb, k0, nk, records(i), paired, key_head, value_head);
    }
  }
  // Records: lse = m + log(l) and o / l; a row that saw nothing keeps lse = -inf (its output
  // weighs nothing in the merge); a NaN sum makes both NaN.
  for (std::size_t i = 0; i < a.heads; ++i) {
    for (std::size_t r = 0; r < rows; ++r) {
      float* rr = a.partial + i * a.partial_head_stride + r * rec;
      std::copy(records(i) + r * rec, records(i) + (r + 1) * rec, rr);
      const float m = rr[1], l = rr[2];
      if (m == kNegInf && !std::isnan(l)) {
        rr[0] = kNegInf;
        continue;
      }
      rr[0] = m + std::log(l);
      const float inv = 1.0f / l;
      for (std::size_t j = 0; j < d; ++j) rr[16 + j] *= inv;
    }
  }
}

template <class Arch>
void paged_attention(const PagedAttentionArgs& a) {
  switch (a.storage) {
    case KvStorage::f32:
      paged_attention_typed<Arch, float>(a);
      return;
    case KvStorage::bf16:
      paged_attention_typed<Arch, Bf16>(a);
      return;
    case KvStorage::f16:
      paged_attention_typed<Arch, F16>(a);
      return;
  }
}

}  // namespace
}  // namespace simdattn::kernels
