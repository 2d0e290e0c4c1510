// Fused attention for one task: query rows [row_begin, row_end) of one (batch, head),
// softmax(scale * Q K^T) V without an Lq x Lk matrix (FlashAttention's online softmax).
//
// Tile path (Lq > kDecodeMaxLq), queries in vector lanes: the task's queries are packed once,
// transposed to Q^T [D][rows]. Keys come in blocks of kKeyBlock = 64, read in place (K and V
// rows are contiguous in D, so a block of 64 keys stays in L1: 16 KiB each at D = 64). For
// each group of kQueryVecs x W queries the score micro-kernel computes S^T [64 keys][queries]
// (K elements broadcast, Q^T vectors loaded); the online softmax then runs down the key axis
// with queries in lanes, so the row max, the exponentials and the row sums are plain vector
// operations with no horizontal reduction; the output micro-kernel accumulates
// O[query][D] += P^T[key][query] V[key][D] into the task's running output. A first version
// packed K^T per block and per task instead: that transpose measured 12% of the time at
// s2048 (55 ms -> 62 ms when done twice) and the per-row horizontal max a few % more.
// V is read in place when D is a multiple of the width, else packed per block with zero padding.
// Tiles: scores 8 keys x 2 zmm of queries, output 6 queries x 4 zmm of D on AVX-512;
// 6 x 2 ymm and 6 x 2 ymm on AVX2; 4 x 2 and 4 x 2 xmm on SSE2. Scratch: O(task rows x D).
//
// Decode path (Lq <= kDecodeMaxLq): one task per (batch, slice of kDecodeSlice keys) covers
// every head. K and V are read in place, once, row by row with the heads inner, so each key's
// row (all heads, contiguous) streams in order; head-major order read 256-byte pieces 4 KiB
// apart and ran at 14 GB/s per core. Scores are dot products over D (a vector accumulator,
// then a horizontal add); then o += p * V[k] per head, o in L1 (heads x D floats).
// Slices write unnormalised (max, sum, output) records that the driver merges in slice order.

// Masks: a key block wholly past a query group's causal end is skipped; in a block that
// crosses it, or with an explicit mask, hidden scores become -inf before the max. A query
// whose max is still -inf after a block gets p = 0 without computing exp(-inf - -inf) (NaN).
// At the end a query that saw no visible key gets the policy's answer: zeros, or the uniform
// average of V. Values of hidden keys inside a crossed block are multiplied by 0, so a NaN or
// Inf stored there can reach the row (the reference skips them): do not rely on masked NaNs.
//
// Accuracy: xsimd::exp, max relative error 1.24e-7 (about 1 ulp) on [-87.3, 0] for every ISA
// (tests/test_kernels.cpp measures it). Each query's arithmetic depends only on the
// query, Lq, Lk and D, never on the task split or its lane, so results are bitwise the same for
// every thread count. Single-threaded, no allocation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/kernel_table.hpp"
#include "kernels/simd.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
struct AttentionTile;
template <>
struct AttentionTile<xsimd::avx512bw> {
  static constexpr std::size_t kScoreKeys = 8, kQueryVecs = 2, kRows = 6, kOutVecs = 4;
};
template <>
struct AttentionTile<xsimd::fma3<xsimd::avx2>> {
  static constexpr std::size_t kScoreKeys = 6, kQueryVecs = 2, kRows = 6, kOutVecs = 2;
};
template <>
struct AttentionTile<xsimd::sse2> {
  static constexpr std::size_t kScoreKeys = 4, kQueryVecs = 2, kRows = 4, kOutVecs = 2;
};

inline std::size_t round_up(std::size_t x, std::size_t m) {
  return (x + m - 1) / m * m;
}

/// Keys [0, end) pass the causal rule for query row i (mask_rule.hpp's rule, for kernels).
inline std::size_t causal_end(const AttentionArgs& a, std::size_t i) {
  switch (a.causal) {
    case Causal::top_left:
      return std::min(i + 1, a.lk);
    case Causal::bottom_right:
      return i + 1 + a.lk <= a.lq ? 0 : std::min(i + 1 + a.lk - a.lq, a.lk);
    case Causal::none:
      break;
  }
  return a.lk;
}

/// Sets the hidden scores among keys [k0, k0 + n) to -inf: keys at or past `end` (the causal
/// rule) and keys whose mask byte is 0 (mrow: the row's mask, nullptr for none; mask_lk 1 when
/// it broadcasts over keys). s[j * stride] is the score of key k0 + j.
inline void hide_masked(const std::uint8_t* mrow, std::size_t mask_lk, std::size_t end,
                        std::size_t k0, std::size_t n, float* s, std::size_t stride) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t key = k0 + j;
    const bool visible = key < end && (mrow == nullptr || mrow[mask_lk == 1 ? 0 : key] != 0);
    if (!visible) s[j * stride] = kHidden;
  }
}

/// s[0, n) <- exp(s - m_new) with n a multiple of the width; returns the sum. Updates the
/// row's running max and sum and returns alpha = exp(m_old - m_new) through `alpha`.
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

/// st[key][0, kQueryVecs * W) = scale * K[key] . Q^T[:, q] for kKeys keys read in place.
template <class Arch, std::size_t kKeys>
void score_ukernel(const float* k, std::size_t k_stride, const float* qt, std::size_t qt_stride,
                   std::size_t d, float scale, float* st) {
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
    for (std::size_t v = 0; v < kQv; ++v) qv[v] = V::load_aligned(qt + dd * qt_stride + v * kW);
#pragma GCC unroll 16
    for (std::size_t r = 0; r < kKeys; ++r) {
      const V kv(k[r * k_stride + dd]);
#pragma GCC unroll 4
      for (std::size_t v = 0; v < kQv; ++v) acc[r][v] = madd<Arch>(kv, qv[v], acc[r][v]);
    }
  }
  const V vs(scale);
#pragma GCC unroll 16
  for (std::size_t r = 0; r < kKeys; ++r) {
#pragma GCC unroll 4
    for (std::size_t v = 0; v < kQv; ++v) (acc[r][v] * vs).store_aligned(st + r * kGroup + v * kW);
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
/// score tile st (stride floats per key): p = exp(s - m_new) in place, l = l * alpha + sum p,
/// m = m_new, alpha = exp(m_old - m_new). Lanes with nothing visible yet keep m = -inf, get
/// p = 0 and alpha = 0, and compute no exp(-inf - -inf).
template <class Arch>
void softmax_lanes(float* st, std::size_t stride, std::size_t nk, float* m, float* l,
                   float* alpha) {
  using V = Vec<Arch>;
  const V neg_inf(-std::numeric_limits<float>::infinity());
  V vmax = V::load_aligned(st);
  for (std::size_t j = 1; j < nk; ++j) vmax = xsimd::max(vmax, V::load_aligned(st + j * stride));
  const V m_old = V::load_aligned(m);
  const V m_new = xsimd::max(m_old, vmax);
  // Where nothing is visible, subtract 0 instead of -inf: exp(-inf - 0) = 0, never NaN.
  const V m_use = xsimd::select(m_new == neg_inf, V(0.0f), m_new);
  V sum(0.0f);
  for (std::size_t j = 0; j < nk; ++j) {
    const V p = xsimd::exp(V::load_aligned(st + j * stride) - m_use);
    p.store_aligned(st + j * stride);
    sum += p;
  }
  const V a = xsimd::exp(m_old - m_use);  // m_old = -inf gives 0: nothing to keep
  a.store_aligned(alpha);
  (V::load_aligned(l) * a + sum).store_aligned(l);
  m_new.store_aligned(m);
}

/// True if query row i sees at least one key under the causal rule and the mask.
inline bool has_visible_key(const AttentionArgs& a, std::size_t i) {
  const std::size_t end = causal_end(a, i);
  if (end == 0) return false;
  if (a.mask == nullptr) return true;
  const std::uint8_t* mrow = a.mask + i * a.mask_row_stride;
  if (a.mask_lk == 1) return mrow[0] != 0;
  for (std::size_t k = 0; k < end; ++k) {
    if (mrow[k] != 0) return true;
  }
  return false;
}

/// Writes row i's result from its running state, or the fully-masked policy's answer.
/// `mean` is the uniform average of V (computed on first need, `have_mean` tracks it).
template <class Arch>
void finish_row(const AttentionArgs& a, std::size_t i, float l, const float* o, float* mean,
                bool& have_mean) {
  float* out = a.out + i * a.out_stride;
  // Decided by the mask rule, not by m: a visible score of -inf (from infinite inputs) must
  // give NaN as in the reference, not the fully-masked answer.
  if (!has_visible_key(a, i)) {
    if (a.masked_rows == MaskedRows::zeros) {
      std::fill(out, out + a.d, 0.0f);
      return;
    }
    if (!have_mean) {
      // Softmax of equal scores, as the reference computes it: sum of (1/Lk) * v in key order.
      const float p = 1.0f / static_cast<float>(a.lk);
      std::fill(mean, mean + a.d, 0.0f);
      for (std::size_t k = 0; k < a.lk; ++k) {
        const float* vk = a.v + k * a.v_stride;
        for (std::size_t dd = 0; dd < a.d; ++dd) mean[dd] += p * vk[dd];
      }
      have_mean = true;
    }
    std::copy(mean, mean + a.d, out);
    return;
  }
  const float inv = 1.0f / l;
  for (std::size_t dd = 0; dd < a.d; ++dd) out[dd] = o[dd] * inv;
}

template <class Arch>
void attention_tiles(const AttentionArgs& a) {
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kKeys = AttentionTile<Arch>::kScoreKeys;
  constexpr std::size_t kGroup = AttentionTile<Arch>::kQueryVecs * kW;
  constexpr std::size_t kRows = AttentionTile<Arch>::kRows;
  constexpr std::size_t kOutVecs = AttentionTile<Arch>::kOutVecs;
  static_assert(kGroup <= kMaxQueryGroup && kMaxTaskRows % kGroup == 0);
  const std::size_t d = a.d;
  const std::size_t dp = round_up(d, 16);
  const std::size_t rows = a.row_end - a.row_begin;
  const std::size_t rows_pad = round_up(rows, kGroup);
  // Scratch layout (every piece 64-byte aligned): qt, vp, st, alpha, m, l, o, mean.
  float* qt = a.scratch;
  float* vp = qt + dp * kMaxTaskRows;
  float* st = vp + kKeyBlock * dp;
  float* alpha = st + kKeyBlock * kMaxQueryGroup;
  float* m = alpha + kMaxTaskRows;
  float* l = m + kMaxTaskRows;
  float* o = l + kMaxTaskRows;
  float* mean = o + kMaxTaskRows * dp;
  for (std::size_t dd = 0; dd < d; ++dd) {
    float* row = qt + dd * rows_pad;
    for (std::size_t t = 0; t < rows; ++t) row[t] = a.q[(a.row_begin + t) * a.q_stride + dd];
    std::fill(row + rows, row + rows_pad, 0.0f);
  }
  std::fill(o, o + rows_pad * dp, 0.0f);
  std::fill(m, m + rows_pad, -std::numeric_limits<float>::infinity());
  std::fill(l, l + rows_pad, 0.0f);
  // V in place when every vector load stays inside a row; else a zero-padded copy per block.
  const bool v_in_place = d % kW == 0;

  const std::size_t task_key_end = causal_end(a, a.row_end - 1);  // later rows see more keys
  for (std::size_t k0 = 0; k0 < task_key_end; k0 += kKeyBlock) {
    const std::size_t nk = std::min(kKeyBlock, a.lk - k0);
    const float* kb = a.k + k0 * a.k_stride;
    const float* vb = a.v + k0 * a.v_stride;
    std::size_t vb_stride = a.v_stride;
    if (!v_in_place) {
      for (std::size_t j = 0; j < nk; ++j) {
        std::copy(vb + j * a.v_stride, vb + j * a.v_stride + d, vp + j * dp);
        std::fill(vp + j * dp + d, vp + (j + 1) * dp, 0.0f);
      }
      vb = vp;
      vb_stride = dp;
    }
    for (std::size_t g0 = 0; g0 < rows; g0 += kGroup) {
      const std::size_t gn = std::min(kGroup, rows - g0);
      const std::size_t i0 = a.row_begin + g0;
      const std::size_t group_end = causal_end(a, i0 + gn - 1);
      if (group_end <= k0) continue;  // the whole block is past every query's causal end
      std::size_t kc = 0;
      for (; kc + kKeys <= nk; kc += kKeys) {
        score_ukernel<Arch, kKeys>(kb + kc * a.k_stride, a.k_stride, qt + g0, rows_pad, d, a.scale,
                                   st + kc * kGroup);
      }
      if (kc < nk) {
        with_rows<kKeys>(nk - kc, [&](auto r) {
          score_ukernel<Arch, decltype(r)::value>(kb + kc * a.k_stride, a.k_stride, qt + g0,
                                                  rows_pad, d, a.scale, st + kc * kGroup);
        });
      }
      if (a.mask != nullptr || causal_end(a, i0) < k0 + nk) {
        for (std::size_t t = 0; t < gn; ++t) {
          const std::size_t i = i0 + t;
          const std::uint8_t* mrow = a.mask != nullptr ? a.mask + i * a.mask_row_stride : nullptr;
          hide_masked(mrow, a.mask_lk, causal_end(a, i), k0, nk, st + t, kGroup);
        }
      }
      for (std::size_t v = 0; v < kGroup; v += kW) {
        softmax_lanes<Arch>(st + v, kGroup, nk, m + g0 + v, l + g0 + v, alpha + g0 + v);
      }
      // Keys past the group's causal end have p = 0 for every query of the group: skip them.
      const std::size_t nkeys = std::min(nk, group_end - k0);
      const std::size_t d_vec = round_up(d, kW);  // in place: d itself; packed: inside dp
      for (std::size_t r0 = 0; r0 < gn; r0 += kRows) {
        const std::size_t nr = std::min(kRows, gn - r0);
        float* ot = o + (g0 + r0) * dp;
        const float* pt = st + r0;
        std::size_t c0 = 0;
        for (; c0 + kOutVecs * kW <= d_vec; c0 += kOutVecs * kW) {
          with_rows<kRows>(nr, [&](auto r) {
            output_ukernel<Arch, decltype(r)::value, kOutVecs>(pt, kGroup, vb + c0, vb_stride,
                                                               nkeys, alpha + g0 + r0, ot + c0, dp);
          });
        }
        for (; c0 < d_vec; c0 += kW) {
          with_rows<kRows>(nr, [&](auto r) {
            output_ukernel<Arch, decltype(r)::value, 1>(pt, kGroup, vb + c0, vb_stride, nkeys,
                                                        alpha + g0 + r0, ot + c0, dp);
          });
        }
      }
    }
  }
  bool have_mean = false;
  for (std::size_t t = 0; t < rows; ++t) {
    finish_row<Arch>(a, a.row_begin + t, l[t], o + t * dp, mean, have_mean);
  }
}

/// Decoding, one slice of keys for every head and query row of one batch. K and V are read in
/// place, once, row by row: for each key the heads are inner, so a key's row (all heads,
/// contiguous) streams through in order. Writes unnormalised partial results (max, sum,
/// output) that the driver merges across slices in a fixed order.
template <class Arch>
void attention_decode(const AttentionArgs& a) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  const std::size_t d = a.d;
  const std::size_t dv = d / kW * kW;  // vector part of D; the rest is a scalar tail
  const std::size_t rec = partial_record_floats(d);
  float* s = a.scratch;                    // [heads][kKeyBlock] scores, then probabilities
  float* alpha = s + a.heads * kKeyBlock;  // [heads]
  for (std::size_t i = 0; i < a.lq; ++i) {
    float* part = a.partial + i * a.heads * rec;
    for (std::size_t h = 0; h < a.heads; ++h) {
      float* r = part + h * rec;
      r[0] = kHidden;
      r[1] = 0.0f;
      std::fill(r + 16, r + rec, 0.0f);
    }
    const float* q = a.q + i * a.q_stride;
    const std::size_t key_end = std::min(a.key_end, causal_end(a, i));
    for (std::size_t k0 = a.key_begin; k0 < key_end; k0 += kKeyBlock) {
      const std::size_t nk = std::min(kKeyBlock, key_end - k0);
      for (std::size_t j = 0; j < nk; ++j) {
        const float* kj = a.k + (k0 + j) * a.k_stride;
        for (std::size_t h = 0; h < a.heads; ++h) {
          const float* qh = q + h * d;
          const float* kh = kj + h * d;
          V acc(0.0f);
          for (std::size_t dd = 0; dd < dv; dd += kW) {
            acc = madd<Arch>(V::load_unaligned(qh + dd), V::load_unaligned(kh + dd), acc);
          }
          float dot = xsimd::hadd(acc);
          for (std::size_t dd = dv; dd < d; ++dd) dot += qh[dd] * kh[dd];
          s[h * kKeyBlock + j] = dot * a.scale;
        }
      }
      for (std::size_t h = 0; h < a.heads; ++h) {
        float* sh = s + h * kKeyBlock;
        std::fill(sh + nk, sh + kKeyBlock, kHidden);
        if (a.mask != nullptr) {
          const std::uint8_t* mrow = a.mask + h * a.mask_head_stride + i * a.mask_row_stride;
          hide_masked(mrow, a.mask_lk, key_end, k0, nk, sh, 1);
        }
        float* r = part + h * rec;
        softmax_update<Arch>(sh, kKeyBlock, r[0], r[1], alpha[h]);
        // Rows with nothing visible yet keep o = 0 and p = 0: scaling by 1 changes nothing.
        float* o = r + 16;
        const V va(alpha[h]);
        for (std::size_t dd = 0; dd < dv; dd += kW) {
          (V::load_aligned(o + dd) * va).store_aligned(o + dd);
        }
        for (std::size_t dd = dv; dd < d; ++dd) o[dd] *= alpha[h];
      }
      for (std::size_t j = 0; j < nk; ++j) {
        const float* vj = a.v + (k0 + j) * a.v_stride;
        for (std::size_t h = 0; h < a.heads; ++h) {
          const float p = s[h * kKeyBlock + j];
          float* o = part + h * rec + 16;
          const float* vh = vj + h * d;
          const V vp(p);
          for (std::size_t dd = 0; dd < dv; dd += kW) {
            madd<Arch>(vp, V::load_unaligned(vh + dd), V::load_aligned(o + dd))
                .store_aligned(o + dd);
          }
          for (std::size_t dd = dv; dd < d; ++dd) o[dd] += p * vh[dd];
        }
      }
    }
  }
}

}  // namespace
}  // namespace simdattn::kernels
