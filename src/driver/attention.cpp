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
// so results do not depend on the thread count. A task reads whole K/V rows (every head): tasks
// of half the heads each, for more tasks, read half rows and measured slower (one sequence,
// Lk = 1024, E = 1024, 2 threads, Zen 5: 4 such tasks 231-239 us against 2 slices' 160).
void run_decode(const kernels::KernelTable& table, const AttentionProblem& p, int threads) {
  const auto& q = p.q;
  const std::size_t n = q.n, heads = q.h, d = q.d, dv = p.v.d, lq = q.l, lk = p.k.l;
  const std::size_t group = q.h / p.k.h;
  // Bounds do not depend on the batch or head; the first row starts first, the last ends last.
  const kernels::KeyRule bounds = p.rule.for_head(0, 0);
  const std::size_t keys_begin = kernels::key_begin(bounds, 0);
  const std::size_t keys_end = std::max(keys_begin, kernels::key_end(bounds, lq - 1));
  auto slices_of = [&](std::size_t keys) {
    return std::max<std::size_t>(1, (keys_end - keys_begin + keys - 1) / keys);
  };
  // Calls of few slices get smaller ones (kernels/blocking.hpp says why these sizes).
  std::size_t slice_keys = kernels::kDecodeSlice;
  auto halve_until = [&](std::size_t tasks, std::size_t smallest) {
    while (n * slices_of(slice_keys) < tasks && slice_keys > smallest) slice_keys /= 2;
  };
  halve_until(kernels::kDecodeMinTasks, kernels::kDecodeTaskSlice);
  halve_until(2, kernels::kDecodeMinSlice);
  const std::size_t slices = slices_of(slice_keys);
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
    a.key_begin = keys_begin + slice * slice_keys;
    a.key_end = std::min(keys_end, a.key_begin + slice_keys);
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
          lse = kernels::merge_slices(sink ? &mods.sink : nullptr, first, per_slice, first + 16,
                                      per_slice, slices, dv, o);
        }
        if (p.lse != nullptr) p.lse[(b * heads + h) * lq + i] = lse;
      }
    }
  }
}

// A task's copy of its bias rows with keys down (KeyRule::bias_t): keys [key0, key0 + keys).
struct BiasCopy {
  const float* data = nullptr;
  std::size_t key0 = 0;
};

// Rows [row_begin, row_end) of rule r's bias, keys down, for the keys those rows can see:
// out[(k - key0) * stride + i - row_begin], zeros past row_end - row_begin in each key's stride
// (the padding lanes of the last query group read them).
BiasCopy copy_bias_keys_down(const kernels::KernelTable& table, const kernels::KeyRule& r,
                             std::size_t row_begin, std::size_t row_end, std::size_t stride,
                             float* out) {
  const std::size_t key0 = kernels::key_begin(r, row_begin);
  const std::size_t key1 = std::max(key0, kernels::key_end(r, row_end - 1));
  table.bias_keys_down(r.bias + row_begin * r.bias_row_stride + key0, r.bias_row_stride,
                       row_end - row_begin, key1 - key0, stride, out);
  return {out, key0};
}

// Keys a task of `rows` query rows can see: all of them, or under a window its rows' span
// and the window.
std::size_t bias_copy_keys(const kernels::KeyRule& r, std::size_t rows) {
  return r.window != 0 ? std::min(r.lk, rows + r.window) : r.lk;
}

// A task's bias copy at most: 1 MiB for a bias per head (the L2 beside a head's K and V); 2 MiB
// for a bias shared by the heads, whose copy serves a block of rows in every head, so that its
// tasks are as long as plain attention's (kMaxTaskRows at Lk = 2048).
constexpr std::size_t kCopyFloats = std::size_t{1} << 18;
constexpr std::size_t kSharedCopyFloats = std::size_t{1} << 19;

// The most rows per task (whole query groups) whose bias copy stays within copy_floats; 0 if
// none.
std::size_t bias_copy_rows(const kernels::KeyRule& r, std::size_t copy_floats) {
  for (std::size_t rows = kernels::kMaxTaskRows; rows >= kTaskRowQuantum; rows -= kTaskRowQuantum) {
    if (rows * bias_copy_keys(r, rows) <= copy_floats) return rows;
  }
  return 0;
}

void run_tiles(const kernels::KernelTable& table, const AttentionProblem& p, int threads) {
  const auto& q = p.q;
  const std::size_t group = q.h / p.k.h;
  const std::size_t heads = q.n * q.h;
  if (static_cast<double>(heads) * q.l * p.k.l * q.d < kernels::kAttentionSerialWork) threads = 1;
  // A bias with rows per query ([N|1, H|1, Lq, Lk]): each task copies its rows' bias keys down
  // first (copy_bias_keys_down), as the tiles hold scores, and the kernel reads the copy with
  // one load per vector. Transposing 16 x 16 pieces in registers inside the tiles instead took 64
  // shuffles per piece in every head and read the bias as one stream per row, which the
  // prefetchers serve badly. s2048, 8 heads, AVX-512 on a Xeon: a shared bias 1.00-1.18x plain
  // attention against 1.26-1.37x (one thread, 3 runs with interleaved repetitions); a per-head
  // bias (128 MiB from memory; a program over the public API, 9 interleaved calls, 2 rounds,
  // fastest calls) 1.32x against 1.49-1.53x with one thread, 1.17-1.34x against 1.50-1.54x with
  // two, 1.24-1.25x against 1.37-1.39x on AVX2. There the copy's wait for memory is 14% of the
  // samples; prefetching each row 1 KiB ahead in the copy did not shorten it. A task's rows are
  // capped so that its copy stays within about 1 MiB (L2, beside a head's K and V). On the
  // Zen 5 (AVX-512, one thread) prefetching the next task's bias rows a share per key block while
  // a task computes, so that its copy would find them in cache, made it slower: 1.33-1.34x plain
  // with prefetcht1 against 1.24-1.25x without (2 rounds), 1.26x with prefetcht2 (1 round).
  // Copying in the tile kernel instead, just before the rows are used, with the next piece's
  // source lines prefetched, measured no better (Zen 5, one thread, 2 rounds, binaries in turn,
  // this code at 1.20-1.25x): each key block's rows for the whole task (a 256-row task, 64 KiB of
  // source a block, prefetched a block ahead with prefetcht0, t1 or t2) 1.18-1.23x; each query
  // group's 16 rows of a block, the next group's prefetched in one burst 1.18-1.23x, spread over
  // the score micro-kernel's calls 1.16-1.22x (prefetcht0; prefetcht1 1.31-1.33x). Copies of
  // 512 KiB instead of 1 MiB: 1.28-1.33x. What the copy costs alone (Zen 5, one thread, a
  // program doing this copy for s2048's 128 MiB in 1 MiB tasks, AVX-512): 6.2-8.1 ms from memory
  // (16.5-19.8 GB/s, while one core reads sequentially at 45-47 GB/s) and 4.5 ms with its source
  // in cache, against 48 ms for plain attention; so this design cannot get a bias per head under
  // 1.10x. Reading each 16-row strip in address order first, or prefetching the next strip's
  // lines (in one burst or spread over the pieces, prefetcht0, t1 or t2) ran at 11-19 GB/s.
  // Nor is the tiles' own transposition (the path past Lk = 8192) better on the Zen 5: a bias
  // per head at s2048, one thread, 2 rounds in turn, 1.25x and 1.19x plain against this copy's
  // 1.21x and 1.29x.
  // A bias shared by the heads ([N|1, 1, Lq, Lk]): a task takes a block of rows in every head of a
  // batch and makes one copy for all of them, of up to 2 MiB. Fewer rows would cost more, not less:
  // each task reads every head's K and V again (1 MiB per head at Lk = 2048, D = 64), which a
  // head's row tasks run back to back keep in L2 (Intel Xeon VM, 1 thread, 2 rounds: 32 rows
  // 1.41-1.56x plain, 64 rows 1.44x, 128 rows 1.15-1.23x, 256 rows 1.15-1.18x; Zen 5, AVX-512:
  // 256 rows 1.11-1.12x in 4 runs against 128 rows' 1.12-1.18x in 5 at one thread, 1.10-1.13x
  // against 1.18-1.19x at two, while a bias per head with 256-row copies did not move); copying
  // per head with heads' rows back to back instead measured 1.41-1.46x against 1.16-1.34x (2
  // rounds).
  // With 4 KiB pages (buffers without transparent huge pages) this path ran 1.17-1.37x plain
  // (Intel Xeon VM, one thread, AVX-512), 64-row tasks 1.40-1.67x; 256-row tasks and the heads'
  // rows back to back with the bias transposed in registers (no copy) measured the same within
  // the noise. Where the batches' rows make too few blocks to keep every thread busy, heads are
  // split across threads and each (head, rows) task copies its own rows, as with a bias per head.
  const std::size_t quanta = (q.l + kTaskRowQuantum - 1) / kTaskRowQuantum;
  const kernels::KeyRule rule0 = p.rule.for_head(0, 0);
  const bool bias_rows = p.rule.bias.data != nullptr && p.rule.bias.lq != 1;
  const bool shared_bias = bias_rows && p.rule.bias_head_stride() == 0 && q.h > 1 &&
                           q.n * quanta >= 2 * static_cast<std::size_t>(std::max(1, threads));
  const std::size_t fit_rows =
      bias_rows ? bias_copy_rows(rule0, shared_bias ? kSharedCopyFloats : kCopyFloats) : 0;
  // Where not even one query group's copy fits (Lk past 8192 without a window) a bias per head
  // is transposed in the tiles; a shared one is still copied, a group of rows at a time.
  const bool copy_bias = bias_rows && (shared_bias || fit_rows != 0);
  const std::size_t units = shared_bias ? q.n : heads;  // what row blocks are split across
  std::size_t max_rows = kernels::kMaxTaskRows;
  if (copy_bias) max_rows = std::max(fit_rows, kTaskRowQuantum);
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

  auto run = [&](std::size_t b, std::size_t h, std::size_t row_task, BiasCopy bias_t) {
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
    if (bias_t.data != nullptr) {
      a.rule.bias_t = bias_t.data;
      a.rule.bias_t_stride = rows;  // a whole number of query groups of any ISA
      a.rule.bias_t_row0 = a.row_begin;
      a.rule.bias_t_key0 = bias_t.key0;
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
  const std::size_t copy_floats = copy_bias ? rows * bias_copy_keys(rule0, rows) : 0;
  auto copy_bias_rows = [&](std::size_t b, std::size_t h, std::size_t row_task) {
    const std::size_t row_begin = row_task * rows, row_end = std::min(q.l, row_begin + rows);
    float* buffer = thread_scratch(ScratchSlot::bias_transposed, copy_floats);
    return copy_bias_keys_down(table, p.rule.for_head(b, h), row_begin, row_end, rows, buffer);
  };
  if (shared_bias) {
    parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
      const std::size_t b = t / row_tasks, row_task = t % row_tasks;
      const BiasCopy bias_t = copy_bias_rows(b, 0, row_task);
      for (std::size_t h = 0; h < q.h; ++h) run(b, h, row_task, bias_t);
    });
    return;
  }
  // Otherwise a head's rows run back to back, which keeps its K and V in L2; except under a window
  // with the heads of a row side by side ([N, L, H, D]), where the heads of a block of rows run
  // back to back, so that a head's piece of a K/V row (256 bytes at D = 64) is read while its
  // neighbours (the other heads') are near. A window's task reads only its rows' span of keys (a
  // few hundred), each piece a jump the hardware prefetchers do not follow. AMD EPYC Zen 3, AVX2,
  // one thread, W = 256 at L = 8192 (E = 512, H = 8), the two orders in turn in one process,
  // medians of 15-21 calls, 3 rounds: 91-106 ms against 107-115; 2 threads 48.4 against 49.8;
  // W = 64 40.7 against 44.8; E = 1024, H = 16, L = 4096, W = 512 170 against 175; the same tensors
  // as [N, H, L, D] within 3% either way, so they keep the head-major order. On a Zen 5 (AVX-512,
  // one thread) the rows-major order ran W = 256 at L = 8192 in 29.2 ms against 29.0-29.7: no
  // change. A shared bias with too few row blocks for the copy above runs so too (head-major
  // without such a window): running the same rows of every head back to back instead measured no
  // faster (Lq = 96, Lk = 32768, 2 heads, 2 threads, bias from memory: medians 29-36 ms against
  // 27-34, 3 rounds; the two threads take the same rows at once, each from memory).
  const bool rows_major = rule0.window != 0 && p.k.heads_dense() && p.k.row_stride != p.k.d;
  parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
    const std::size_t b = t / (q.h * row_tasks);
    const std::size_t h = rows_major ? t % q.h : t / row_tasks % q.h;
    const std::size_t row_task = rows_major ? t / q.h % row_tasks : t % row_tasks;
    run(b, h, row_task, copy_bias ? copy_bias_rows(b, h, row_task) : BiasCopy{});
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
