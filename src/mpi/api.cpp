// simdattn::mpi's entry points: each rank's own checks, the agreement (the one collective before
// data moves), then the schedule; a failure after the agreement ends the job.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>

#include "driver/attention.hpp"
#include "driver/scratch.hpp"
#include "isa/registry.hpp"
#include "module_impl.hpp"
#include "module_layout.hpp"
#include "mpi/plan.hpp"
#include "simdattn/mpi.hpp"
#include "validate.hpp"

namespace simdattn {
namespace mpi {

std::vector<Segment> segments(Layout layout, const std::vector<std::size_t>& lengths, int rank) {
  const char* where = "mpi::segments";
  if (rank < 0 || static_cast<std::size_t>(rank) >= lengths.size()) {
    detail::fail(where, "rank " + std::to_string(rank) + " is not one of the " +
                            std::to_string(lengths.size()) + " ranks");
  }
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    if (lengths[s] == 0) detail::fail(where, "rank " + std::to_string(s) + " has length 0");
  }
  const std::size_t r = static_cast<std::size_t>(rank);
  std::size_t before = 0;  // positions of the chunks that come before rank r's (early) one
  for (std::size_t s = 0; s < r; ++s) {
    before += layout == Layout::zigzag ? (lengths[s] + 1) / 2 : lengths[s];
  }
  if (layout == Layout::contiguous) return {{0, before, lengths[r]}};
  if (layout != Layout::zigzag) {
    detail::fail(where, "unknown Layout value " + std::to_string(static_cast<int>(layout)));
  }
  const std::size_t early = (lengths[r] + 1) / 2, late = lengths[r] / 2;
  std::vector<Segment> out{{0, before, early}};
  if (late == 0) return out;
  // Late chunks follow all early chunks, in reverse rank order.
  std::size_t late_begin = 0;
  for (std::size_t s = 0; s < lengths.size(); ++s) late_begin += (lengths[s] + 1) / 2;
  for (std::size_t s = r + 1; s < lengths.size(); ++s) late_begin += lengths[s] / 2;
  out.push_back({early, late_begin, late});
  return out;
}

std::vector<Segment> even_split(Layout layout, std::size_t length, int ranks, int rank) {
  const char* where = "mpi::even_split";
  if (ranks < 1) detail::fail(where, "ranks must be >= 1, got " + std::to_string(ranks));
  const std::size_t p = static_cast<std::size_t>(ranks);
  if (length < p) {
    detail::fail(where, "length " + std::to_string(length) + " is shorter than the ranks (" +
                            std::to_string(ranks) + "): every rank needs a position");
  }
  std::vector<std::size_t> lengths(p);
  if (layout == Layout::zigzag) {
    // 2P chunks, the longer ones first: rank s holds chunks s and 2P - 1 - s.
    auto chunk = [&](std::size_t j) { return length / (2 * p) + (j < length % (2 * p) ? 1 : 0); };
    for (std::size_t s = 0; s < p; ++s) lengths[s] = chunk(s) + chunk(2 * p - 1 - s);
  } else {
    for (std::size_t s = 0; s < p; ++s) lengths[s] = length / p + (s < length % p ? 1 : 0);
  }
  return segments(layout, lengths, rank);
}

}  // namespace mpi

namespace detail::mpi {
namespace {

using simdattn::mpi::Timings;

void check_mpi(const char* where, MPI_Comm comm) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised == 0 || finalised != 0) {
    fail(where, "MPI is not initialised (call MPI_Init_thread first) or already finalised");
  }
  if (comm == MPI_COMM_NULL) fail(where, "comm is MPI_COMM_NULL");
  int inter = 0;
  MPI_Comm_test_inter(comm, &inter);
  if (inter != 0) fail(where, "comm is an inter-communicator; an intra-communicator is needed");
}

// Each switch lists every enumerator without a default, so that -Wswitch points here when one
// is added; a value outside the enumeration falls through to false.
bool known(Layout layout) {
  switch (layout) {
    case Layout::contiguous:
    case Layout::zigzag:
      return true;
  }
  return false;
}

bool known(Schedule schedule) {
  switch (schedule) {
    case Schedule::automatic:
    case Schedule::ring:
    case Schedule::ulysses:
      return true;
  }
  return false;
}

// The options every rank resolves for itself, and the mask's own sizes (its shape against the
// global lengths is the agreement's to check).
void check_options_and_mask(const char* where, const simdattn::mpi::Options& options, std::size_t d,
                            const Mask& mask, LocalCall& call) {
  // Causal, MaskedRows and Path are resolve_threads()'s to check.
  if (!known(options.layout)) {
    fail(where, "options.layout has the unknown value " +
                    std::to_string(static_cast<int>(options.layout)) + " (contiguous, zigzag)");
  }
  if (!known(options.schedule)) {
    fail(where, "options.schedule has the unknown value " +
                    std::to_string(static_cast<int>(options.schedule)) +
                    " (automatic, ring, ulysses)");
  }
  if (const char* unsupported = first_variant_option(options)) {
    fail(where, std::string(unsupported) +
                    " is set: simdattn::mpi supports a mask and causal attention only");
  }
  if (mask.data != nullptr) {
    if (mask.n == 0 || mask.h == 0 || mask.lq == 0 || mask.lk == 0) {
      fail(where, "mask has a zero size: " + shape_string(mask.n, mask.h, mask.lq, mask.lk));
    }
    checked_mul(where, "mask size", checked_mul(where, "mask size", mask.n, mask.h), mask.lq,
                mask.lk);
  }
  call.mask = mask;
  call.causal = options.causal;
  call.policy = options.masked_rows;
  call.layout = options.layout;
  call.schedule = options.schedule;
  call.scale = resolve_scale(where, options, d);
  call.threads = resolve_threads(where, options);
  call.table = kernels_for(where, options);
}

LocalCall check_core(const char* where, const ConstHeadsView& query, const ConstHeadsView& keys,
                     const ConstHeadsView& values, const HeadsView<float>& out, const Mask& mask,
                     const simdattn::mpi::Options& options) {
  LocalCall call;
  call.q = resolve_heads(where, "query", query);
  call.k = resolve_heads(where, "keys", keys);
  call.v = resolve_heads(where, "values", values);
  const auto o = resolve_heads(where, "out", out);
  const auto& q = call.q;
  const auto& k = call.k;
  const auto& v = call.v;
  if (k.n != q.n || v.n != q.n || o.n != q.n || k.d != q.d || v.d != q.d || o.d != q.d ||
      o.h != q.h || o.l != q.l || v.h != k.h || v.l != k.l || k.h > q.h || q.h % k.h != 0) {
    fail(where, "shapes do not fit: query " + shape_string(q.n, q.l, q.h, q.d) + ", keys " +
                    shape_string(k.n, k.l, k.h, k.d) + ", values " +
                    shape_string(v.n, v.l, v.h, v.d) + ", out " + shape_string(o.n, o.l, o.h, o.d) +
                    " (needed: [N, L_r, H, D], [N, Lk_r, H_kv, D] twice, [N, L_r, H, D], with "
                    "H_kv dividing H)");
  }
  // The schedules move a row's heads as one block: [N, L, H, D] views only.
  const std::pair<const char*, std::size_t> head_strides[] = {{"query", q.heads_apart()},
                                                              {"keys", k.heads_apart()},
                                                              {"values", v.heads_apart()},
                                                              {"out", o.heads_apart()}};
  for (const auto& [name, hs] : head_strides) {
    if (hs != q.d) {
      fail(where, std::string(name) + ".head_stride is " + std::to_string(hs) +
                      ": simdattn::mpi takes [N, L, H, D] views (head_stride 0 or D = " +
                      std::to_string(q.d) + ")");
    }
  }
  check_options_and_mask(where, options, q.d, mask, call);
  const std::size_t out_bytes = extent_bytes(o);
  for (const auto* in : {&q, &k, &v}) {
    if (overlaps(o.data, out_bytes, in->data, extent_bytes(*in))) {
      fail(where, "out overlaps an input (query, keys or values)");
    }
  }
  if (mask.data != nullptr &&
      overlaps(o.data, out_bytes, mask.data, mask.n * mask.h * mask.lq * mask.lk)) {
    fail(where, "out overlaps the mask");
  }
  call.out = o;
  return call;
}

// Runs `checks` (this rank's own, which fill `call`), then the agreement; every rank leaves
// with the same plan or the same exception.
template <class Checks>
Plan checked_plan(const char* where, MPI_Comm comm, LocalCall& call, const Checks& checks) {
  RankShape mine;
  std::string message;
  try {
    checks();
    mine = describe(call);
  } catch (const std::invalid_argument& e) {
    mine.error = 1;
    message = e.what();
  } catch (const std::exception& e) {
    mine.error = 2;
    message = e.what();
  }
  return agree(where, comm, mine, message);
}

// One rank holds the whole sequence in order (under either layout): the one-process call.
void run_alone(const LocalCall& call, Timings* timings) {
  const double start = MPI_Wtime();
  AttentionProblem p;
  p.q = call.q;
  p.k = call.k;
  p.v = call.v;
  p.out = call.out;
  p.rule = MaskRule{call.mask, call.causal, call.q.l, call.k.l};
  p.scale = call.scale;
  p.policy = call.policy;
  run_attention(call.table, p, call.threads);
  if (timings != nullptr) {
    const double t = MPI_Wtime() - start;
    timings->steps = 1;
    timings->compute_seconds = t;
    timings->step_compute_seconds = {t};
    timings->step_wait_seconds = {0.0};
    timings->step_computed = {true};
  }
}

void run_schedule(const Plan& plan, const LocalCall& call, Timings* timings) {
  if (plan.ranks == 1) {
    run_alone(call, timings);
  } else if (plan.schedule == Schedule::ulysses) {
    run_ulysses(plan, call, timings);
  } else {
    run_ring(plan, call, timings);
  }
}

}  // namespace
}  // namespace detail::mpi

namespace mpi {

void scaled_dot_product_attention(MPI_Comm comm, const ConstHeadsView& query,
                                  const ConstHeadsView& keys, const ConstHeadsView& values,
                                  const HeadsView<float>& out, const Mask& mask,
                                  const Options& options) {
  namespace dm = detail::mpi;
  const char* where = "mpi::scaled_dot_product_attention";
  dm::check_mpi(where, comm);
  const double start = MPI_Wtime();
  const dm::CallComm call_comm(comm);
  dm::LocalCall call;
  const dm::Plan plan = dm::checked_plan(where, call_comm.get(), call, [&] {
    call = dm::check_core(where, query, keys, values, out, mask, options);
  });
  if (options.timings != nullptr) *options.timings = Timings{};
  dm::or_abort(where, plan, [&] { dm::run_schedule(plan, call, options.timings); });
  if (options.timings != nullptr) {
    options.timings->schedule = plan.schedule;
    options.timings->seconds = MPI_Wtime() - start;
  }
}

void forward(const MultiHeadAttention& module, MPI_Comm comm, const ConstTensorView& values,
             const ConstTensorView& keys, const ConstTensorView& query, const Mask& mask,
             const TensorView<float>& out, const Options& options) {
  namespace dm = detail::mpi;
  const char* where = "mpi::forward";
  dm::check_mpi(where, comm);
  const double start = MPI_Wtime();
  const dm::CallComm call_comm(comm);
  const MultiHeadAttention::Impl* module_state = nullptr;
  const std::size_t n = query.n, lq = query.l, lk = keys.l;
  dm::LocalCall call;
  detail::ForwardTensors t;
  float* scratch = nullptr;
  const dm::Plan plan = dm::checked_plan(where, call_comm.get(), call, [&] {
    // Inside the agreement: a rank passing a moved-from module is every rank's error.
    module_state = &detail::ModuleAccess::impl(module, where);
    const MultiHeadAttention::Impl& m = *module_state;
    const std::size_t e = m.e, heads = m.heads, d = m.head_dim(), kvh = m.kv_heads;
    t = detail::check_forward_tensors(where, e, values, keys, query, out);
    dm::check_options_and_mask(where, options, d, mask, call);
    detail::check_forward_overlaps(where, t);
    if (mask.data != nullptr && detail::overlaps(t.out.data, t.out.extent() * sizeof(float),
                                                 mask.data, mask.n * mask.h * mask.lq * mask.lk)) {
      detail::fail(where, "out overlaps the mask");
    }
    detail::check_activations_fit(where, n, lq, lk, e);
    // Allocated before the agreement, so that a rank short of memory is a collective error.
    scratch = detail::thread_scratch(detail::ScratchSlot::activations,
                                     m.projection_floats(n, lq, lk) + n * lq * e);
    // Shapes for the agreement; the data follows from the projections.
    call.q = {nullptr, n, lq, heads, d, e, lq * e};
    call.k = {nullptr, n, lk, kvh, d, kvh * d, lk * kvh * d};
    call.v = call.k;
  });
  if (options.timings != nullptr) *options.timings = Timings{};
  dm::or_abort(where, plan, [&] {
    const MultiHeadAttention::Impl& m = *module_state;
    const std::size_t e = m.e, heads = m.heads, d = m.head_dim();
    detail::InputCopies copies;
    const detail::ProjectedInputs in =
        m.project_inputs(call.table, t, scratch, call.threads, copies);
    call.q = in.q;
    call.k = in.k;
    call.v = in.v;
    // The heads' output batch-major; an out of another layout gets it through a copy.
    float* attn = scratch + m.projection_floats(n, lq, lk);
    call.out = {attn, n, lq, heads, d, e, lq * e};
    dm::run_schedule(plan, call, options.timings);
    if (t.out.batch_major()) {
      m.project_output(call.table, attn, n * lq, out.data, call.threads);
    } else {
      std::vector<float> result(n * lq * e);
      m.project_output(call.table, attn, n * lq, result.data(), call.threads);
      detail::scatter_rows(result.data(), t.out);
    }
  });
  if (options.timings != nullptr) {
    options.timings->schedule = plan.schedule;
    options.timings->seconds = MPI_Wtime() - start;
  }
}

Tensor forward(const MultiHeadAttention& module, MPI_Comm comm, const ConstTensorView& values,
               const ConstTensorView& keys, const ConstTensorView& query, const Mask& mask,
               const Options& options) {
  // A rank whose query cannot size a result still joins the agreement, with an empty output
  // that forward() reports; the others then raise the same error.
  Tensor out;
  bool sized = false;
  try {
    detail::check_tensor("mpi::forward", "query", query, module.embed_size());
    out = Tensor(query.n, query.l, module.embed_size());
    sized = true;
  } catch (const std::exception&) {
  }
  forward(module, comm, values, keys, query, mask, sized ? out.view() : TensorView<float>{},
          options);
  return out;
}

}  // namespace mpi
}  // namespace simdattn
