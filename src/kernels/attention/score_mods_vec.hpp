// The score modifications of score_mods.hpp on vectors, for the kernels: applied once per block
// of scores, where they are final (scaled) and before the online softmax.
//
//   - Tile path: the block is S^T, keys down, query rows across vector lanes, in base 2
//     (unit = log2(e): the tile computes log2(e) * scale * q . k). Soft-capping in base 2 is
//     c * tanh(s / c) with c = cap * unit; the bias and ALiBi are multiplied by unit.
//     ALiBi's k - p_i is an exact small integer per lane, so one FMA per vector adds it. A bias
//     row broadcast over queries is one broadcast per key; a bias with rows per query is read
//     across rows (the tile holds keys down, the bias keys across): W x W pieces transposed in
//     registers. Gathering one key's column instead (vgatherdps) made such a bias cost 50% over
//     plain attention at s2048 (AVX-512, one thread). Where the task's rows fit (Lk up to 8192,
//     or a window that keeps a task's keys within that; and any bias shared by the heads), the
//     bias comes instead as the driver's copy of the task's rows with keys down
//     (KeyRule::bias_t, made by bias_keys_down): one load per vector. Without soft-capping
//     (which comes before it) the tile kernel adds that copy in its score micro-kernel, as the
//     scores leave the registers, and this pass does the rest: s2048, one thread, AVX-512, Zen 5
//     (2 rounds, binaries in turn): a shared bias 1.12x plain -> 1.05-1.08x, a bias per head
//     1.28x -> 1.24-1.25x.
//   - Decode path: one head's row of scores, keys across lanes, natural units (unit = 1); the
//     bias row is read in place.
// A -inf bias makes the score -inf whatever it was (NaN included), as the key rule hides it.
//
// tanh (soft-capping): x P(x^2) / Q(x^2) on |x| clamped to 9 (where tanh is 1 in float), P of
// degree 6 and Q of degree 3 in x^2, fitted for this file by iteratively reweighted least squares
// on the relative error over [0, 9] (6.7e-9 in exact arithmetic): 11 multiply-adds, one
// division, no exponential. At most 2.9e-7 (2.5 ulp; 3.2e-7 on SSE2, no FMA) against a double
// tanh on [-20, 20]
// (tests/test_kernels.cpp measures it). An exp2-based form with a polynomial below 0.625 took
// twice the operations: soft-capping cost 23% over plain attention at s2048 (AVX-512).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/attention/score_mods.hpp"
#include "kernels/exp2.hpp"
#include "kernels/key_rule.hpp"
#include "kernels/simd.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
inline Vec<Arch> tanh_vec(const Vec<Arch>& x) {
  using V = Vec<Arch>;
  const V sign_bit(-0.0f);
  // min(9, NaN) is NaN on x86 (the second operand wins): NaN stays NaN.
  const V ax = xsimd::min(V(9.0f), xsimd::abs(x));
  const V z = ax * ax;
  V p(-8.488040592656912e-14f);
  p = madd<Arch>(p, z, V(5.2776474163129805e-11f));
  p = madd<Arch>(p, z, V(-2.0224492303100305e-08f));
  p = madd<Arch>(p, z, V(1.1154101230204105e-05f));
  p = madd<Arch>(p, z, V(0.0031039349269121885f));
  p = madd<Arch>(p, z, V(0.13083989918231964f));
  p = madd<Arch>(p, z, V(1.0f));
  V q(0.0002546115138102323f);
  q = madd<Arch>(q, z, V(0.024495091289281845f));
  q = madd<Arch>(q, z, V(0.46417316794395447f));
  q = madd<Arch>(q, z, V(1.0f));
  return ((ax * p) / q) | (x & sign_bit);
}

/// In-register transpose of a W x W tile (W = the vector width): afterwards r[j] holds lane j of
/// every r[i] before, lane i from r[i]. 64 shuffles for 16 x 16 floats (AVX-512), 24 for 8 x 8,
/// 8 for 4 x 4; other architectures go through memory.
template <class Arch>
inline void transpose_square(Vec<Arch>* r) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  // Each branch only where its unit's flags declare the intrinsics it uses.
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Arch, xsimd::avx512bw>) {
    __m512 t[16], u[16];
    for (int k = 0; k < 8; ++k) {
      t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // u[4k + m], 128-bit block L: column 4L + m of rows 4k .. 4k + 3.
    for (int k = 0; k < 4; ++k) {
      for (int h = 0; h < 2; ++h) {
        const __m512d a = _mm512_castps_pd(t[4 * k + h]), b = _mm512_castps_pd(t[4 * k + h + 2]);
        u[4 * k + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * k + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      }
    }
    // Column 4L + m: block L of u[m], u[4 + m], u[8 + m], u[12 + m] (a 4 x 4 of blocks).
    for (int m = 0; m < 4; ++m) {
      const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44);
      const __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
      const __m512 v2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
      const __m512 v3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
      r[m] = V(_mm512_shuffle_f32x4(v0, v2, 0x88));
      r[4 + m] = V(_mm512_shuffle_f32x4(v0, v2, 0xDD));
      r[8 + m] = V(_mm512_shuffle_f32x4(v1, v3, 0x88));
      r[12 + m] = V(_mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
    return;
  }
#endif
#if defined(__AVX2__)
  if constexpr (kIsAvx2<Arch>) {
    __m256 t[8], u[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
      for (int h = 0; h < 2; ++h) {
        const __m256d a = _mm256_castps_pd(t[4 * k + h]), b = _mm256_castps_pd(t[4 * k + h + 2]);
        u[4 * k + 2 * h] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
        u[4 * k + 2 * h + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
      }
    }
    for (int m = 0; m < 4; ++m) {
      r[m] = V(_mm256_permute2f128_ps(u[m], u[4 + m], 0x20));
      r[4 + m] = V(_mm256_permute2f128_ps(u[m], u[4 + m], 0x31));
    }
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (std::is_same_v<Arch, xsimd::sse2>) {
    const __m128 t0 = _mm_unpacklo_ps(r[0], r[1]), t1 = _mm_unpackhi_ps(r[0], r[1]);
    const __m128 t2 = _mm_unpacklo_ps(r[2], r[3]), t3 = _mm_unpackhi_ps(r[2], r[3]);
    r[0] = V(_mm_movelh_ps(t0, t2));
    r[1] = V(_mm_movehl_ps(t2, t0));
    r[2] = V(_mm_movelh_ps(t1, t3));
    r[3] = V(_mm_movehl_ps(t3, t1));
    return;
  }
#endif
  alignas(64) float a[kW * kW];
  for (std::size_t i = 0; i < kW; ++i) r[i].store_aligned(a + i * kW);
  for (std::size_t i = 0; i < kW; ++i) {
    alignas(64) float col[kW];
    for (std::size_t j = 0; j < kW; ++j) col[j] = a[j * kW + i];
    r[i] = V::load_aligned(col);
  }
}

/// out[k * stride + t] = bias[t * row_stride + k] for rows t < rows and keys k < keys, and 0 for
/// rows [rows, stride) (stride a multiple of the vector width): a task's bias rows with keys down
/// (KeyRule::bias_t), copied as W x W pieces transposed in registers, whole lines written.
template <class Arch>
void bias_keys_down(const float* bias, std::size_t row_stride, std::size_t rows, std::size_t keys,
                    std::size_t stride, float* out) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const std::size_t keys_vec = keys / kW * kW;
  for (std::size_t t0 = 0; t0 < stride; t0 += kW) {
    const std::size_t nt = rows > t0 ? std::min(kW, rows - t0) : 0;
    // Padding rows (nt == 0) read nothing: no pointer is formed past the caller's rows.
    const float* src = nt != 0 ? bias + t0 * row_stride : bias;
    for (std::size_t k0 = 0; k0 < keys_vec; k0 += kW) {
      V b[kW];
      for (std::size_t t = 0; t < kW; ++t) {
        b[t] = t < nt ? V::load_unaligned(src + t * row_stride + k0) : V(0.0f);
      }
      transpose_square<Arch>(b);
      for (std::size_t j = 0; j < kW; ++j) b[j].store_unaligned(out + (k0 + j) * stride + t0);
    }
    for (std::size_t k = keys_vec; k < keys; ++k) {
      for (std::size_t t = 0; t < kW; ++t) {
        out[k * stride + t0 + t] = t < nt ? src[t * row_stride + k] : 0.0f;
      }
    }
  }
}

/// Whether the rule's bias rows come copied keys down (KeyRule::bias_t).
inline bool has_keys_down_copy(const KeyRule& r) {
  return r.bias_t != nullptr && r.bias_row_stride != 0;
}

/// Row i's bias for key k in that copy; the task's later rows follow it.
inline const float* keys_down_bias(const KeyRule& r, std::size_t i, std::size_t k) {
  return r.bias_t + (k - r.bias_t_key0) * r.bias_t_stride + (i - r.bias_t_row0);
}

/// Scores s (in base `unit`) plus the bias b: s + b x unit, or -inf where b is -inf, whatever
/// s is (NaN included).
template <class Arch>
SIMDATTN_ALWAYS_INLINE inline Vec<Arch> add_bias(const Vec<Arch>& s, const Vec<Arch>& b,
                                                 const Vec<Arch>& unit) {
  const Vec<Arch> hidden(-std::numeric_limits<float>::infinity());
  return xsimd::select(b == hidden, hidden, madd<Arch>(b, unit, s));
}

/// Tile path: modifies st[j * kGroup + lane] for keys k0 + j (j < nk) and query rows i0 + lane
/// (lane < gn; lanes past gn are padding and are computed on, never read).
template <class Arch, std::size_t kGroup>
void modify_score_tile(const KeyRule& r, const ScoreMods& m, std::size_t i0, std::size_t gn,
                       std::size_t k0, std::size_t nk, float* st, float unit) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kVecs = kGroup / kW;
  static_assert(kGroup % kW == 0);
  const V hidden(-std::numeric_limits<float>::infinity());
  if (m.softcap != 0.0f) {
    const float c = m.softcap * unit;
    const V vc(c), vinv(1.0f / c);
    for (std::size_t x = 0; x < nk * kGroup; x += kW) {
      (vc * tanh_vec<Arch>(V::load_aligned(st + x) * vinv)).store_aligned(st + x);
    }
  }
  if (r.bias != nullptr) {
    const float* b0 = bias_row(r, i0) + k0;
    if (has_keys_down_copy(r)) {
      // Keys down already: one load per vector, the same sums as the transposed pieces below.
      const V vu(unit);
      for (std::size_t j = 0; j < nk; ++j) {
        const float* bt = keys_down_bias(r, i0, k0 + j);
        float* s = st + j * kGroup;
        for (std::size_t v = 0; v < kVecs; ++v) {
          add_bias<Arch>(V::load_aligned(s + v * kW), V::load_unaligned(bt + v * kW), vu)
              .store_aligned(s + v * kW);
        }
      }
    } else if (r.bias_row_stride == 0) {  // one bias per key for every query
      for (std::size_t j = 0; j < nk; ++j) {
        const float b = b0[j];
        float* s = st + j * kGroup;
        for (std::size_t v = 0; v < kVecs; ++v) {
          const V x = V::load_aligned(s + v * kW);
          (b == -std::numeric_limits<float>::infinity() ? hidden : x + V(b * unit))
              .store_aligned(s + v * kW);
        }
      }
    } else {
      // (A bias per head with Lk past 8192 and no window that narrows it.) kW x kW pieces: kW
      // rows' bias for kW keys, transposed in registers to kW keys' bias for kW rows. Rows past
      // gn read row gn - 1 (their lanes are padding); the keys past the last whole piece go
      // through a zero-padded copy.
      const float* rows[kGroup];
      for (std::size_t t = 0; t < kGroup; ++t) {
        rows[t] = b0 + (t < gn ? t : gn - 1) * r.bias_row_stride;
      }
      // The next block's bias of these rows, one line of each row per key piece: rows are a
      // row stride apart (one stream per row, more than the hardware prefetchers follow), and
      // without this a bias of 8 MiB or more cost 40-50% over plain attention at s2048, against
      // 17% with it in cache.
      // Where the rest goes (s2048, one thread, AVX-512, bias [1, 1, Lq, Lk] at 1.20-1.22x
      // plain): with every row read from two cache-resident rows, the same arithmetic costs
      // 1.10x, so about half is waiting for the bias and half this pass; without the transpose
      // (wrong results, timing only) 2% less. Prefetching instead the next query group's rows of
      // this block, or two blocks ahead, or into L2 only (prefetcht1) measured within -3%..+6%
      // of this, never better (CPU time, interleaved, load 5-10); dropping the prefetch leaves a
      // shared bias unchanged and makes [N, H, Lq, Lk] (from memory) 1.28 -> 1.37x. A
      // non-temporal prefetch (prefetchnta) instead: within the noise (7 interleaved rounds, best
      // of 5 calls each, load 2-3.5: medians 1.21 -> 1.17x shared and 1.25 -> 1.23x [N, H, ...],
      // best calls of all rounds 1.18 -> 1.18x and 1.23 -> 1.26x).
      const std::size_t next_end = std::min(r.lk - k0, 2 * nk);
      const V vu(unit);
      std::size_t j0 = 0;
      for (; j0 + kW <= nk; j0 += kW) {
        for (std::size_t v = 0; v < kVecs; ++v) {
          V b[kW];
          for (std::size_t t = 0; t < kW; ++t) b[t] = V::load_unaligned(rows[v * kW + t] + j0);
          transpose_square<Arch>(b);
          for (std::size_t j = 0; j < kW; ++j) {
            float* s = st + (j0 + j) * kGroup + v * kW;
            add_bias<Arch>(V::load_aligned(s), b[j], vu).store_aligned(s);
          }
        }
        if (nk + j0 < next_end) {
          for (std::size_t t = 0; t < gn; ++t) __builtin_prefetch(rows[t] + nk + j0);
        }
      }
      if (j0 < nk) {
        const std::size_t nj = nk - j0;
        for (std::size_t v = 0; v < kVecs; ++v) {
          V b[kW];
          for (std::size_t t = 0; t < kW; ++t) {
            alignas(64) float pad[kW] = {};
            std::copy(rows[v * kW + t] + j0, rows[v * kW + t] + nk, pad);
            b[t] = V::load_aligned(pad);
          }
          transpose_square<Arch>(b);
          for (std::size_t j = 0; j < nj; ++j) {
            float* s = st + (j0 + j) * kGroup + v * kW;
            add_bias<Arch>(V::load_aligned(s), b[j], vu).store_aligned(s);
          }
        }
      }
    }
  }
  if (m.alibi_slope != 0.0f) {
    // k - p_i = (k0 - i0 - offset) + j - lane, exact in float below 2^24.
    const V slope(m.alibi_slope * unit);
    const float base = static_cast<float>(static_cast<std::ptrdiff_t>(k0) -
                                          static_cast<std::ptrdiff_t>(i0) - r.offset);
    alignas(64) float lanes[kGroup];
    for (std::size_t t = 0; t < kGroup; ++t) lanes[t] = static_cast<float>(t);
    V lane[kVecs];
    for (std::size_t v = 0; v < kVecs; ++v) lane[v] = V::load_aligned(lanes + v * kW);
    for (std::size_t j = 0; j < nk; ++j) {
      float* s = st + j * kGroup;
      const V key(base + static_cast<float>(j));
      for (std::size_t v = 0; v < kVecs; ++v) {
        madd<Arch>(key - lane[v], slope, V::load_aligned(s + v * kW)).store_aligned(s + v * kW);
      }
    }
  }
}

/// Decode path: modifies s[j], the score of key k0 + j for query row i (j < nk; s holds a
/// whole number of vectors, 64-byte aligned), in natural units.
template <class Arch>
void modify_score_row(const KeyRule& r, const ScoreMods& m, std::size_t i, std::size_t k0,
                      std::size_t nk, float* s) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  const std::size_t nv = nk / kW * kW;  // whole vectors; the rest one at a time
  const V hidden(-std::numeric_limits<float>::infinity());
  if (m.softcap != 0.0f) {
    const V vc(m.softcap), vinv(1.0f / m.softcap);
    for (std::size_t j = 0; j < nk; j += kW) {  // s is padded to whole vectors
      (vc * tanh_vec<Arch>(V::load_aligned(s + j) * vinv)).store_aligned(s + j);
    }
  }
  const float* b = r.bias != nullptr ? bias_row(r, i) + k0 : nullptr;
  if (b != nullptr) {
    std::size_t j = 0;
    for (; j < nv; j += kW) {
      const V bv = V::load_unaligned(b + j);
      xsimd::select(bv == hidden, hidden, V::load_aligned(s + j) + bv).store_aligned(s + j);
    }
    for (; j < nk; ++j) {
      s[j] = b[j] == -std::numeric_limits<float>::infinity() ? b[j] : s[j] + b[j];
    }
  }
  if (m.alibi_slope != 0.0f) {
    const V slope(m.alibi_slope);
    const float base = static_cast<float>(static_cast<std::ptrdiff_t>(k0) -
                                          static_cast<std::ptrdiff_t>(i) - r.offset);
    alignas(64) float lanes[kW];
    for (std::size_t t = 0; t < kW; ++t) lanes[t] = static_cast<float>(t);
    const V lane = V::load_aligned(lanes);
    for (std::size_t j = 0; j < nk; j += kW) {
      madd<Arch>(V(base + static_cast<float>(j)) + lane, slope, V::load_aligned(s + j))
          .store_aligned(s + j);
    }
  }
}

}  // namespace
}  // namespace simdattn::kernels
