// The attention core's training forward and backward pass: validation, then the backward
// driver (statistics, tasks, threads, scratch) over the kernels of the active ISA.
#include "driver/attention_backward.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "isa/registry.hpp"
#include "kernels/attention/backward_args.hpp"
#include "kernels/blocking.hpp"
#include "kernels/kernel_table.hpp"
#include "mask_rule.hpp"
#include "reference/backward.hpp"
#include "simdattn/training.hpp"
#include "validate.hpp"
#include "views.hpp"

namespace simdattn {
namespace detail {
namespace {

// Row length of the tasks' packed Q, dOut and dQ copies: head_dim rounded up to every ISA's
// vector width.
constexpr std::size_t kRowMultiple = 16;

std::size_t round_up(std::size_t x, std::size_t m) {
  return (x + m - 1) / m * m;
}

// Copies rows [0, l) of one head (d floats each, `stride` apart) into a dense, zero-padded
// [l][dp] buffer. The kernel reads Q and dOut rows many times (once per key block): in place,
// rows E floats apart (2 KiB at E = 512) fall into few L1 sets and evict each other; packed,
// a block of 48 rows is 12 KiB of consecutive lines. s2048, 2 threads, one after the other on
// a machine loaded by other work (load average 6): 444 ms in place, 312 ms packed.
void pack_rows(const float* src, std::size_t stride, std::size_t l, std::size_t d, std::size_t dp,
               float* dst) {
  for (std::size_t i = 0; i < l; ++i) {
    std::copy(src + i * stride, src + i * stride + d, dst + i * dp);
    std::fill(dst + i * dp + d, dst + (i + 1) * dp, 0.0f);
  }
}

}  // namespace

void check_backward_options(const char* where, const Options& options) {
  const char* option = options.softcap         ? "options.softcap"
                       : options.bias.data     ? "options.bias"
                       : options.alibi.enabled ? "options.alibi"
                       : options.sinks.data    ? "options.sinks"
                       : options.weights.data  ? "options.weights"
                                               : nullptr;
  if (option != nullptr) {
    fail(where, std::string(option) +
                    " is not supported by the backward pass (masks, causal, window, "
                    "key_padding and grouped K/V heads are)");
  }
}

void run_attention_backward(const kernels::KernelTable* table, const BackwardProblem& p,
                            int threads) {
  if (table == nullptr) {
    reference::attention_backward<float>(p.q, p.k, p.v, p.d_out, p.d_q, p.d_k, p.d_v, p.rule,
                                         p.scale, p.policy);
    return;
  }
  const std::size_t n = p.q.n, hq = p.q.h, hkv = p.k.h, group = hq / hkv;
  const std::size_t lq = p.q.l, lk = p.k.l, d = p.q.d, dp = round_up(d, kRowMultiple);
  if (static_cast<double>(n) * hq * lq * lk * d < kernels::kAttentionSerialWork) threads = 1;

  const std::size_t pairs = n * hkv;
  const std::size_t key_blocks = (lk + kernels::kKeyBlock - 1) / kernels::kKeyBlock;
  const std::size_t chunks =
      std::min(key_blocks, (kernels::kBackwardMinTasks + pairs - 1) / pairs);  // 1: pairs >= min

  // The calling thread's buffer, shared by the tasks: per-row statistics, the fully masked
  // rows' share of dV, and with chunks, one dQ accumulator per task.
  const std::size_t rows = n * hq * lq;
  const std::size_t head_rows = group * lq * dp;  // one task's packed rows of Q, dOut or dQ
  const std::size_t shared_floats =
      2 * round_up(rows, 16) + pairs * dp + (chunks > 1 ? pairs * chunks * head_rows : 0);
  float* shared = thread_scratch(ScratchSlot::backward, shared_floats);
  float* lse = shared;
  float* delta = lse + round_up(rows, 16);
  float* dv_extra = delta + round_up(rows, 16);
  float* dq_partial = dv_extra + pairs * dp;

  // Statistics, per (batch, key/value head) so that the extra dV of its fully masked rows sums
  // over the group's heads in order: lse (+inf where no key is visible: P = 0 there) and
  // delta = rowsum(dOut * out).
  std::vector<char> has_extra(pairs, 0);
  parallel_tasks(pairs, threads, /*dynamic=*/false, [&](std::size_t t) {
    const std::size_t b = t / hkv, g = t % hkv;
    float* extra = dv_extra + t * dp;
    std::fill(extra, extra + dp, 0.0f);
    const float w = 1.0f / static_cast<float>(lk);
    std::vector<kernels::KeyRule> rules(group);
    for (std::size_t j = 0; j < group; ++j) rules[j] = p.rule.for_head(b, g * group + j);
    for (std::size_t j = 0; j < group; ++j) {
      const std::size_t h = g * group + j;
      for (std::size_t i = 0; i < lq; ++i) {
        const std::size_t r = (b * hq + h) * lq + i;
        const float* o = p.out.at(b, i, h);
        const float* go = p.d_out.at(b, i, h);
        float dot = 0.0f;
        for (std::size_t dd = 0; dd < d; ++dd) dot += go[dd] * o[dd];
        delta[r] = dot;
        if (kernels::has_visible_key(rules[j], i)) {
          lse[r] = p.lse[r];
          continue;
        }
        lse[r] = std::numeric_limits<float>::infinity();
        if (p.policy == MaskedRows::uniform) {
          for (std::size_t dd = 0; dd < d; ++dd) extra[dd] += w * go[dd];
          has_extra[t] = 1;
        }
      }
    }
  });
  const bool any_extra = std::find(has_extra.begin(), has_extra.end(), 1) != has_extra.end();

  const std::size_t kernel_floats = round_up(kernels::backward_scratch_floats(d), 16);
  const std::size_t scratch_floats = kernel_floats + 3 * head_rows;
  parallel_tasks(pairs * chunks, threads, /*dynamic=*/true, [&](std::size_t t) {
    const std::size_t pair = t / chunks, c = t % chunks;
    const std::size_t b = pair / hkv, g = pair % hkv, h0 = g * group;
    float* scratch = thread_scratch(ScratchSlot::kernel, scratch_floats);
    float* qp = scratch + kernel_floats;
    float* gp = qp + head_rows;
    float* dq = chunks > 1 ? dq_partial + t * head_rows : gp + head_rows;
    for (std::size_t j = 0; j < group; ++j) {
      pack_rows(p.q.at(b, 0, h0 + j), p.q.row_stride, lq, d, dp, qp + j * lq * dp);
      pack_rows(p.d_out.at(b, 0, h0 + j), p.d_out.row_stride, lq, d, dp, gp + j * lq * dp);
    }
    std::fill(dq, dq + head_rows, 0.0f);
    kernels::BackwardArgs a;
    a.scratch = scratch;
    a.q = qp;
    a.d_out = gp;
    a.d_q = dq;
    a.q_stride = a.d_out_stride = a.d_q_stride = dp;
    a.q_head_stride = a.d_out_head_stride = a.d_q_head_stride = lq * dp;
    a.lse = lse + (b * hq + h0) * lq;
    a.delta = delta + (b * hq + h0) * lq;
    a.k = p.k.at(b, 0, g);
    a.k_stride = p.k.row_stride;
    a.v = p.v.at(b, 0, g);
    a.v_stride = p.v.row_stride;
    a.d_k = p.d_k.at(b, 0, g);
    a.d_k_stride = p.d_k.row_stride;
    a.d_v = p.d_v.at(b, 0, g);
    a.d_v_stride = p.d_v.row_stride;
    a.d_v_extra = any_extra ? dv_extra + pair * dp : nullptr;
    a.lq = lq;
    a.lk = lk;
    a.d = d;
    a.group = group;
    a.rule = p.rule.for_head(b, h0);
    a.mask_head_stride = p.rule.mask_head_stride();
    a.scale = p.scale;
    const std::size_t block_begin = c * key_blocks / chunks;
    const std::size_t block_end = (c + 1) * key_blocks / chunks;
    for (std::size_t kb = block_begin; kb < block_end; ++kb) {
      a.key_begin = kb * kernels::kKeyBlock;
      a.key_end = std::min(lk, a.key_begin + kernels::kKeyBlock);
      table->attention_backward(a);
    }
    if (chunks > 1) return;
    for (std::size_t j = 0; j < group; ++j) {
      for (std::size_t i = 0; i < lq; ++i) {
        const float* src = dq + (j * lq + i) * dp;
        std::copy(src, src + d, p.d_q.at(b, i, h0 + j));
      }
    }
  });
  if (chunks == 1) return;

  // dQ from the chunks' accumulators, in chunk order.
  parallel_tasks(n * hq, threads, /*dynamic=*/false, [&](std::size_t t) {
    const std::size_t b = t / hq, h = t % hq, g = h / group, j = h % group;
    for (std::size_t i = 0; i < lq; ++i) {
      float* out = p.d_q.at(b, i, h);
      for (std::size_t c = 0; c < chunks; ++c) {
        const float* src =
            dq_partial + ((b * hkv + g) * chunks + c) * head_rows + (j * lq + i) * dp;
        if (c == 0) {
          std::copy(src, src + d, out);
        } else {
          for (std::size_t dd = 0; dd < d; ++dd) out[dd] += src[dd];
        }
      }
    }
  });
}

}  // namespace detail

namespace {

// Checks that `x` has the shape of `ref` (query: lengths "Lq", or keys: "Lk").
template <class T>
void same_shape(const char* where, const char* name, const detail::Heads<T>& x,
                const char* ref_name, const detail::Heads<const float>& ref, const char* lengths) {
  detail::check_same(where, "batch sizes N", ref.n, x.n, ref_name, name);
  detail::check_same(where, lengths, ref.l, x.l, ref_name, name);
  detail::check_same(where, "heads H", ref.h, x.h, ref_name, name);
  detail::check_same(where, "head_dim D", ref.d, x.d, ref_name, name);
}

}  // namespace

void scaled_dot_product_attention_backward(const ConstHeadsView& query, const ConstHeadsView& keys,
                                           const ConstHeadsView& values, const ConstHeadsView& out,
                                           const ConstHeadsView& d_out, const ConstLseView& lse,
                                           const HeadsView<float>& d_query,
                                           const HeadsView<float>& d_keys,
                                           const HeadsView<float>& d_values, const Mask& mask,
                                           const Options& options) {
  const char* where = "scaled_dot_product_attention_backward";
  using detail::extent_bytes;
  using detail::resolve_heads;
  const auto q = resolve_heads(where, "query", query);
  const auto k = resolve_heads(where, "keys", keys);
  const auto v = resolve_heads(where, "values", values);
  const auto o = resolve_heads(where, "out", out);
  const auto go = resolve_heads(where, "d_out", d_out);
  const auto gq = resolve_heads(where, "d_query", d_query);
  const auto gk = resolve_heads(where, "d_keys", d_keys);
  const auto gv = resolve_heads(where, "d_values", d_values);
  detail::check_same(where, "batch sizes N", q.n, k.n, "query", "keys");
  detail::check_same(where, "head_dim D", q.d, k.d, "query", "keys");
  if (q.h % k.h != 0) {
    detail::fail(
        where, "query heads H = " + std::to_string(q.h) +
                   " is not a multiple of the keys' and values' heads H = " + std::to_string(k.h) +
                   " (grouped-query attention needs H_q % H_kv == 0)");
  }
  same_shape(where, "values", v, "keys", k, "key lengths Lk");
  same_shape(where, "out", o, "query", q, "query lengths Lq");
  same_shape(where, "d_out", go, "query", q, "query lengths Lq");
  same_shape(where, "d_query", gq, "query", q, "query lengths Lq");
  same_shape(where, "d_keys", gk, "keys", k, "key lengths Lk");
  same_shape(where, "d_values", gv, "keys", k, "key lengths Lk");
  detail::check_lse(where, lse.data, lse.n, lse.h, lse.l, q);
  detail::check_backward_options(where, options);
  detail::MaskRule rule = detail::resolve_rule(where, mask, options, q.n, q.h, q.l, k.l);
  const float scale = detail::resolve_scale(where, options, q.d);
  const int threads = detail::resolve_threads(where, options);
  // Gradients are written: apart from everything read and from each other.
  std::vector<detail::ByteRange> read = detail::option_inputs(mask, options, q.n, k.l);
  read.push_back({q.data, extent_bytes(q), "query"});
  read.push_back({k.data, extent_bytes(k), "keys"});
  read.push_back({v.data, extent_bytes(v), "values"});
  read.push_back({o.data, extent_bytes(o), "out"});
  read.push_back({go.data, extent_bytes(go), "d_out"});
  read.push_back({lse.data, q.n * q.h * q.l * sizeof(float), "lse"});
  const detail::ByteRange written[] = {{gq.data, extent_bytes(gq), "d_query"},
                                       {gk.data, extent_bytes(gk), "d_keys"},
                                       {gv.data, extent_bytes(gv), "d_values"}};
  for (const detail::ByteRange& w : written) {
    detail::check_apart(where, w, read);
    read.push_back(w);  // the later gradients must not overlap this one either
  }
  const kernels::KernelTable* table = detail::kernels_for(where, options);
  detail::BackwardProblem p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = o;
  p.d_out = go;
  p.lse = lse.data;
  p.d_q = gq;
  p.d_k = gk;
  p.d_v = gv;
  p.rule = std::move(rule);
  p.scale = scale;
  p.policy = options.masked_rows;
  detail::run_attention_backward(table, p, threads);
}

}  // namespace simdattn
