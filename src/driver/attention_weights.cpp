#include "driver/attention_weights.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "kernels/attention/score_mods.hpp"
#include "kernels/gemm/pack.hpp"

namespace simdattn::detail {
namespace {

// Query rows per task: 64 rows x Lk scores stay within L2 for Lk up to a few thousand, and the
// packed K (Lk x D floats) is reused by all of them.
constexpr std::size_t kWeightRows = 64;

// row[0, lk) holds q_i . k_k for every key; turns it into row i's probabilities.
void probabilities(const kernels::KernelTable& table, const kernels::KeyRule& rule,
                   const kernels::ScoreMods& mods, std::size_t i, float scale, float lse,
                   MaskedRows policy, float* row) {
  const std::size_t lk = rule.lk;
  constexpr float kHidden = -std::numeric_limits<float>::infinity();
  if (!kernels::has_visible_key(rule, i)) {
    // What the output used: the uniform average of every value, or nothing.
    const bool zeros = policy == MaskedRows::zeros || kernels::has_sink(mods);
    std::fill(row, row + lk, zeros ? 0.0f : 1.0f / static_cast<float>(lk));
    return;
  }
  const std::size_t begin = kernels::key_begin(rule, i), end = kernels::key_end(rule, i);
  const std::uint8_t* mrow = kernels::mask_row(rule, i);
  const float* brow = kernels::bias_row(rule, i);
  std::fill(row, row + begin, kHidden);
  std::fill(row + end, row + lk, kHidden);
  for (std::size_t k = begin; k < end; ++k) {
    row[k] = kernels::keeps_key(rule, mrow, brow, k)
                 ? kernels::modified_score<float>(rule, mods, brow, i, k, scale * row[k]) - lse
                 : kHidden;
  }
  table.exp(row, row, lk);  // exp(-inf) = 0 for hidden keys
}

}  // namespace

void write_attention_weights(const kernels::KernelTable& table, const AttentionProblem& p,
                             int threads) {
  const auto& q = p.q;
  const std::size_t heads = q.h, lq = q.l, lk = p.k.l, dk = q.d;
  const std::size_t group = q.h / p.k.h;
  const bool average = p.weights.average_heads;
  const std::size_t chunks = (lq + kWeightRows - 1) / kWeightRows;
  const std::size_t tasks = q.n * (average ? 1 : heads) * chunks;
  const std::size_t packed = (kernels::packed_weight_floats(lk, dk) + 15) / 16 * 16;
  if (static_cast<double>(q.n) * heads * lq * lk * dk < kernels::kAttentionSerialWork) {
    threads = 1;
  }
  parallel_tasks(tasks, threads, /*dynamic=*/false, [&](std::size_t t) {
    const std::size_t chunk = t % chunks, bh = t / chunks;
    const std::size_t b = average ? bh : bh / heads;
    const std::size_t h_begin = average ? 0 : bh % heads;
    const std::size_t h_end = average ? heads : h_begin + 1;
    const std::size_t r0 = chunk * kWeightRows, rows = std::min(kWeightRows, lq - r0);
    float* kp = thread_scratch(ScratchSlot::weights, packed + (average ? rows * lk : 0));
    float* scores = kp + packed;
    float* mean = p.weights.data + (b * lq + r0) * lk;  // average: rows of [N, Lq, Lk]
    std::size_t packed_head = heads;  // the K/V head whose keys kp holds (none yet)
    for (std::size_t h = h_begin; h < h_end; ++h) {
      float* dst = average ? scores : p.weights.data + ((b * heads + h) * lq + r0) * lk;
      if (h / group != packed_head) {
        packed_head = h / group;
        kernels::pack_weight(p.k.at(b, 0, packed_head), lk, dk, p.k.row_stride, kp);
      }
      kernels::GemmArgs g;
      g.a = q.at(b, r0, h);
      g.lda = q.row_stride;
      g.m = rows;
      g.n = lk;
      g.k = dk;
      g.b_packed = kp;
      g.c = dst;
      g.ldc = lk;
      table.gemm(g);
      const kernels::KeyRule rule = p.rule.for_head(b, h);
      const kernels::ScoreMods mods = p.rule.mods_for_head(h);
      const float* lse = p.lse + (b * heads + h) * lq;
      for (std::size_t r = 0; r < rows; ++r) {
        probabilities(table, rule, mods, r0 + r, p.scale, lse[r0 + r], p.policy, dst + r * lk);
      }
      if (!average) continue;
      for (std::size_t x = 0; x < rows * lk; ++x) mean[x] = h == 0 ? dst[x] : mean[x] + dst[x];
    }
    if (average) {
      for (std::size_t x = 0; x < rows * lk; ++x) mean[x] /= static_cast<float>(heads);
    }
  });
}

}  // namespace simdattn::detail
