// A sequence-parallel call after every rank agreed on it: who holds which positions, the shapes,
// the options and the schedule, the same on every rank. Built by agree(), the call's only
// collective before data moves, so that a bad argument on one rank becomes the same error on all.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "simdattn/mpi.hpp"
#include "views.hpp"

namespace simdattn::detail::mpi {

using simdattn::mpi::Layout;
using simdattn::mpi::Schedule;
using simdattn::mpi::Segment;

/// A duplicate of the caller's communicator for one call's traffic (its tags cannot meet the
/// caller's), freed with the call.
class CallComm {
 public:
  explicit CallComm(MPI_Comm comm);
  ~CallComm();
  CallComm(const CallComm&) = delete;
  CallComm& operator=(const CallComm&) = delete;
  MPI_Comm get() const { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

/// What one rank contributes to the agreement: its shapes and options after its own checks,
/// or the error they raised. Plain data, gathered as bytes.
struct RankShape {
  std::int32_t error = 0;  // 0: none; 1: std::invalid_argument; 2: another exception
  std::int32_t causal = 0, policy = 0, layout = 0, schedule = 0;
  float scale = 0;
  std::uint64_t n = 0, lq = 0, lk = 0, hq = 0, hkv = 0, d = 0;
  std::int32_t has_mask = 0;
  std::uint64_t mask_n = 0, mask_h = 0, mask_lq = 0, mask_lk = 0;
  std::uint64_t mask_hash = 0;  // of the mask's bytes (ulysses needs the same mask everywhere)
};

/// One rank's arguments, already resolved by its own checks.
struct LocalCall {
  Heads<const float> q, k, v;
  Heads<float> out;
  Mask mask;
  Causal causal = Causal::none;
  MaskedRows policy = MaskedRows::uniform;
  Layout layout = Layout::contiguous;
  Schedule schedule = Schedule::automatic;
  float scale = 1;
  const kernels::KernelTable* table = nullptr;
  int threads = 1;
};

struct Plan {
  MPI_Comm comm = MPI_COMM_NULL;  // the call's duplicate
  int ranks = 1, rank = 0;
  std::size_t n = 0, hq = 0, hkv = 0, d = 0;
  std::vector<std::size_t> lq, lk;  // every rank's rows
  std::size_t lq_total = 0, lk_total = 0;
  std::vector<std::vector<Segment>> q_segments, k_segments;  // every rank's
  Schedule schedule = Schedule::ring;                        // ring or ulysses
  /// The whole problem's causal offset: key k visible to query q iff k <= q + offset.
  std::ptrdiff_t offset = 0;
};

/// Fills a RankShape from this rank's call.
RankShape describe(const LocalCall& call);

/// The agreement: gathers every rank's shape; if any rank failed its own checks, throws that
/// rank's error (the lowest such rank, its message prefixed "rank r: ") on every rank; then
/// checks that the ranks agree with each other (same error on all); then settles the schedule.
/// `message` is this rank's error message when mine.error != 0.
Plan agree(const char* where, MPI_Comm comm, const RankShape& mine, const std::string& message);

/// The schedules. Each rank passes its own call; out receives its rows.
void run_ring(const Plan& plan, const LocalCall& call, simdattn::mpi::Timings* timings);
void run_ulysses(const Plan& plan, const LocalCall& call, simdattn::mpi::Timings* timings);

/// Runs work(). After the agreement every rank is inside the schedule: one that fails cannot
/// tell the others, which would wait for it forever, so it prints its error and ends the job.
template <class Work>
void or_abort(const char* where, const Plan& plan, const Work& work) {
  try {
    work();
  } catch (const std::exception& e) {
    std::fprintf(stderr,
                 "simdattn::%s: rank %d of %d failed after the ranks agreed on the call: %s; "
                 "ending the job (MPI_Abort)\n",
                 where, plan.rank, plan.ranks, e.what());
    std::fflush(stderr);
    MPI_Abort(plan.comm, 1);
    std::abort();
  }
}

/// Sends or receives `floats` floats as messages MPI's int counts can describe, appending the
/// requests.
void post_send(const float* data, std::size_t floats, int peer, MPI_Comm comm,
               std::vector<MPI_Request>& requests);
void post_recv(float* data, std::size_t floats, int peer, MPI_Comm comm,
               std::vector<MPI_Request>& requests);

}  // namespace simdattn::detail::mpi
