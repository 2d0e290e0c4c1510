// The kernels of every ISA this machine runs, called directly through their tables: the vector
// exp's accuracy over the range softmax feeds it, and the projection GEMM on odd shapes.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common.hpp"
#include "isa/registry.hpp"
#include "kernels/blocking.hpp"
#include "kernels/gemm/pack.hpp"
#include "kernels/kernel_table.hpp"

namespace simdattn {
namespace {

std::vector<const kernels::KernelTable*> tables() {
  std::vector<const kernels::KernelTable*> out;
  for (Isa isa : available_isas()) {
    if (const kernels::KernelTable* t = kernels::table_for(isa)) out.push_back(t);
  }
  return out;
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float, FreeDeleter>;
AlignedFloats aligned_floats(std::size_t n) {
  return AlignedFloats(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)));
}

// Largest relative error of a table's vector function `f` against `want` (double) on 2^20
// points evenly spread over [lo, 0].
double worst_relative_error(void (*f)(const float*, float*, std::size_t), float lo,
                            double (*want)(double)) {
  constexpr std::size_t kCount = 1 << 20;
  std::vector<float> x(kCount), y(kCount);
  for (std::size_t i = 0; i < kCount; ++i) x[i] = lo * static_cast<float>(i) / (kCount - 1);
  f(x.data(), y.data(), kCount);
  double worst = 0.0;
  for (std::size_t i = 0; i < kCount; ++i) {
    const double w = want(static_cast<double>(x[i]));
    worst = std::max(worst, std::fabs(y[i] - w) / w);
  }
  return worst;
}

double exp_double(double x) {
  return std::exp(x);
}
double exp2_double(double x) {
  return std::exp2(x);
}

// C = A B^T (+ bias) over the whole of packed B: the arguments every GEMM test sets.
kernels::GemmArgs gemm_args(const float* a, std::size_t lda, std::size_t m, std::size_t n,
                            std::size_t k, const float* b_packed, const float* bias, float* c,
                            std::size_t ldc, float* a_pack) {
  return kernels::GemmArgs{a, lda, m, n, k, b_packed, bias, c, ldc, a_pack};  // in field order
}

}  // namespace

TEST_CASE("kernel exp: relative error at most 2 ulp on [-87.3, 0], exact at the edges",
          "[kernels]") {
  // The decode path's softmax feeds exp with s - max <= 0; below -87.3 the result is denormal
  // or 0.
  for (const kernels::KernelTable* t : tables()) {
    INFO("ISA " << isa_name(t->isa));
    const double worst = worst_relative_error(t->exp, -87.3f, exp_double);
    // Measured 2026-11-27, xsimd 8.1, every ISA: see WARN output; 1 ulp = 2^-23 = 1.19e-7.
    WARN(isa_name(t->isa) << " exp max relative error " << worst);
    CHECK(worst <= 2.0 * std::numeric_limits<float>::epsilon());
    const float edges[] = {0.0f, -std::numeric_limits<float>::infinity(), -200.0f, -1e-30f};
    float out[4];
    t->exp(edges, out, 4);
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == 0.0f);
    CHECK(out[2] == 0.0f);
    CHECK(out[3] == 1.0f);
  }
}

TEST_CASE("kernel exp2: relative error at most 2 ulp on [-126, 0], exact at the edges",
          "[kernels]") {
  // The tile path's softmax feeds 2^x with x = s - max <= 0 (scores in base 2); below -126 the
  // result is denormal (flushed in the kernels) or 0.
  for (const kernels::KernelTable* t : tables()) {
    INFO("ISA " << isa_name(t->isa));
    const double worst = worst_relative_error(t->exp2, -126.0f, exp2_double);
    // Measured 2026-11-30: 1.64e-7 (1.4 ulp) with FMA, 1.80e-7 on SSE2; see WARN output.
    WARN(isa_name(t->isa) << " exp2 max relative error " << worst);
    CHECK(worst <= 2.0 * std::numeric_limits<float>::epsilon());
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float edges[] = {
        0.0f, -std::numeric_limits<float>::infinity(), -200.0f, -127.0f, -1e-30f, nan, -1.0f,
        -0.5f};
    float out[8];
    t->exp2(edges, out, 8);
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == 0.0f);
    CHECK(out[2] == 0.0f);
    CHECK(out[3] == 0.0f);
    CHECK(out[4] == 1.0f);
    CHECK(std::isnan(out[5]));
    CHECK(out[6] == 0.5f);
    CHECK(std::fabs(out[7] - 0.70710678f) <= 2e-7f);
  }
}

TEST_CASE("kernel tanh (soft-capping): at most 3 ulp on [-20, 20], odd, exact at the edges",
          "[kernels]") {
  constexpr std::size_t kCount = 1 << 20;
  std::vector<float> x(kCount), y(kCount);
  for (std::size_t i = 0; i < kCount; ++i) {
    x[i] = -20.0f + 40.0f * static_cast<float>(i) / (kCount - 1);
  }
  for (const kernels::KernelTable* t : tables()) {
    INFO("ISA " << isa_name(t->isa));
    t->tanh(x.data(), y.data(), kCount);
    double worst = 0.0;
    for (std::size_t i = 0; i < kCount; ++i) {
      const double w = std::tanh(static_cast<double>(x[i]));
      if (w != 0.0) worst = std::max(worst, std::fabs(y[i] - w) / std::fabs(w));
    }
    // Measured 2026-11-30 on every ISA; see WARN output. 1 ulp = 2^-23 = 1.19e-7.
    WARN(isa_name(t->isa) << " tanh max relative error " << worst);
    CHECK(worst <= 3.0 * std::numeric_limits<float>::epsilon());
    const float inf = std::numeric_limits<float>::infinity();
    const float edges[] = {0.0f,   -0.0f,   inf,    -inf,
                           1e-30f, -1e-30f, 100.0f, std::numeric_limits<float>::quiet_NaN()};
    float out[8];
    t->tanh(edges, out, 8);
    CHECK(out[0] == 0.0f);
    CHECK(std::signbit(out[1]));
    CHECK(out[2] == 1.0f);
    CHECK(out[3] == -1.0f);
    CHECK(out[4] == 1e-30f);
    CHECK(out[5] == -1e-30f);
    CHECK(out[6] == 1.0f);
    CHECK(std::isnan(out[7]));
  }
}

TEST_CASE("kernel GEMM matches a double product on odd shapes, with and without bias",
          "[kernels]") {
  struct Shape {
    std::size_t m, n, k;
  };
  // n past one and two panels, k past one kKc = 256 pass, m past one micro-tile and past the
  // kGemmTaskRows rows of A's copy; calls of fewer rows than a micro-tile (several panels per
  // tile) with n past whole groups of them, and remainders of panels shared with the tile
  // before (the tutorial's 2 x 256 x 256). A's rows are 3 floats wider than k.
  const Shape shapes[] = {{1, 1, 1},      {2, 17, 3},    {13, 33, 257}, {7, 48, 64},
                          {25, 100, 600}, {3, 16, 512},  {12, 32, 256}, {2, 209, 300},
                          {1, 200, 257},  {5, 403, 64},  {2, 256, 256}, {1, 100, 70},
                          {100, 40, 300}, {131, 17, 37}, {97, 64, 513}};
  AlignedFloats a_pack = aligned_floats(kernels::kGemmPackFloats);
  for (const kernels::KernelTable* t : tables()) {
    for (const Shape& sh : shapes) {
      for (bool with_bias : {false, true}) {
        INFO("ISA " << isa_name(t->isa) << " m=" << sh.m << " n=" << sh.n << " k=" << sh.k
                    << " bias=" << with_bias);
        const std::size_t lda = sh.k + 3;
        const auto a = test::random_normal(sh.m * lda, 1);
        const auto w = test::random_normal(sh.n * sh.k, 2);  // [n, k], PyTorch layout
        const auto bias = test::random_normal(sh.n, 3);
        AlignedFloats packed = aligned_floats(kernels::packed_weight_floats(sh.n, sh.k));
        kernels::pack_weight(w.data(), sh.n, sh.k, sh.k, packed.get());
        const std::size_t ldc = sh.n + 5;  // a row stride wider than the row
        std::vector<float> c(sh.m * ldc, 7.0f), in_place(sh.m * ldc, 7.0f);
        kernels::GemmArgs g =
            gemm_args(a.data(), lda, sh.m, sh.n, sh.k, packed.get(),
                      with_bias ? bias.data() : nullptr, in_place.data(), ldc, nullptr);
        t->gemm(g);
        // With scratch for A's copy (where the ISA's tile uses one): the same sums, bit for bit.
        // The scratch starts as NaN, so that a read of anything the copy did not write (past
        // k, or past the copied rows) reaches C. An ISA that does not copy leaves it untouched.
        std::fill(a_pack.get(), a_pack.get() + kernels::kGemmPackFloats,
                  std::numeric_limits<float>::quiet_NaN());
        g.c = c.data();
        g.a_pack = a_pack.get();
        t->gemm(g);
        REQUIRE(std::memcmp(c.data(), in_place.data(), c.size() * sizeof(float)) == 0);
        const bool scratch_written =
            std::any_of(a_pack.get(), a_pack.get() + kernels::kGemmPackFloats,
                        [](float x) { return !std::isnan(x); });
        // From a whole micro-tile of rows (the largest over ISAs, so whatever this ISA's) a
        // copying ISA takes the tiled path, which copies.
        constexpr std::size_t kWholeTile =
            std::max({kernels::GemmTileFor<16>::kMr, kernels::GemmTileFor<8>::kMr,
                      kernels::GemmTileFor<4>::kMr});
        if (!t->gemm_copies_a) REQUIRE_FALSE(scratch_written);
        if (t->gemm_copies_a && sh.m >= kWholeTile) REQUIRE(scratch_written);
        double worst = 0.0, scale = 0.0;
        for (std::size_t i = 0; i < sh.m; ++i) {
          for (std::size_t j = 0; j < sh.n; ++j) {
            double want = with_bias ? bias[j] : 0.0;
            for (std::size_t p = 0; p < sh.k; ++p) {
              want += static_cast<double>(a[i * lda + p]) * w[j * sh.k + p];
            }
            worst = std::max(worst, std::fabs(c[i * ldc + j] - want));
            scale = std::max(scale, std::fabs(want));
          }
          for (std::size_t j = sh.n; j < ldc; ++j) REQUIRE(c[i * ldc + j] == 7.0f);  // untouched
        }
        CHECK(worst <= 1e-5 * std::max(1.0, scale) * std::sqrt(static_cast<double>(sh.k)));
      }
    }
  }
}

TEST_CASE("kernel GEMM: every micro-tile shape matches a double product", "[kernels]") {
  // Each ISA instantiates its micro-kernel for every row count up to its tile's (a call's last
  // rows, or a call of fewer rows than a tile) and every panel count up to its widest (calls of
  // few rows), each with whole and partial last panels. Rows 1 to 2 tiles of the largest ISA
  // and 1 to 2 x kMaxFewRowPanels + 1 panels reach them all; the odd shape lists above do not.
  constexpr std::size_t kMaxRows = 2 * kernels::GemmTileFor<16>::kMr;
  constexpr std::size_t kMaxPanels = 2 * kernels::kMaxFewRowPanels + 1;
  const std::size_t k = 37, lda = k + 1;
  const auto a = test::random_normal(kMaxRows * lda, 11);
  const auto w = test::random_normal(kMaxPanels * kernels::kPanel * k, 12);
  const auto bias = test::random_normal(kMaxPanels * kernels::kPanel, 13);
  AlignedFloats a_pack = aligned_floats(kernels::kGemmPackFloats);
  for (std::size_t panels = 1; panels <= kMaxPanels; ++panels) {
    for (std::size_t n : {panels * kernels::kPanel, panels * kernels::kPanel - 5}) {
      AlignedFloats packed = aligned_floats(kernels::packed_weight_floats(n, k));
      kernels::pack_weight(w.data(), n, k, k, packed.get());
      std::vector<double> want(kMaxRows * n);
      for (std::size_t i = 0; i < kMaxRows; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
          double x = bias[j];
          for (std::size_t p = 0; p < k; ++p)
            x += static_cast<double>(a[i * lda + p]) * w[j * k + p];
          want[i * n + j] = x;
        }
      }
      for (const kernels::KernelTable* t : tables()) {
        for (std::size_t m = 1; m <= kMaxRows; ++m) {
          INFO("ISA " << isa_name(t->isa) << " m=" << m << " n=" << n << " k=" << k);
          std::vector<float> c(m * n, std::nanf(""));
          t->gemm(gemm_args(a.data(), lda, m, n, k, packed.get(), bias.data(), c.data(), n,
                            a_pack.get()));
          // C starts as NaN: an element the kernel did not write fails too.
          std::size_t wrong = 0;
          for (std::size_t x = 0; x < m * n; ++x) wrong += !(std::fabs(c[x] - want[x]) <= 1e-4);
          CHECK(wrong == 0);
        }
      }
    }
  }
}

TEST_CASE("kernel GEMM: a row's result does not depend on how many rows the call has",
          "[kernels]") {
  // Calls of fewer rows than a micro-tile take wider tiles; every element must still sum its
  // k products in the same order, bit for bit, as inside a larger call.
  const std::size_t m = 29, n = 333, k = 300;
  const auto a = test::random_normal(m * k, 4);
  const auto w = test::random_normal(n * k, 5);
  const auto bias = test::random_normal(n, 6);
  AlignedFloats packed = aligned_floats(kernels::packed_weight_floats(n, k));
  kernels::pack_weight(w.data(), n, k, k, packed.get());
  AlignedFloats a_pack = aligned_floats(kernels::kGemmPackFloats);  // as the driver passes
  std::fill(a_pack.get(), a_pack.get() + kernels::kGemmPackFloats,
            std::numeric_limits<float>::quiet_NaN());  // a read of what no copy wrote shows
  for (const kernels::KernelTable* t : tables()) {
    INFO("ISA " << isa_name(t->isa));
    std::vector<float> all(m * n), few(m * n);
    kernels::GemmArgs g =
        gemm_args(a.data(), k, m, n, k, packed.get(), bias.data(), all.data(), n, a_pack.get());
    t->gemm(g);
    for (std::size_t r0 = 0; r0 < m;) {  // blocks of 1, 2, 3, ... rows
      const std::size_t rows = std::min(m - r0, r0 % 7 + 1);
      g.a = a.data() + r0 * k;
      g.m = rows;
      g.c = few.data() + r0 * n;
      t->gemm(g);
      r0 += rows;
    }
    CHECK(std::memcmp(all.data(), few.data(), m * n * sizeof(float)) == 0);
  }
}

}  // namespace simdattn
