#include "mpi/plan.hpp"

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "validate.hpp"

namespace simdattn::detail::mpi {
namespace {

std::uint64_t hash_bytes(const std::uint8_t* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string str(std::uint64_t v) {
  return std::to_string(v);
}

// Throws on every rank the error of the lowest rank whose own checks failed, if any: that rank
// broadcasts its message, the others learn which rank it was from the gathered shapes.
void raise_first_local_error(const char* where, MPI_Comm comm, int rank,
                             const std::vector<RankShape>& all, const std::string& message) {
  for (std::size_t s = 0; s < all.size(); ++s) {
    if (all[s].error == 0) continue;
    const int root = static_cast<int>(s);
    // Messages are "simdattn::<where>: <what>": keep <what>, insert the rank.
    const std::string prefix = std::string("simdattn::") + where + ": ";
    std::string what = rank == root ? message : std::string();
    if (what.compare(0, prefix.size(), prefix) == 0) what.erase(0, prefix.size());
    unsigned long long length = what.size();
    MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG_LONG, root, comm);
    what.resize(length);
    MPI_Bcast(what.data(), static_cast<int>(length), MPI_CHAR, root, comm);
    const std::string text = prefix + "rank " + std::to_string(root) + ": " + what;
    if (all[s].error == 1) throw std::invalid_argument(text);
    throw std::runtime_error(text);
  }
}

// Every field that must be the same on all ranks; the error names the first rank that differs.
void check_agreement(const char* where, const std::vector<RankShape>& all) {
  auto same = [&](const char* what, auto field) {
    for (std::size_t s = 1; s < all.size(); ++s) {
      if (field(all[s]) != field(all[0])) {
        fail(where, std::string(what) + " differs between ranks: rank 0 has " +
                        std::to_string(field(all[0])) + ", rank " + std::to_string(s) + " has " +
                        std::to_string(field(all[s])));
      }
    }
  };
  same("batch size N", [](const RankShape& r) { return r.n; });
  same("query heads H", [](const RankShape& r) { return r.hq; });
  same("key/value heads H_kv", [](const RankShape& r) { return r.hkv; });
  same("head_dim D", [](const RankShape& r) { return r.d; });
  same("options.scale", [](const RankShape& r) { return r.scale; });
  same("options.causal", [](const RankShape& r) { return r.causal; });
  same("options.masked_rows", [](const RankShape& r) { return r.policy; });
  same("options.layout", [](const RankShape& r) { return r.layout; });
  same("options.schedule", [](const RankShape& r) { return r.schedule; });
  same("whether a mask is given (1) or not (0)", [](const RankShape& r) { return r.has_mask; });
}

std::size_t checked_total(const char* where, const char* what,
                          const std::vector<std::size_t>& lengths) {
  std::size_t total = 0;
  for (std::size_t l : lengths) {
    if (l > SIZE_MAX - total) fail(where, std::string(what) + " overflows size_t");
    total += l;
  }
  return total;
}

// Why the all-to-all schedule cannot run this call, or an empty string if it can.
std::string ulysses_obstacle(const std::vector<RankShape>& all, const Plan& plan) {
  const std::size_t p = static_cast<std::size_t>(plan.ranks);
  if (plan.hkv % p != 0) {
    return "needs the key/value heads H_kv (" + std::to_string(plan.hkv) +
           ") to be a multiple of the ranks (" + std::to_string(p) + ")";
  }
  for (std::size_t s = 0; s < p; ++s) {
    const RankShape& r = all[s];
    if (r.has_mask == 0) continue;
    if (r.mask_lq != 1) {
      return "needs a mask without per-query rows (lq = 1); rank " + std::to_string(s) +
             "'s mask has lq = " + str(r.mask_lq);
    }
    const RankShape& r0 = all[0];
    if (r.mask_n != r0.mask_n || r.mask_h != r0.mask_h || r.mask_lk != r0.mask_lk ||
        r.mask_hash != r0.mask_hash) {
      return "needs the same mask on every rank; rank " + std::to_string(s) +
             "'s differs from rank 0's";
    }
  }
  // MPI counts are ints: rows of D floats per rank, both directions.
  const std::size_t hq = plan.hq / p, hk = plan.hkv / p;
  for (std::size_t s = 0; s < p; ++s) {
    const std::size_t sent = plan.n * (plan.lq[s] * plan.hq + 2 * plan.lk[s] * plan.hkv);
    const std::size_t received = plan.n * (plan.lq_total * hq + 2 * plan.lk_total * hk);
    if (sent > INT_MAX || received > INT_MAX) {
      return "exchanges more than INT_MAX rows of D floats per rank (rank " + std::to_string(s) +
             ")";
    }
  }
  return {};
}

}  // namespace

CallComm::CallComm(MPI_Comm comm) {
  MPI_Comm_dup(comm, &comm_);
}
CallComm::~CallComm() {
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

RankShape describe(const LocalCall& call) {
  RankShape r;
  r.causal = static_cast<std::int32_t>(call.causal);
  r.policy = static_cast<std::int32_t>(call.policy);
  r.layout = static_cast<std::int32_t>(call.layout);
  r.schedule = static_cast<std::int32_t>(call.schedule);
  r.scale = call.scale;
  r.n = call.q.n;
  r.lq = call.q.l;
  r.lk = call.k.l;
  r.hq = call.q.h;
  r.hkv = call.k.h;
  r.d = call.q.d;
  if (call.mask.data != nullptr) {
    r.has_mask = 1;
    r.mask_n = call.mask.n;
    r.mask_h = call.mask.h;
    r.mask_lq = call.mask.lq;
    r.mask_lk = call.mask.lk;
    // Only a mask without per-query rows can serve the all-to-all schedule; hash only those
    // (a per-query mask is L_r x Lk bytes).
    if (call.mask.lq == 1) {
      r.mask_hash = hash_bytes(call.mask.data, call.mask.n * call.mask.h * call.mask.lk);
    }
  }
  return r;
}

Plan agree(const char* where, MPI_Comm comm, const RankShape& mine, const std::string& message) {
  Plan plan;
  plan.comm = comm;
  MPI_Comm_size(comm, &plan.ranks);
  MPI_Comm_rank(comm, &plan.rank);
  const std::size_t p = static_cast<std::size_t>(plan.ranks);
  std::vector<RankShape> all(p);
  MPI_Allgather(&mine, sizeof(RankShape), MPI_BYTE, all.data(), sizeof(RankShape), MPI_BYTE, comm);
  raise_first_local_error(where, comm, plan.rank, all, message);
  // From here on every rank decides on the same data, so it raises the same error or none.
  check_agreement(where, all);
  const RankShape& r0 = all[0];
  plan.n = r0.n;
  plan.hq = r0.hq;
  plan.hkv = r0.hkv;
  plan.d = r0.d;
  for (const RankShape& r : all) {
    plan.lq.push_back(r.lq);
    plan.lk.push_back(r.lk);
  }
  plan.lq_total = checked_total(where, "the total query length", plan.lq);
  plan.lk_total = checked_total(where, "the total key length", plan.lk);
  checked_mul(where, "the whole query", checked_mul(where, "the whole query", plan.n, plan.hq),
              plan.lq_total, plan.d);
  checked_mul(where, "the whole keys", checked_mul(where, "the whole keys", plan.n, plan.hkv),
              plan.lk_total, plan.d);
  for (std::size_t s = 0; s < p; ++s) {
    const RankShape& r = all[s];
    if (r.has_mask == 0) continue;
    auto fits = [](std::uint64_t m, std::size_t full) { return m == 1 || m == full; };
    if (!fits(r.mask_n, plan.n) || !fits(r.mask_h, plan.hq) || !fits(r.mask_lq, r.lq) ||
        !fits(r.mask_lk, plan.lk_total)) {
      fail(where, "rank " + std::to_string(s) + ": mask of shape " +
                      shape_string(r.mask_n, r.mask_h, r.mask_lq, r.mask_lk) +
                      " does not broadcast to [N, H, L_r, Lk] = " +
                      shape_string(plan.n, plan.hq, r.lq, plan.lk_total) +
                      " (each dimension 1 or the full size; rows are the rank's own queries, "
                      "columns the global key positions)");
    }
  }
  const Layout layout = static_cast<Layout>(r0.layout);
  for (int s = 0; s < plan.ranks; ++s) {
    plan.q_segments.push_back(simdattn::mpi::segments(layout, plan.lq, s));
    plan.k_segments.push_back(simdattn::mpi::segments(layout, plan.lk, s));
  }
  const auto causal = static_cast<Causal>(r0.causal);
  plan.offset = causal == Causal::bottom_right ? static_cast<std::ptrdiff_t>(plan.lk_total) -
                                                     static_cast<std::ptrdiff_t>(plan.lq_total)
                                               : 0;

  const auto asked = static_cast<Schedule>(r0.schedule);
  const std::string obstacle = plan.ranks == 1 ? "" : ulysses_obstacle(all, plan);
  if (asked == Schedule::ulysses) {
    if (!obstacle.empty()) fail(where, "options.schedule = ulysses " + obstacle);
    plan.schedule = Schedule::ulysses;
  } else if (asked == Schedule::ring) {
    plan.schedule = Schedule::ring;
  } else {
    // Per rank the ring sends 2 (P - 1) K/V slices of H_kv heads; the all-to-all (P - 1) / P of
    // the rank's Q, K, V and output: fewer bytes exactly when P > 1 + H / H_kv.
    const bool fewer_bytes = p > 1 + plan.hq / plan.hkv;
    plan.schedule =
        obstacle.empty() && plan.ranks > 1 && fewer_bytes ? Schedule::ulysses : Schedule::ring;
  }
  return plan;
}

namespace {

// Calls post(offset, count, tag) for each message of at most 2^28 floats (1 GiB; MPI counts are
// ints) that `floats` floats take.
template <class Post>
void in_messages(std::size_t floats, const Post& post) {
  constexpr std::size_t kMaxMessage = std::size_t{1} << 28;
  for (std::size_t at = 0, tag = 0; at < floats; at += kMaxMessage, ++tag) {
    post(at, static_cast<int>(std::min(kMaxMessage, floats - at)), static_cast<int>(tag));
  }
}

}  // namespace

void post_send(const float* data, std::size_t floats, int peer, MPI_Comm comm,
               std::vector<MPI_Request>& requests) {
  in_messages(floats, [&](std::size_t at, int count, int tag) {
    requests.emplace_back();
    MPI_Isend(data + at, count, MPI_FLOAT, peer, tag, comm, &requests.back());
  });
}

void post_recv(float* data, std::size_t floats, int peer, MPI_Comm comm,
               std::vector<MPI_Request>& requests) {
  in_messages(floats, [&](std::size_t at, int count, int tag) {
    requests.emplace_back();
    MPI_Irecv(data + at, count, MPI_FLOAT, peer, tag, comm, &requests.back());
  });
}

}  // namespace simdattn::detail::mpi
