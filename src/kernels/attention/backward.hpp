// Attention backward (FlashAttention-2 style) for one block of keys of one (batch, key/value
// head): the probabilities are recomputed tile by tile from Q, K and the forward's saved
// log-sum-exp, never an Lq x Lk matrix.
//
// With S = scale Q K^T, P = exp(S - lse) (masked: 0), dP = dO V^T, delta = rowsum(dO * O):
//     dS = scale P * (dP - delta)      dV_j += P^T dO      dK_j += dS^T Q      dQ += dS K_j
// for every block of kBackwardRows query rows of every query head of the group. The block's
// dK and dV accumulate in scratch and are written once at the end; dQ is added to the query
// rows' accumulator, which the driver owns (one task owns every key block of a head, so no two
// threads ever add to the same dQ row).
//
// Layout: K^T and V^T of the block are packed once per call ([D][kKeyBlock], zero-padded past
// the last key), so the two score-like products (S and dP) run with keys in vector lanes:
// query elements broadcast, K^T/V^T vectors loaded. The three accumulating products
// (P^T dO, dS^T Q, dS K) broadcast from the tiles and load Q, dO and K rows in place. All five
// are one register-blocked micro-kernel, outer_ukernel (kRows x kVecs accumulators: 6 x 4 zmm
// on AVX-512, 6 x 2 ymm on AVX2, 4 x 2 xmm on SSE2), with different strides.
//
// Masks: a query block wholly past the key block's causal start is skipped; in a block that
// crosses it, or with an explicit mask, hidden scores become -inf before the exponential, so
// their P and dS are exactly 0. Rows without a visible key come with lse = +inf: P = 0.
//
// Accuracy: xsimd::exp (about 1 ulp). Every dK/dV element sums over the group's heads, then
// query rows, in order; every dQ element over key blocks in order (the driver's loop), then
// keys: results do not depend on the thread count. Single-threaded, no allocation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/attention/backward_args.hpp"
#include "kernels/blocking.hpp"
#include "kernels/key_rule.hpp"
#include "kernels/simd.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
using BackwardTile = BackwardTileFor<kWidth<Arch>>;

inline std::size_t round_up_to(std::size_t x, std::size_t m) {
  return (x + m - 1) / m * m;
}

/// c[r][0, kNv * W) = (accumulate ? c[r] : 0) + sum_{t < steps} a[r * a_row + t * a_step] *
/// b[t * b_step + (0, kNv * W)], for r < kR. Loads and stores are unaligned.
template <class Arch, std::size_t kR, std::size_t kNv>
void outer_ukernel(const float* a, std::size_t a_row, std::size_t a_step, const float* b,
                   std::size_t b_step, std::size_t steps, float* c, std::size_t c_row,
                   bool accumulate) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  V acc[kR][kNv];
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) {
      acc[r][v] = accumulate ? V::load_unaligned(c + r * c_row + v * kW) : V(0.0f);
    }
  }
  for (std::size_t t = 0; t < steps; ++t) {
    V bv[kNv];
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) bv[v] = V::load_unaligned(b + t * b_step + v * kW);
#pragma GCC unroll 8
    for (std::size_t r = 0; r < kR; ++r) {
      const V av(a[r * a_row + t * a_step]);
#pragma GCC unroll 8
      for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = madd<Arch>(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t r = 0; r < kR; ++r) {
#pragma GCC unroll 8
    for (std::size_t v = 0; v < kNv; ++v) acc[r][v].store_unaligned(c + r * c_row + v * kW);
  }
}

/// outer_ukernel over `rows` rows and `vecs` vectors of columns: the micro-tile, then row and
/// column tails.
template <class Arch>
void outer_product(const float* a, std::size_t a_row, std::size_t a_step, const float* b,
                   std::size_t b_step, std::size_t steps, float* c, std::size_t c_row,
                   std::size_t rows, std::size_t vecs, bool accumulate) {
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kR = BackwardTile<Arch>::kRows;
  constexpr std::size_t kNv = BackwardTile<Arch>::kVecs;
  for (std::size_t r0 = 0; r0 < rows; r0 += kR) {
    const std::size_t nr = std::min(kR, rows - r0);
    const float* ar = a + r0 * a_row;
    float* cr = c + r0 * c_row;
    std::size_t v0 = 0;
    for (; v0 + kNv <= vecs; v0 += kNv) {
      with_rows<kR>(nr, [&](auto r) {
        outer_ukernel<Arch, decltype(r)::value, kNv>(ar, a_row, a_step, b + v0 * kW, b_step, steps,
                                                     cr + v0 * kW, c_row, accumulate);
      });
    }
    for (; v0 < vecs; ++v0) {
      with_rows<kR>(nr, [&](auto r) {
        outer_ukernel<Arch, decltype(r)::value, 1>(ar, a_row, a_step, b + v0 * kW, b_step, steps,
                                                   cr + v0 * kW, c_row, accumulate);
      });
    }
  }
}

/// Sets the scores of row i among keys [k0, k0 + n) that the rule hides to -inf (s[j] is key
/// k0 + j's): outside the row's window and causal end, masked, padded, or with a -inf bias.
inline void hide_invisible(const KeyRule& rule, std::size_t i, std::size_t k0, std::size_t n,
                           float* s) {
  const std::size_t begin = key_begin(rule, i), end = key_end(rule, i);
  const std::uint8_t* mrow = mask_row(rule, i);
  const float* brow = bias_row(rule, i);
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t key = k0 + j;
    if (key < begin || key >= end || !keeps_key(rule, mrow, brow, key)) {
      s[j] = -std::numeric_limits<float>::infinity();
    }
  }
}

/// Row pass of one query block: P = exp(scale s - lse) into s, dS = scale P (dP - delta) into
/// dp. Both tiles are [rows][kKeyBlock]; s holds Q K^T on entry, dp holds dO V^T.
template <class Arch>
void probabilities_and_ds(const BackwardArgs& a, std::size_t head, std::size_t i0, std::size_t rows,
                          std::size_t k0, std::size_t nk, float* s, float* dp) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  KeyRule rule = a.rule;
  if (rule.mask != nullptr) rule.mask += head * a.mask_head_stride;
  const bool crosses =
      hides_single_keys(rule) || key_end(rule, i0) < k0 + nk || key_begin(rule, i0 + rows - 1) > k0;
  const float* lse = a.lse + head * a.lq;
  const float* delta = a.delta + head * a.lq;
  const V vscale(a.scale);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t i = i0 + r;
    float* sr = s + r * kKeyBlock;
    float* dr = dp + r * kKeyBlock;
    if (crosses) hide_invisible(rule, i, k0, nk, sr);
    const V neg_lse(-lse[i]);
    const V vdelta(delta[i]);
    for (std::size_t c = 0; c < kKeyBlock; c += kW) {
      const V p = xsimd::exp(madd<Arch>(V::load_aligned(sr + c), vscale, neg_lse));
      p.store_aligned(sr + c);
      ((V::load_aligned(dr + c) - vdelta) * (p * vscale)).store_aligned(dr + c);
    }
  }
}

template <class Arch>
void attention_backward(const BackwardArgs& a) {
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kBc = kKeyBlock;
  static_assert(kBc % (BackwardTile<Arch>::kVecs * kW) == 0, "key tiles cover the key block");
  static_assert(kBackwardRows % BackwardTile<Arch>::kRows == 0, "row tiles cover the row block");
  const std::size_t d = a.d;
  const std::size_t dp = round_up_to(d, 16);
  const std::size_t d_vecs = round_up_to(d, kW) / kW;
  const std::size_t k0 = a.key_begin, nk = a.key_end - a.key_begin;
  // Scratch (64-byte aligned pieces): kt, vt [dp][kBc]; kp, dk, dv [kBc][dp]; s, ds [rows][kBc].
  float* kt = a.scratch;
  float* vt = kt + dp * kBc;
  float* kp = vt + dp * kBc;
  float* dk = kp + kBc * dp;
  float* dv = dk + kBc * dp;
  float* s = dv + kBc * dp;
  float* ds = s + kBackwardRows * kBc;

  const float* kb = a.k + k0 * a.k_stride;
  const float* vb = a.v + k0 * a.v_stride;
  for (std::size_t dd = 0; dd < d; ++dd) {
    float* ktr = kt + dd * kBc;
    float* vtr = vt + dd * kBc;
    for (std::size_t j = 0; j < nk; ++j) {
      ktr[j] = kb[j * a.k_stride + dd];
      vtr[j] = vb[j * a.v_stride + dd];
    }
    std::fill(ktr + nk, ktr + kBc, 0.0f);
    std::fill(vtr + nk, vtr + kBc, 0.0f);
  }
  // K rows for dQ += dS K: in place when every vector load stays inside a row.
  const float* krows = kb;
  std::size_t krow_stride = a.k_stride;
  if (d % kW != 0) {
    for (std::size_t j = 0; j < nk; ++j) {
      std::copy(kb + j * a.k_stride, kb + j * a.k_stride + d, kp + j * dp);
      std::fill(kp + j * dp + d, kp + (j + 1) * dp, 0.0f);
    }
    krows = kp;
    krow_stride = dp;
  }
  std::fill(dk, dk + kBc * dp, 0.0f);
  std::fill(dv, dv + kBc * dp, 0.0f);

  for (std::size_t head = 0; head < a.group; ++head) {
    const float* q = a.q + head * a.q_head_stride;
    const float* dout = a.d_out + head * a.d_out_head_stride;
    float* dq = a.d_q + head * a.d_q_head_stride;
    for (std::size_t i0 = 0; i0 < a.lq; i0 += kBackwardRows) {
      const std::size_t rows = std::min(kBackwardRows, a.lq - i0);
      // Causal ends and window starts grow with the row: a block whose last row ends before
      // the key block, or whose first row's window starts after it, sees none of its keys.
      const std::size_t block_end = key_end(a.rule, i0 + rows - 1);
      if (block_end <= k0 || key_begin(a.rule, i0) >= k0 + nk) continue;
      const float* qi = q + i0 * a.q_stride;
      const float* doi = dout + i0 * a.d_out_stride;
      // Q K^T and dP = dO V^T, keys in lanes (the scale enters in the row pass).
      outer_product<Arch>(qi, a.q_stride, 1, kt, kBc, d, s, kBc, rows, kBc / kW, false);
      outer_product<Arch>(doi, a.d_out_stride, 1, vt, kBc, d, ds, kBc, rows, kBc / kW, false);
      probabilities_and_ds<Arch>(a, head, i0, rows, k0, nk, s, ds);
      // dV += P^T dO and dK += dS^T Q: rows of the result are keys, the sum runs over queries.
      outer_product<Arch>(s, 1, kBc, doi, a.d_out_stride, rows, dv, dp, nk, d_vecs, true);
      outer_product<Arch>(ds, 1, kBc, qi, a.q_stride, rows, dk, dp, nk, d_vecs, true);
      // dQ += dS K over the keys that some row of the block sees.
      const std::size_t keys = std::min(nk, block_end - k0);
      outer_product<Arch>(ds, kBc, 1, krows, krow_stride, keys, dq + i0 * a.d_q_stride,
                          a.d_q_stride, rows, d_vecs, true);
    }
  }
  for (std::size_t j = 0; j < nk; ++j) {
    float* dkr = a.d_k + (k0 + j) * a.d_k_stride;
    float* dvr = a.d_v + (k0 + j) * a.d_v_stride;
    std::copy(dk + j * dp, dk + j * dp + d, dkr);
    if (a.d_v_extra != nullptr) {
      for (std::size_t dd = 0; dd < d; ++dd) dvr[dd] = dv[j * dp + dd] + a.d_v_extra[dd];
    } else {
      std::copy(dv + j * dp, dv + j * dp + d, dvr);
    }
  }
}

}  // namespace
}  // namespace simdattn::kernels
