// Attention over a KvCache: validation of scaled_dot_product_attention(KvCache&, ...), the
// append (undone if the attention cannot run), and the driver over the cache's blocks.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "driver/attention.hpp"
#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "fp_env.hpp"
#include "isa/registry.hpp"
#include "kernels/attention/merge.hpp"
#include "kernels/blocking.hpp"
#include "kv_cache_impl.hpp"
#include "mask_rule.hpp"
#include "reference/reference.hpp"
#include "validate.hpp"

namespace simdattn {
namespace detail {
namespace {

// The rule of T new tokens at the end of a sequence of `length` tokens: the call's rule (causal
// bottom-right, window, score modifications) for Lq = T, Lk = length, so token t sees keys
// [0, length - T + t], or the last `window` of them, and sits at position length - T + t for
// ALiBi.
MaskRule new_tokens_rule(std::size_t tokens, std::size_t length, const MaskRule& call) {
  MaskRule r = call;
  r.lq = tokens;
  r.lk = length;
  return r;
}

// Its key rule alone (no copy of the ALiBi slopes).
kernels::KeyRule new_tokens_keys(std::size_t tokens, std::size_t length, std::size_t window) {
  MaskRule r{Mask{}, Causal::bottom_right, tokens, length};
  r.window = window;
  return r.for_head(0, 0);
}

// The first key that some new token sees (the first token's window start), rounded down to a
// whole key block of the kernels (cache blocks hold whole key blocks): keys before it are never
// read, so a window bounds what a decode step reads.
std::size_t first_key_read(std::size_t tokens, std::size_t length, std::size_t window) {
  const std::size_t first = kernels::key_begin(new_tokens_keys(tokens, length, window), 0);
  return first / kernels::kKeyBlock * kernels::kKeyBlock;
}

// Batch entry b of a view, as a view of one batch.
template <class T>
Heads<T> batch(const Heads<T>& x, std::size_t b) {
  Heads<T> one = x;
  one.data = x.at(b, 0, 0);
  one.n = 1;
  return one;
}

// The reference path: each sequence's keys and values gathered as float, then the naive
// attention.
void cached_attention_naive(const KvCache::Impl& c,
                            const std::vector<KvCache::Impl::Sequence*>& sequences,
                            const Heads<const float>& q, const Heads<float>& out, float scale,
                            const MaskRule& call) {
  const std::size_t kvh = c.config.kv_heads, d = c.config.head_dim;
  std::vector<float> k, v;
  for (std::size_t b = 0; b < sequences.size(); ++b) {
    const KvCache::Impl::Sequence& s = *sequences[b];
    k.resize(s.length * kvh * d);
    v.resize(s.length * kvh * d);
    read_tokens(c, s, 0, s.length, k.data(), v.data(), 1);
    reference::attention<float>(batch(q, b), {k.data(), 1, s.length, kvh, d, kvh * d, 0},
                                {v.data(), 1, s.length, kvh, d, kvh * d, 0}, batch(out, b),
                                new_tokens_rule(q.l, s.length, call), scale, MaskedRows::uniform);
  }
}

// One pass of the paged kernel: of the call's T new tokens, [t0, t0 + tokens), and of the G
// query heads of each kv head, [g0, g0 + groups); groups x tokens <= kPagedMaxRows.
struct PagedPass {
  std::size_t t0 = 0, tokens = 0, g0 = 0, groups = 0;
  bool write_new = true;  // write the new tokens into the blocks (else already written)
};

// Few rows per kv head (decoding, short chunks): the paged kernel over the blocks in place.
// Tasks are (sequence, kv head, slice of kPagedSlice keys); each covers the pass's rows that
// read that kv head, so every cached byte is read once per pass. The kernel applies
// soft-capping and ALiBi to each slice's scores; the sinks join each row's denominator after
// the slices merge. A pass over tokens [t0, t0 + tokens) sees the sequence as if it ended with
// its last token, so that each token keeps its own causal end and position.
void cached_attention_paged(const kernels::KernelTable& table, KvCache::Impl& c,
                            const AppendPlan& plan, const Heads<const float>& q,
                            const Heads<float>& out, float scale, int threads, const MaskRule& call,
                            const PagedPass& pass) {
  const std::vector<KvCache::Impl::Sequence*>& sequences = plan.sequences;
  const std::size_t window = call.window;
  const std::size_t n = q.n, t_new = pass.tokens, d = q.d, kvh = c.config.kv_heads;
  const std::size_t all_groups = q.h / kvh, groups = pass.groups, rows = groups * t_new;
  const std::size_t later_tokens = q.l - pass.t0 - t_new;  // new tokens after this pass's
  const std::size_t rec = kernels::partial_record_floats(d);
  const std::size_t per_task = rows * rec;
  std::vector<std::size_t> first_task(n + 1, 0);  // batch b's tasks: [first_task[b], [b + 1])
  std::vector<std::size_t> first_key(n);          // batch b's slices start there
  double work = 0;
  for (std::size_t b = 0; b < n; ++b) {
    const std::size_t length = sequences[b]->length - later_tokens;
    first_key[b] = first_key_read(t_new, length, window);
    const std::size_t slices =
        (length - first_key[b] + kernels::kPagedSlice - 1) / kernels::kPagedSlice;
    first_task[b + 1] = first_task[b] + kvh * slices;
    work += static_cast<double>(length - first_key[b]) * kvh * rows * d;
  }
  const std::size_t tasks = first_task[n];
  float* partial = thread_scratch(ScratchSlot::partials, tasks * per_task);
  if (work < kernels::kAttentionSerialWork) threads = 1;
  // A job runs `together` kv heads (a divisor of kvh) over one slice: their keys and values lie
  // side by side in each block, so the job streams long runs (see paged_decode.hpp); as many
  // heads as leave at least 4 jobs per thread. The records stay one per (b, kv head, slice), so
  // the grouping changes no arithmetic. At least 8 jobs per thread (at 4 kv heads 2 per job, not
  // 4; at 16, 8 not 16) ran slower: one sequence, Lk = 4096, 2 threads, Zen 5, cold, 3 rounds in
  // turn, 4 kv heads 162-172 -> 175-188 us, 16 kv heads 441-496 -> 485-500.
  // The kernel finds kv head i's rows at (i x groups + g) heads: a pass over part of each
  // group runs its kv heads one at a time.
  std::size_t together = groups == all_groups ? kvh : 1;
  while (together > 1 && (tasks / kvh * (kvh / together) < 4 * static_cast<std::size_t>(threads) ||
                          kvh % together != 0)) {
    --together;
  }
  const std::size_t jobs = tasks / together;
  const std::size_t scratch_floats = kernels::paged_scratch_floats(d, together * rows);
  parallel_tasks(jobs, threads, /*dynamic=*/true, [&](std::size_t job) {
    const std::size_t task = job * together;  // the job's first record: heads are outermost
    const std::size_t b =
        std::upper_bound(first_task.begin(), first_task.end(), task) - first_task.begin() - 1;
    const KvCache::Impl::Sequence& s = *sequences[b];
    const std::size_t length = s.length - later_tokens;
    const std::size_t slices = (first_task[b + 1] - first_task[b]) / kvh;
    const std::size_t hg = (task - first_task[b]) / (slices * together);
    const std::size_t slice = (task - first_task[b]) / together % slices;
    const std::size_t hk = hg * together;
    const std::size_t h0 = hk * all_groups + pass.g0;  // the first query head of the task
    kernels::PagedAttentionArgs a;
    a.q = q.at(b, pass.t0, h0);
    a.q_stride = q.row_stride;
    a.q_head_stride = q.heads_apart();
    a.heads = together;
    a.groups = groups;
    a.tokens = t_new;
    a.d = d;
    a.rule = new_tokens_keys(t_new, length, window);
    a.softcap = call.softcap;
    a.alibi = call.alibi.empty() ? nullptr : call.alibi.data() + h0;
    a.pool = c.pool.get();
    a.blocks = s.blocks.data();
    a.block_bytes = c.block_bytes;
    a.block_tokens = c.config.block_tokens;
    a.key_offset = c.key_offset(hk);
    a.value_offset = c.value_offset(hk);
    a.key_head_bytes = c.head_bytes();
    a.value_head_bytes = c.head_bytes();
    a.row_elems = c.row_elems;
    a.storage = c.config.storage;
    a.key_begin = first_key[b] + slice * kernels::kPagedSlice;
    a.key_end = std::min(length, a.key_begin + kernels::kPagedSlice);
    a.scale = scale;
    a.partial = partial + (first_task[b] + hk * slices + slice) * per_task;
    a.partial_head_stride = slices * per_task;
    a.scratch = thread_scratch(ScratchSlot::kernel, scratch_floats);
    // The new tokens of this slice and these heads, written right before the kernel reads them:
    // with keys down in a block, a token's keys touch one line per element, which the kernel
    // reads next. A separate append pass over the batch fetched those lines twice: 96 sequences
    // of 128 tokens, 2 threads, AVX-512, 1.53-1.55x the floor before, 1.15-1.24x now; 384 of 32
    // tokens 21.8-23.7 -> 12.3-12.4 ms (floor 5.6). Prefetching the lines before the writes
    // changed nothing beyond the noise.
    if (pass.write_new) write_appended(c, plan, b, hk, hk + together, a.key_begin, a.key_end);
    table.paged_attention(a);
  });
  FlushDenormals ftz;  // the merge runs like the kernels do
  for (std::size_t b = 0; b < n; ++b) {
    const std::size_t slices = (first_task[b + 1] - first_task[b]) / kvh;
    for (std::size_t hk = 0; hk < kvh; ++hk) {
      const float* head = partial + (first_task[b] + hk * slices) * per_task;
      for (std::size_t r = 0; r < rows; ++r) {
        // Every row sees at least its own token (a window too): no masked-row answer is needed.
        const float* first = head + r * rec;
        const std::size_t h = hk * all_groups + pass.g0 + r % groups;
        float* o = out.at(b, pass.t0 + r / groups, h);
        kernels::merge_slices(call.sinks != nullptr ? call.sinks + h : nullptr, first, per_task,
                              first + 16, per_task, slices, d, o);
      }
    }
  }
}

// Many rows per kv head (prefill chunks): each sequence's keys and values gathered as float
// [L, kv_heads, D], then the attention core's tile path with grouped heads and bottom-right
// alignment. The gather costs O(L x D) per kv head against the O(T x L x D x G) of the attention.
void cached_attention_gathered(const kernels::KernelTable& table, const KvCache::Impl& c,
                               const std::vector<KvCache::Impl::Sequence*>& sequences,
                               const Heads<const float>& q, const Heads<float>& out, float scale,
                               int threads, const MaskRule& call) {
  const std::size_t kvh = c.config.kv_heads, d = c.config.head_dim;
  std::size_t longest = 0;
  for (const auto* s : sequences) longest = std::max(longest, s->length);
  // Room for a power of two of tokens, within the pool's: a prompt prefilled in chunks grows
  // the sequence call after call, and each larger scratch is fresh memory, slow to touch first
  // (aligned_buffer.hpp).
  std::size_t room = 1;
  while (room < longest) room *= 2;
  room = std::max(longest, std::min(room, c.config.blocks * c.config.block_tokens));
  float* k = thread_scratch(ScratchSlot::gathered, 2 * room * kvh * d);
  float* v = k + room * kvh * d;
  for (std::size_t b = 0; b < sequences.size(); ++b) {
    const KvCache::Impl::Sequence& s = *sequences[b];
    // Only the keys from the first new token's window on: bottom-right alignment over the
    // shorter history gives every token the same keys.
    // ALiBi's k - p_i does not change: keys and queries move by the same `first`.
    const std::size_t first = first_key_read(q.l, s.length, call.window);
    const std::size_t length = s.length - first;
    read_tokens(c, s, first, length, k, v, threads);
    AttentionProblem p;
    p.q = batch(q, b);
    p.k = {k, 1, length, kvh, d, kvh * d, 0};
    p.v = {v, 1, length, kvh, d, kvh * d, 0};
    p.out = batch(out, b);
    p.rule = new_tokens_rule(q.l, length, call);
    p.scale = scale;
    run_attention(&table, p, threads);
  }
}

}  // namespace

CacheCallOptions check_cache_options(const char* where, const Options& options, std::size_t heads,
                                     std::size_t head_dim) {
  if (options.causal == Causal::top_left) {
    fail(where,
         "options.causal is top_left: attention over a cache is always causal with bottom-right "
         "alignment (use none or bottom_right)");
  }
  // The window and the score modifications apply over a cache; the other variants do not.
  Options others = options;
  others.window.reset();
  others.softcap.reset();
  others.alibi = {};
  others.sinks = {};
  if (const char* unsupported = first_variant_option(others)) {
    fail(where, std::string(unsupported) +
                    " is set: attention over a KvCache does not support it (a tensor over the "
                    "keys has no fixed shape over a history that grows with every call; the "
                    "window, softcap, alibi and sinks do apply)");
  }
  Options causal = options;
  causal.causal = Causal::bottom_right;
  // lq and lk are each sequence's own; no option left here depends on them.
  MaskRule rule = resolve_rule(where, Mask{}, causal, 1, heads, 1, 1);
  return {resolve_scale(where, options, head_dim), resolve_threads(where, options),
          std::move(rule)};
}

void run_cached_attention(const kernels::KernelTable* table, KvCache::Impl& c,
                          const AppendPlan& plan, const Heads<const float>& q,
                          const Heads<float>& out, float scale, int threads, const MaskRule& rule) {
  if (table != nullptr) {
    // Rows per kv head past kPagedMaxRows (speculative decoding, short chunks, more than 16
    // query heads per kv head) take several passes of the kernel, each reading the history
    // again, up to kPagedMaxPasses (blocking.hpp: about where the gathered tile path below
    // becomes faster).
    const std::size_t groups = q.h / c.config.kv_heads;
    const std::size_t pass_groups = std::min(groups, kernels::kPagedMaxRows);
    const std::size_t pass_tokens = std::max<std::size_t>(1, kernels::kPagedMaxRows / pass_groups);
    const std::size_t passes =
        (groups + pass_groups - 1) / pass_groups * ((q.l + pass_tokens - 1) / pass_tokens);
    if (passes == 1) {
      cached_attention_paged(*table, c, plan, q, out, scale, threads, rule, {0, q.l, 0, groups});
      return;
    }
    if (passes <= kernels::kPagedMaxPasses) {
      write_all_appended(c, plan);
      for (std::size_t t0 = 0; t0 < q.l; t0 += pass_tokens) {
        for (std::size_t g0 = 0; g0 < groups; g0 += pass_groups) {
          const PagedPass pass{t0, std::min(pass_tokens, q.l - t0), g0,
                               std::min(pass_groups, groups - g0), false};
          cached_attention_paged(*table, c, plan, q, out, scale, threads, rule, pass);
        }
      }
      return;
    }
  }
  write_all_appended(c, plan);
  if (table == nullptr) {
    cached_attention_naive(c, plan.sequences, q, out, scale, rule);
  } else {
    cached_attention_gathered(*table, c, plan.sequences, q, out, scale, threads, rule);
  }
}

}  // namespace detail

void scaled_dot_product_attention(KvCache& cache, const std::vector<SequenceId>& ids,
                                  const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Options& options) {
  const char* where = "scaled_dot_product_attention (KvCache)";
  KvCache::Impl& c = detail::KvCacheAccess::impl(cache, where);
  detail::AppendPlan plan = detail::plan_append(where, c, ids, keys, values);
  const auto q = detail::resolve_heads(where, "query", query);
  const auto o = detail::resolve_heads(where, "out", out);
  const auto& k = plan.keys;
  if (q.n != k.n || q.l != k.l || q.d != k.d) {
    detail::fail(where, "query " + detail::shape_string(q.n, q.l, q.h, q.d) +
                            " does not match the new keys and values " +
                            detail::shape_string(k.n, k.l, k.h, k.d) +
                            " in N, T or head_dim ([N, T, H, D] and [N, T, kv_heads, D])");
  }
  if (q.h % k.h != 0) {
    detail::fail(where, "query heads H = " + std::to_string(q.h) +
                            " is not a multiple of the cache's kv_heads = " + std::to_string(k.h));
  }
  if (o.n != q.n || o.l != q.l || o.h != q.h || o.d != q.d) {
    detail::fail(where, "out " + detail::shape_string(o.n, o.l, o.h, o.d) +
                            " must have the query's shape " +
                            detail::shape_string(q.n, q.l, q.h, q.d));
  }
  const auto [scale, threads, rule] = detail::check_cache_options(where, options, q.h, q.d);
  const std::size_t out_bytes = detail::extent_bytes(o);
  for (const auto& in : {q, plan.keys, plan.values}) {
    if (detail::overlaps(o.data, out_bytes, in.data, detail::extent_bytes(in))) {
      detail::fail(where,
                   "out overlaps an input (query, keys or values): in-place attention is not "
                   "supported");
    }
  }
  detail::check_apart(where, {o.data, out_bytes, "out"},
                      detail::option_inputs(Mask{}, options, q.n, 0));
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  detail::reserve_append(c, plan);
  try {
    detail::run_cached_attention(table, c, plan, q, o, scale, threads, rule);
  } catch (...) {
    detail::undo_append(c, plan.undo);
    throw;
  }
}

}  // namespace simdattn
