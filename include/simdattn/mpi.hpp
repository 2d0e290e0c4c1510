// simdattn::mpi: attention over a sequence split across the ranks of an MPI communicator
// (sequence parallelism), for sequences whose keys and values do not fit one machine or whose
// attention takes too long on one. The optional component `simdattn_mpi`:
//     find_package(simdattn COMPONENTS mpi)   target_link_libraries(app simdattn::simdattn_mpi)
//
// Layout contract. Every rank of the communicator calls the same function with its share of
// the sequence, [N, L_r, H, D] for the query and [N, Lk_r, H_kv, D] for keys and values (N, H,
// H_kv and D the same on every rank; L_r >= 1 and Lk_r >= 1 may differ between ranks; Lq != Lk is
// cross-attention). Its output is the attention of its own query rows over the keys of ALL ranks,
// [N, L_r, H, D]. Which global positions a rank's rows hold is `Options::layout`:
//   - Layout::contiguous: rank r holds one contiguous slice, positions [sum_{s<r} L_s, + L_r).
//   - Layout::zigzag (balances causal attention): the sequence is cut into 2P chunks; rank r
//     holds an early chunk and a late chunk, its first ceil(L_r / 2) rows being the early chunk
//     and the rest the late one. Early chunks lie in rank order from position 0, then the late
//     chunks in reverse rank order (the last position belongs to rank 0's late chunk). With the
//     even split of even_split() rank r holds chunks r and 2P - 1 - r, so under a causal mask
//     every rank has the same work and none idles.
// Queries and keys follow the same layout, each with its own lengths. even_split() gives the
// segments of an evenly split sequence, segments() those of any lengths.
//
// Masks: Options::causal is the single-process rule on global positions (top_left: key k
// visible to query q iff k <= q; bottom_right: iff k <= q + Lk - Lq, with the global lengths).
// An explicit keep-mask on rank r is [N|1, H|1, L_r|1, Lk|1]: its rows are the rank's OWN
// query rows in local order, its columns the GLOBAL key positions 0 .. Lk - 1 (a key-padding
// mask [N, 1, 1, Lk] is then the same on every rank). Every rank passes a mask, or none does.
// Options::masked_rows applies to rows that see no key of any rank (uniform: the average of all
// Lk values). Options::scale, causal, masked_rows, layout and schedule must be the same on every
// rank; isa, path and threads are each rank's own.
//
// Schedules (Options::schedule):
//   - Schedule::ring: the K/V slices travel around the ring of ranks (P steps; rank r sends to
//     r + 1 and receives from r - 1 with MPI_Isend/MPI_Irecv while it computes on the slice it
//     holds, double-buffered); each step's partial result (normalised output and log-sum-exp) is
//     merged into the rank's output in step order. Under a causal mask, key slices entirely in
//     the future of a rank's queries are not computed (they still travel). Any H, masks, lengths.
//   - Schedule::ulysses: an all-to-all gives each rank all positions of H_kv / P K/V heads (and
//     their query heads), the fused local kernel runs, an all-to-all returns the outputs. Needs
//     H_kv a multiple of P and a mask that is the same for every query (mask lq == 1) and the
//     same on every rank.
//   - Schedule::automatic: ulysses when it applies and moves fewer bytes than the ring, i.e. when
//     P > 1 + H / H_kv (per rank the ring sends 2 (P - 1) slices of K/V; the all-to-all sends
//     (P - 1) / P of the rank's Q, K, V and output); otherwise ring.
// Results: for a fixed P, schedule and layout, bitwise identical for every thread count; equal to
// the single-process result within float rounding of the merge (ring), or bitwise on the same
// ISA (ulysses: the same kernel over the same rows).
//
// MPI: initialise it before calling (MPI_THREAD_FUNNELED or more when threads > 1: only the calling
// thread calls MPI, OpenMP threads compute). Each call duplicates the communicator for its own
// traffic. Errors are collective: a bad argument on any rank, or arguments that disagree between
// ranks, throw the same std::invalid_argument on every rank (naming the rank) before any data
// moves; any other failure of a rank's own checks (mpi::forward takes its projections' scratch
// memory then, so running out of it is one) throws the same std::runtime_error on every rank, also
// naming the rank. A failure after that (out of memory for the schedule's buffers) prints a message
// and calls MPI_Abort, so no rank waits forever. Of the simdattn::Options fields, scale, causal,
// masked_rows, path, isa and threads apply; softcap, bias, alibi, window, sinks, key_padding and
// weights are bad arguments. Memory per rank, ring: two K/V slices of the largest rank and twice
// the output; ulysses: the rank's Q, K, V and output twice over.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <vector>

#include "simdattn/multi_head_attention.hpp"
#include "simdattn/types.hpp"

namespace simdattn::mpi {

enum class Layout { contiguous, zigzag };
enum class Schedule { automatic, ring, ulysses };

/// Rows [local_begin, local_begin + length) of a rank's buffer hold the global positions
/// [global_begin, global_begin + length).
struct Segment {
  std::size_t local_begin = 0;
  std::size_t global_begin = 0;
  std::size_t length = 0;
};

/// The segments of `rank` (1 for contiguous, 1 or 2 for zigzag) when rank s holds
/// lengths[s] rows. Throws std::invalid_argument for a rank out of range or a zero length.
std::vector<Segment> segments(Layout layout, const std::vector<std::size_t>& lengths, int rank);

/// The segments of `rank` when a sequence of `length` positions is split as evenly as the
/// layout allows over `ranks` ranks (contiguous: L / P rows each, the first L % P ranks one
/// more; zigzag: 2P chunks of L / 2P, the first L % 2P one longer). Needs length >= ranks.
std::vector<Segment> even_split(Layout layout, std::size_t length, int ranks, int rank);

/// Where a call's time went on this rank (Options::timings), for benchmarks and tuning.
struct Timings {
  Schedule schedule = Schedule::automatic;  ///< the schedule that ran (ring or ulysses)
  int steps = 0;                            ///< ring steps (P), or 1
  double seconds = 0;                       ///< the whole call, agreement included
  double compute_seconds = 0;  ///< attention kernels and merges (ulysses: the local kernel)
  double wait_seconds = 0;     ///< blocked in MPI waiting for data (ulysses: the all-to-alls)
  std::size_t bytes_sent = 0;
  /// Ring: per step, seconds computing and seconds waiting for the next slice afterwards, and
  /// whether the step computed anything (false: the slice is in the causal future).
  std::vector<double> step_compute_seconds, step_wait_seconds;
  std::vector<bool> step_computed;
};

/// simdattn::Options plus the layout and the schedule.
struct Options : simdattn::Options {
  Layout layout = Layout::contiguous;
  Schedule schedule = Schedule::automatic;
  /// Filled on return when not null (this rank's figures).
  Timings* timings = nullptr;
};

/// The attention core on a communicator: each rank passes its query rows and its K/V rows (see
/// the layout contract above) and receives the output of its query rows. query [N, L_r, H, D],
/// keys and values [N, Lk_r, H_kv, D] with H_kv dividing H (grouped-query attention: query head
/// h reads K/V head h / (H / H_kv)), out [N, L_r, H, D]; row and batch strides as in
/// simdattn::HeadsView, the heads of a row side by side (head_stride 0 or D).
/// Collective: every rank of `comm` must call it.
void scaled_dot_product_attention(MPI_Comm comm, const ConstHeadsView& query,
                                  const ConstHeadsView& keys, const ConstHeadsView& values,
                                  const HeadsView<float>& out, const Mask& mask = {},
                                  const Options& options = {});

/// The module on a communicator: each rank's [N, L_r, E] query, [N, Lk_r, E] keys and values
/// and [N, L_r, E] out, laid out as above (strided views as MultiHeadAttention::forward takes
/// them). The projections run on each rank's own rows (they
/// need no communication); only the attention core is distributed. Every rank must hold the
/// same module parameters. Collective.
void forward(const MultiHeadAttention& module, MPI_Comm comm, const ConstTensorView& values,
             const ConstTensorView& keys, const ConstTensorView& query, const Mask& mask,
             const TensorView<float>& out, const Options& options = {});

/// Convenience form returning the rank's new [N, L_r, E] output.
Tensor forward(const MultiHeadAttention& module, MPI_Comm comm, const ConstTensorView& values,
               const ConstTensorView& keys, const ConstTensorView& query, const Mask& mask = {},
               const Options& options = {});

}  // namespace simdattn::mpi
