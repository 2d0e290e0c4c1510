// Projection GEMM: C[m, n] = A[m, k] B + bias, B = W^T packed by pack_weight().
//
// Layout: A row-major (lda); the micro-kernel broadcasts A[r][k] straight from the rows, not
// from a transposed copy, whose scalar transpose measured 12-25% of the kernel at n = 256.
// Where the tile's rows would share L1 sets (GemmTileFor::kPackA: AVX-512's 12 rows, at
// E = 1024 4 KiB apart, all in one set beside the two B panels' 8 lines there: 20 lines for
// the L1's 12 ways), each k block of a chunk of kGemmTaskRows rows is first copied, rows
// still, to a stride of kKc + 16 floats (GemmArgs::a_pack; a vector copy, about 1% of the
// work at n = 256): bench_projections on AVX-512, 3 rounds interleaved, the input projections
// at 1 thread s512 4.65-5.01 -> 3.96-4.13 ms, bert 45.5-46.5 -> 37.9-38.8 ms, s4096 176-230
// -> 146 ms; at 2 threads 10-20% less time too. AVX2's 6 rows gained nothing: read in place.
// B in panels of kPanel = 16 columns (pack.hpp), one 64-byte row per k, 64-byte aligned. C
// row-major (ldc), any alignment.
//
// Blocking (BLIS names, sizes and their reasons in kernels/blocking.hpp): kKc rows of B per
// pass, the micro-tile kMr rows x kNp panels per vector width. Every element of C sums its k
// products in the same order whatever the block it lands in, so results do not depend on the
// tiling of the driver (threads); the bias is added with the first pass.
//
// Tails: rows below kMr use a micro-kernel instantiated for that row count; columns past n
// inside the last panel are computed on B's zero padding and not stored. A call of fewer than
// kMr rows in all (the tutorial's L = 2, decoding) takes several panels per micro-tile instead
// (few_row_panels): a 2-row tile of one panel has 4 accumulators on AVX2, 4 FMA chains for
// 2 pipes of latency 4, and ran at half the FMA rate; the wider tile keeps the full tile's
// number of chains, and each element still sums its k products in order, so the result is
// the same bit for bit.
// Single-threaded, no allocation.
#pragma once

#include <algorithm>
#include <cstddef>

#include "kernels/blocking.hpp"
#include "kernels/gemm/pack.hpp"
#include "kernels/kernel_table.hpp"
#include "kernels/simd.hpp"

namespace simdattn::kernels {
namespace {

template <class Arch>
using GemmTile = GemmTileFor<kWidth<Arch>>;

/// Rows x (np panels) tile of C over kc values of k. `b` points at the first panel's row k0;
/// the next panel is `panel_stride` floats further. `cols` (<= np * kPanel) columns are stored.
template <class Arch, std::size_t kRows, std::size_t kPanels>
void gemm_ukernel(const float* a, std::size_t lda, const float* b, std::size_t panel_stride,
                  std::size_t kc, float* c, std::size_t ldc, std::size_t cols, const float* bias,
                  bool first) {
  using V = Vec<Arch>;
  constexpr std::size_t kW = kWidth<Arch>;
  constexpr std::size_t kPv = kPanel / kW;  // vectors per panel row
  constexpr std::size_t kNv = kPanels * kPv;
  V acc[kRows][kNv];
#pragma GCC unroll 16
  for (std::size_t r = 0; r < kRows; ++r) {
#pragma GCC unroll 16
    for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = V(0.0f);
  }
  auto b_vec = [&](std::size_t k, std::size_t v) {
    return V::load_aligned(b + (v / kPv) * panel_stride + k * kPanel + (v % kPv) * kW);
  };
  for (std::size_t k = 0; k < kc; ++k) {
    if constexpr (kNv > kRows) {
      // Wide tile: the rows' broadcasts stay in registers and B comes one vector at a time
      // (all of B's vectors of this k would not fit beside the accumulators).
      V av[kRows];
#pragma GCC unroll 16
      for (std::size_t r = 0; r < kRows; ++r) av[r] = V(a[r * lda + k]);
#pragma GCC unroll 32
      for (std::size_t v = 0; v < kNv; ++v) {
        V bv = b_vec(k, v);
        keep_in_register<Arch>(bv);  // one load for all the rows
#pragma GCC unroll 16
        for (std::size_t r = 0; r < kRows; ++r) acc[r][v] = madd<Arch>(av[r], bv, acc[r][v]);
      }
    } else {
      V bv[kNv];
#pragma GCC unroll 16
      for (std::size_t v = 0; v < kNv; ++v) bv[v] = b_vec(k, v);
#pragma GCC unroll 16
      for (std::size_t r = 0; r < kRows; ++r) {
        const V av(a[r * lda + k]);
#pragma GCC unroll 16
        for (std::size_t v = 0; v < kNv; ++v) acc[r][v] = madd<Arch>(av, bv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (std::size_t r = 0; r < kRows; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 16
    for (std::size_t v = 0; v < kNv; ++v) {
      const std::size_t col = v * kW;
      if (col + kW <= cols) {
        const V base = first ? (bias != nullptr ? V::load_unaligned(bias + col) : V(0.0f))
                             : V::load_unaligned(cr + col);
        (acc[r][v] + base).store_unaligned(cr + col);
      } else if (col < cols) {
        alignas(64) float lanes[kW];
        acc[r][v].store_aligned(lanes);
        for (std::size_t j = 0; j < cols - col; ++j) {
          const float base = first ? (bias != nullptr ? bias[col + j] : 0.0f) : cr[col + j];
          cr[col + j] = lanes[j] + base;
        }
      }
    }
  }
}

/// Panels per micro-tile for a call of kRows < kMr rows in all: as many accumulators as the full
/// tile has (kMr x kNp panels), at most kMaxFewRowPanels panels (B streams).
template <class Arch, std::size_t kRows>
constexpr std::size_t few_row_panels() {
  constexpr std::size_t kFull = GemmTile<Arch>::kMr * GemmTile<Arch>::kNp;
  constexpr std::size_t kPanels = kFull / kRows;
  return kPanels < 1 ? 1 : kPanels > kMaxFewRowPanels ? kMaxFewRowPanels : kPanels;
}

/// gemm() for a call of kRows < kMr rows: one row block, kPanels panels per micro-tile. A
/// remainder of fewer panels is shared with the tile before it (3 + 1 -> 2 + 2, 6 + 4 -> 5 + 5):
/// one panel of 2 rows alone has 2 (AVX-512) or 4 (AVX2) FMA chains and waits on their latency
/// (the tutorial's output projection, 16 panels, spent as long on its last 4 panels one at a
/// time as on the other 12 on AVX-512).
template <class Arch, std::size_t kRows>
void gemm_few_rows(const GemmArgs& g) {
  constexpr std::size_t kPanels = few_row_panels<Arch, kRows>();
  const std::size_t panel_stride = g.k * kPanel;
  const std::size_t panels = (g.n + kPanel - 1) / kPanel;
  for (std::size_t p0 = 0; p0 < panels;) {
    const std::size_t left = panels - p0;
    const std::size_t take = left >= 2 * kPanels || left == kPanels ? kPanels
                             : left > kPanels                       ? (left + 1) / 2
                                                                    : left;
    const std::size_t j0 = p0 * kPanel;
    const float* bias = g.bias != nullptr ? g.bias + j0 : nullptr;
    const std::size_t cols = std::min(take * kPanel, g.n - j0);
    // Panels outermost: each panel's k rows are one contiguous stream from memory (a weight
    // read once per call, as in decoding, comes at the prefetchers' pace); the k blocks inside
    // keep every element's order of sums, so the result matches gemm()'s bit for bit.
    for (std::size_t k0 = 0; k0 < g.k; k0 += kKc) {
      const std::size_t kc = std::min(kKc, g.k - k0);
      const float* b = g.b_packed + p0 * panel_stride + k0 * kPanel;
      with_rows<kPanels>(take, [&](auto np) {
        gemm_ukernel<Arch, kRows, decltype(np)::value>(g.a + k0, g.lda, b, panel_stride, kc,
                                                       g.c + j0, g.ldc, cols, bias, k0 == 0);
      });
    }
    p0 += take;
  }
}

template <class Arch>
void gemm(const GemmArgs& g) {
  constexpr std::size_t kMr = GemmTile<Arch>::kMr;
  if (g.m < kMr) {
    with_rows<kMr - 1>(g.m, [&](auto r) { gemm_few_rows<Arch, decltype(r)::value>(g); });
    return;
  }
  constexpr std::size_t kNp = GemmTile<Arch>::kNp;
  constexpr std::size_t kGroup = kNp * kPanel;  // columns per micro-tile
  const std::size_t panel_stride = g.k * kPanel;
  // Rows in chunks of kGemmTaskRows, each copied per k block where the tile wants it (the
  // header says why).
  const bool pack = GemmTile<Arch>::kPackA && g.a_pack != nullptr;
  const std::size_t chunk = pack ? kGemmTaskRows : g.m;
  for (std::size_t m0 = 0; m0 < g.m; m0 += chunk) {
    const std::size_t m_end = std::min(g.m, m0 + chunk);
    for (std::size_t k0 = 0; k0 < g.k; k0 += kKc) {
      const std::size_t kc = std::min(kKc, g.k - k0);
      const bool first = k0 == 0;
      if (pack) {
        pack_rows<Arch>(g.a + m0 * g.lda + k0, g.lda, m_end - m0, kc, kGemmPackStride, g.a_pack,
                        kc);
      }
      const float* a0 = pack ? g.a_pack : g.a + m0 * g.lda + k0;
      const std::size_t lda = pack ? kGemmPackStride : g.lda;
      for (std::size_t j0 = 0; j0 < g.n; j0 += kGroup) {
        const std::size_t cols = std::min(kGroup, g.n - j0);
        const float* b = g.b_packed + (j0 / kPanel) * panel_stride + k0 * kPanel;
        const float* bias = g.bias != nullptr ? g.bias + j0 : nullptr;
        const bool full_group = cols > (kNp - 1) * kPanel;
        for (std::size_t i0 = m0; i0 < m_end; i0 += kMr) {
          const std::size_t rows = std::min(kMr, m_end - i0);
          const float* a = a0 + (i0 - m0) * lda;
          float* c = g.c + i0 * g.ldc + j0;
          with_rows<kMr>(rows, [&](auto r) {
            if (full_group) {
              gemm_ukernel<Arch, decltype(r)::value, kNp>(a, lda, b, panel_stride, kc, c, g.ldc,
                                                          cols, bias, first);
            } else {
              gemm_ukernel<Arch, decltype(r)::value, 1>(a, lda, b, panel_stride, kc, c, g.ldc, cols,
                                                        bias, first);
            }
          });
        }
      }
    }
  }
}

}  // namespace
}  // namespace simdattn::kernels
