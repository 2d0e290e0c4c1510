// Errors of simdattn::mpi are collective: a bad argument on one rank, or arguments that differ
// between ranks, raise the same std::invalid_argument on every rank (naming the rank), and any
// other failure of a rank's own checks (out of memory) the same std::runtime_error, before any
// data moves; a correct call right after works, so nothing was left in flight.
#include <sys/mman.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "mpi_test.hpp"

namespace simdattn::test::mpi {
namespace {

constexpr std::size_t kN = 1, kL = 5, kH = 4, kD = 8;

// One rank's well-formed share: kL rows of kH heads of kD.
struct Share {
  std::vector<float> q = random_normal(kN * kL * kH * kD, 21);
  std::vector<float> k = random_normal(kN * kL * kH * kD, 22);
  std::vector<float> v = random_normal(kN * kL * kH * kD, 23);
  std::vector<float> out = std::vector<float>(kN * kL * kH * kD);
  std::vector<std::uint8_t> mask = std::vector<std::uint8_t>(kL * kL * 8, 1);
  ConstHeadsView qv() const { return {q.data(), kN, kL, kH, kD}; }
  ConstHeadsView kv() const { return {k.data(), kN, kL, kH, kD}; }
  ConstHeadsView vv() const { return {v.data(), kN, kL, kH, kD}; }
  HeadsView<float> ov() { return {out.data(), kN, kL, kH, kD}; }
};

// The message every rank got, or "" if the call did not throw an Error; checks that all ranks
// got the same one.
template <class Error = std::invalid_argument>
std::string collective_error(const std::function<void()>& call) {
  std::string message;
  try {
    call();
  } catch (const Error& e) {
    message = e.what();
  }
  // Same length and same bytes everywhere.
  unsigned long long mine[2] = {message.size(), std::hash<std::string>{}(message)}, lo[2], hi[2];
  MPI_Allreduce(mine, lo, 2, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(mine, hi, 2, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  INFO("rank " << rank() << ": " << message);
  CHECK((lo[0] == hi[0] && lo[1] == hi[1]));
  return message;
}

// A correct call on every rank after an error: it must complete and give finite numbers.
void works_afterwards() {
  Share s;
  simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov());
  bool finite = true;
  for (float x : s.out) finite = finite && std::isfinite(x);
  CHECK(all_ranks(finite));
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

TEST_CASE("mpi errors: one rank's bad argument is every rank's error", "[mpi][errors]") {
  const int bad = ranks() - 1;  // the last rank; rank 0 when alone
  Share s;
  const std::string null_query = collective_error([&] {
    ConstHeadsView q = s.qv();
    if (rank() == bad) q.data = nullptr;
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, s.kv(), s.vv(), s.ov());
  });
  CHECK(null_query == "simdattn::mpi::scaled_dot_product_attention: rank " + std::to_string(bad) +
                          ": query.data is null");
  works_afterwards();

  const std::string threads = collective_error([&] {
    simdattn::mpi::Options options;
    options.threads = rank() == bad ? -1 : 1;
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(), {},
                                                options);
  });
  CHECK(contains(threads, "rank " + std::to_string(bad) + ": options.threads must be in"));

  const std::string schedule = collective_error([&] {
    simdattn::mpi::Options options;
    if (rank() == bad) options.schedule = static_cast<simdattn::mpi::Schedule>(7);
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(), {},
                                                options);
  });
  CHECK(contains(schedule, "rank " + std::to_string(bad) +
                               ": options.schedule has the unknown value 7 (automatic, ring, "
                               "ulysses)"));

  const std::string layout = collective_error([&] {
    simdattn::mpi::Options options;
    if (rank() == bad) options.layout = static_cast<Layout>(5);
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(), {},
                                                options);
  });
  CHECK(contains(layout, "rank " + std::to_string(bad) +
                             ": options.layout has the unknown value 5 (contiguous, zigzag)"));

  const std::string heads = collective_error([&] {
    ConstHeadsView k = s.kv(), v = s.vv();
    k.h = v.h = 3;  // does not divide H = 4
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), k, v, s.ov());
  });
  CHECK(contains(heads, "rank 0: shapes do not fit"));
  works_afterwards();

  // Options of the one-process call that the schedules do not apply: refused, never ignored.
  const std::string variant = collective_error([&] {
    simdattn::mpi::Options options;
    options.causal = Causal::top_left;
    if (rank() == bad) options.window = 2;
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(), {},
                                                options);
  });
  CHECK(variant == "simdattn::mpi::scaled_dot_product_attention: rank " + std::to_string(bad) +
                       ": options.window is set: simdattn::mpi supports a mask and causal "
                       "attention only");

  // Shapes that do not fit and outputs over an input or the mask, on one rank.
  struct Bad {
    const char* message;
    std::function<void(ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, Mask&)> change;
  };
  std::vector<std::uint8_t> mask_bytes(kL * static_cast<std::size_t>(ranks()), 1);
  const Bad bads[] = {
      {"shapes do not fit: query [1, 5, 4, 8], keys [1, 5, 4, 8], values [1, 4, 4, 8], out "
       "[1, 5, 4, 8]",
       [](ConstHeadsView&, ConstHeadsView& v, HeadsView<float>&, Mask&) { v.l = kL - 1; }},
      {"shapes do not fit: query [1, 5, 4, 8], keys [1, 5, 4, 8], values [1, 5, 4, 8], out "
       "[1, 4, 4, 8]",
       [](ConstHeadsView&, ConstHeadsView&, HeadsView<float>& o, Mask&) { o.l = kL - 1; }},
      {"out overlaps an input (query, keys or values)",
       [](ConstHeadsView& q, ConstHeadsView&, HeadsView<float>& o, Mask&) { q.data = o.data; }},
      {"out overlaps the mask",
       [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>& o, Mask& m) {
         m = {reinterpret_cast<const std::uint8_t*>(o.data), 1, 1, 1, mask_bytes.size()};
       }},
      {"mask has a zero size: [1, 1, 1, 0]",
       [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, Mask& m) { m.lk = 0; }},
  };
  for (const Bad& x : bads) {
    const std::string message = collective_error([&] {
      ConstHeadsView q = s.qv(), v = s.vv();
      HeadsView<float> o = s.ov();
      Mask mask{mask_bytes.data(), 1, 1, 1, mask_bytes.size()};
      if (rank() == bad) x.change(q, v, o, mask);
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, s.kv(), v, o, mask);
    });
    CHECK(starts_with(message, "simdattn::mpi::scaled_dot_product_attention: rank " +
                                   std::to_string(bad) + ": " + x.message));
  }
  works_afterwards();

  const std::string head_stride = collective_error([&] {
    std::vector<float> heads_first(kN * kH * kL * kD);
    ConstHeadsView q = s.qv();
    if (rank() == bad) q = {heads_first.data(), kN, kL, kH, kD, kD, kH * kL * kD, kL * kD};
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, s.kv(), s.vv(), s.ov());
  });
  CHECK(contains(head_stride, "rank " + std::to_string(bad) + ": query.head_stride is " +
                                  std::to_string(kL * kD) + ": simdattn::mpi takes [N, L, H, D]"));
  works_afterwards();
}

TEST_CASE("mpi errors: ranks that disagree raise the same error on all", "[mpi][errors]") {
  const int p = ranks();
  Share s;
  if (p > 1) {
    const std::string d = collective_error([&] {
      ConstHeadsView q = s.qv(), k = s.kv(), v = s.vv();
      HeadsView<float> o = s.ov();
      if (rank() == 1) q.d = k.d = v.d = o.d = kD / 2;
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, k, v, o);
    });
    CHECK(d ==
          "simdattn::mpi::scaled_dot_product_attention: head_dim D differs between ranks: "
          "rank 0 has 8, rank 1 has 4");
    const std::string causal = collective_error([&] {
      simdattn::mpi::Options options;
      options.causal = rank() == p - 1 ? Causal::top_left : Causal::none;
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                  {}, options);
    });
    CHECK(contains(causal, "options.causal differs between ranks"));
    const std::string has_mask = collective_error([&] {
      Mask mask{s.mask.data(), 1, 1, 1, kL * static_cast<std::size_t>(p)};
      if (rank() == 1) mask = {};
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                  mask);
    });
    CHECK(contains(has_mask, "whether a mask is given"));
    // Every other field the ranks must share; rank 1 differs in one at a time. The message names
    // the first field that differs and both values.
    struct Differ {
      const char* message;
      std::function<void(ConstHeadsView&, ConstHeadsView&, HeadsView<float>&,
                         simdattn::mpi::Options&)>
          change;
    };
    // Rank 1's batch of 2: its query, keys and values read `twice`, its output goes to `out2`.
    std::vector<float> twice = random_normal(2 * s.q.size(), 24), out2(twice.size());
    const Differ differs[] = {
        {"batch size N differs between ranks: rank 0 has 1, rank 1 has 2",
         [&](ConstHeadsView& q, ConstHeadsView& kv, HeadsView<float>& o, simdattn::mpi::Options&) {
           q = kv = {twice.data(), 2, kL, kH, kD};
           o = {out2.data(), 2, kL, kH, kD};
         }},
        {"query heads H differs between ranks: rank 0 has 4, rank 1 has 2",
         [&](ConstHeadsView& q, ConstHeadsView& kv, HeadsView<float>& o, simdattn::mpi::Options&) {
           q.h = kv.h = o.h = 2;
         }},
        {"key/value heads H_kv differs between ranks: rank 0 has 4, rank 1 has 2",
         [&](ConstHeadsView&, ConstHeadsView& kv, HeadsView<float>&, simdattn::mpi::Options&) {
           kv.h = 2;
         }},
        {"options.scale differs between ranks",
         [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, simdattn::mpi::Options& o) {
           o.scale = 0.5f;
         }},
        {"options.masked_rows differs between ranks: rank 0 has 0, rank 1 has 1",
         [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, simdattn::mpi::Options& o) {
           o.masked_rows = MaskedRows::zeros;
         }},
        {"options.layout differs between ranks: rank 0 has 0, rank 1 has 1",
         [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, simdattn::mpi::Options& o) {
           o.layout = Layout::zigzag;
         }},
        {"options.schedule differs between ranks: rank 0 has 0, rank 1 has 1",
         [&](ConstHeadsView&, ConstHeadsView&, HeadsView<float>&, simdattn::mpi::Options& o) {
           o.schedule = Schedule::ring;
         }},
    };
    for (const Differ& x : differs) {
      const std::string message = collective_error([&] {
        ConstHeadsView q = s.qv(), kv = s.kv();
        HeadsView<float> o = s.ov();
        simdattn::mpi::Options options;
        if (rank() == 1) x.change(q, kv, o, options);
        simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, q, kv, kv, o, {}, options);
      });
      CHECK(contains(message, x.message));
    }
    works_afterwards();
  }
  // The mask's columns are the global keys: Lk of one rank is wrong for every P > 1.
  const std::string mask_shape = collective_error([&] {
    const Mask mask{s.mask.data(), 1, 1, kL, kL + 1};
    simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                mask);
  });
  CHECK(contains(mask_shape,
                 "rank 0: mask of shape [1, 1, 5, 6] does not broadcast to "
                 "[N, H, L_r, Lk] = [1, 4, 5, " +
                     std::to_string(kL * static_cast<std::size_t>(p)) + "]"));
  works_afterwards();
}

TEST_CASE("mpi errors: a forced all-to-all that cannot run says why", "[mpi][errors]") {
  const int p = ranks();
  Share s;
  simdattn::mpi::Options options;
  options.schedule = simdattn::mpi::Schedule::ulysses;
  if (kH % static_cast<std::size_t>(p) != 0) {
    const std::string heads = collective_error([&] {
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                  {}, options);
    });
    CHECK(heads ==
          "simdattn::mpi::scaled_dot_product_attention: options.schedule = ulysses "
          "needs the key/value heads H_kv (4) to be a multiple of the ranks (" +
              std::to_string(p) + ")");
  }
  if (p > 1 && kH % static_cast<std::size_t>(p) == 0) {
    const std::string rows = collective_error([&] {
      const Mask mask{s.mask.data(), 1, 1, kL, kL * static_cast<std::size_t>(p)};
      simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                  mask, options);
    });
    CHECK(contains(rows, "needs a mask without per-query rows"));
    // A mask per head, [1, H, 1, Lk], whose first or last byte differs on rank 1.
    for (const bool last : {false, true}) {
      const std::string differ = collective_error([&] {
        const std::size_t lk = kL * static_cast<std::size_t>(p);
        std::vector<std::uint8_t> bytes(kH * lk, 1);
        if (rank() == 1) bytes[last ? bytes.size() - 1 : 0] = 0;
        const Mask mask{bytes.data(), 1, kH, 1, lk};
        simdattn::mpi::scaled_dot_product_attention(MPI_COMM_WORLD, s.qv(), s.kv(), s.vv(), s.ov(),
                                                    mask, options);
      });
      INFO((last ? "last" : "first") << " byte differs");
      CHECK(contains(differ, "needs the same mask on every rank; rank 1's differs"));
    }
    // MPI counts are ints: 2^28 rows of 4 heads of D = 1 per rank make 3 x 2^30 rows to send.
    // The views lie in address space reserved without access, so any read would crash.
    const std::size_t l = std::size_t{1} << 28, h = 4, floats = l * h;
    const std::size_t region_bytes = 4 * floats * sizeof(float);
    void* region =
        mmap(nullptr, region_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(region != MAP_FAILED);
    auto* base = static_cast<float*>(region);
    const std::string counts = collective_error([&] {
      simdattn::mpi::scaled_dot_product_attention(
          MPI_COMM_WORLD, {base, 1, l, h, 1}, {base + floats, 1, l, h, 1},
          {base + 2 * floats, 1, l, h, 1}, {base + 3 * floats, 1, l, h, 1}, {}, options);
    });
    munmap(region, region_bytes);
    CHECK(counts ==
          "simdattn::mpi::scaled_dot_product_attention: options.schedule = ulysses exchanges "
          "more than INT_MAX rows of D floats per rank (rank 0)");
  }
  works_afterwards();
}

TEST_CASE("mpi errors: mpi::forward's bad arguments are every rank's error", "[mpi][errors]") {
  const int bad = ranks() - 1;
  const std::size_t e = 16, l = 3;
  const MultiHeadAttention module(e, 2, 9);
  std::vector<float> x = random_normal(l * e, 25), out(l * e);
  std::vector<std::uint8_t> mask_bytes(l * static_cast<std::size_t>(ranks()), 1);
  const Mask mask{mask_bytes.data(), 1, 1, 1, mask_bytes.size()};
  const std::string prefix = "simdattn::mpi::forward: rank " + std::to_string(bad) + ": ";
  // The output over the query.
  const std::string in_place = collective_error([&] {
    float* o = rank() == bad ? x.data() : out.data();
    simdattn::mpi::forward(module, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                           {x.data(), 1, l, e}, {}, {o, 1, l, e});
  });
  CHECK(in_place == prefix +
                        "out overlaps an input (values, keys or query): in-place forward "
                        "is not supported");
  // The output over the mask: the mask's bytes inside the output.
  const std::string over_mask = collective_error([&] {
    Mask m = mask;
    if (rank() == bad) m.data = reinterpret_cast<const std::uint8_t*>(out.data() + l * e / 2);
    simdattn::mpi::forward(module, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                           {x.data(), 1, l, e}, m, {out.data(), 1, l, e});
  });
  INFO(over_mask);
  CHECK(starts_with(over_mask, prefix));
  CHECK(contains(over_mask, "out overlaps the mask"));
  // A query of another embedding size: the Tensor-returning call cannot size its result there.
  const std::string embed = collective_error([&] {
    const std::size_t qe = rank() == bad ? e / 2 : e;
    simdattn::mpi::forward(module, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                           {x.data(), 1, l, qe});
  });
  CHECK(starts_with(embed, prefix));
  CHECK(contains(embed, "query"));
  // A moved-from module on one rank, through both forms.
  MultiHeadAttention copy(module);
  const MultiHeadAttention moved_to(std::move(copy));
  const MultiHeadAttention& used = rank() == bad ? copy : module;
  const std::string moved = "the module was moved from (it may only be destroyed or assigned)";
  CHECK(collective_error([&] {
          simdattn::mpi::forward(used, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                                 {x.data(), 1, l, e}, {}, {out.data(), 1, l, e});
        }) == prefix + moved);
  CHECK(collective_error([&] {
          simdattn::mpi::forward(used, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                                 {x.data(), 1, l, e});
        }) == prefix + moved);
  // A correct call reports the schedule that ran.
  simdattn::mpi::Timings timings;
  simdattn::mpi::Options options;
  options.schedule = Schedule::ring;
  options.timings = &timings;
  simdattn::mpi::forward(module, MPI_COMM_WORLD, {x.data(), 1, l, e}, {x.data(), 1, l, e},
                         {x.data(), 1, l, e}, mask, {out.data(), 1, l, e}, options);
  CHECK(all_ranks(timings.schedule == Schedule::ring));
  works_afterwards();
}

TEST_CASE("mpi errors: a rank's failure other than a bad argument is every rank's runtime_error",
          "[mpi][errors]") {
  if (!huge_allocations_testable()) {
    WARN("AddressSanitizer without ASAN_OPTIONS=allocator_may_return_null=1: skipped");
    return;
  }
  // The last rank's keys and values claim 2^56 rows, never read: the scratch for their
  // projections (2^61 bytes, more than any address space) cannot be allocated. That happens in the
  // rank's own checks, before the agreement, so every rank gets the same std::runtime_error, not
  // std::invalid_argument.
  const int bad = ranks() - 1;
  const std::size_t e = 4, l = 3, rows = std::size_t{1} << 56;
  const MultiHeadAttention module(e, 2, 9);
  // The output first, the inputs after it: their claimed extent lies above the output.
  std::vector<float> buffer = random_normal(2 * l * e, 26);
  float* out = buffer.data();
  const float* x = buffer.data() + l * e;
  auto call = [&] {
    const std::size_t lk = rank() == bad ? rows : l;
    simdattn::mpi::forward(module, MPI_COMM_WORLD, {x, 1, lk, e}, {x, 1, lk, e}, {x, 1, l, e}, {},
                           {out, 1, l, e});
  };
  // (An std::invalid_argument, not a runtime_error, would escape this and fail the case.)
  const std::string message = collective_error<std::runtime_error>(call);
  CHECK(message == "simdattn::mpi::forward: rank " + std::to_string(bad) + ": std::bad_alloc");
  works_afterwards();
}

TEST_CASE("mpi: segments of the layouts", "[mpi]") {
  using simdattn::mpi::even_split;
  using simdattn::mpi::segments;
  // Zig-zag over 3 ranks, 12 positions: chunks of 2; rank r holds chunks r and 5 - r.
  const auto z1 = even_split(Layout::zigzag, 12, 3, 1);
  REQUIRE(z1.size() == 2);
  CHECK((z1[0].local_begin == 0 && z1[0].global_begin == 2 && z1[0].length == 2));
  CHECK((z1[1].local_begin == 2 && z1[1].global_begin == 8 && z1[1].length == 2));
  // 13 positions: chunk 0 has 3 rows, so rank 0 holds 3 + 2 (its late chunk is the last).
  const auto z0 = even_split(Layout::zigzag, 13, 3, 0);
  CHECK((z0[0].length == 3 && z0[1].global_begin == 11 && z0[1].length == 2));
  // Contiguous, uneven: prefix sums.
  const auto c = segments(Layout::contiguous, {4, 1, 7}, 2);
  CHECK((c.size() == 1 && c[0].global_begin == 5 && c[0].length == 7));
  // One row per rank under zig-zag: the early chunk alone.
  CHECK(even_split(Layout::zigzag, 3, 3, 2).size() == 1);
  CHECK_THROWS_AS(even_split(Layout::contiguous, 2, 3, 0), std::invalid_argument);
  CHECK_THROWS_AS(segments(Layout::contiguous, {4, 0}, 0), std::invalid_argument);
  CHECK_THROWS_WITH(segments(Layout::zigzag, {4, 3}, 2),
                    "simdattn::mpi::segments: rank 2 is not one of the 2 ranks");
  CHECK_THROWS_WITH(segments(Layout::contiguous, {4, 3}, -1),
                    "simdattn::mpi::segments: rank -1 is not one of the 2 ranks");
  CHECK_THROWS_WITH(segments(static_cast<Layout>(5), {4, 3}, 1),
                    "simdattn::mpi::segments: unknown Layout value 5");
}

}  // namespace simdattn::test::mpi
