// scaled_dot_product_attention(): validation, then the attention driver (threads, scratch,
// path choice) over the kernels of the active ISA.
#include "simdattn/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "driver.hpp"
#include "fp_env.hpp"
#include "kernels/kernel_table.hpp"
#include "simdattn/dispatch.hpp"
#include "validate.hpp"

namespace simdattn {
namespace detail {
namespace {

// Below this many multiply-adds a call runs on the calling thread: starting the team and its
// barrier costs more than the work (the tutorial's [1, 2, 256] case).
constexpr double kSerialWorkLimit = 1 << 18;
// Granularity of task rows: every ISA's query group divides it, so no group runs half empty.
constexpr std::size_t kTaskRowQuantum = kernels::kMaxQueryGroup;

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

struct ScratchSlot {
  std::unique_ptr<float, AlignedFree> data;
  std::size_t floats = 0;
};

// The uniform average of head h's values: the answer for a fully masked row under
// MaskedRows::uniform, summed as the reference does (p * v in key order, p = 1 / Lk).
void uniform_average(const reference::Heads<const float>& v, std::size_t b, std::size_t h,
                     float* out) {
  const float p = 1.0f / static_cast<float>(v.l);
  std::fill(out, out + v.d, 0.0f);
  for (std::size_t key = 0; key < v.l; ++key) {
    const float* vk = v.at(b, key, h);
    for (std::size_t dd = 0; dd < v.d; ++dd) out[dd] += p * vk[dd];
  }
}

}  // namespace

float* thread_scratch(int slot, std::size_t floats) {
  thread_local ScratchSlot slots[4];
  ScratchSlot& s = slots[slot];
  if (s.floats < floats) {
    if (floats > (std::numeric_limits<std::size_t>::max() - 63) / sizeof(float)) {
      throw std::bad_alloc();  // the rounding below would wrap around to a tiny buffer
    }
    const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
    s.data.reset(p);
    s.floats = floats;
  }
  return s.data.get();
}

namespace {

// Decoding (Lq <= kDecodeMaxLq): tasks are (batch, slice of keys) over every head, so threads
// share the key range even when N x H is small; slices depend on Lk only and are merged in
// slice order with log-sum-exp weights, so results do not depend on the thread count.
void run_decode(const kernels::KernelTable& table, const reference::Heads<const float>& q,
                const reference::Heads<const float>& k, const reference::Heads<const float>& v,
                const reference::Heads<float>& out, const MaskRule& rule, float scale,
                MaskedRows policy, int threads) {
  const std::size_t n = q.n, heads = q.h, d = q.d, lq = q.l, lk = k.l;
  const std::size_t slices = (lk + kernels::kDecodeSlice - 1) / kernels::kDecodeSlice;
  const std::size_t rec = kernels::partial_record_floats(d);
  const std::size_t per_slice = lq * heads * rec;
  const std::size_t tasks = n * slices;
  float* partial = thread_scratch(3, tasks * per_slice);
  if (static_cast<double>(n) * heads * lq * lk * d < kSerialWorkLimit) threads = 1;
  const std::size_t scratch_floats = kernels::decode_scratch_floats(heads);
  const Mask& mask = rule.mask;
  parallel_tasks(tasks, threads, /*dynamic=*/true, [&](std::size_t t) {
    const std::size_t b = t / slices, slice = t % slices;
    kernels::AttentionArgs a;
    a.q = q.at(b, 0, 0);
    a.q_stride = q.row_stride;
    a.k = k.at(b, 0, 0);
    a.k_stride = k.row_stride;
    a.v = v.at(b, 0, 0);
    a.v_stride = v.row_stride;
    a.lq = lq;
    a.lk = lk;
    a.d = d;
    a.row_begin = 0;
    a.row_end = lq;
    a.mask = rule.mask_row(b, 0, 0);
    a.mask_row_stride = mask.data != nullptr && mask.lq != 1 ? mask.lk : 0;
    a.mask_head_stride = mask.data != nullptr && mask.h != 1 ? mask.lq * mask.lk : 0;
    a.mask_lk = mask.lk;
    a.causal = rule.causal;
    a.scale = scale;
    a.masked_rows = policy;
    a.heads = heads;
    a.key_begin = slice * kernels::kDecodeSlice;
    a.key_end = std::min(lk, a.key_begin + kernels::kDecodeSlice);
    a.partial = partial + t * per_slice;
    a.scratch = thread_scratch(0, scratch_floats);
    table.decode(a);
  });
  FlushDenormals ftz;  // the merge and the uniform average run like the kernels do
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t i = 0; i < lq; ++i) {
      for (std::size_t h = 0; h < heads; ++h) {
        auto record = [&](std::size_t s) {
          return partial + (b * slices + s) * per_slice + (i * heads + h) * rec;
        };
        float* o = out.at(b, i, h);
        float m = -INFINITY;
        for (std::size_t s = 0; s < slices; ++s) {
          if (!(record(s)[0] <= m)) m = record(s)[0];  // a NaN max wins: it must propagate
        }
        // Decided by the mask rule, not by m: a visible score of -inf (from infinite inputs)
        // gives NaN as in the reference (0 / 0 below), not the fully-masked answer.
        if (!rule.has_visible_key(b, h, i)) {
          if (policy == MaskedRows::zeros) {
            std::fill(o, o + d, 0.0f);
          } else {
            uniform_average(v, b, h, o);
          }
          continue;
        }
        float l = 0.0f;
        std::fill(o, o + d, 0.0f);
        for (std::size_t s = 0; s < slices; ++s) {
          const float* r = record(s);
          if (r[0] == -INFINITY && !std::isnan(r[1])) continue;  // nothing finite in this slice
          const float w = std::exp(r[0] - m);
          l += r[1] * w;
          for (std::size_t dd = 0; dd < d; ++dd) o[dd] += r[16 + dd] * w;
        }
        const float inv = 1.0f / l;
        for (std::size_t dd = 0; dd < d; ++dd) o[dd] *= inv;
      }
    }
  }
}

}  // namespace

void run_attention(const reference::Heads<const float>& q, const reference::Heads<const float>& k,
                   const reference::Heads<const float>& v, const reference::Heads<float>& out,
                   const MaskRule& rule, float scale, MaskedRows policy, Path path, int threads) {
  const kernels::KernelTable* table =
      path == Path::optimized ? kernels::kernel_table(active_isa()) : nullptr;
  if (table == nullptr || table->attention == nullptr) {
    reference::attention<float>(q, k, v, out, rule, scale, policy);
    return;
  }
  if (q.l <= kernels::kDecodeMaxLq && table->decode != nullptr) {
    run_decode(*table, q, k, v, out, rule, scale, policy, threads);
    return;
  }
  const std::size_t heads = q.n * q.h;
  const double work = static_cast<double>(heads) * q.l * k.l * q.d;
  if (work < kSerialWorkLimit) threads = 1;
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
  const std::size_t scratch_floats = kernels::attention_scratch_floats(q.d);

  auto run_task = [&](std::size_t t) {
    const std::size_t bh = t / row_tasks;
    const std::size_t b = bh / q.h;
    const std::size_t h = bh % q.h;
    kernels::AttentionArgs a;
    a.q = q.at(b, 0, h);
    a.q_stride = q.row_stride;
    a.k = k.at(b, 0, h);
    a.k_stride = k.row_stride;
    a.v = v.at(b, 0, h);
    a.v_stride = v.row_stride;
    a.out = out.at(b, 0, h);
    a.out_stride = out.row_stride;
    a.lq = q.l;
    a.lk = k.l;
    a.d = q.d;
    a.row_begin = (t % row_tasks) * rows;
    a.row_end = std::min(q.l, a.row_begin + rows);
    a.mask = rule.mask_row(b, h, 0);
    a.mask_row_stride = rule.mask.data != nullptr && rule.mask.lq != 1 ? rule.mask.lk : 0;
    a.mask_lk = rule.mask.lk;
    a.causal = rule.causal;
    a.scale = scale;
    a.masked_rows = policy;
    a.scratch = thread_scratch(0, scratch_floats);
    table->attention(a);
  };

  // Each row's arithmetic is independent of the task it lands in, so results do not depend on
  // the thread count or the schedule; dynamic scheduling evens out causal masks.
  parallel_tasks(tasks, threads, /*dynamic=*/true, run_task);
}

}  // namespace detail

namespace {

reference::Heads<const float> resolve(const char* name, const ConstHeadsView& view) {
  const char* where = "scaled_dot_product_attention";
  if (view.data == nullptr) detail::fail(where, std::string(name) + ".data is null");
  if (view.n == 0 || view.l == 0 || view.h == 0 || view.d == 0) {
    detail::fail(where, std::string(name) + " has a zero size: [N, L, H, D] = " +
                            detail::shape_string(view.n, view.l, view.h, view.d));
  }
  const std::size_t hd = detail::checked_mul(where, name, view.h, view.d);
  const std::size_t row = view.row_stride == 0 ? hd : view.row_stride;
  if (row < hd) {
    detail::fail(where, std::string(name) + ".row_stride (" + std::to_string(row) +
                            ") is smaller than H * D (" + std::to_string(hd) + ")");
  }
  const std::size_t batch =
      view.batch_stride == 0 ? detail::checked_mul(where, name, view.l, row) : view.batch_stride;
  if (view.n > 1 && batch < (view.l - 1) * row + hd) {
    detail::fail(where, std::string(name) + ".batch_stride (" + std::to_string(batch) +
                            ") makes batches overlap (rows need " +
                            std::to_string((view.l - 1) * row + hd) + ")");
  }
  // The last element's offset must be representable.
  detail::checked_mul(where, name, view.n - 1, batch, 1);
  detail::checked_mul(where, name, view.l, row, 1);
  return {view.data, view.n, view.l, view.h, view.d, row, batch};
}

std::size_t extent_bytes(const reference::Heads<const float>& x) {
  return ((x.n - 1) * x.batch_stride + (x.l - 1) * x.row_stride + x.h * x.d) * sizeof(float);
}

}  // namespace

void scaled_dot_product_attention(const ConstHeadsView& query, const ConstHeadsView& keys,
                                  const ConstHeadsView& values, const HeadsView<float>& out,
                                  const Mask& mask, const Options& options) {
  const char* where = "scaled_dot_product_attention";
  const auto q = resolve("query", query);
  const auto k = resolve("keys", keys);
  const auto v = resolve("values", values);
  const auto o = resolve("out", ConstHeadsView{out.data, out.n, out.l, out.h, out.d, out.row_stride,
                                               out.batch_stride});
  auto same = [&](const char* what, std::size_t a, std::size_t b, const char* an, const char* bn) {
    if (a != b) {
      detail::fail(where, std::string(what) + " differ: " + an + " has " + std::to_string(a) +
                              ", " + bn + " has " + std::to_string(b));
    }
  };
  same("batch sizes N", q.n, k.n, "query", "keys");
  same("batch sizes N", q.n, v.n, "query", "values");
  same("batch sizes N", q.n, o.n, "query", "out");
  same("heads H", q.h, k.h, "query", "keys");
  same("heads H", q.h, v.h, "query", "values");
  same("heads H", q.h, o.h, "query", "out");
  same("head_dim D", q.d, k.d, "query", "keys");
  same("head_dim D", q.d, v.d, "query", "values");
  same("head_dim D", q.d, o.d, "query", "out");
  same("key lengths Lk", k.l, v.l, "keys", "values");
  same("query lengths Lq", q.l, o.l, "query", "out");
  detail::check_mask(where, mask, q.n, q.h, q.l, k.l);
  const float scale = detail::resolve_scale(where, options, q.d);
  const int threads = detail::resolve_threads(where, options);
  const std::size_t out_bytes = extent_bytes(o);
  for (const auto* in : {&q, &k, &v}) {
    if (detail::overlaps(o.data, out_bytes, in->data, extent_bytes(*in))) {
      detail::fail(where,
                   "out overlaps an input (query, keys or values): in-place attention "
                   "is not supported");
    }
  }
  if (mask.data != nullptr &&
      detail::overlaps(o.data, out_bytes, mask.data, mask.n * mask.h * mask.lq * mask.lk)) {
    detail::fail(where, "out overlaps the mask");
  }
  const reference::Heads<float> out_heads{out.data, o.n,          o.l,           o.h,
                                          o.d,      o.row_stride, o.batch_stride};
  const detail::MaskRule rule{mask, options.causal, q.l, k.l};
  detail::run_attention(q, k, v, out_heads, rule, scale, options.masked_rows, options.path,
                        threads);
}

}  // namespace simdattn
