// Reliability: the same inputs give bitwise identical outputs run to run and for thread counts
// 1, 2 and 3 (and OpenMP's default, threads = 0). CTest runs this file once per ISA, so every
// ISA's kernels are covered.
//
// Sizes are above the serial-work limits of the drivers, so more threads really means another
// task split: the attention core cuts each (batch, head) into a different number of query-row
// tasks for 1, 2 and 3 threads, and the GEMMs run their blocks on other threads. Between two
// runs of one call, a call of another shape reuses the thread's scratch, so a kernel that
// reads scratch it did not write in this call shows up as a run-to-run difference.
// Inputs are finite: with NaN/Inf hidden by a mask, which rows it reaches may depend on the
// task split (see the README's reliability section and test_nonfinite.cpp).
#include <limits>
#include <numeric>
#include <vector>

#include "common.hpp"
#include "kernels/blocking.hpp"

namespace simdattn {
namespace {

using test::first_difference;
using test::SdpaProblem;

// NaN and Inf in every 7th element: scratch holding them poisons a later call that reads it
// before writing it (0 x NaN is NaN) instead of cancelling out.
void poison(std::vector<float>& x) {
  for (std::size_t i = 0; i < x.size(); i += 7) {
    x[i] = i % 2 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  }
}

// Calls of p's shapes (so the scratch layout is the same) and of another shape, with poisoned
// data, on 1 and 2 threads: what a run of p finds in its scratch afterwards.
void disturb_scratch(const SdpaProblem& p) {
  SdpaProblem same = p;
  poison(same.q);
  poison(same.v);
  const SdpaProblem other(1, 200, 130, 2, 72, 99);
  for (int threads : {1, 2}) {
    Options o;
    o.threads = threads;
    same.run({}, o);
    other.run({}, o);
  }
}

void disturb_scratch(const MultiHeadAttention& m, const ConstTensorView& like_q,
                     const ConstTensorView& like_kv) {
  std::vector<float> q(like_q.data, like_q.data + like_q.n * like_q.l * like_q.e);
  std::vector<float> kv(like_kv.data, like_kv.data + like_kv.n * like_kv.l * like_kv.e);
  poison(q);
  poison(kv);
  const ConstTensorView qv{q.data(), like_q.n, like_q.l, like_q.e},
      kvv{kv.data(), like_kv.n, like_kv.l, like_kv.e};
  for (int threads : {1, 2}) {
    Options o;
    o.threads = threads;
    m.forward(kvv, kvv, qv, {}, o);
    m.forward(qv, qv, qv, {}, o);
  }
}

}  // namespace

TEST_CASE("scaled_dot_product_attention is bitwise deterministic run to run and for 1-3 threads",
          "[reliability][determinism]") {
  // Two heads of Lq = 150 make tasks of 160, 48 and 32 query rows for 1, 2 and 3 threads, so
  // the kernels' row strips fall differently. Lq = 3 takes the decode (row) path with its own
  // split over heads. D = 24, 40 and Lk = 133, 1501 leave vector and key-block tails.
  const SdpaProblem tile(1, 150, 133, 2, 24, 1);
  const SdpaProblem decode(1, 3, 1501, 2, 40, 2);
  for (const SdpaProblem* p : {&tile, &decode}) {
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto m = test::make_mask(kind, p->n, p->h, p->lq, p->lk, 3);
      Options o;
      o.causal = m.causal;
      o.threads = 1;
      INFO("Lq " << p->lq << ", mask " << test::mask_kind_name(kind));
      const auto base = p->run(m.mask, o);
      test::check_close(base.data(), p->oracle(m.mask, o), "threads = 1 vs oracle");
      disturb_scratch(*p);  // every later run finds poisoned scratch on its threads
      for (int threads : {1, 2, 3, 0}) {
        o.threads = threads;
        INFO("threads " << threads);
        CHECK(first_difference(base, p->run(m.mask, o)) == "");
      }
    }
  }
}

TEST_CASE("MultiHeadAttention::forward with a packed weight above 4 MiB: oracle, 1-3 threads",
          "[reliability][determinism]") {
  // E = 600: the [3E, E] self-attention weight (4.3 MB) is past the projection driver's
  // kGemmWeightMajorBytes, so its tasks run in weight-major order. 2 x 96 rows make 2 row
  // blocks against the weight's 8 column blocks: counts with a common factor, so that a task
  // index split with one order's row and the other's column misses blocks (with coprime
  // counts, t % rows and t % columns would still cover every block once).
  const std::size_t e = 600, heads = 4, n = 2, l = 96;
  // The premises, checked: below the limit, or with coprime block counts, this case would test
  // nothing new.
  REQUIRE(3 * e * e * sizeof(float) > kernels::kGemmWeightMajorBytes);
  REQUIRE(std::gcd((n * l + kernels::kGemmTaskRows - 1) / kernels::kGemmTaskRows,
                   (3 * e + kernels::kGemmTaskCols - 1) / kernels::kGemmTaskCols) > 1);
  MultiHeadAttention m(e, heads, 31);
  const auto x = test::random_normal(n * l * e, 32);
  const ConstTensorView xv{x.data(), n, l, e};
  Options o;
  o.threads = 1;
  std::vector<float> base(n * l * e);
  m.forward(xv, xv, xv, {}, {base.data(), n, l, e}, o);
  test::check_close(base.data(), test::oracle_forward(m, xv, xv, xv, {}, o),
                    "threads = 1 vs oracle");
  disturb_scratch(m, xv, xv);
  for (int threads : {1, 2, 3, 0}) {
    o.threads = threads;
    std::vector<float> out(n * l * e, -1.0f);
    m.forward(xv, xv, xv, {}, {out.data(), n, l, e}, o);
    INFO("threads " << threads);
    CHECK(first_difference(base, out) == "");
  }
}

TEST_CASE("MultiHeadAttention::forward is bitwise deterministic run to run and for 1-3 threads",
          "[reliability][determinism]") {
  // E = 100, H = 4 (head_dim 25): the [3E, E] self-attention GEMM has several row and column
  // blocks at N x L = 2 x 97, and the attention core is above its serial limit.
  const std::size_t e = 100, heads = 4, n = 2, lq = 97, lk = 113;
  MultiHeadAttention m(e, heads, 21);
  m.set_bias(Projection::value, test::random_normal(e, 22));
  const auto x = test::random_normal(n * lq * e, 23);
  const auto kv = test::random_normal(n * lk * e, 24);
  const auto vals = test::random_normal(n * lk * e, 25);
  struct Case {
    const char* name;
    ConstTensorView v, k, q;
  };
  const Case cases[] = {
      {"self-attention", {x.data(), n, lq, e}, {x.data(), n, lq, e}, {x.data(), n, lq, e}},
      {"shared keys/values", {kv.data(), n, lk, e}, {kv.data(), n, lk, e}, {x.data(), n, lq, e}},
      {"cross-attention", {vals.data(), n, lk, e}, {kv.data(), n, lk, e}, {x.data(), n, lq, e}},
  };
  for (const Case& c : cases) {
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto mask = test::make_mask(kind, n, heads, lq, c.k.l, 4);
      Options o;
      o.causal = mask.causal;
      o.threads = 1;
      INFO(c.name << ", mask " << test::mask_kind_name(kind));
      std::vector<float> base(n * lq * e);
      m.forward(c.v, c.k, c.q, mask.mask, {base.data(), n, lq, e}, o);
      test::check_close(base.data(), test::oracle_forward(m, c.v, c.k, c.q, mask.mask, o),
                        "threads = 1 vs oracle");
      disturb_scratch(m, c.q, c.k);
      for (int threads : {1, 2, 3, 0}) {
        o.threads = threads;
        std::vector<float> out(n * lq * e, -1.0f);
        m.forward(c.v, c.k, c.q, mask.mask, {out.data(), n, lq, e}, o);
        INFO("threads " << threads);
        CHECK(first_difference(base, out) == "");
      }
    }
  }
}

}  // namespace simdattn
