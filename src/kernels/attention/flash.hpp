// Fused attention for one task: query rows [row_begin, row_end) of one (batch, head),
// softmax(scale * Q K^T) V without an Lq x Lk matrix (FlashAttention's online softmax).
//
// Tile path (Lq > kDecodeMaxLq), queries in vector lanes: the task's queries are packed once,
// per group of kQueryVecs x W queries, transposed to Q^T [D][group] (each group contiguous) and
// multiplied by scale * log2(e), so that scores come out in base 2 and the softmax uses 2^x
// (exp2.hpp). Keys come in blocks (tile_key_block()); each block of K and of V is first copied
// to contiguous rows of the scratch (pack_rows), whatever the source layout, while the next
// block's rows are prefetched a few per query group. For each group the score micro-kernel
// computes S^T [keys][queries] (K elements broadcast, Q^T vectors loaded); the online softmax
// then runs down the key axis with queries in lanes, so the row max, the exponentials and the
// row sums are plain vector operations with no horizontal reduction; the output micro-kernel
// accumulates O[query][D] += P^T[key][query] V[key][D] into the task's running output. A first
// version packed K^T per block and per task instead: that transpose measured 12% of the time at
// s2048 (55 ms -> 62 ms when done twice) and the per-row horizontal max a few % more.
//
// Why K and V are packed (a probe, not kept, that timed one task of 256 rows, D = 64, thread
// CPU time, AVX2 forced on the Zen 5): read in place from [N, L, H, D], a head's consecutive keys
// are E floats apart, 4 KiB at E = 1024, so a block's rows fall into a few L1 sets (64 sets of
// 64 B per way) and each key sits on its own page: 0.61 of the ymm FMA peak at L = 2048 and
// 0.58 at 4096, against 0.79 when the same keys were contiguous; the output micro-kernel, which
// reads the V block once per row tile, fell to 64 GFLOP/s from 103. With packed rows: 0.80-0.84
// at E = 512, 1024, 1536 and L up to 4096. Packing K transposed into the score tile's order
// cost more than it saved (a scalar scatter: 0.71-0.76). Prefetching the next block's rows all
// at once during the copy left the copy at 5% of the time at L = 4096; spread over the query
// groups, 1.2%. Register tiles, key block budgets and task sizes: kernels/blocking.hpp.
// Scratch: O(task rows x D).
//
// Decode path (Lq <= kDecodeMaxLq): one task per (batch, slice of kDecodeSlice keys) covers
// every head. K and V are read in place, once, a few rows at a time with the heads inner, so
// each key's row (all heads, contiguous) streams in order; head-major order read 256-byte
// pieces 4 KiB apart and ran at 14 GB/s per core. The start of the next rows is prefetched as
// the kernel goes (prefetch_decode_rows). Scores: W keys at a time, a vector accumulator per
// key over D, then one reduction (RowSums) puts the W dot products in the lanes of one vector
// (was: a horizontal add per key and head); then o += p * V[k] over kDecodeValueKeys keys with
// o's vectors in registers (was: o loaded and stored per key and head), o in L1 between steps
// (heads x D floats). With K and V in L2 (64 keys, one thread, CPU time) that is 52.6 -> 69-84
// GB/s of K+V per core on AVX2; the whole decode case at 2 threads, Zen 5 VM at load 14-17,
// best of 200 calls: 0.82-0.89 ms -> 0.60-0.75 ms.
// Each slice writes its partial result per (row, head), a log-sum-exp and a normalised output,
// which the driver merges in slice order (merge.hpp). AVX-512 runs the ymm instance of this
// kernel (instantiate.hpp, DecodeArch: 16 rows in flight measured slower than 8).

// Masks (the rule of key_rule.hpp): a key block wholly past a query group's causal end, or
// wholly before its window, is skipped (the tile and decode key loops run over [key_begin of the
// first row, key_end of the last row) only: a sliding window costs L x W, not L^2); in a block
// that crosses a bound (vector compares) or with an explicit mask or key padding, hidden scores
// become -inf before the max. A query whose max is still -inf after a block gets p = 0 without
// computing exp(-inf - -inf) (NaN). At the end a query that saw no visible key gets the
// policy's answer (merge.hpp's masked_row_answer: zeros, or the uniform average of V), or zeros
// with a sink. On request each row's log-sum-exp is written too (merge.hpp defines it; -inf for
// a row without visible keys). Values of hidden keys inside a crossed block are multiplied by 0,
// so a NaN or Inf stored there can reach the row (the reference skips them): do not rely on
// masked NaNs.
//
// Score modifications (score_mods_vec.hpp: soft-capping, float bias, ALiBi) are applied at one
// point, where a block's scores are final and before hiding and the online softmax. Sinks join
// the denominator once per row at the end (finish_row), or, for decode, after the driver merged
// the slices. V and the output have their own head size Dv (AttentionArgs::dv).
//
// Accuracy: the tile path's 2^x (exp2.hpp) has a max relative error of 1.67e-7 (1.4 ulp) on
// [-126, 0], the decode path's xsimd::exp 1.24e-7 (about 1 ulp) on [-87.3, 0], for every ISA
// (tests/test_kernels.cpp measures both). Each query's arithmetic depends only on the
// query, Lq, Lk and D, never on the task split or its lane, so results are bitwise the same for
// every thread count. Single-threaded, no allocation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

#include "kernels/attention/merge.hpp"
#include "kernels/attention/score_mods_vec.hpp"
#include "kernels/blocking.hpp"
#include "kernels/exp2.hpp"
#include "kernels/kernel_table.hpp"
#include "kernels/key_rule.hpp"
#include "kernels/simd.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
using AttentionTile = AttentionTileFor<kWidth<Arch>>;

inline std::size_t round_up(std::size_t x, std::size_t m) {
  return (x + m - 1) / m * m;
}

/// Keys per block of the tile path for rows of dp floats: K and V blocks within the tile's
/// budget (blocking.hpp), a whole number of score tiles, at most kKeyBlock (the scratch's size).
/// 36 at D = 64 on AVX2, 64 on AVX-512.
template <class Arch>
std::size_t tile_key_block(std::size_t dp) {
  constexpr std::size_t kKeys = AttentionTile<Arch>::kScoreKeys;
  const std::size_t fit = AttentionTile<Arch>::kKeyBlockBytes / (2 * dp * sizeof(float));
  return std::max(kKeys, std::min(fit, kKeyBlock) / kKeys * kKeys);
}

/// Asks for rows [begin, end) (rows `stride` floats apart, d floats each) to come into cache.
inline void prefetch_rows(const float* src, std::size_t stride, std::size_t begin, std::size_t end,
                          std::size_t d) {
  for (std::size_t j = begin; j < end; ++j) {
    const char* row = reinterpret_cast<const char*>(src + j * stride);
    for (std::size_t b = 0; b < d * sizeof(float); b += 64) __builtin_prefetch(row + b);
  }
}

/// One query group's Q^T: qg[dd * kGroup + t] = qscale * q[t * q_stride + dd] for the group's
/// n rows, zeros in the lanes past n. W x W pieces are transposed in registers: the scalar
/// transpose (one strided load per element, some 16K per 256-row task at D = 64) matters where
/// a task does little work per row, as under a sliding window. With the K/V prefetch below
/// shared among the groups that compute on a block: window W = 256 at L = 8192 (E = 512, H = 8,
/// one thread, AVX-512) 44.5 -> 40.0 ms, medians of 3 interleaved.
template <class Arch, std::size_t kGroup>
void pack_query_group(const float* q, std::size_t q_stride, std::size_t n, std::size_t d,
                      float qscale, float* qg) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const std::size_t d_vec = d / kW * kW;
  const V vs(qscale);
  for (std::size_t v = 0; v < kGroup; v += kW) {
    for (std::size_t c = 0; c < d_vec; c += kW) {
      V b[kW];
      for (std::size_t t = 0; t < kW; ++t) {
        b[t] = v + t < n ? V::load_unaligned(q + (v + t) * q_stride + c) * vs : V(0.0f);
      }
      transpose_square<Arch>(b);
      for (std::size_t j = 0; j < kW; ++j) b[j].store_aligned(qg + (c + j) * kGroup + v);
    }
    for (std::size_t dd = d_vec; dd < d; ++dd) {
      for (std::size_t t = 0; t < kW; ++t) {
        qg[dd * kGroup + v + t] = v + t < n ? qscale * q[(v + t) * q_stride + dd] : 0.0f;
      }
    }
  }
}

/// Sets the hidden scores of row i among keys [k0, k0 + n) to -inf: keys outside the causal
/// end and the window, and keys the mask or the key padding hides (a -inf bias has made its
/// score -inf already, score_mods_vec.hpp). s[j * stride] is the score of key k0 + j.
inline void hide_masked(const KeyRule& rule, std::size_t i, std::size_t k0, std::size_t n, float* s,
                        std::size_t stride) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  const std::size_t begin = key_begin(rule, i), end = key_end(rule, i);
  const std::uint8_t* mrow = mask_row(rule, i);
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t key = k0 + j;
    const bool keep = key >= begin && key < end && mask_keeps(rule, mrow, key) &&
                      (rule.padding == nullptr || rule.padding[key] == 0);
    if (!keep) s[j * stride] = kHidden;
  }
}

/// Tile path, causal rule without a mask: hides, in S^T (st[j * kGroup + lane] for key k0 + j
/// and row i0 + lane), the keys past each row's causal end or before its window. Row i sees key
/// k iff i + offset - window < k <= i + offset, so for key k the visible lanes are
/// lo <= lane < lo + window with lo = k - offset - i0: two compares per vector.
template <class Arch, std::size_t kGroup>
void hide_outside_bounds(const KeyRule& rule, std::size_t i0, std::size_t k0, std::size_t nk,
                         float* st) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const V hidden(-std::numeric_limits<float>::infinity());
  alignas(64) float lanes[kGroup];
  for (std::size_t t = 0; t < kGroup; ++t) lanes[t] = static_cast<float>(t);
  // Bounds clamped to [-1, kGroup + 1] before conversion, so floats hold them exactly.
  auto clamp = [](std::ptrdiff_t x) {
    const auto top = static_cast<std::ptrdiff_t>(kGroup) + 1;
    return static_cast<float>(x < -1 ? -1 : x > top ? top : x);
  };
  for (std::size_t j = 0; j < nk; ++j) {
    const std::ptrdiff_t lo =
        static_cast<std::ptrdiff_t>(k0 + j) - rule.offset - static_cast<std::ptrdiff_t>(i0);
    const V vlo(clamp(lo));
    const V vhi(rule.window == 0 ? static_cast<float>(kGroup + 1)
                                 : clamp(lo + static_cast<std::ptrdiff_t>(rule.window)));
    float* s = st + j * kGroup;
    for (std::size_t v = 0; v < kGroup; v += kW) {
      const V lane = V::load_aligned(lanes + v);
      const auto visible = (lane >= vlo) & (lane < vhi);
      xsimd::select(visible, V::load_aligned(s + v), hidden).store_aligned(s + v);
    }
  }
}

/// Tile path: hides the keys of [k0, k0 + nk) that the key padding marks, for every row.
template <class Arch, std::size_t kGroup>
void hide_padding(const KeyRule& rule, std::size_t k0, std::size_t nk, float* st) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const V hidden(-std::numeric_limits<float>::infinity());
  for (std::size_t j = 0; j < nk; ++j) {
    if (rule.padding[k0 + j] == 0) continue;
    for (std::size_t v = 0; v < kGroup; v += kW) hidden.store_aligned(st + j * kGroup + v);
  }
}

/// s[0, n) <- exp(s - m_new) with n a multiple of the width. Updates the row's running max m
/// and sum l, and gives alpha = exp(m_old - m_new) through `alpha`.
template <class Arch>
void softmax_update(float* s, std::size_t n, float& m, float& l, float& alpha) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V vmax = V::load_aligned(s);
  for (std::size_t j = kW; j < n; j += kW) vmax = xsimd::max(vmax, V::load_aligned(s + j));
  const float bmax = hmax<Arch>(vmax);
  const float m_new = bmax > m ? bmax : m;
  if (m_new == -std::numeric_limits<float>::infinity()) {
    // Nothing visible yet: no exponentials (exp(-inf - -inf) is NaN), nothing to add. The max
    // above drops NaN scores; a NaN score must still reach the row, through its sum.
    for (std::size_t j = 0; j < n; ++j) {
      if (std::isnan(s[j])) l = s[j];
    }
    for (std::size_t j = 0; j < n; j += kW) V(0.0f).store_aligned(s + j);
    alpha = 1.0f;
    return;
  }
  alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : xsimd::exp(V(m - m_new)).get(0);
  const V vm(m_new);
  V vsum(0.0f);
  for (std::size_t j = 0; j < n; j += kW) {
    const V p = xsimd::exp(V::load_aligned(s + j) - vm);
    p.store_aligned(s + j);
    vsum += p;
  }
  const float sum = xsimd::hadd(vsum);
  l = l * alpha + sum;
  m = m_new;
}

/// st[key][0, kQueryVecs * W) = K[key] . Q^T[:, q] for kKeys keys (rows k_stride floats apart);
/// qt is one group's Q^T, [d][kQueryVecs * W], already scaled. With a bias tile bt (keys down,
/// bt_stride floats per key, the group's rows contiguous) each score gets bias x unit on its way
/// out, and a -inf bias hides it: the sums modify_score_tile makes from st, without its pass
/// over the tile.
template <class Arch, std::size_t kKeys>
void score_ukernel(const float* k, std::size_t k_stride, const float* qt, std::size_t d, float* st,
                   const float* bt = nullptr, std::size_t bt_stride = 0, float unit = 0.0f) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kQv = AttentionTile<Arch>::kQueryVecs;
  constexpr std::size_t kGroup = kQv * kW;
  V acc[kKeys][kQv];
#pragma GCC unroll 16
  for (std::size_t r = 0; r < kKeys; ++r) {
#pragma GCC unroll 4
    for (std::size_t v = 0; v < kQv; ++v) acc[r][v] = V(0.0f);
  }
  for (std::size_t dd = 0; dd < d; ++dd) {
    V qv[kQv];
#pragma GCC unroll 4
    for (std::size_t v = 0; v < kQv; ++v) qv[v] = V::load_aligned(qt + dd * kGroup + v * kW);
#pragma GCC unroll 16
    for (std::size_t r = 0; r < kKeys; ++r) {
      const V kv(k[r * k_stride + dd]);
#pragma GCC unroll 4
      for (std::size_t v = 0; v < kQv; ++v) acc[r][v] = madd<Arch>(kv, qv[v], acc[r][v]);
    }
  }
  if (bt != nullptr) {
    const V vu(unit);
#pragma GCC unroll 16
    for (std::size_t r = 0; r < kKeys; ++r) {
#pragma GCC unroll 4
      for (std::size_t v = 0; v < kQv; ++v) {
        acc[r][v] = add_bias<Arch>(acc[r][v], V::load_unaligned(bt + r * bt_stride + v * kW), vu);
      }
    }
  }
#pragma GCC unroll 16
  for (std::size_t r = 0; r < kKeys; ++r) {
#pragma GCC unroll 4
    for (std::size_t v = 0; v < kQv; ++v) acc[r][v].store_aligned(st + r * kGroup + v * kW);
  }
}

/// o_r[c0, c0 + kNv * W) = alpha_r * o_r + sum_j p[j][r] v[j] over j < nkeys, for kR queries.
/// p is the transposed probability tile (p_stride floats per key); v rows are v_stride apart.
template <class Arch, std::size_t kR, std::size_t kNv>
void output_ukernel(const float* p, std::size_t p_stride, const float* v, std::size_t v_stride,
                    std::size_t nkeys, const float* alpha, float* o, std::size_t o_stride) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kNv];
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V ar(alpha[r]);
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kNv; ++c)
      acc[r][c] = V::load_aligned(o + r * o_stride + c * kW) * ar;
  }
  for (std::size_t j = 0; j < nkeys; ++j) {
    V vv[kNv];
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kNv; ++c) vv[c] = V::load_unaligned(v + j * v_stride + c * kW);
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kR; ++r) {
      const V pr(p[j * p_stride + r]);
#pragma GCC unroll 8
      for (std::size_t c = 0; c < kNv; ++c) acc[r][c] = madd<Arch>(pr, vv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t c = 0; c < kNv; ++c) acc[r][c].store_aligned(o + r * o_stride + c * kW);
  }
}

/// Online-softmax step for one vector of queries over the keys [0, nk) of the transposed
/// score tile st (stride floats per key), in base 2: p = 2^(s - m_new) in place,
/// l = l * alpha + sum p, m = m_new, alpha = 2^(m_old - m_new). Lanes with nothing visible yet
/// keep m = -inf, get p = 0 and alpha = 0, and compute no 2^(-inf - -inf).
template <class Arch>
void softmax_lanes(float* st, std::size_t stride, std::size_t nk, float* m, float* l,
                   float* alpha) {
  using V = Vec<Arch>;
  const V neg_inf(-std::numeric_limits<float>::infinity());
  // Four running maxima: one chain of dependent max operations, one per key, ran at its latency
  // (4 cycles a key, 6% of the tile loop's samples under a window). The maximum is the same in
  // any order; a NaN score, which max keeps or drops by its position, makes the row's sum NaN
  // either way. Intel Xeon VM, one thread, both in turn in one process, medians of 7-11 calls,
  // results bitwise the same: s2048 (E = 512, H = 8) 75.7 -> 73.0 ms on AVX-512, 108.9 -> 105.7
  // on AVX2; window W = 256 at L = 8192 52.7 -> 51.3 and 69.5 -> 68.6 ms.
  V vmax = V::load_aligned(st), m1 = neg_inf, m2 = neg_inf, m3 = neg_inf;
  std::size_t j = 1;
  for (; j + 4 <= nk; j += 4) {
    vmax = xsimd::max(vmax, V::load_aligned(st + j * stride));
    m1 = xsimd::max(m1, V::load_aligned(st + (j + 1) * stride));
    m2 = xsimd::max(m2, V::load_aligned(st + (j + 2) * stride));
    m3 = xsimd::max(m3, V::load_aligned(st + (j + 3) * stride));
  }
  for (; j < nk; ++j) vmax = xsimd::max(vmax, V::load_aligned(st + j * stride));
  vmax = xsimd::max(xsimd::max(vmax, m1), xsimd::max(m2, m3));
  const V m_old = V::load_aligned(m);
  const V m_new = xsimd::max(m_old, vmax);
  // Where nothing is visible, subtract 0 instead of -inf: 2^(-inf - 0) = 0, never NaN.
  const V m_use = xsimd::select(m_new == neg_inf, V(0.0f), m_new);
  V sum(0.0f);
  for (std::size_t j = 0; j < nk; ++j) {
    const V p = exp2_nonpositive<Arch>(V::load_aligned(st + j * stride) - m_use);
    p.store_aligned(st + j * stride);
    sum += p;
  }
  const V a = exp2_nonpositive<Arch>(m_old - m_use);  // m_old = -inf gives 0: nothing to keep
  a.store_aligned(alpha);
  (V::load_aligned(l) * a + sum).store_aligned(l);
  m_new.store_aligned(m);
}

/// Writes row i's result from its running max m and sum l (base 2), with the sink's term if
/// any, or the masked-row answer, and its log-sum-exp (natural) if asked. `answer` caches the
/// masked-row answer (computed on first need, `have_answer` tracks it).
inline void finish_row(const AttentionArgs& a, std::size_t dv, std::size_t i, float m, float l,
                       const float* o, float* answer, bool& have_answer) {
  constexpr float kLn2 = 0.693147180559945309f;
  float* out = a.out + i * a.out_stride;
  const bool sink = has_sink(a.mods);
  // Decided by the key rule, not by m: a visible score of -inf (from infinite inputs) must
  // give NaN as in the reference, not the masked-row answer.
  if (!has_visible_key(a.rule, i)) {
    if (sink) {  // the sink takes all the weight
      std::fill(out, out + dv, 0.0f);
    } else {
      if (!have_answer) {
        masked_row_answer(a.masked_rows, a.v, a.v_stride, a.lk, dv, answer);
        have_answer = true;
      }
      std::copy(answer, answer + dv, out);
    }
    if (a.lse != nullptr) a.lse[i] = sink ? a.mods.sink : -std::numeric_limits<float>::infinity();
    return;
  }
  float scale = 1.0f / l;
  if (sink) {
    // Denominator l 2^m + 2^sink2, with the larger exponent taken out (m may be -inf here: every
    // visible score -inf).
    const float sink2 = a.mods.sink * 1.44269504088896341f;
    const float top = m > sink2 ? m : sink2;
    const float keys = std::exp2(m - top);
    l = l * keys + std::exp2(sink2 - top);
    scale = keys / l;
    m = std::isnan(m) ? m : top;
  }
  for (std::size_t dd = 0; dd < dv; ++dd) out[dd] = o[dd] * scale;
  if (a.lse != nullptr) a.lse[i] = m * kLn2 + std::log(l);
}

template <class Arch>
void attention_tiles(const AttentionArgs& a) {
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kKeys = AttentionTile<Arch>::kScoreKeys;
  constexpr std::size_t kGroup = AttentionTile<Arch>::kQueryVecs * kW;
  constexpr std::size_t kRows = AttentionTile<Arch>::kRows;
  constexpr std::size_t kOutVecs = AttentionTile<Arch>::kOutVecs;
  static_assert(kGroup <= kMaxQueryGroup && kMaxTaskRows % kGroup == 0);
  constexpr float kLog2e = 1.44269504088896341f;
  const std::size_t d = a.d;
  const std::size_t dv = a.dv != 0 ? a.dv : d;
  const std::size_t dp = round_up(d, 16);
  const std::size_t dvp = round_up(dv, 16);
  const std::size_t rows = a.row_end - a.row_begin;
  const std::size_t rows_pad = round_up(rows, kGroup);
  const std::size_t key_block = tile_key_block<Arch>(std::max(dp, dvp));
  // Scratch layout (every piece 64-byte aligned): qt, kp, vp, st, alpha, m, l, o, answer
  // (attention_scratch_floats).
  float* qt = a.scratch;
  float* kp = qt + dp * kMaxTaskRows;
  float* vp = kp + kKeyBlock * dp;
  float* st = vp + kKeyBlock * dvp;
  float* alpha = st + kKeyBlock * kMaxQueryGroup;
  float* m = alpha + kMaxTaskRows;
  float* l = m + kMaxTaskRows;
  float* o = l + kMaxTaskRows;
  float* answer = o + kMaxTaskRows * dvp;
  // A bias copied with keys down (and no soft-capping, which comes first) is added by the score
  // micro-kernel; the rest of the modifications see a rule without it.
  const bool fused_bias = has_keys_down_copy(a.rule) && a.mods.softcap == 0.0f;
  KeyRule mods_rule = a.rule;
  if (fused_bias) mods_rule.bias = nullptr;
  const bool modify = changes_scores(mods_rule, a.mods);
  // Q^T per group, [d][kGroup] from qt + g0 * d, scaled so that scores come out in base 2;
  // each group's is made on its first block and its rows written after its last one
  // (finish_group), so that under a window, where a 256-row task computes only 287 keys per
  // group (W = 256), reading Q and writing the output overlap the other groups' work: with
  // the output tiles' key ranges below, W = 256 at L = 8192 went 36.3 -> 34.1 ms (E = 512,
  // H = 8, one thread, AVX-512, medians of 4 interleaved; causal unchanged).
  // There, at 1.3x of (L x W work at the plain rate), the parts left out one at a time (wrong
  // results, timing only; CPU time, interleaved, load 8-11): the K/V copy 7-18% of the time,
  // writing the output rows 10-11%, packing Q 2%, hiding at the window's bounds 1%; the wasted
  // keys of a group's edge blocks (287 computed for 256 seen) about 12% of the score and
  // softmax work. Tried, no gain: 512-row tasks (each key block copied for more groups, within
  // 1%), prefetching a group's output rows on its first block (0.5%), streaming (non-temporal)
  // stores of the output rows (2%, within the noise), loading one word of each new page of
  // the next block early to start its page walk (2% slower).
  // Measured again (one thread, AVX-512, min of 9-21 calls, interleaved, load 3-9): the parts left
  // out one at a time cost the output rows' writes 7.5%, the K/V copy 11%, the softmax 9%
  // (31.6-32.3 ms in all); with every tensor in cache (L = 1024, 8 MiB in all) the window runs at
  // 1.17x of (L x W work at the plain rate), against 1.33x at L = 8192, so the part above 1.2x
  // comes from memory. Tried, no gain: key blocks of 24-48 keys (30.9-33.6 ms against 30.6-30.9 at
  // 64); a group's first and last 16 keys computed for the one query vector that sees them (0-2%
  // faster on AVX-512, 2% slower on AVX2); the next block's copy done in shares during this block's
  // groups into a second buffer, the block after prefetched (1% slower).
  // Tried again, no gain (best of 5 calls per round, 2-9 rounds interleaved, one thread, AVX-512,
  // load 1-5; medians of the rounds' ratios, this code at 1.32x): the K/V prefetch two or three
  // blocks ahead, the first ones at the task's start (1.32x, 1.31x); prefetcht1, t2 or nta
  // instead of t0 (1.37x, 1.31x, 1.32x); a group's output rows prefetched on its next-to-last
  // block (1.29x). A block's 64 source rows, 2 KiB apart at E = 512, fall into 8 of the L1's 64
  // sets, so an L1 prefetch of a whole block likely lands in L2 whatever its distance. At two
  // threads (load 6-7), runs of 2, 4 or 8 consecutive row tasks per scheduled unit, so that one
  // core's tasks share K/V in its L2: 1.33x, 1.35x, 1.31x against 1.29x. What the prefetches
  // give at all (one thread, 3 rounds, load 5-9): 1.34x without them, 1.32x and 1.34x with only
  // the first one or two lines of each row, against 1.28x.
  const float qscale = a.scale * kLog2e;
  constexpr std::size_t kMaxGroups = kMaxTaskRows / kGroup;
  bool packed[kMaxGroups] = {}, finished[kMaxGroups] = {};
  auto pack_group = [&](std::size_t g0) {
    const float* q = a.q + (a.row_begin + g0) * a.q_stride;
    pack_query_group<Arch, kGroup>(q, a.q_stride, std::min(kGroup, rows - g0), d, qscale,
                                   qt + g0 * d);
    packed[g0 / kGroup] = true;
    // The next group's rows, for its own first block.
    const std::size_t next = g0 + kGroup;
    if (next < rows)
      prefetch_rows(q + kGroup * a.q_stride, a.q_stride, 0, std::min(kGroup, rows - next), d);
  };
  bool have_answer = false;
  auto finish_group = [&](std::size_t g0) {
    for (std::size_t t = g0; t < std::min(rows, g0 + kGroup); ++t) {
      finish_row(a, dv, a.row_begin + t, m[t], l[t], o + t * dvp, answer, have_answer);
    }
    finished[g0 / kGroup] = true;
  };
  std::fill(o, o + rows_pad * dvp, 0.0f);
  std::fill(m, m + rows_pad, -std::numeric_limits<float>::infinity());
  std::fill(l, l + rows_pad, 0.0f);
  const std::size_t d_vec = round_up(dv, kW);  // columns of O the output kernel computes

  // Later rows see more keys, and their windows start later: keys outside
  // [begin(first row), end(last row)) are never read. Blocks start at multiples of key_block
  // whatever the task's rows, so each row's sums run in the same order for any thread count.
  const std::size_t task_key_begin = key_begin(a.rule, a.row_begin) / key_block * key_block;
  const std::size_t task_key_end = key_end(a.rule, a.row_end - 1);
  for (std::size_t k0 = task_key_begin; k0 < task_key_end; k0 += key_block) {
    const std::size_t nk = std::min(key_block, a.lk - k0);
    pack_rows<Arch>(a.k + k0 * a.k_stride, a.k_stride, nk, d, dp, kp, dp);
    pack_rows<Arch>(a.v + k0 * a.v_stride, a.v_stride, nk, dv, dvp, vp, dvp);
    // The group's keys of this block: past its last row's causal end and before its first
    // row's window every query has p = 0, so they are not computed (a window costs L x W).
    // Empty when the whole block is past every row's causal end or before every row's window.
    auto group_keys = [&](std::size_t g0, std::size_t block, std::size_t n) {
      const std::size_t i0 = a.row_begin + g0;
      const std::size_t gn = std::min(kGroup, rows - g0);
      const std::size_t b = std::max(block, key_begin(a.rule, i0));
      const std::size_t e = std::min(block + n, key_end(a.rule, i0 + gn - 1));
      return std::pair<std::size_t, std::size_t>(b, std::max(b, e));
    };
    // The next block's rows, a share per group that computes on this block (under a window
    // about half of them), so that its copy finds them in cache. Spread over the score
    // micro-kernel's calls instead: 1-4% slower (window W = 256 at L = 8192, one thread,
    // AVX-512 and AVX2).
    const std::size_t next = k0 + key_block;
    const std::size_t next_n = next < task_key_end ? std::min(key_block, task_key_end - next) : 0;
    std::size_t busy = 0;
    for (std::size_t g0 = 0; g0 < rows; g0 += kGroup) {
      const auto [b, e] = group_keys(g0, k0, nk);
      busy += e > b;
    }
    const std::size_t per_group = busy == 0 ? 0 : (next_n + busy - 1) / busy;
    std::size_t share = 0;
    for (std::size_t g0 = 0; g0 < rows; g0 += kGroup) {
      const auto [kb, kb_end] = group_keys(g0, k0, nk);
      if (kb == kb_end) continue;
      const std::size_t p0 = std::min(next + share * per_group, next + next_n);
      const std::size_t p1 = std::min(p0 + per_group, next + next_n);
      ++share;
      prefetch_rows(a.k, a.k_stride, p0, p1, d);
      prefetch_rows(a.v, a.v_stride, p0, p1, dv);
      const std::size_t gn = std::min(kGroup, rows - g0);
      const std::size_t i0 = a.row_begin + g0;
      const std::size_t j0 = kb - k0;
      const std::size_t nb = kb_end - kb;
      if (!packed[g0 / kGroup]) pack_group(g0);
      const float* qg = qt + g0 * d;
      const float* kpb = kp + j0 * dp;
      const std::size_t bts = a.rule.bias_t_stride;
      const float* bt = fused_bias ? keys_down_bias(a.rule, i0, kb) : nullptr;
      auto bias_at = [&](std::size_t kc) { return bt == nullptr ? nullptr : bt + kc * bts; };
      std::size_t kc = 0;
      for (; kc + kKeys <= nb; kc += kKeys) {
        score_ukernel<Arch, kKeys>(kpb + kc * dp, dp, qg, d, st + kc * kGroup, bias_at(kc), bts,
                                   kLog2e);
      }
      if (kc < nb) {
        with_rows<kKeys>(nb - kc, [&](auto r) {
          score_ukernel<Arch, decltype(r)::value>(kpb + kc * dp, dp, qg, d, st + kc * kGroup,
                                                  bias_at(kc), bts, kLog2e);
        });
      }
      // The one point where a block's scores are final: score modifications, then hiding.
      if (modify) modify_score_tile<Arch, kGroup>(mods_rule, a.mods, i0, gn, kb, nb, st, kLog2e);
      if (a.rule.mask != nullptr) {
        for (std::size_t t = 0; t < gn; ++t) hide_masked(a.rule, i0 + t, kb, nb, st + t, kGroup);
      } else {
        if (key_end(a.rule, i0) < kb + nb || key_begin(a.rule, i0 + gn - 1) > kb) {
          hide_outside_bounds<Arch, kGroup>(a.rule, i0, kb, nb, st);
        }
        if (a.rule.padding != nullptr) hide_padding<Arch, kGroup>(a.rule, kb, nb, st);
      }
      for (std::size_t v = 0; v < kGroup; v += kW) {
        softmax_lanes<Arch>(st + v, kGroup, nb, m + g0 + v, l + g0 + v, alpha + g0 + v);
      }
      for (std::size_t r0 = 0; r0 < gn; r0 += kRows) {
        const std::size_t nr = std::min(kRows, gn - r0);
        // Only the keys these rows can see: the others have p = 0 in every row of the tile.
        // Under a window a tile of 6 rows sees 261 of its group's 287 keys (W = 256).
        const std::size_t ob = std::max(kb, key_begin(a.rule, i0 + r0));
        const std::size_t oe = std::min(kb + nb, key_end(a.rule, i0 + r0 + nr - 1));
        const std::size_t nkeys = oe > ob ? oe - ob : 0;  // 0 still scales O by alpha
        const float* vj = vp + (std::min(ob, kb + nb) - k0) * dvp;
        const float* pt = st + (std::min(ob, kb + nb) - kb) * kGroup + r0;
        float* ot = o + (g0 + r0) * dvp;
        std::size_t c0 = 0;
        for (; c0 + kOutVecs * kW <= d_vec; c0 += kOutVecs * kW) {
          with_rows<kRows>(nr, [&](auto r) {
            output_ukernel<Arch, decltype(r)::value, kOutVecs>(pt, kGroup, vj + c0, dvp, nkeys,
                                                               alpha + g0 + r0, ot + c0, dvp);
          });
        }
        for (; c0 < d_vec; c0 += kW) {
          with_rows<kRows>(nr, [&](auto r) {
            output_ukernel<Arch, decltype(r)::value, 1>(pt, kGroup, vj + c0, dvp, nkeys,
                                                        alpha + g0 + r0, ot + c0, dvp);
          });
        }
      }
      if (kb_end == key_end(a.rule, i0 + gn - 1)) finish_group(g0);  // its last block
    }
  }
  // Groups that saw no key (every row without a visible one) are answered here.
  for (std::size_t g0 = 0; g0 < rows; g0 += kGroup) {
    if (!finished[g0 / kGroup]) finish_group(g0);
  }
}

/// Lane j of the result = the sum of the lanes of rows[j], for kWidth rows. xsimd 8.1's haddp
/// does this on SSE2 and AVX, but on AVX-512 it swaps lanes 2-3 with 4-5 and 10-11 with 12-13,
/// so there each row's halves are added and the AVX reduction runs twice.
template <class Arch>
struct RowSums {
  static Vec<Arch> of(const Vec<Arch>* rows) { return xsimd::haddp(rows); }
};
#if defined(__AVX512DQ__)
template <>
struct RowSums<xsimd::avx512bw> {
  static Vec<xsimd::avx512bw> of(const Vec<xsimd::avx512bw>* rows) {
    __m256 half[16];
    for (int i = 0; i < 16; ++i) {
      const __m512 r = rows[i];
      half[i] = _mm256_add_ps(_mm512_castps512_ps256(r), _mm512_extractf32x8_ps(r, 1));
    }
    using Half = xsimd::batch<float, avx2_in_avx512_unit>;
    const __m256 lo = xsimd::haddp(reinterpret_cast<const Half*>(half));
    const __m256 hi = xsimd::haddp(reinterpret_cast<const Half*>(half + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  }
};
#endif

/// Asks for the first two lines of rows [j0, j1) of a sequence made of `n` rows of `first`
/// and then the rows of `second`: the prefetch runs on from the K block into the V block and
/// from the V block into the next K block. At E = 1024 each row is a 4 KiB page of its own,
/// where the hardware prefetchers stop; touching its start early begins the page walk and the
/// stream. Whole rows cost 64 prefetches per row and measured no better (a 1.05x slower
/// kernel with K and V in L2).
inline void prefetch_decode_rows(const float* first, std::size_t first_stride, std::size_t n,
                                 const float* second, std::size_t second_stride, std::size_t j0,
                                 std::size_t j1) {
  for (std::size_t j = j0; j < j1; ++j) {
    const float* row = j < n ? first + j * first_stride : second + (j - n) * second_stride;
    __builtin_prefetch(row);
    __builtin_prefetch(row + 16);
  }
}

/// Decoding, one slice of keys for every head and query row of one batch. K and V are read in
/// place, once, a group of rows at a time with the heads inner, so each row (all heads,
/// contiguous) streams in order; the next group's rows are prefetched meanwhile (each 4 KiB row
/// at E = 1024 is its own page, where the hardware prefetchers stop). Scores: W keys at a time
/// (W = vector width), one vector accumulator per key over D, then RowSums puts the W dot
/// products in the lanes of one vector. Output: kDecodeValueKeys keys at a time, up to 4 vectors
/// of o in registers. Writes each (row, head)'s partial result over the slice, its log-sum-exp
/// and normalised output, which the driver merges across slices in a fixed order (merge.hpp).
template <class Arch>
void attention_decode(const DecodeArgs& a) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kVk = kDecodeValueKeys;
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  static_assert(kKeyBlock % kW == 0, "score groups must tile the block");
  const std::size_t d = a.d;
  const std::size_t dv = a.dv != 0 ? a.dv : d;
  const std::size_t q_hs = a.q_head_stride != 0 ? a.q_head_stride : d;
  const std::size_t k_hs = a.k_head_stride != 0 ? a.k_head_stride : d;
  const std::size_t v_hs = a.v_head_stride != 0 ? a.v_head_stride : dv;
  const std::size_t dk_vec = d / kW * kW;   // vector part of Dk; the rest is a scalar tail
  const std::size_t dv_vec = dv / kW * kW;  // likewise for Dv
  const std::size_t rec = partial_record_floats(dv);
  float* s = a.scratch;                    // [heads][kKeyBlock] scores, then probabilities
  float* alpha = s + a.heads * kKeyBlock;  // [heads]
  // [heads][rec]: the row's running records, written to a.partial (shared by every task, read
  // by the driver's merge) once per row, as the paged kernel does (paged_decode.hpp). Updated in
  // a.partial block by block, a step at Lk = 4096, 16 heads, f32, 2 threads, cold took 1.21-1.51x
  // its bytes at the read bandwidth against 1.19-1.27x (Zen 5, AVX-512, 4 interleaved rounds).
  float* running = a.scratch + decode_running_offset(a.heads);
  auto head_rule = [&](std::size_t h) {
    KeyRule r = a.rule;
    if (r.mask != nullptr) r.mask += h * a.mask_head_stride;
    if (r.bias != nullptr) r.bias += h * a.bias_head_stride;
    return r;
  };
  auto head_mods = [&](std::size_t h) {
    ScoreMods m;
    m.softcap = a.softcap;
    if (a.alibi != nullptr) m.alibi_slope = a.alibi[h];
    return m;
  };
  const bool hide_keys = a.rule.mask != nullptr || a.rule.padding != nullptr;
  for (std::size_t i = 0; i < a.lq; ++i) {
    // While the slice runs, a record holds the running max at [0] and sum at [1].
    for (std::size_t h = 0; h < a.heads; ++h) {
      float* r = running + h * rec;
      std::fill(r, r + rec, 0.0f);
      r[0] = kHidden;
    }
    const float* q = a.q + i * a.q_stride;
    // The window and the causal end bound the keys read (a window bounds a decode step).
    const std::size_t begin = std::max(a.key_begin, key_begin(a.rule, i));
    const std::size_t end = std::min(a.key_end, key_end(a.rule, i));
    for (std::size_t k0 = begin; k0 < end; k0 += kKeyBlock) {
      const std::size_t nk = std::min(kKeyBlock, end - k0);
      const std::size_t nk_vec = (nk + kW - 1) / kW * kW;
      const float* kb = a.k + k0 * a.k_stride;
      const float* vb = a.v + k0 * a.v_stride;
      for (std::size_t j0 = 0; j0 < nk; j0 += kW) {
        const std::size_t g = std::min(kW, nk - j0);
        prefetch_decode_rows(kb, a.k_stride, nk, vb, a.v_stride, j0 + kW,
                             std::min(j0 + 2 * kW, 2 * nk));
        // A short last group reads its last key again in the missing lanes, whose scores the
        // block's -inf fill below hides: one straight loop for every group, with the
        // accumulators in registers (a `j < g` bound inside it made GCC keep them on the stack,
        // 2.3x the instructions of the loop).
        const float* rows[kW];
#pragma GCC unroll 16
        for (std::size_t j = 0; j < kW; ++j) rows[j] = kb + (j0 + std::min(j, g - 1)) * a.k_stride;
        for (std::size_t h = 0, kv = 0, in_group = 0; h < a.heads; ++h) {
          const float* qh = q + h * q_hs;
          const std::size_t kh = kv * k_hs;
          if (++in_group == a.kv_group) in_group = 0, ++kv;
          V acc[kW];
#pragma GCC unroll 16
          for (std::size_t j = 0; j < kW; ++j) acc[j] = V(0.0f);
          for (std::size_t dd = 0; dd < dk_vec; dd += kW) {
            const V qv = V::load_unaligned(qh + dd);
#pragma GCC unroll 16
            for (std::size_t j = 0; j < kW; ++j) {
              acc[j] = madd<Arch>(qv, V::load_unaligned(rows[j] + kh + dd), acc[j]);
            }
          }
          V dots = RowSums<Arch>::of(acc);
          if (dk_vec < d) {
            alignas(64) float tail[kW] = {};
            for (std::size_t j = 0; j < g; ++j) {
              for (std::size_t dd = dk_vec; dd < d; ++dd) tail[j] += qh[dd] * rows[j][kh + dd];
            }
            dots += V::load_aligned(tail);
          }
          (dots * V(a.scale)).store_aligned(s + h * kKeyBlock + j0);
        }
      }
      for (std::size_t h = 0; h < a.heads; ++h) {
        float* sh = s + h * kKeyBlock;
        // The one point where a block's scores are final: score modifications, then hiding.
        const KeyRule rule = head_rule(h);
        const ScoreMods mods = head_mods(h);
        if (changes_scores(rule, mods)) modify_score_row<Arch>(rule, mods, i, k0, nk, sh);
        // Only the block's vectors of keys: a short block (the tutorial's 2 keys) computed
        // the exponentials of all kKeyBlock lanes, 8x the work at AVX2. The hidden lanes of
        // the last vector add exp(-inf) = +0 to the sum, so the result is the same bit for bit.
        std::fill(sh + nk, sh + nk_vec, kHidden);
        if (hide_keys) hide_masked(rule, i, k0, nk, sh, 1);
        float* r = running + h * rec;
        softmax_update<Arch>(sh, nk_vec, r[0], r[1], alpha[h]);
        // Rows with nothing visible yet keep o = 0 and p = 0: scaling by 1 changes nothing.
        float* o = r + 16;
        const V va(alpha[h]);
        for (std::size_t dd = 0; dd < dv_vec; dd += kW) {
          (V::load_aligned(o + dd) * va).store_aligned(o + dd);
        }
        for (std::size_t dd = dv_vec; dd < dv; ++dd) o[dd] *= alpha[h];
      }
      // After V's block, the next K block (its rows past this block's end).
      const float* kn = a.k + (k0 + nk) * a.k_stride;
      const std::size_t ahead = k0 + nk < end ? std::min(kKeyBlock, end - k0 - nk) : 0;
      for (std::size_t j0 = 0; j0 < nk; j0 += kVk) {
        const std::size_t g = std::min(kVk, nk - j0);
        prefetch_decode_rows(vb, a.v_stride, nk, kn, a.k_stride, j0 + kVk,
                             std::min(j0 + 2 * kVk, nk + ahead));
        for (std::size_t h = 0, kv = 0, in_group = 0; h < a.heads; ++h) {
          float* o = running + h * rec + 16;
          const float* vh = vb + j0 * a.v_stride + kv * v_hs;
          if (++in_group == a.kv_group) in_group = 0, ++kv;
          const float* p = s + h * kKeyBlock + j0;
          std::size_t dd = 0;
          if (g == kVk) {
            for (; dd + 4 * kW <= dv_vec; dd += 4 * kW) {
              V acc[4];
#pragma GCC unroll 4
              for (std::size_t c = 0; c < 4; ++c) acc[c] = V::load_aligned(o + dd + c * kW);
#pragma GCC unroll 8
              for (std::size_t j = 0; j < kVk; ++j) {
                const V pj(p[j]);
#pragma GCC unroll 4
                for (std::size_t c = 0; c < 4; ++c) {
                  acc[c] =
                      madd<Arch>(pj, V::load_unaligned(vh + j * a.v_stride + dd + c * kW), acc[c]);
                }
              }
#pragma GCC unroll 4
              for (std::size_t c = 0; c < 4; ++c) acc[c].store_aligned(o + dd + c * kW);
            }
          }
          for (; dd < dv_vec; dd += kW) {
            V acc = V::load_aligned(o + dd);
            for (std::size_t j = 0; j < g; ++j) {
              acc = madd<Arch>(V(p[j]), V::load_unaligned(vh + j * a.v_stride + dd), acc);
            }
            acc.store_aligned(o + dd);
          }
          for (; dd < dv; ++dd) {
            for (std::size_t j = 0; j < g; ++j) o[dd] += p[j] * vh[j * a.v_stride + dd];
          }
        }
      }
    }
    // Running (max, sum, unnormalised output) -> (log-sum-exp, normalised output). A slice
    // that saw nothing has lse = -inf, and the merge ignores its output.
    for (std::size_t h = 0; h < a.heads; ++h) {
      float* r = running + h * rec;
      const float m = r[0], l = r[1];
      r[0] = m + std::log(l);
      if (m == kHidden) continue;
      const float inv = 1.0f / l;
      for (std::size_t dd = 0; dd < dv; ++dd) r[16 + dd] *= inv;
    }
    std::copy(running, running + a.heads * rec, a.partial + i * a.heads * rec);
  }
}

}  // namespace
}  // namespace simdattn::kernels
