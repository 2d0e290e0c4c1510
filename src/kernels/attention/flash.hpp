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
// Register tiles per vector width and the block sizes are in kernels/blocking.hpp.
// Scratch: O(task rows x D).
//
// Decode path (Lq <= kDecodeMaxLq): one task per (batch, slice of kDecodeSlice keys) covers
// every head. K and V are read in place, once, row by row with the heads inner, so each key's
// row (all heads, contiguous) streams in order; head-major order read 256-byte pieces 4 KiB
// apart and ran at 14 GB/s per core. Scores are dot products over D (a vector accumulator,
// then a horizontal add); then o += p * V[k] per head, o in L1 (heads x D floats).
// Each slice writes its partial result per (row, head), a log-sum-exp and a normalised output,
// which the driver merges in slice order (merge.hpp).

// Masks (the rule of key_rule.hpp): a key block wholly past a query group's causal end is
// skipped; in a block that crosses it, or with an explicit mask, hidden scores become -inf
// before the max. A query whose max is still -inf after a block gets p = 0 without computing
// exp(-inf - -inf) (NaN). At the end a query that saw no visible key gets the policy's answer
// (merge.hpp's masked_row_answer: zeros, or the uniform average of V). On request each row's
// log-sum-exp is written too (merge.hpp defines it; -inf for a row without visible keys).
// Values of hidden keys inside a crossed block are multiplied by 0, so a NaN or Inf stored
// there can reach the row (the reference skips them): do not rely on masked NaNs.
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

#include "kernels/attention/merge.hpp"
#include "kernels/blocking.hpp"
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

/// Sets the hidden scores of row i among keys [k0, k0 + n) to -inf: keys at or past the causal
/// end and keys the mask hides. s[j * stride] is the score of key k0 + j.
inline void hide_masked(const KeyRule& rule, std::size_t i, std::size_t k0, std::size_t n, float* s,
                        std::size_t stride) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  const std::size_t end = key_end(rule, i);
  const std::uint8_t* mrow = mask_row(rule, i);
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t key = k0 + j;
    if (!(key < end && mask_keeps(rule, mrow, key))) s[j * stride] = kHidden;
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

/// Writes row i's result from its running max m and sum l, or the masked-row answer, and its
/// log-sum-exp if asked. `answer` caches the masked-row answer (computed on first need,
/// `have_answer` tracks it).
inline void finish_row(const AttentionArgs& a, std::size_t i, float m, float l, const float* o,
                       float* answer, bool& have_answer) {
  float* out = a.out + i * a.out_stride;
  // Decided by the key rule, not by m: a visible score of -inf (from infinite inputs) must
  // give NaN as in the reference, not the masked-row answer.
  if (!has_visible_key(a.rule, i)) {
    if (!have_answer) {
      masked_row_answer(a.masked_rows, a.v, a.v_stride, a.lk, a.d, answer);
      have_answer = true;
    }
    std::copy(answer, answer + a.d, out);
    if (a.lse != nullptr) a.lse[i] = -std::numeric_limits<float>::infinity();
    return;
  }
  const float inv = 1.0f / l;
  for (std::size_t dd = 0; dd < a.d; ++dd) out[dd] = o[dd] * inv;
  if (a.lse != nullptr) a.lse[i] = m + std::log(l);
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
  // Scratch layout (every piece 64-byte aligned): qt, vp, st, alpha, m, l, o, answer.
  float* qt = a.scratch;
  float* vp = qt + dp * kMaxTaskRows;
  float* st = vp + kKeyBlock * dp;
  float* alpha = st + kKeyBlock * kMaxQueryGroup;
  float* m = alpha + kMaxTaskRows;
  float* l = m + kMaxTaskRows;
  float* o = l + kMaxTaskRows;
  float* answer = o + kMaxTaskRows * dp;
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

  const std::size_t task_key_end = key_end(a.rule, a.row_end - 1);  // later rows see more keys
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
      const std::size_t group_end = key_end(a.rule, i0 + gn - 1);
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
      if (a.rule.mask != nullptr || key_end(a.rule, i0) < k0 + nk) {
        for (std::size_t t = 0; t < gn; ++t) hide_masked(a.rule, i0 + t, k0, nk, st + t, kGroup);
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
  bool have_answer = false;
  for (std::size_t t = 0; t < rows; ++t) {
    finish_row(a, a.row_begin + t, m[t], l[t], o + t * dp, answer, have_answer);
  }
}

/// Decoding, one slice of keys for every head and query row of one batch. K and V are read in
/// place, once, row by row: for each key the heads are inner, so a key's row (all heads,
/// contiguous) streams through in order. Writes each (row, head)'s partial result over the
/// slice, its log-sum-exp and normalised output, which the driver merges across slices in a
/// fixed order (merge.hpp).
template <class Arch>
void attention_decode(const DecodeArgs& a) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  const std::size_t d = a.d;
  const std::size_t dv = d / kW * kW;  // vector part of D; the rest is a scalar tail
  const std::size_t rec = partial_record_floats(d);
  float* s = a.scratch;                    // [heads][kKeyBlock] scores, then probabilities
  float* alpha = s + a.heads * kKeyBlock;  // [heads]
  auto head_rule = [&](std::size_t h) {
    KeyRule r = a.rule;
    if (r.mask != nullptr) r.mask += h * a.mask_head_stride;
    return r;
  };
  for (std::size_t i = 0; i < a.lq; ++i) {
    float* part = a.partial + i * a.heads * rec;
    // While the slice runs, a record holds the running max at [0] and sum at [1].
    for (std::size_t h = 0; h < a.heads; ++h) {
      float* r = part + h * rec;
      r[0] = kHidden;
      r[1] = 0.0f;
      std::fill(r + 16, r + rec, 0.0f);
    }
    const float* q = a.q + i * a.q_stride;
    const std::size_t end = std::min(a.key_end, key_end(a.rule, i));
    for (std::size_t k0 = a.key_begin; k0 < end; k0 += kKeyBlock) {
      const std::size_t nk = std::min(kKeyBlock, end - k0);
      for (std::size_t j = 0; j < nk; ++j) {
        const float* kj = a.k + (k0 + j) * a.k_stride;
        for (std::size_t h = 0; h < a.heads; ++h) {
          const float* qh = q + h * d;
          const float* kh = kj + h / a.kv_group * d;
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
        if (a.rule.mask != nullptr) hide_masked(head_rule(h), i, k0, nk, sh, 1);
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
          const float* vh = vj + h / a.kv_group * d;
          const V vp(p);
          for (std::size_t dd = 0; dd < dv; dd += kW) {
            madd<Arch>(vp, V::load_unaligned(vh + dd), V::load_aligned(o + dd))
                .store_aligned(o + dd);
          }
          for (std::size_t dd = dv; dd < d; ++dd) o[dd] += p * vh[dd];
        }
      }
    }
    // Running (max, sum, unnormalised output) -> (log-sum-exp, normalised output). A slice
    // that saw nothing has lse = -inf, and the merge ignores its output.
    for (std::size_t h = 0; h < a.heads; ++h) {
      float* r = part + h * rec;
      const float m = r[0], l = r[1];
      r[0] = m + std::log(l);
      if (m == kHidden) continue;
      const float inv = 1.0f / l;
      for (std::size_t dd = 0; dd < d; ++dd) r[16 + dd] *= inv;
    }
  }
}

}  // namespace
}  // namespace simdattn::kernels
