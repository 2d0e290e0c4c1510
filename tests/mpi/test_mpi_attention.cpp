// simdattn::mpi::scaled_dot_product_attention under mpirun -np P (CTest runs P = 1, 2, 3, 4):
// each rank's rows equal the same rows of the single-process result within 1e-6 relative, for
// every mask kind and a key mask per head, both layouts, both schedules, grouped K/V heads,
// uneven slices and slices of one row; and for a fixed P the result is bitwise the same at 1 and
// 2 threads.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "mpi_test.hpp"

namespace simdattn::test::mpi {
namespace {

// Relative Frobenius error against the single-process result. Both results are float
// computations in different orders; where the single-process result itself is further than
// 5e-7 from exact (the double oracle), as at L = 700, they may differ by its error twice over:
// that case allows 2e-6 and every case must be as accurate as the single-process result.
constexpr double kTol = 1e-6;

struct Shape {
  const char* name;
  std::size_t n, lq, lk, h, hkv, d;
  std::vector<std::size_t> q_lengths, k_lengths;  // per rank; empty: an even split
  double tol = kTol;
};

// The shapes: self-attention, cross-attention (Lq != Lk, where the two causal alignments
// differ), grouped K/V heads, odd head sizes, one row per rank, uneven slices, and rows enough
// for several kernel calls per step.
std::vector<Shape> shapes() {
  const std::size_t p = static_cast<std::size_t>(ranks());
  std::vector<std::size_t> uneven_q, uneven_k;
  for (std::size_t s = 0; s < p; ++s) {
    uneven_q.push_back(1 + (7 * s + 3) % 11);
    uneven_k.push_back(1 + (5 * s + 8) % 13);
  }
  std::vector<std::size_t> ones(p, 1), short_first(p, 20);
  short_first[0] = 1;
  return {
      {"self N=2 L=37 H=4 D=16", 2, 37, 37, 4, 4, 16, {}, {}},
      {"cross Lq=29 Lk=45 D=3", 1, 29, 45, 2, 2, 3, {}, {}},
      {"cross Lq=45 Lk=29 D=17", 2, 45, 29, 2, 2, 17, {}, {}},
      {"GQA H=8 H_kv=4 D=15", 1, 40, 40, 8, 4, 15, {}, {}},
      {"GQA H=4 H_kv=1 D=8", 1, 23, 31, 4, 1, 8, {}, {}},
      {"one row per rank", 2, p, p, 4, 4, 8, ones, ones},
      {"uneven slices", 1, 0, 0, 4, 4, 8, uneven_q, uneven_k},
      // Rank 0 sends the all-to-all less than its share of the output it returns, rank 1
      // receives less than its rows of every head: the exchange buffers fit the larger trip.
      {"one short slice beside long ones", 1, 0, 0, 4, 4, 8, short_first, ones},
      {"L=700 (several kernel calls per step)", 1, 700, 700, 2, 2, 32, {}, {}, 2e-6},
  };
}

std::size_t sum(const std::vector<std::size_t>& v) {
  std::size_t s = 0;
  for (std::size_t x : v) s += x;
  return s;
}

// Runs one case on every rank and checks it against the single-process result; returns the
// rank's output (threads as given) for the bitwise comparison across thread counts.
// The reference results of a case: the single-process result, its error against the double
// oracle, and the oracle.
struct Expected {
  std::vector<float> whole;
  std::vector<double> exact;
  double whole_error = 0;
  double tol = kTol;
};

Expected expected(const Problem& pr, const Options& options, double tol) {
  Expected e;
  e.whole = single_process(pr, options);
  e.exact = oracle(pr, options);
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < e.exact.size(); ++i) {
    diff += (e.whole[i] - e.exact[i]) * (e.whole[i] - e.exact[i]);
    ref += e.exact[i] * e.exact[i];
  }
  e.whole_error = std::sqrt(diff / ref);
  e.tol = tol;
  return e;
}

// One rank's share of a call: its output rows and the segments of the global rows they are.
struct RankResult {
  std::vector<float> out;
  std::vector<Segment> q_segs;
};

// Runs the distributed call on every rank, each with its own rows of the problem.
RankResult run_on_ranks(const Problem& pr, const std::vector<std::size_t>& q_lengths,
                        const std::vector<std::size_t>& k_lengths, simdattn::mpi::Options options) {
  const int r = rank();
  const auto q_segs = simdattn::mpi::segments(options.layout, q_lengths, r);
  const auto k_segs = simdattn::mpi::segments(options.layout, k_lengths, r);
  const std::size_t lq = q_lengths[static_cast<std::size_t>(r)];
  const std::size_t lk = k_lengths[static_cast<std::size_t>(r)];
  const auto q = take_rows(pr.q, pr.n, pr.lq, pr.h * pr.d, q_segs);
  const auto k = take_rows(pr.k, pr.n, pr.lk, pr.hkv * pr.d, k_segs);
  const auto v = take_rows(pr.v, pr.n, pr.lk, pr.hkv * pr.d, k_segs);
  const auto mask_bytes = take_mask_rows(pr.mask, q_segs, lq);
  Mask mask = pr.mask.mask;
  if (mask.data != nullptr) {
    mask.data = mask_bytes.data();
    if (mask.lq != 1) mask.lq = lq;
  }
  options.causal = pr.mask.causal;
  std::vector<float> out(pr.n * lq * pr.h * pr.d, -7.0f);
  simdattn::mpi::scaled_dot_product_attention(
      MPI_COMM_WORLD, {q.data(), pr.n, lq, pr.h, pr.d}, {k.data(), pr.n, lk, pr.hkv, pr.d},
      {v.data(), pr.n, lk, pr.hkv, pr.d}, {out.data(), pr.n, lq, pr.h, pr.d}, mask, options);
  return {std::move(out), q_segs};
}

std::vector<float> run_case(const Problem& pr, const std::vector<std::size_t>& q_lengths,
                            const std::vector<std::size_t>& k_lengths,
                            const simdattn::mpi::Options& options, const Expected& ex,
                            const std::string& what) {
  RankResult run = run_on_ranks(pr, q_lengths, k_lengths, options);
  const Comparison c = compare_rows(run.out, ex.whole, pr.n, pr.lq, pr.h * pr.d, run.q_segs);
  const Comparison exact = compare_rows(run.out, ex.exact, pr.n, pr.lq, pr.h * pr.d, run.q_segs);
  INFO(what << ": relative error " << c.rel << " against one process; against exact " << exact.rel
            << " (one process: " << ex.whole_error << ")");
  CHECK(c.rel <= ex.tol);
  CHECK(exact.rel <= 1.25 * ex.whole_error + 1e-7);
  if (options.schedule == Schedule::ulysses) {
    // The same kernel over the same rows as one process: nothing to round differently.
    CHECK(c.bitwise);
  }
  return std::move(run.out);
}

bool ulysses_applies(const Problem& pr) {
  const auto p = static_cast<std::size_t>(ranks());
  return pr.hkv % p == 0 && (pr.mask.mask.data == nullptr || pr.mask.mask.lq == 1);
}

}  // namespace

TEST_CASE("mpi: every mask kind, layout and schedule equals the single-process result", "[mpi]") {
  const std::vector<Shape> all = shapes();
  for (std::size_t si = 0; si < all.size(); ++si) {
    const Shape& shape = all[si];
    // Thread counts 1 and 2 (bitwise equal) on every third shape; 2 alone elsewhere, which
    // keeps the suite quick on an oversubscribed machine.
    const std::vector<int> thread_counts =
        si % 3 == 0 ? std::vector<int>{1, 2} : std::vector<int>{2};
    for (MaskKind kind : kAllMaskKinds) {
      // The masked-row policy matters where rows can see no key.
      std::vector<MaskedRows> policies{MaskedRows::uniform};
      if (kind == MaskKind::fully_masked_rows || kind == MaskKind::causal_bottom_right) {
        policies.push_back(MaskedRows::zeros);
      }
      for (Layout layout : {Layout::contiguous, Layout::zigzag}) {
        const auto q_lengths = lengths_of(layout, shape.lq, shape.q_lengths);
        const auto k_lengths = lengths_of(layout, shape.lk, shape.k_lengths);
        const Problem pr(shape.n, sum(q_lengths), sum(k_lengths), shape.h, shape.hkv, shape.d,
                         kind);
        for (MaskedRows policy : policies) {
          simdattn::mpi::Options options;
          options.layout = layout;
          options.masked_rows = policy;
          options.scale = 0.37f;
          options.causal = pr.mask.causal;
          const Expected ex = expected(pr, options, shape.tol);
          for (Schedule schedule : {Schedule::ring, Schedule::ulysses}) {
            if (schedule == Schedule::ulysses && !ulysses_applies(pr)) continue;
            options.schedule = schedule;
            const std::string what = std::string(shape.name) + ", mask " + mask_kind_name(kind) +
                                     ", " + (layout == Layout::zigzag ? "zigzag" : "contiguous") +
                                     ", " + (schedule == Schedule::ring ? "ring" : "ulysses") +
                                     (policy == MaskedRows::zeros ? ", zeros" : ", uniform");
            std::vector<float> first;
            for (int threads : thread_counts) {
              options.threads = threads;
              const auto out = run_case(pr, q_lengths, k_lengths, options, ex, what);
              if (first.empty()) {
                first = out;
                continue;
              }
              INFO(what << ": threads 1 and 2");
              CHECK(all_ranks(std::memcmp(first.data(), out.data(), out.size() * 4) == 0));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("mpi: a key mask of its own per head ([N, H, 1, Lk]) under both schedules", "[mpi]") {
  // Each rank of the all-to-all takes a share of the heads, so it must read the mask of its own
  // heads, not the first ones; the ring keeps every head on every rank. 12 kv heads divide among
  // 1, 2, 3 and 4 ranks; 24 query heads read them in pairs.
  for (const std::size_t h : {12, 24}) {
    const std::size_t hkv = 12;
    Problem pr(2, 5 * static_cast<std::size_t>(ranks()), 9 * static_cast<std::size_t>(ranks()), h,
               hkv, 8, MaskKind::none);
    detail::Random rng(29);
    pr.mask.bytes.assign(pr.n * pr.h * pr.lk, 1);
    for (std::size_t row = 0; row < pr.n * pr.h; ++row) {
      std::uint8_t* r = pr.mask.bytes.data() + row * pr.lk;
      for (std::size_t k = 0; k < pr.lk; ++k) r[k] = rng.uniform() < 0.5 ? 0 : 1;
      r[rng.next() % pr.lk] = 1;
    }
    pr.mask.mask = Mask{pr.mask.bytes.data(), pr.n, pr.h, 1, pr.lk};
    REQUIRE(ulysses_applies(pr));
    for (Layout layout : {Layout::contiguous, Layout::zigzag}) {
      simdattn::mpi::Options options;
      options.layout = layout;
      options.threads = 2;
      const Expected ex = expected(pr, options, kTol);
      for (Schedule schedule : {Schedule::ring, Schedule::ulysses}) {
        options.schedule = schedule;
        run_case(pr, lengths_of(layout, pr.lq, {}), lengths_of(layout, pr.lk, {}), options, ex,
                 std::to_string(h) + " heads over " + std::to_string(hkv) +
                     (layout == Layout::zigzag ? ", zigzag" : ", contiguous") +
                     (schedule == Schedule::ring ? ", ring" : ", ulysses"));
      }
    }
  }
}

TEST_CASE("mpi: the naive path (the reference kernels) on every rank", "[mpi]") {
  const Problem pr(2, 19 * static_cast<std::size_t>(ranks()), 13, 4, 2, 5,
                   MaskKind::causal_bottom_right);
  simdattn::mpi::Options options;
  options.path = Path::naive;
  options.layout = Layout::zigzag;
  options.causal = pr.mask.causal;
  run_case(pr, lengths_of(Layout::zigzag, pr.lq, {}), lengths_of(Layout::zigzag, pr.lk, {}),
           options, expected(pr, options, kTol), "naive path, causal bottom-right, Lq > Lk");
}

TEST_CASE("mpi: a slice whose scores are all -inf weighs nothing but passes on 0 x NaN",
          "[mpi][nonfinite]") {
  // The last rank's keys have a +Inf component where every query is negative: each row scores
  // that whole slice -inf. Its part must weigh nothing on both paths, so the rows equal one
  // process's finite result; and where one of its values is NaN, that column of every row is
  // NaN (0 x NaN), as in one process, the rest unchanged.
  // 4 query heads over 2 kv heads: the NaN value lies in kv head 1, which query heads 2 and 3
  // read.
  const auto p = static_cast<std::size_t>(ranks());
  if (p < 2) return;  // with one rank every key scores -inf: NaN rows, as in one process
  Problem pr(1, 5 * p, 4 * p, 4, 2, 6, MaskKind::none);
  for (std::size_t i = 0; i < pr.lq * pr.h; ++i) pr.q[i * pr.d] = -std::abs(pr.q[i * pr.d]) - 0.1f;
  for (std::size_t key = pr.lk - pr.lk / p; key < pr.lk; ++key) {
    for (std::size_t kh = 0; kh < pr.hkv; ++kh) pr.k[(key * pr.hkv + kh) * pr.d] = INFINITY;
  }
  const auto q_lengths = lengths_of(Layout::contiguous, pr.lq, {});
  const auto k_lengths = lengths_of(Layout::contiguous, pr.lk, {});
  for (Path path : {Path::optimized, Path::naive}) {
    simdattn::mpi::Options options;
    options.path = path;
    options.schedule = Schedule::ring;
    const std::string what =
        std::string("a -inf slice, ") + (path == Path::naive ? "naive" : "optimized");
    const Expected ex = expected(pr, options, kTol);
    REQUIRE(
        std::all_of(ex.whole.begin(), ex.whole.end(), [](float x) { return std::isfinite(x); }));
    run_case(pr, q_lengths, k_lengths, options, ex, what);

    // A NaN value in that slice, kv head 1, column 4.
    float& planted = pr.v[((pr.lk - 1) * pr.hkv + 1) * pr.d + 4];
    const float kept = planted;
    planted = NAN;
    const RankResult got = run_on_ranks(pr, q_lengths, k_lengths, options);
    const auto want = take_rows(oracle(pr, options), 1, pr.lq, pr.h * pr.d, got.q_segs);
    const NonfiniteComparison c = compare_nonfinite(got.out, want);
    INFO(what << ", a NaN value: " << c.ref_nonfinite << " NaN/Inf in the oracle, " << c.lost
              << " lost, " << c.spread << " spread, error " << c.max_error);
    bool column_4_only = true;
    for (std::size_t x = 0; x < want.size(); ++x) {
      const bool reads_nan = x % pr.d == 4 && x / pr.d % pr.h >= pr.h / 2;
      column_4_only = column_4_only && std::isfinite(want[x]) == !reads_nan;
    }
    CHECK(all_ranks(column_4_only));
    CHECK(all_ranks(c.lost == 0 && c.spread == 0));
    CHECK(all_ranks(c.max_error <= kTol));
    planted = kept;
  }
}

TEST_CASE("mpi: a row whose every visible score is -inf is NaN, as in one process",
          "[mpi][nonfinite]") {
  // Every key has a +Inf component where the queries of batch 0 are negative: those rows score
  // every slice -inf, and their output is 0 / 0 as in one process, though each rank's part
  // weighs nothing. Batch 1's queries are positive there: +Inf scores, NaN rows too. Batch 2's
  // keys are finite: its rows are finite and unaffected.
  const auto p = static_cast<std::size_t>(ranks());
  Problem pr(3, 3 * p, 2 * p + 1, 2, 1, 5, MaskKind::none);
  for (std::size_t b = 0; b < 2; ++b) {
    for (std::size_t i = 0; i < pr.lq * pr.h; ++i) {
      float& x = pr.q[(b * pr.lq * pr.h + i) * pr.d];
      x = (b == 0 ? -1.0f : 1.0f) * (std::abs(x) + 0.1f);
    }
    for (std::size_t key = 0; key < pr.lk; ++key) pr.k[(b * pr.lk + key) * pr.d] = INFINITY;
  }
  for (Path path : {Path::optimized, Path::naive}) {
    for (Layout layout : {Layout::contiguous, Layout::zigzag}) {
      simdattn::mpi::Options options;
      options.path = path;
      options.layout = layout;
      options.schedule = Schedule::ring;
      const RankResult got =
          run_on_ranks(pr, lengths_of(layout, pr.lq, {}), lengths_of(layout, pr.lk, {}), options);
      const auto want = take_rows(oracle(pr, options), pr.n, pr.lq, pr.h * pr.d, got.q_segs);
      const NonfiniteComparison c = compare_nonfinite(got.out, want);
      INFO((path == Path::naive ? "naive, " : "optimized, ")
           << (layout == Layout::zigzag ? "zigzag: " : "contiguous: ") << c.ref_nonfinite
           << " NaN/Inf in the oracle, " << c.lost << " lost, " << c.spread << " spread, error "
           << c.max_error);
      CHECK(all_ranks(c.ref_nonfinite == 2 * got.out.size() / 3));  // batches 0 and 1
      CHECK(all_ranks(c.lost == 0 && c.spread == 0));
      CHECK(all_ranks(c.max_error <= kTol));
    }
  }
}

TEST_CASE("mpi: the ring skips the causal future, zig-zag balances it", "[mpi]") {
  const int p = ranks(), r = rank();
  const Problem pr(1, 16 * static_cast<std::size_t>(p), 16 * static_cast<std::size_t>(p), 2, 2, 8,
                   MaskKind::causal_top_left);
  for (Layout layout : {Layout::contiguous, Layout::zigzag}) {
    simdattn::mpi::Options options;
    options.layout = layout;
    options.schedule = Schedule::ring;
    simdattn::mpi::Timings timings;
    options.timings = &timings;
    run_case(pr, lengths_of(layout, pr.lq, {}), lengths_of(layout, pr.lk, {}), options,
             expected(pr, options, kTol), "timings");
    const auto computed =
        std::count(timings.step_computed.begin(), timings.step_computed.end(), true);
    CHECK(timings.schedule == Schedule::ring);
    CHECK(timings.steps == p);
    CHECK(timings.step_compute_seconds.size() == static_cast<std::size_t>(p));
    CHECK(timings.bytes_sent == static_cast<std::size_t>(p - 1) * 2 * 16 * 2 * 8 * sizeof(float));
    // Contiguous: rank r sees the slices of ranks 0 .. r only. Zig-zag: every slice has keys
    // before one of the rank's chunks, so every step computes.
    CHECK(computed == (layout == Layout::contiguous ? r + 1 : p));
  }
  // Slices of different lengths: rank r passes on every slice but that of rank r + 1, which
  // it receives last.
  std::vector<std::size_t> k_lengths;
  for (int s = 0; s < p; ++s) k_lengths.push_back(2 * static_cast<std::size_t>(s) + 1);
  const Problem uneven(1, 3 * static_cast<std::size_t>(p), sum(k_lengths), 2, 2, 8, MaskKind::none);
  simdattn::mpi::Options options;
  options.schedule = Schedule::ring;
  simdattn::mpi::Timings timings;
  options.timings = &timings;
  run_case(uneven, lengths_of(Layout::contiguous, uneven.lq, {}), k_lengths, options,
           expected(uneven, options, kTol), "timings, uneven slices");
  const std::size_t passed_on =
      p == 1 ? 0 : sum(k_lengths) - k_lengths[static_cast<std::size_t>((r + 1) % p)];
  CHECK(timings.bytes_sent == passed_on * 2 * 2 * 8 * sizeof(float));
}

TEST_CASE("mpi: the automatic schedule follows the documented rule", "[mpi]") {
  const std::size_t p = static_cast<std::size_t>(ranks());
  // H = H_kv = 2P: all-to-all moves fewer bytes for P > 2. H = 2P, H_kv = P/... : GQA with
  // group 2 needs P > 3.
  for (std::size_t group : {1, 2}) {
    const std::size_t hkv = p, h = hkv * group;
    const Problem pr(1, 3 * p, 3 * p, h, hkv, 4, MaskKind::none);
    simdattn::mpi::Options options;
    simdattn::mpi::Timings timings;
    options.timings = &timings;
    run_case(pr, lengths_of(Layout::contiguous, pr.lq, {}),
             lengths_of(Layout::contiguous, pr.lk, {}), options, expected(pr, options, kTol),
             "automatic");
    const bool ulysses = p > 1 + group;
    INFO("P = " << p << ", H / H_kv = " << group);
    CHECK((timings.schedule == Schedule::ulysses) == ulysses);
  }
}

}  // namespace simdattn::test::mpi
