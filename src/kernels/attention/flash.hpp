// Fused attention for one task: query rows [row_begin, row_end) of one (batch, head),
// softmax(scale * Q K^T) V without an Lq x Lk matrix (FlashAttention's online softmax).
//
// Tile path (Lq > kRowPathMaxLq): keys are taken in blocks of kKeyBlock = 64. Each block is
// packed once per task, K transposed to [D][64] and V to [64][Dp] (Dp = D rounded up to 16,
// zero-filled), and stays in L1 (2 x 64 x 64 x 4 B = 32 KiB at D = 64) while every strip of
// kRows query rows of the task passes over it: a score micro-kernel (kRows x 64 keys, Q
// broadcast from its rows in place), the online-softmax update per row (running max m, sum l,
// rescale factor alpha), and an output micro-kernel (kRows x kOutVecs vectors of D) that
// rescales and accumulates the task's running output. Scratch: O(task rows x D).
// Tile: 6 rows x 4 zmm on AVX-512 (24 accumulators), 6 x 2 on AVX2, 4 x 2 on SSE2.
//
// Row path (Lq <= kRowPathMaxLq, decoding): K and V are read in place, once, with no packing:
// scores by dot products over D (a vector accumulator per key, then a horizontal add), then
// o += p * V[k]. Decode is bound by reading K and V; packing would double that traffic.
//
// Masks: a key block wholly past a strip's causal end is skipped; in a block that crosses it,
// or with an explicit mask or past Lk, hidden scores become -inf before the max. A row whose
// max is still -inf after a block skips the exponentials (exp(-inf - -inf) is NaN). At the end
// a row that saw no visible key gets the policy's answer: zeros, or the uniform average of V.
// Values of hidden keys inside a crossed block are multiplied by 0, so a NaN or Inf stored
// there can reach the row (the reference skips them): callers must not rely on masked NaNs.
//
// Accuracy: xsimd::exp, max 1 ulp on [-87, 0] (measured in tests/test_kernels.cpp). Each row's
// arithmetic depends only on the row, Lq, Lk and D, never on the task split, so results are
// bitwise the same for every thread count. Single-threaded, no allocation.
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

/// Query lengths up to this take the row path.
inline constexpr std::size_t kRowPathMaxLq = 4;

template <class Arch>
struct AttentionTile;
template <>
struct AttentionTile<xsimd::avx512bw> {
  static constexpr std::size_t kRows = 6, kScoreVecs = 4, kOutVecs = 4;
};
template <>
struct AttentionTile<xsimd::fma3<xsimd::avx2>> {
  static constexpr std::size_t kRows = 6, kScoreVecs = 2, kOutVecs = 2;
};
template <>
struct AttentionTile<xsimd::sse2> {
  static constexpr std::size_t kRows = 4, kScoreVecs = 2, kOutVecs = 2;
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

/// Sets hidden scores of row i among keys [k0, k0 + n) to -inf; returns true if any is visible.
inline bool hide_masked(const AttentionArgs& a, std::size_t i, std::size_t k0, std::size_t n,
                        float* s) {
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  const std::size_t end = causal_end(a, i);
  const std::uint8_t* mrow = a.mask != nullptr ? a.mask + i * a.mask_row_stride : nullptr;
  bool any = false;
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t key = k0 + j;
    const bool visible = key < end && (mrow == nullptr || mrow[a.mask_lk == 1 ? 0 : key] != 0);
    if (!visible) s[j] = kHidden;
    any = any || visible;
  }
  return any;
}

/// s[0, n) <- exp(s - m_new) with n a multiple of the width; returns the sum. Updates the
/// row's running max and sum and returns alpha = exp(m_old - m_new) through `alpha`.
template <class Arch>
float softmax_update(float* s, std::size_t n, float& m, float& l, float& alpha) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V vmax = V::load_aligned(s);
  for (std::size_t j = kW; j < n; j += kW) vmax = xsimd::max(vmax, V::load_aligned(s + j));
  const float bmax = hmax<Arch>(vmax);
  const float m_new = bmax > m ? bmax : m;
  if (m_new == -std::numeric_limits<float>::infinity()) {
    // Nothing visible yet: no exponentials (exp(-inf - -inf) is NaN), nothing to add.
    for (std::size_t j = 0; j < n; j += kW) V(0.0f).store_aligned(s + j);
    alpha = 1.0f;
    return 0.0f;
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
  return sum;
}

/// s[r][0, kScoreVecs * W) = scale * q_r . kt[:, j] for kRows rows (q rows in place).
template <class Arch, std::size_t kR>
void score_ukernel(const float* q, std::size_t q_stride, const float* kt, std::size_t d,
                   float scale, float* s) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kNv = AttentionTile<Arch>::kScoreVecs;
  for (std::size_t j0 = 0; j0 < kKeyBlock; j0 += kNv * kW) {
    V acc[kR][kNv];
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = V(0.0f);
    }
    for (std::size_t dd = 0; dd < d; ++dd) {
      V kv[kNv];
#pragma GCC unroll 8
      for (std::size_t v = 0; v < kNv; ++v) {
        kv[v] = V::load_aligned(kt + dd * kKeyBlock + j0 + v * kW);
      }
#pragma GCC unroll 8
      for (std::size_t r = 0; r < kR; ++r) {
        const V qv(q[r * q_stride + dd]);
#pragma GCC unroll 8
        for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = madd<Arch>(qv, kv[v], acc[r][v]);
      }
    }
    const V vs(scale);
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
      for (std::size_t v = 0; v < kNv; ++v) {
        (acc[r][v] * vs).store_aligned(s + r * kKeyBlock + j0 + v * kW);
      }
    }
  }
}

/// o_r[c0, c0 + kNv * W) = alpha_r * o_r + sum_j p_r[j] v[j] over j < nkeys, kR rows.
template <class Arch, std::size_t kR, std::size_t kNv>
void output_ukernel(const float* p, const float* vp, std::size_t dp, std::size_t nkeys,
                    const float* alpha, float* o, std::size_t c0) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kNv];
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
    const V ar(alpha[r]);
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) {
      acc[r][v] = V::load_aligned(o + r * dp + c0 + v * kW) * ar;
    }
  }
  for (std::size_t j = 0; j < nkeys; ++j) {
    V vv[kNv];
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) vv[v] = V::load_aligned(vp + j * dp + c0 + v * kW);
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kR; ++r) {
      const V pr(p[r * kKeyBlock + j]);
#pragma GCC unroll 8
      for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = madd<Arch>(pr, vv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) acc[r][v].store_aligned(o + r * dp + c0 + v * kW);
  }
}

/// Writes row i's result from its running state, or the fully-masked policy's answer.
/// `mean` is the uniform average of V (computed on first need, `have_mean` tracks it).
template <class Arch>
void finish_row(const AttentionArgs& a, std::size_t i, float m, float l, const float* o,
                float* mean, bool& have_mean) {
  float* out = a.out + i * a.out_stride;
  if (m == -std::numeric_limits<float>::infinity()) {
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
  constexpr std::size_t kRows = AttentionTile<Arch>::kRows;
  constexpr std::size_t kOutVecs = AttentionTile<Arch>::kOutVecs;
  const std::size_t d = a.d;
  const std::size_t dp = round_up(d, 16);
  const std::size_t rows = a.row_end - a.row_begin;
  // Scratch layout (every piece 64-byte aligned): kt, vp, s, alpha, o, m, l, mean.
  float* kt = a.scratch;
  float* vp = kt + kKeyBlock * dp;
  float* s = vp + kKeyBlock * dp;
  float* alpha = s + kRows * kKeyBlock;
  float* o = alpha + kKeyBlock;
  float* m = o + kMaxTaskRows * dp;
  float* l = m + kMaxTaskRows;
  float* mean = l + kMaxTaskRows;
  std::fill(o, o + rows * dp, 0.0f);
  std::fill(m, m + rows, -std::numeric_limits<float>::infinity());
  std::fill(l, l + rows, 0.0f);

  const std::size_t task_key_end = causal_end(a, a.row_end - 1);  // rows only see more keys
  for (std::size_t k0 = 0; k0 < task_key_end; k0 += kKeyBlock) {
    const std::size_t nk = std::min(kKeyBlock, a.lk - k0);
    // Pack this key block: K^T [d][64] and V [64][dp], zeros past nk and d.
    for (std::size_t dd = 0; dd < d; ++dd) {
      float* row = kt + dd * kKeyBlock;
      for (std::size_t j = 0; j < nk; ++j) row[j] = a.k[(k0 + j) * a.k_stride + dd];
      std::fill(row + nk, row + kKeyBlock, 0.0f);
    }
    for (std::size_t j = 0; j < kKeyBlock; ++j) {
      float* row = vp + j * dp;
      if (j < nk) {
        std::copy(a.v + (k0 + j) * a.v_stride, a.v + (k0 + j) * a.v_stride + d, row);
        std::fill(row + d, row + dp, 0.0f);
      } else {
        std::fill(row, row + dp, 0.0f);
      }
    }
    for (std::size_t i0 = a.row_begin; i0 < a.row_end; i0 += kRows) {
      const std::size_t nr = std::min(kRows, a.row_end - i0);
      const std::size_t strip_end = causal_end(a, i0 + nr - 1);
      if (strip_end <= k0) continue;  // the whole block is past every row's causal end
      const bool crosses = a.mask != nullptr || causal_end(a, i0) < k0 + kKeyBlock;
      const float* q = a.q + i0 * a.q_stride;
      with_rows<kRows>(nr, [&](auto r) {
        score_ukernel<Arch, decltype(r)::value>(q, a.q_stride, kt, d, a.scale, s);
      });
      for (std::size_t r = 0; r < nr; ++r) {
        const std::size_t t = i0 - a.row_begin + r;
        float* sr = s + r * kKeyBlock;
        if (crosses) hide_masked(a, i0 + r, k0, kKeyBlock, sr);
        softmax_update<Arch>(sr, kKeyBlock, m[t], l[t], alpha[r]);
      }
      // Keys past the strip's causal end have p = 0 in every row of the strip: skip them.
      const std::size_t nkeys = std::min(nk, strip_end - k0);
      float* ot = o + (i0 - a.row_begin) * dp;
      std::size_t c0 = 0;
      for (; c0 + kOutVecs * kW <= dp; c0 += kOutVecs * kW) {
        with_rows<kRows>(nr, [&](auto r) {
          output_ukernel<Arch, decltype(r)::value, kOutVecs>(s, vp, dp, nkeys, alpha, ot, c0);
        });
      }
      for (; c0 < dp; c0 += kW) {
        with_rows<kRows>(nr, [&](auto r) {
          output_ukernel<Arch, decltype(r)::value, 1>(s, vp, dp, nkeys, alpha, ot, c0);
        });
      }
    }
  }
  bool have_mean = false;
  for (std::size_t t = 0; t < rows; ++t) {
    finish_row<Arch>(a, a.row_begin + t, m[t], l[t], o + t * dp, mean, have_mean);
  }
}

/// Decoding: each row reads K and V in place, once.
template <class Arch>
void attention_rows(const AttentionArgs& a) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const std::size_t d = a.d;
  const std::size_t dv = d / kW * kW;  // vector part of D; the rest is a scalar tail
  const std::size_t dp = round_up(d, 16);
  float* s = a.scratch;
  float* o = s + kKeyBlock;
  float* mean = o + dp;
  bool have_mean = false;
  for (std::size_t i = a.row_begin; i < a.row_end; ++i) {
    const float* q = a.q + i * a.q_stride;
    const std::size_t key_end = causal_end(a, i);
    float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
    std::fill(o, o + dp, 0.0f);
    for (std::size_t k0 = 0; k0 < key_end; k0 += kKeyBlock) {
      const std::size_t nk = std::min(kKeyBlock, key_end - k0);
      for (std::size_t j0 = 0; j0 < kKeyBlock; j0 += kW) {
        V acc[kW];
        for (std::size_t j = 0; j < kW; ++j) acc[j] = V(0.0f);
        const std::size_t nj = j0 < nk ? std::min(kW, nk - j0) : 0;
        for (std::size_t dd = 0; dd < dv; dd += kW) {
          const V qv = V::load_unaligned(q + dd);
          for (std::size_t j = 0; j < nj; ++j) {
            acc[j] =
                madd<Arch>(qv, V::load_unaligned(a.k + (k0 + j0 + j) * a.k_stride + dd), acc[j]);
          }
        }
        // One hadd per key: xsimd 8.1's haddp returns the AVX-512 lanes permuted.
        float dots[kW];
        for (std::size_t j = 0; j < kW; ++j) dots[j] = j < nj ? xsimd::hadd(acc[j]) : 0.0f;
        for (std::size_t j = 0; j < kW; ++j) {
          float dot = dots[j];
          if (j < nj) {
            const float* kk = a.k + (k0 + j0 + j) * a.k_stride;
            for (std::size_t dd = dv; dd < d; ++dd) dot += q[dd] * kk[dd];
          }
          s[j0 + j] = j < nj ? dot * a.scale : -std::numeric_limits<float>::infinity();
        }
      }
      if (a.mask != nullptr) hide_masked(a, i, k0, nk, s);
      float alpha = 1.0f;
      softmax_update<Arch>(s, kKeyBlock, m, l, alpha);
      if (m == -std::numeric_limits<float>::infinity()) continue;
      const V va(alpha);
      for (std::size_t dd = 0; dd < dp; dd += kW)
        (V::load_aligned(o + dd) * va).store_aligned(o + dd);
      for (std::size_t j = 0; j < nk; ++j) {
        const float* vk = a.v + (k0 + j) * a.v_stride;
        const V pj(s[j]);
        for (std::size_t dd = 0; dd < dv; dd += kW) {
          madd<Arch>(pj, V::load_unaligned(vk + dd), V::load_aligned(o + dd)).store_aligned(o + dd);
        }
        for (std::size_t dd = dv; dd < d; ++dd) o[dd] += s[j] * vk[dd];
      }
    }
    finish_row<Arch>(a, i, m, l, o, mean, have_mean);
  }
}

template <class Arch>
void attention(const AttentionArgs& a) {
  if (a.lq <= kRowPathMaxLq) {
    attention_rows<Arch>(a);
  } else {
    attention_tiles<Arch>(a);
  }
}

}  // namespace
}  // namespace simdattn::kernels
