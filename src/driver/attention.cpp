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

void run_tiles(const kernels::KernelTable& table, const AttentionProblem& p, int threads) {
  const auto& q = p.q;
  const std::size_t group = q.h / p.k.h;
  const std::size_t heads = q.n * q.h;
  if (static_cast<double>(heads) * q.l * p.k.l * q.d < kernels::kAttentionSerialWork) threads = 1;
  // Enough tasks for every thread to take several; rows per task a multiple of the quantum.
  std::size_t chunks = 1;
  while (heads * chunks < 4 * static_cast<std::size_t>(threads) && q.l > chunks * kTaskRowQuantum) {
    ++chunks;
  }
  std::size_t rows = (q.l + chunks - 1) / chunks;
  rows = std::min(kernels::kMaxTaskRows,
                  (rows + kTaskRowQuantum - 1) / kTaskRowQuantum * kTaskRowQuantum);
  const std::size_t row_tasks = (q.l + rows - 1) / rows;
  const std::size_t tasks = heads * row_tasks;
  const std::size_t scratch_floats = kernels::attention_scratch_floats(q.d, p.v.d);
  // A bias with rows per query shared by the heads ([N|1, 1, Lq, Lk]): the same rows of every
  // head of a batch run back to back, so that a task's bias rows (2 MiB at 256 rows of
  // Lk = 2048) come from cache after the first head instead of from memory once per head.
  // Otherwise a head's rows run back to back, which keeps its K and V in L2.
  const bool rows_outer =
      p.rule.bias.data != nullptr && p.rule.bias.lq != 1 && p.rule.bias_head_stride() == 0;

  // Each row's arithmetic is independent of the task it lands in, so results do not depend on
  // the thread count or the schedule; dynamic scheduling evens out causal masks.
  parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
    const std::size_t b = t / (q.h * row_tasks);
    const std::size_t h = rows_outer ? t % q.h : t / row_tasks % q.h;
    const std::size_t row_task = rows_outer ? t / q.h % row_tasks : t % row_tasks;
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
    a.mods = p.rule.mods_for_head(h);
    a.scale = p.scale;
    a.masked_rows = p.policy;
    a.lse = p.lse != nullptr ? p.lse + bh * q.l : nullptr;
    a.scratch = thread_scratch(ScratchSlot::kernel, scratch_floats);
    table.attention(a);
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
