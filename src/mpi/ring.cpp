// The ring schedule. Step t (0 .. P-1): rank r holds the K/V slice of rank (r - t) mod P, sends
// it on to rank r + 1 and receives the next one from rank r - 1 into the other buffer while it
// computes its queries against the slice it holds (double buffering). Each computed block gives
// normalised outputs and log-sum-exps (run_attention), merged into the rank's running result
// row by row with merge_partials, in step order: for a fixed P the result does not depend on the
// thread count. Rows that see no key of any rank get the masked-row policy's answer at the end.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "driver/attention.hpp"
#include "driver/parallel.hpp"
#include "driver/scratch.hpp"
#include "kernels/attention/merge.hpp"
#include "kernels/blocking.hpp"
#include "mpi/plan.hpp"

namespace simdattn::detail::mpi {
namespace {

// Query rows per kernel call. Between calls the rank polls its transfers (MPI_Testall), which
// lets MPI's progress engine start a large message's rendezvous early in the step. The driver's
// task size: a block of these rows is one task per head, as in one process, so blocking costs
// no extra packing of K and V. Against a 2048-key slice at E = 1024 a block is 2 GFLOP, about
// 10 ms on one core of the reference machine: several polls per step.
constexpr std::size_t kPollRows = kernels::kMaxTaskRows;

// Merges and the final copy touch each output float a few times: below this many floats they
// run on the calling thread (waking the OpenMP team costs about a microsecond, 16 Ki floats of
// merging some 10 us).
constexpr std::size_t kSerialFloats = std::size_t{1} << 14;

int threads_for(std::size_t floats, int threads) {
  return floats < kSerialFloats ? 1 : threads;
}

std::size_t round_up(std::size_t floats) {
  return (floats + 15) / 16 * 16;
}  // 64-byte starts

// The rank's working memory, carved from one reused scratch block.
struct RingMemory {
  float* slice[2];     // K then V of one rank's slice, [N, Lk_s, H_kv, D] each
  float* acc;          // [N, L_r, 2, H, D]: running result (0) and this block's part (1)
  float* lse_acc;      // [N, H, L_r]: running log-sum-exp
  float* lse_block;    // [N, H, rows]: this block's log-sum-exps
  std::uint8_t* seen;  // [N, H, L_r]: 1 once the row saw a key
  float* mean;         // [N, H_kv, 2, D]: uniform answers: running (0), this slice's (1)
};

RingMemory carve(const Plan& plan, bool need_mean) {
  const std::size_t n = plan.n, hq = plan.hq, hkv = plan.hkv, d = plan.d;
  const std::size_t lq = plan.lq[plan.rank];
  const std::size_t lk_max = *std::max_element(plan.lk.begin(), plan.lk.end());
  const std::size_t slice = round_up(2 * n * lk_max * hkv * d);
  const std::size_t acc = round_up(n * lq * 2 * hq * d);
  const std::size_t rows = round_up(n * hq * lq);
  const std::size_t seen = round_up((n * hq * lq + 3) / 4);
  const std::size_t mean = need_mean ? round_up(n * hkv * 2 * d) : 0;
  float* base =
      thread_scratch(ScratchSlot::sequence_parallel, 2 * slice + acc + 2 * rows + seen + mean);
  RingMemory m;
  m.slice[0] = base;
  m.slice[1] = base + slice;
  m.acc = base + 2 * slice;
  m.lse_acc = m.acc + acc;
  m.lse_block = m.lse_acc + rows;
  m.seen = reinterpret_cast<std::uint8_t*>(m.lse_block + rows);
  m.mean = m.lse_block + rows + seen;
  return m;
}

// Copies the rank's own K and V (caller's strides) into a dense slice buffer.
void pack_own_slice(const LocalCall& call, float* slice) {
  const auto& k = call.k;
  const std::size_t row = k.h * k.d;
  float* v_out = slice + k.n * k.l * row;
  for (std::size_t b = 0; b < k.n; ++b) {
    for (std::size_t i = 0; i < k.l; ++i) {
      std::memcpy(slice + (b * k.l + i) * row, k.at(b, i, 0), row * sizeof(float));
      std::memcpy(v_out + (b * k.l + i) * row, call.v.at(b, i, 0), row * sizeof(float));
    }
  }
}

class Ring {
 public:
  Ring(const Plan& plan, const LocalCall& call)
      : plan_(plan),
        call_(call),
        lq_(plan.lq[plan.rank]),
        group_(plan.hq / plan.hkv),
        need_mean_(call.policy == MaskedRows::uniform &&
                   (call.mask.data != nullptr || plan.offset < 0)),
        m_(carve(plan, need_mean_)),
        blocks_(query_blocks(plan.q_segments[plan.rank])) {}

  void run(simdattn::mpi::Timings* timings);

 private:
  // Rows [first_row, first_row + rows) of the rank, global positions from global_begin; started
  // once a part was stored for them.
  struct QueryBlock {
    std::size_t first_row, global_begin, rows;
    bool started;
  };
  static std::vector<QueryBlock> query_blocks(const std::vector<Segment>& segments);

  void compute_slice(int source, const float* slice, bool& computed);
  void compute_block(QueryBlock& qb, const Segment& ks, const Heads<const float>& k,
                     const Heads<const float>& v);
  void store_first(const MaskRule& rule, const QueryBlock& qb, const Heads<const float>& v);
  void merge_block(const MaskRule& rule, const QueryBlock& qb, const Heads<const float>& v);
  void add_uniform_answers(int source, const Heads<const float>& v);
  void finish();
  void poll();

  // Row `row` of batch b, query head h: its running result (this block's part follows at
  // + H * D), and its index in lse_acc and seen.
  float* acc(std::size_t b, std::size_t row, std::size_t h) const {
    return m_.acc + ((b * lq_ + row) * 2 * plan_.hq + h) * plan_.d;
  }
  std::size_t row_at(std::size_t b, std::size_t h, std::size_t row) const {
    return (b * plan_.hq + h) * lq_ + row;
  }

  Heads<const float> slice_heads(const float* data, std::size_t lk) const {
    const std::size_t row = plan_.hkv * plan_.d;
    return {data, plan_.n, lk, plan_.hkv, plan_.d, row, lk * row};
  }

  const Plan& plan_;
  const LocalCall& call_;
  const std::size_t lq_;
  const std::size_t group_;
  const bool need_mean_;
  RingMemory m_;
  std::vector<QueryBlock> blocks_;
  std::size_t mean_keys_ = 0;  // keys the running uniform answer covers
  std::vector<MPI_Request> requests_;
};

void Ring::run(simdattn::mpi::Timings* timings) {
  const int p = plan_.ranks, r = plan_.rank;
  const int right = (r + 1) % p, left = (r + p - 1) % p;
  const std::size_t kv_row = plan_.n * plan_.hkv * plan_.d;  // floats per key position
  // Rows of blocks that no step computes (the causal future of every key) see nothing.
  std::fill(m_.seen, m_.seen + plan_.n * plan_.hq * lq_, std::uint8_t{0});
  pack_own_slice(call_, m_.slice[0]);
  for (int t = 0; t < p; ++t) {
    const int source = (r - t + p) % p;
    const float* slice = m_.slice[t % 2];
    requests_.clear();
    if (t + 1 < p) {
      const int next = (r - t - 1 + 2 * p) % p;
      post_recv(m_.slice[(t + 1) % 2], 2 * plan_.lk[next] * kv_row, left, plan_.comm, requests_);
      post_send(slice, 2 * plan_.lk[source] * kv_row, right, plan_.comm, requests_);
      if (timings != nullptr) timings->bytes_sent += 2 * plan_.lk[source] * kv_row * sizeof(float);
      poll();
    }
    const double t0 = MPI_Wtime();
    bool computed = false;
    compute_slice(source, slice, computed);
    const double t1 = MPI_Wtime();
    MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    const double t2 = MPI_Wtime();
    if (timings != nullptr) {
      timings->step_compute_seconds.push_back(t1 - t0);
      timings->step_wait_seconds.push_back(t2 - t1);
      timings->step_computed.push_back(computed);
      timings->compute_seconds += t1 - t0;
      timings->wait_seconds += t2 - t1;
    }
  }
  const double t0 = MPI_Wtime();
  finish();
  if (timings != nullptr) {
    timings->compute_seconds += MPI_Wtime() - t0;
    timings->steps = p;
  }
}

void Ring::poll() {
  if (requests_.empty()) return;
  int done = 0;
  MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
}

// Each segment in even blocks of at most kPollRows rows: none is left so short that it takes
// the decode path, so a row's arithmetic does not depend on where the blocks fall.
std::vector<Ring::QueryBlock> Ring::query_blocks(const std::vector<Segment>& segments) {
  std::vector<QueryBlock> out;
  for (const Segment& qs : segments) {
    const std::size_t blocks = (qs.length + kPollRows - 1) / kPollRows;
    const std::size_t per_block = (qs.length + blocks - 1) / blocks;
    for (std::size_t row0 = 0; row0 < qs.length; row0 += per_block) {
      out.push_back({qs.local_begin + row0, qs.global_begin + row0,
                     std::min(per_block, qs.length - row0), false});
    }
  }
  return out;
}

// The rank's queries against one slice: each query block against each key segment, in a fixed
// order, skipping the pairs that the causal rule hides entirely.
void Ring::compute_slice(int source, const float* slice, bool& computed) {
  const std::size_t lk = plan_.lk[source];
  const Heads<const float> k = slice_heads(slice, lk);
  const Heads<const float> v = slice_heads(slice + plan_.n * lk * plan_.hkv * plan_.d, lk);
  if (need_mean_) add_uniform_answers(source, v);
  for (QueryBlock& qb : blocks_) {
    for (const Segment& ks : plan_.k_segments[source]) {
      // Causal: the block's last row sees the most; if it sees no key of the segment, none
      // does (key k visible to global query q iff k <= q + offset).
      const auto last_query = static_cast<std::ptrdiff_t>(qb.global_begin + qb.rows - 1);
      if (call_.causal != Causal::none &&
          last_query + plan_.offset < static_cast<std::ptrdiff_t>(ks.global_begin)) {
        continue;
      }
      compute_block(qb, ks, k, v);
      computed = true;
      poll();
    }
  }
}

// One query block against one key segment. The block's first part goes straight into the
// running result (a merge of one part is that part, exactly); later ones are merged into it.
void Ring::compute_block(QueryBlock& qb, const Segment& ks, const Heads<const float>& k,
                         const Heads<const float>& v) {
  const std::size_t hd = plan_.hq * plan_.d;
  const std::size_t part = qb.started ? 1 : 0;
  AttentionProblem p;
  p.q = call_.q;
  p.q.data = call_.q.at(0, qb.first_row, 0);
  p.q.l = qb.rows;
  p.k = k;
  p.k.data = k.at(0, ks.local_begin, 0);
  p.k.l = ks.length;
  p.v = v;
  p.v.data = v.at(0, ks.local_begin, 0);
  p.v.l = ks.length;
  p.out = {acc(0, qb.first_row, 0) + part * hd,
           plan_.n,
           qb.rows,
           plan_.hq,
           plan_.d,
           2 * hd,
           lq_ * 2 * hd};
  p.rule = MaskRule{call_.mask, call_.causal, qb.rows, ks.length};
  p.rule.mask_row0 = qb.first_row;
  p.rule.mask_col0 = ks.global_begin;
  p.rule.causal_offset = static_cast<std::ptrdiff_t>(qb.global_begin) -
                         static_cast<std::ptrdiff_t>(ks.global_begin) + plan_.offset;
  p.scale = call_.scale;
  p.policy = MaskedRows::zeros;  // a row the block hides keeps lse = -inf: it weighs nothing
  p.lse = m_.lse_block;
  run_attention(call_.table, p, call_.threads);
  if (qb.started) {
    merge_block(p.rule, qb, p.v);
  } else {
    store_first(p.rule, qb, p.v);
    qb.started = true;
  }
}

// A row whose visible scores in a block are all -inf (an infinite key component) gets the
// part lse = -inf and output 0 / 0 from the kernel. Its keys weigh nothing, but their 0 x v must
// still reach the row as in the reference (0 x Inf = NaN): the part's output becomes that sum,
// which merge_slices adds to the others, and finish() answers NaN if every part stays -inf.
void zero_weight_sum(const kernels::KeyRule& r, std::size_t i, const Heads<const float>& v,
                     std::size_t b, std::size_t kh, float* o) {
  const std::uint8_t* mrow = kernels::mask_row(r, i);
  const float* brow = kernels::bias_row(r, i);
  std::fill(o, o + v.d, 0.0f);
  for (std::size_t key = kernels::key_begin(r, i); key < kernels::key_end(r, i); ++key) {
    if (!kernels::keeps_key(r, mrow, brow, key)) continue;
    kernels::add_zero_weighted(v.at(b, key, kh), v.d, o);
  }
}

void Ring::store_first(const MaskRule& rule, const QueryBlock& qb, const Heads<const float>& v) {
  const std::size_t hq = plan_.hq;
  for (std::size_t b = 0; b < plan_.n; ++b) {
    for (std::size_t h = 0; h < hq; ++h) {
      const kernels::KeyRule r = rule.for_head(b, h);
      const std::size_t at = row_at(b, h, qb.first_row);
      std::copy_n(m_.lse_block + (b * hq + h) * qb.rows, qb.rows, m_.lse_acc + at);
      for (std::size_t i = 0; i < qb.rows; ++i) {
        m_.seen[at + i] = kernels::has_visible_key(r, i) ? 1 : 0;
        if (m_.seen[at + i] != 0 && m_.lse_acc[at + i] == -INFINITY) {
          const std::size_t row = qb.first_row + i;
          zero_weight_sum(r, i, v, b, h / group_, acc(b, row, h));
        }
      }
    }
  }
}

// Folds a block's part into the running result of the rows that see a key of the part.
void Ring::merge_block(const MaskRule& rule, const QueryBlock& qb, const Heads<const float>& v) {
  const std::size_t hq = plan_.hq, d = plan_.d, hd = hq * d, rows = qb.rows;
  const int threads = threads_for(plan_.n * rows * hd, call_.threads);
  parallel_tasks(plan_.n * rows, threads, /*dynamic=*/false, [&](std::size_t task) {
    const std::size_t b = task / rows, i = task % rows, row = qb.first_row + i;
    float* merged = thread_scratch(ScratchSlot::kernel, d);
    for (std::size_t h = 0; h < hq; ++h) {
      const kernels::KeyRule r = rule.for_head(b, h);
      if (!kernels::has_visible_key(r, i)) continue;
      const std::size_t at = row_at(b, h, row);
      float* o = acc(b, row, h);  // the part follows at o + hd
      const float lse[2] = {m_.lse_acc[at], m_.lse_block[(b * hq + h) * rows + i]};
      if (lse[1] == -INFINITY) zero_weight_sum(r, i, v, b, h / group_, o + hd);
      if (lse[0] == -INFINITY && lse[1] == -INFINITY) {
        // Nothing weighs yet: keep the sums of 0 x v (a row not seen before holds zeros).
        kernels::add_zero_weighted(o + hd, d, o);
      } else {
        m_.lse_acc[at] = kernels::merge_slices(nullptr, lse, 1, o, hd, 2, d, merged);
        std::copy(merged, merged + d, o);
      }
      m_.seen[at] = 1;
    }
  });
}

// The uniform answer of a row that sees no key is the average of all Lk values of its K/V
// head; it is built slice by slice, weighted by key counts, in step order.
void Ring::add_uniform_answers(int source, const Heads<const float>& v) {
  const std::size_t d = plan_.d, lk = plan_.lk[source];
  for (std::size_t b = 0; b < plan_.n; ++b) {
    for (std::size_t h = 0; h < plan_.hkv; ++h) {
      float* mean = m_.mean + (b * plan_.hkv + h) * 2 * d;
      if (mean_keys_ == 0) {
        kernels::masked_row_answer(MaskedRows::uniform, v.at(b, 0, h), v.row_stride, lk, d, mean);
        continue;
      }
      kernels::masked_row_answer(MaskedRows::uniform, v.at(b, 0, h), v.row_stride, lk, d, mean + d);
      const std::size_t keys[2] = {mean_keys_, lk};
      float* merged = thread_scratch(ScratchSlot::kernel, d);
      kernels::merge_masked_answers(mean, d, keys, 2, d, merged);
      std::copy(merged, merged + d, mean);
    }
  }
  mean_keys_ += lk;
}

void Ring::finish() {
  const std::size_t hq = plan_.hq, d = plan_.d, hd = hq * d;
  const int threads = threads_for(plan_.n * lq_ * hd, call_.threads);
  parallel_tasks(plan_.n * lq_, threads, /*dynamic=*/false, [&](std::size_t task) {
    const std::size_t b = task / lq_, i = task % lq_;
    for (std::size_t h = 0; h < hq; ++h) {
      float* dst = call_.out.at(b, i, h);
      const std::size_t at = row_at(b, h, i);
      if (m_.seen[at] != 0 && m_.lse_acc[at] == -INFINITY) {
        // Every visible score -inf: 0 / 0, as the reference's row.
        std::fill(dst, dst + d, std::numeric_limits<float>::quiet_NaN());
      } else if (m_.seen[at] != 0) {
        const float* o = acc(b, i, h);
        std::copy(o, o + d, dst);
      } else if (call_.policy == MaskedRows::zeros) {
        std::fill(dst, dst + d, 0.0f);
      } else {
        const float* mean = m_.mean + (b * plan_.hkv + h / group_) * 2 * d;
        std::copy(mean, mean + d, dst);
      }
    }
  });
}

}  // namespace

void run_ring(const Plan& plan, const LocalCall& call, simdattn::mpi::Timings* timings) {
  Ring ring(plan, call);
  ring.run(timings);
}

}  // namespace simdattn::detail::mpi
