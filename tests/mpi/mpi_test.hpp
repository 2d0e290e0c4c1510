// Helpers of the simdattn_mpi tests: a whole problem drawn identically on every rank, each
// rank's share of it as the layout contract says, and checks whose verdict every rank shares
// (the figures are reduced over the communicator before anything is asserted, so that no rank
// leaves a test early while the others wait in a collective).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "driver/attention.hpp"
#include "isa/registry.hpp"
#include "simdattn/mpi.hpp"

namespace simdattn::test::mpi {

using simdattn::mpi::Layout;
using simdattn::mpi::Schedule;
using simdattn::mpi::Segment;

inline int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int ranks() {
  int p = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

/// True on every rank iff `ok` holds on every rank.
inline bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// A whole problem, in global position order: query [N, Lq, H, D], keys and values
/// [N, Lk, H_kv, D], the mask over [N, H, Lq, Lk] as make_mask() draws it.
struct Problem {
  std::size_t n = 1, lq = 0, lk = 0, h = 1, hkv = 1, d = 1;
  std::vector<float> q, k, v;
  MaskCase mask;
  Problem(std::size_t n_, std::size_t lq_, std::size_t lk_, std::size_t h_, std::size_t hkv_,
          std::size_t d_, MaskKind kind)
      : n(n_), lq(lq_), lk(lk_), h(h_), hkv(hkv_), d(d_) {
    q = random_normal(n * lq * h * d, 11);
    k = random_normal(n * lk * hkv * d, 12);
    v = random_normal(n * lk * hkv * d, 13);
    mask = make_mask(kind, n, h, lq, lk);
  }
};

/// The single-process result of the problem: the attention driver on the same kernels that a
/// call with `options` chooses, in one process.
inline std::vector<float> single_process(const Problem& pr, const Options& options) {
  const kernels::KernelTable* table = detail::kernels_for("test", options);
  std::vector<float> out(pr.n * pr.lq * pr.h * pr.d);
  detail::AttentionProblem p;
  p.q = {pr.q.data(), pr.n, pr.lq, pr.h, pr.d, pr.h * pr.d, pr.lq * pr.h * pr.d};
  p.k = {pr.k.data(), pr.n, pr.lk, pr.hkv, pr.d, pr.hkv * pr.d, pr.lk * pr.hkv * pr.d};
  p.v = {pr.v.data(), pr.n, pr.lk, pr.hkv, pr.d, pr.hkv * pr.d, pr.lk * pr.hkv * pr.d};
  p.out = {out.data(), pr.n, pr.lq, pr.h, pr.d, pr.h * pr.d, pr.lq * pr.h * pr.d};
  const Causal causal = pr.mask.causal != Causal::none ? pr.mask.causal : options.causal;
  p.rule = detail::MaskRule{pr.mask.mask, causal, pr.lq, pr.lk};
  p.scale = options.scale ? *options.scale : 1.0f / std::sqrt(static_cast<float>(pr.d));
  p.policy = options.masked_rows;
  detail::run_attention(table, p, 1);
  return out;
}

/// Rows [N, l, width] of a global [N, L, width] tensor that `segs` name, in local order.
template <class T>
std::vector<T> take_rows(const std::vector<T>& global, std::size_t n, std::size_t l,
                         std::size_t width, const std::vector<Segment>& segs) {
  std::size_t local = 0;
  for (const Segment& s : segs) local += s.length;
  std::vector<T> out(n * local * width);
  for (std::size_t b = 0; b < n; ++b) {
    for (const Segment& s : segs) {
      std::copy_n(global.data() + (b * l + s.global_begin) * width, s.length * width,
                  out.data() + (b * local + s.local_begin) * width);
    }
  }
  return out;
}

/// The double oracle of the whole problem (the reference on double, same float inputs).
inline std::vector<double> oracle(const Problem& pr, const Options& options) {
  Options o = options;
  if (pr.mask.causal != Causal::none) o.causal = pr.mask.causal;
  return oracle_sdpa({pr.q.data(), pr.n, pr.lq, pr.h, pr.d},
                     {pr.k.data(), pr.n, pr.lk, pr.hkv, pr.d},
                     {pr.v.data(), pr.n, pr.lk, pr.hkv, pr.d}, pr.mask.mask, o);
}

/// The rank's mask: its own query rows of a per-query mask (all columns), or the whole mask
/// when it broadcasts over queries.
inline std::vector<std::uint8_t> take_mask_rows(const MaskCase& m, const std::vector<Segment>& segs,
                                                std::size_t local) {
  if (m.mask.data == nullptr || m.mask.lq == 1) return m.bytes;
  std::vector<std::uint8_t> out(m.mask.n * m.mask.h * local * m.mask.lk);
  for (std::size_t bh = 0; bh < m.mask.n * m.mask.h; ++bh) {
    for (const Segment& s : segs) {
      for (std::size_t i = 0; i < s.length; ++i) {
        std::memcpy(out.data() + (bh * local + s.local_begin + i) * m.mask.lk,
                    m.bytes.data() + (bh * m.mask.lq + s.global_begin + i) * m.mask.lk, m.mask.lk);
      }
    }
  }
  return out;
}

/// Every rank's lengths: an even split, or the given lengths (one per rank).
inline std::vector<std::size_t> lengths_of(Layout layout, std::size_t total,
                                           const std::vector<std::size_t>& given) {
  if (!given.empty()) return given;
  std::vector<std::size_t> out;
  for (int s = 0; s < ranks(); ++s) {
    std::size_t l = 0;
    for (const Segment& seg : simdattn::mpi::even_split(layout, total, ranks(), s)) l += seg.length;
    out.push_back(l);
  }
  return out;
}

/// Relative Frobenius error of the ranks' rows against the same rows of the single-process
/// result, over all ranks; `bitwise` is whether every element is identical on every rank.
struct Comparison {
  double rel = 0;
  bool bitwise = false;
};

template <class T>
Comparison compare_rows(const std::vector<float>& local, const std::vector<T>& whole, std::size_t n,
                        std::size_t l, std::size_t width, const std::vector<Segment>& segs) {
  const std::vector<T> ref = take_rows(whole, n, l, width, segs);
  // Squared differences, squared reference, elements that differ: one reduction.
  double sums[3] = {0, 0, local.size() == ref.size() ? 0.0 : 1.0};
  for (std::size_t i = 0; i < std::min(ref.size(), local.size()); ++i) {
    const double diff = static_cast<double>(local[i]) - ref[i];
    sums[0] += diff * diff;
    sums[1] += static_cast<double>(ref[i]) * ref[i];
    sums[2] += static_cast<T>(local[i]) == ref[i] ? 0 : 1;
  }
  double total[3];
  MPI_Allreduce(sums, total, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  Comparison c;
  c.rel = total[1] > 0 ? std::sqrt(total[0] / total[1]) : std::sqrt(total[0]);
  c.bitwise = total[2] == 0;
  return c;
}

}  // namespace simdattn::test::mpi
