#include "driver/attention.hpp"

#include <algorithm>

#include "driver/attention_weights.hpp"
#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "fp_env.hpp"
#include "kernels/attention/merge.hpp"
#include "reference/reference.hpp"

namespace simdattn::detail {
namespace {

// Task rows come in whole query groups, so no group of any ISA runs half empty.
constexpr std::size_t kTaskRowQuantum = kernels::kMaxQueryGroup;

// Decoding (Lq <= kDecodeMaxLq): tasks are (batch, slice of keys) over every head, so threads
// share the key range even when N x H is small; slices cover the keys that some row sees
// (a window's keys only), depend on the shape and the rule only and are merged in slice order,
// so results do not depend on the thread count.
void run_decode(const kernels::KernelTable& table, const AttentionProblem& p, int threads) {
  const auto& q = p.q;
  const std::size_t n = q.n, heads = q.h, d = q.d, dv = p.v.d, lq = q.l, lk = p.k.l;
  const std::size_t group = q.h / p.k.h;
  // Bounds do not depend on the batch or head; the first row starts first, the last ends last.
  const kernels::KeyRule bounds = p.rule.for_head(0, 0);
  const std::size_t keys_begin = kernels::key_begin(bounds, 0);
  const std::size_t keys_end = std::max(keys_begin, kernels::key_end(bounds, lq - 1));
  const std::size_t slices = std::max<std::size_t>(
      1, (keys_end - keys_begin + kernels::kDecodeSlice - 1) / kernels::kDecodeSlice);
  const std::size_t rec = kernels::partial_record_floats(dv);
  const std::size_t per_slice = lq * heads * rec;
  const std::size_t tasks = n * slices;
  float* partial = thread_scratch(ScratchSlot::partials, tasks * per_slice);
  if (static_cast<double>(n) * heads * lq * lk * d < kernels::kAttentionSerialWork) threads = 1;
  const std::size_t scratch_floats = kernels::decode_scratch_floats(heads, dv);
  parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
    const std::size_t b = t / slices, slice = t % slices;
    kernels::DecodeArgs a;
    a.q = q.at(b, 0, 0);
    a.q_stride = q.row_stride;
    a.q_head_stride = q.heads_apart();
    a.k = p.k.at(b, 0, 0);
    a.k_stride = p.k.row_stride;
    a.k_head_stride = p.k.heads_apart();
    a.v = p.v.at(b, 0, 0);
    a.v_stride = p.v.row_stride;
    a.v_head_stride = p.v.heads_apart();
    a.lq = lq;
    a.d = d;
    a.dv = dv;
    a.heads = heads;
    a.kv_group = group;
    a.rule = p.rule.for_head(b, 0);
    a.mask_head_stride = p.rule.mask_head_stride();
    a.bias_head_stride = p.rule.bias_head_stride();
    a.softcap = p.rule.softcap;
    a.alibi = p.rule.alibi.empty() ? nullptr : p.rule.alibi.data();
    a.scale = p.scale;
    a.key_begin = keys_begin + slice * kernels::kDecodeSlice;
    a.key_end = std::min(keys_end, a.key_begin + kernels::kDecodeSlice);
    a.partial = partial + t * per_slice;
    a.scratch = thread_scratch(ScratchSlot::kernel, scratch_floats);
    table.decode(a);
  });
  FlushDenormals ftz;  // the merge runs like the kernels do
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t h = 0; h < heads; ++h) {
      const kernels::KeyRule rule = p.rule.for_head(b, h);
      const kernels::ScoreMods mods = p.rule.mods_for_head(h);
      const bool sink = kernels::has_sink(mods);
      for (std::size_t i = 0; i < lq; ++i) {
        float* o = p.out.at(b, i, h);
        float lse = -INFINITY;
        if (!kernels::has_visible_key(rule, i)) {
          if (sink) {  // the sink takes all the weight
            std::fill(o, o + dv, 0.0f);
            lse = mods.sink;
          } else {
            kernels::masked_row_answer(p.policy, p.v.at(b, 0, h / group), p.v.row_stride, lk, dv,
                                       o);
          }
        } else {
          const float* first = partial + b * slices * per_slice + (i * heads + h) * rec;
          lse = kernels::merge_partials(first, per_slice, first + 16, per_slice, slices, dv, o);
          if (sink) lse = kernels::add_sink(mods.sink, lse, dv, o);
        }
        if (p.lse != nullptr) p.lse[(b * heads + h) * lq + i] = lse;
      }
    }
  }
}

// Rows [row_begin, row_end) of a bias with rows per query, keys down: out[k * stride + i -
// row_begin]; the floats past row_end - row_begin in each key's stride are zeros (the padding
// lanes of the last query group read them). Rows are read front to back, 8 at a time: 16 rows a
// multiple of 4 KiB apart map to one set of a 12-way L1.
void transpose_bias_rows(const kernels::KeyRule& r, std::size_t row_begin, std::size_t row_end,
                         std::size_t stride, float* out) {
  constexpr std::size_t kRows = 8;
  const std::size_t rows = row_end - row_begin;
  for (std::size_t t0 = 0; t0 < rows; t0 += kRows) {
    const std::size_t nt = std::min(kRows, rows - t0);
    const float* src = r.bias + (row_begin + t0) * r.bias_row_stride;
    for (std::size_t k = 0; k < r.lk; ++k) {
      for (std::size_t t = 0; t < nt; ++t)
        out[k * stride + t0 + t] = src[t * r.bias_row_stride + k];
    }
  }
  for (std::size_t k = 0; k < r.lk; ++k)
    std::fill(out + k * stride + rows, out + (k + 1) * stride, 0.0f);
}

void run_tiles(const kernels::KernelTable& table, const AttentionProblem& p, int threads) {
  const auto& q = p.q;
  const std::size_t group = q.h / p.k.h;
  const std::size_t heads = q.n * q.h;
  if (static_cast<double>(heads) * q.l * p.k.l * q.d < kernels::kAttentionSerialWork) threads = 1;
  // A bias with rows per query shared by the heads ([N|1, 1, Lq, Lk]): a task takes a block of
  // rows in every head of a batch, and copies the block's bias keys down first, as the tiles
  // hold scores; each head then reads the copy with one load per vector, where transposing
  // 16 x 16 pieces in registers took 64 shuffles per piece in every head (s2048, 8 heads, one
  // thread, AVX-512 on a Xeon: 1.00-1.18x plain attention against 1.26-1.37x, 3 runs each with
  // interleaved repetitions). The block's rows are capped so that the copy stays within about
  // 1 MiB (L2). Fewer rows would cost more, not less: each task reads every head's K and V
  // again (1 MiB per head at Lk = 2048, D = 64), which a head's row tasks run back to back keep
  // in L2 (1 thread, 2 rounds: 32 rows 1.41-1.56x plain, 64 rows 1.44x, 128 rows 1.15-1.23x,
  // 256 rows 1.15-1.18x). With 4 KiB pages (buffers without transparent huge pages) this path
  // ran 1.17-1.37x plain (Intel Xeon VM, one thread, AVX-512), 64-row tasks 1.40-1.67x; 256-row
  // tasks and the heads' rows back to back with the bias transposed in registers (no copy) measured
  // the same within the noise. Where the batches' rows make too few blocks to keep every thread
  // busy, heads are split across threads, as without a bias (below).
  const std::size_t quanta = (q.l + kTaskRowQuantum - 1) / kTaskRowQuantum;
  const bool shared_bias = p.rule.bias.data != nullptr && p.rule.bias.lq != 1 &&
                           p.rule.bias_head_stride() == 0 && q.h > 1 &&
                           q.n * quanta >= 2 * static_cast<std::size_t>(std::max(1, threads));
  const std::size_t units = shared_bias ? q.n : heads;  // what row blocks are split across
  std::size_t max_rows = kernels::kMaxTaskRows;
  if (shared_bias) {
    const std::size_t fit = (std::size_t{1} << 18) / std::max<std::size_t>(1, p.k.l);
    max_rows = std::clamp(fit / kTaskRowQuantum * kTaskRowQuantum, kTaskRowQuantum, max_rows);
  }
  // Enough tasks for every thread to take several; rows per task a multiple of the quantum.
  std::size_t chunks = 1;
  while (units * chunks < 4 * static_cast<std::size_t>(threads) && q.l > chunks * kTaskRowQuantum) {
    ++chunks;
  }
  std::size_t rows = (q.l + chunks - 1) / chunks;
  rows = std::min(max_rows, (rows + kTaskRowQuantum - 1) / kTaskRowQuantum * kTaskRowQuantum);
  const std::size_t row_tasks = (q.l + rows - 1) / rows;
  const std::size_t tasks = units * row_tasks;
  const std::size_t scratch_floats = kernels::attention_scratch_floats(q.d, p.v.d);

  auto run = [&](std::size_t b, std::size_t h, std::size_t row_task, const float* bias_t) {
    const std::size_t bh = b * q.h + h;
    kernels::AttentionArgs a;
    a.q = q.at(b, 0, h);
    a.q_stride = q.row_stride;
    a.k = p.k.at(b, 0, h / group);
    a.k_stride = p.k.row_stride;
    a.v = p.v.at(b, 0, h / group);
    a.v_stride = p.v.row_stride;
    a.out = p.out.at(b, 0, h);
    a.out_stride = p.out.row_stride;
    a.lq = q.l;
    a.lk = p.k.l;
    a.d = q.d;
    a.dv = p.v.d;
    a.row_begin = row_task * rows;
    a.row_end = std::min(q.l, a.row_begin + rows);
    a.rule = p.rule.for_head(b, h);
    if (bias_t != nullptr) {
      a.rule.bias_t = bias_t;
      a.rule.bias_t_stride = rows;  // a whole number of query groups of any ISA
      a.rule.bias_t_row0 = a.row_begin;
    }
    a.mods = p.rule.mods_for_head(h);
    a.scale = p.scale;
    a.masked_rows = p.policy;
    a.lse = p.lse != nullptr ? p.lse + bh * q.l : nullptr;
    a.scratch = thread_scratch(ScratchSlot::kernel, scratch_floats);
    table.attention(a);
  };
  // Each row's arithmetic is independent of the task it lands in, so results do not depend on
  // the thread count or the schedule; dynamic scheduling evens out causal masks.
  if (shared_bias) {
    parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
      const std::size_t b = t / row_tasks, row_task = t % row_tasks;
      const std::size_t row_begin = row_task * rows, row_end = std::min(q.l, row_begin + rows);
      float* bias_t = thread_scratch(ScratchSlot::bias_transposed, p.k.l * rows);
      transpose_bias_rows(p.rule.for_head(b, 0), row_begin, row_end, rows, bias_t);
      for (std::size_t h = 0; h < q.h; ++h) run(b, h, row_task, bias_t);
    });
    return;
  }
  // Otherwise a head's rows run back to back, which keeps its K and V in L2. A shared bias
  // with too few row blocks for the copy above runs so too: running the same rows of every head
  // back to back instead measured no faster (Lq = 96, Lk = 32768, 2 heads, 2 threads, bias
  // from memory: medians 29-36 ms against 27-34, 3 rounds; the two threads take the same rows
  // at once, each from memory).
  parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
    run(t / (q.h * row_tasks), t / row_tasks % q.h, t % row_tasks, nullptr);
  });
}

}  // namespace

void run_attention(const kernels::KernelTable* table, const AttentionProblem& p, int threads) {
  if (table == nullptr) {
    reference::attention<float>(p.q, p.k, p.v, p.out, p.rule, p.scale, p.policy, p.lse, p.weights);
    return;
  }
  const AttentionProblem* run = &p;
  AttentionProblem with_lse;
  if (p.weights.data != nullptr && p.lse == nullptr) {
    // The weights are recomputed from each row's log-sum-exp.
    with_lse = p;
    with_lse.lse = thread_scratch(ScratchSlot::lse, p.q.n * p.q.h * p.q.l);
    run = &with_lse;
  }
  if (p.q.l <= kernels::kDecodeMaxLq) {
    run_decode(*table, *run, threads);
  } else {
    run_tiles(*table, *run, threads);
  }
  if (p.weights.data != nullptr) write_attention_weights(*table, *run, threads);
}

}  // namespace simdattn::detail
