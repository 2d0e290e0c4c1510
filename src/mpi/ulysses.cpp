// The all-to-all schedule (DeepSpeed-Ulysses): rank s takes the K/V heads
// [s H_kv / P, (s + 1) H_kv / P) and the query heads that read them. One all-to-all gives every
// rank all positions of its heads, in global order; the fused kernel runs on them as in one
// process (the same rows, the same arithmetic); a second all-to-all returns each rank's rows.
#include <algorithm>
#include <cstring>

#include "driver/attention.hpp"
#include "driver/scratch.hpp"
#include "mpi/plan.hpp"

namespace simdattn::detail::mpi {
namespace {

// Exchange unit: one head's row of D floats, so that MPI's int counts reach further.
class RowType {
 public:
  explicit RowType(std::size_t d) {
    MPI_Type_contiguous(static_cast<int>(d), MPI_FLOAT, &type_);
    MPI_Type_commit(&type_);
  }
  ~RowType() { MPI_Type_free(&type_); }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Copies `rows` rows of `width` floats between strided buffers.
void copy_rows(const float* src, std::size_t src_stride, float* dst, std::size_t dst_stride,
               std::size_t rows, std::size_t width) {
  for (std::size_t i = 0; i < rows; ++i) {
    std::memcpy(dst + i * dst_stride, src + i * src_stride, width * sizeof(float));
  }
}

}  // namespace

void run_ulysses(const Plan& plan, const LocalCall& call, simdattn::mpi::Timings* timings) {
  const std::size_t p = static_cast<std::size_t>(plan.ranks),
                    r = static_cast<std::size_t>(plan.rank);
  const std::size_t n = plan.n, d = plan.d;
  const std::size_t hq = plan.hq / p, hk = plan.hkv / p;  // heads per rank
  const std::size_t lq = plan.lq[r], lk = plan.lk[r];
  const std::size_t lq_all = plan.lq_total, lk_all = plan.lk_total;
  // Block from rank s to any rank: its Q rows of hq heads, then K and V rows of hk heads.
  auto block_floats = [&](std::size_t s) {
    return n * (plan.lq[s] * hq + 2 * plan.lk[s] * hk) * d;
  };
  std::size_t received = 0;
  for (std::size_t s = 0; s < p; ++s) received += block_floats(s);
  const std::size_t sent = p * block_floats(r);
  const std::size_t q_all = n * lq_all * hq * d, kv_all = n * lk_all * hk * d;
  // The return trip sends the rank's share of the whole output and receives its own rows of
  // every head, which the first trip's buffers need not cover when slices differ in length.
  const std::size_t send_floats = std::max(sent, q_all);
  const std::size_t recv_floats = std::max(received, n * lq * plan.hq * d);
  float* send = thread_scratch(ScratchSlot::sequence_parallel,
                               send_floats + recv_floats + 2 * q_all + 2 * kv_all);
  float* recv = send + send_floats;
  float* qf = recv + recv_floats;  // [N, Lq, hq, D] in global order; then K, V, the output
  float* kf = qf + q_all;
  float* vf = kf + kv_all;
  float* of = vf + kv_all;

  const RowType row(d);
  std::vector<int> send_counts(p), send_at(p), recv_counts(p), recv_at(p);
  auto exchange = [&](const float* out_buf, float* in_buf) {
    const double t0 = MPI_Wtime();
    MPI_Alltoallv(out_buf, send_counts.data(), send_at.data(), row.get(), in_buf,
                  recv_counts.data(), recv_at.data(), row.get(), plan.comm);
    if (timings != nullptr) {
      timings->wait_seconds += MPI_Wtime() - t0;
      for (std::size_t s = 0; s < p; ++s) {
        if (s != r) timings->bytes_sent += static_cast<std::size_t>(send_counts[s]) * d * 4;
      }
    }
  };
  // Counts in rows of D floats; the agreement checked that they fit in an int.
  auto set_counts = [&](auto send_rows, auto recv_rows) {
    int at_send = 0, at_recv = 0;
    for (std::size_t s = 0; s < p; ++s) {
      send_counts[s] = static_cast<int>(send_rows(s));
      recv_counts[s] = static_cast<int>(recv_rows(s));
      send_at[s] = at_send;
      recv_at[s] = at_recv;
      at_send += send_counts[s];
      at_recv += recv_counts[s];
    }
  };

  // Out: to rank s, the heads of s.
  const std::size_t block = block_floats(r);
  for (std::size_t s = 0; s < p; ++s) {
    float* q_out = send + s * block;
    float* k_out = q_out + n * lq * hq * d;
    float* v_out = k_out + n * lk * hk * d;
    for (std::size_t b = 0; b < n; ++b) {
      copy_rows(call.q.at(b, 0, s * hq), call.q.row_stride, q_out + b * lq * hq * d, hq * d, lq,
                hq * d);
      copy_rows(call.k.at(b, 0, s * hk), call.k.row_stride, k_out + b * lk * hk * d, hk * d, lk,
                hk * d);
      copy_rows(call.v.at(b, 0, s * hk), call.v.row_stride, v_out + b * lk * hk * d, hk * d, lk,
                hk * d);
    }
  }
  set_counts([&](std::size_t) { return block / d; },
             [&](std::size_t s) { return block_floats(s) / d; });
  exchange(send, recv);
  // In: rank s's rows of my heads, placed at their global positions.
  for (std::size_t s = 0; s < p; ++s) {
    const float* q_in = recv + static_cast<std::size_t>(recv_at[s]) * d;
    const float* k_in = q_in + n * plan.lq[s] * hq * d;
    const float* v_in = k_in + n * plan.lk[s] * hk * d;
    for (std::size_t b = 0; b < n; ++b) {
      for (const Segment& g : plan.q_segments[s]) {
        std::memcpy(qf + ((b * lq_all + g.global_begin) * hq) * d,
                    q_in + ((b * plan.lq[s] + g.local_begin) * hq) * d,
                    g.length * hq * d * sizeof(float));
      }
      for (const Segment& g : plan.k_segments[s]) {
        const std::size_t to = ((b * lk_all + g.global_begin) * hk) * d;
        const std::size_t from = ((b * plan.lk[s] + g.local_begin) * hk) * d;
        std::memcpy(kf + to, k_in + from, g.length * hk * d * sizeof(float));
        std::memcpy(vf + to, v_in + from, g.length * hk * d * sizeof(float));
      }
    }
  }

  const double t0 = MPI_Wtime();
  AttentionProblem a;
  a.q = {qf, n, lq_all, hq, d, hq * d, lq_all * hq * d};
  a.k = {kf, n, lk_all, hk, d, hk * d, lk_all * hk * d};
  a.v = {vf, n, lk_all, hk, d, hk * d, lk_all * hk * d};
  a.out = {of, n, lq_all, hq, d, hq * d, lq_all * hq * d};
  a.rule = MaskRule{call.mask, call.causal, lq_all, lk_all};
  a.rule.mask_head0 = r * hq;
  a.scale = call.scale;
  a.policy = call.policy;
  run_attention(call.table, a, call.threads);
  if (timings != nullptr) timings->compute_seconds += MPI_Wtime() - t0;

  // Back: to rank s, its rows of my heads; from rank s, my rows of its heads.
  for (std::size_t s = 0, at = 0; s < p; ++s) {
    for (std::size_t b = 0; b < n; ++b) {
      for (const Segment& g : plan.q_segments[s]) {
        std::memcpy(send + at + ((b * plan.lq[s] + g.local_begin) * hq) * d,
                    of + ((b * lq_all + g.global_begin) * hq) * d,
                    g.length * hq * d * sizeof(float));
      }
    }
    at += n * plan.lq[s] * hq * d;
  }
  set_counts([&](std::size_t s) { return n * plan.lq[s] * hq; },
             [&](std::size_t) { return n * lq * hq; });
  exchange(send, recv);
  for (std::size_t s = 0; s < p; ++s) {
    const float* o_in = recv + static_cast<std::size_t>(recv_at[s]) * d;
    for (std::size_t b = 0; b < n; ++b) {
      copy_rows(o_in + b * lq * hq * d, hq * d, call.out.at(b, 0, s * hq), call.out.row_stride, lq,
                hq * d);
    }
  }
  if (timings != nullptr) timings->steps = 1;
}

}  // namespace simdattn::detail::mpi
