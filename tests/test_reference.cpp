// The naive reference: tiny cases worked out by hand (through the public API, on both paths),
// and the float reference against the double oracle on random inputs.
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

// A module whose four projections are the given [E, E] matrices and whose output bias is `bo`.
MultiHeadAttention module_with(std::size_t e, std::size_t heads, const std::vector<float>& wq,
                               const std::vector<float>& wk, const std::vector<float>& wv,
                               const std::vector<float>& wo, const std::vector<float>& bo) {
  MultiHeadAttention m(e, heads, 99);
  m.set_weight(Projection::query, wq);
  m.set_weight(Projection::key, wk);
  m.set_weight(Projection::value, wv);
  m.set_weight(Projection::output, wo);
  m.set_bias(Projection::output, bo);
  return m;
}

void check_values(const Tensor& out, const std::vector<double>& expected, double rel = 1e-6) {
  REQUIRE(out.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("element " << i);
    CHECK(out.data()[i] == Approx(expected[i]).epsilon(rel).margin(1e-7));
  }
}

}  // namespace

TEST_CASE("reference::linear computes x W^T + b with W in PyTorch's [out, in] layout",
          "[reference]") {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};   // [2, 3]
  const std::vector<float> w = {1, 0, -1, 2, 1, 0};  // [out 2, in 3]
  const std::vector<float> b = {10, 20};
  std::vector<float> y(4);
  reference::linear<float>(x.data(), 2, 3, w.data(), 2, b.data(), y.data());
  // Row 0: [1 - 3 + 10, 2 + 2 + 20]; row 1: [4 - 6 + 10, 8 + 5 + 20].
  CHECK(y == std::vector<float>{8, 24, 8, 33});
  reference::linear<float>(x.data(), 2, 3, w.data(), 2, nullptr, y.data());
  CHECK(y == std::vector<float>{-2, 4, -2, 13});
}

TEST_CASE("hand case: E=2, H=1, identity weights, L=2", "[reference][hand]") {
  const std::vector<float> id = {1, 0, 0, 1};
  const auto m = module_with(2, 1, id, id, id, id, {0, 0});
  // Q = K = V = x = I. Scores row 0: [1, 0] / sqrt(2); softmax [a, 1 - a] with
  // a = 1 / (1 + exp(-1/sqrt(2))) = 0.66976154932665...; out row 0 = [a, 1 - a], row 1 mirrored.
  const Tensor x(1, 2, 2, {1, 0, 0, 1});
  const double a = 0.6697615493266569, b = 0.3302384506733431;
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    check_values(m.forward(x, x, x, {}, o), {a, b, b, a});
  }
}

TEST_CASE("hand case: causal top-left, a single visible key copies its value exactly",
          "[reference][hand]") {
  const std::vector<float> id = {1, 0, 0, 1};
  const auto m = module_with(2, 1, id, id, id, id, {0, 0});
  const Tensor x(1, 2, 2, {1, 2, 3, 4});
  // Row 0 sees key 0 only: weight exactly 1, output exactly [1, 2]. Row 1: scores
  // [3 + 8, 9 + 16] / sqrt(2) = [11, 25] / sqrt(2); p1 = 1 / (1 + exp(-14 / sqrt(2))) =
  // 0.99994980249006...; out = (1 - p1) [1, 2] + p1 [3, 4].
  const double p1 = 0.9999498024900648;
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    o.causal = Causal::top_left;
    const Tensor out = m.forward(x, x, x, {}, o);
    CHECK(out.at(0, 0, 0) == 1.0f);
    CHECK(out.at(0, 0, 1) == 2.0f);
    check_values(out, {1, 2, (1 - p1) * 1 + p1 * 3, (1 - p1) * 2 + p1 * 4});
  }
}

TEST_CASE("hand case: E=2, H=2 (head_dim 1), non-identity weights and output bias",
          "[reference][hand]") {
  // Q = x Wq^T: rows [2, 0], [0, 1]. K = x: rows [1, 0], [0, 1]. V = x Wv^T: rows [0, 1], [1, 0].
  // Scale 1/sqrt(1) = 1. Head 0 (column 0): q = [2, 0], k = [1, 0], v = [0, 1]
  //   row 0: scores [2, 0] -> out = sigmoid(-2); row 1: scores [0, 0] -> out = 0.5.
  // Head 1 (column 1): q = [0, 1], k = [0, 1], v = [1, 0]
  //   row 0: scores [0, 0] -> out = 0.5;        row 1: scores [0, 1] -> out = sigmoid(-1).
  // Concatenated: [s2, 0.5], [0.5, s1]. Output: out[0] = c0 + c1 + 0.5, out[1] = c1 - 0.5.
  const auto m =
      module_with(2, 2, {2, 0, 0, 1}, {1, 0, 0, 1}, {0, 1, 1, 0}, {1, 1, 0, 1}, {0.5f, -0.5f});
  const Tensor x(1, 2, 2, {1, 0, 0, 1});
  const double s2 = 0.11920292202211755, s1 = 0.2689414213699951;  // sigmoid(-2), sigmoid(-1)
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    check_values(m.forward(x, x, x, {}, o), {s2 + 1.0, 0.0, 1.0 + s1, s1 - 0.5});
  }
}

TEST_CASE("hand case: a fully masked row averages all values, or is zero by option",
          "[reference][hand]") {
  const std::vector<float> id = {1, 0, 0, 1};
  const auto m = module_with(2, 1, id, id, id, id, {0, 0});
  const Tensor x(1, 2, 2, {1, 2, 3, 4});
  const std::uint8_t bytes[] = {0, 0, 1, 1};  // [1, 1, 2, 2]: query 0 sees no key
  const Mask mask{bytes, 1, 1, 2, 2};
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    // The tutorial's -1e20 fill makes every score equal: the plain mean of [1, 2] and [3, 4].
    Tensor out = m.forward(x, x, x, mask, o);
    CHECK(out.at(0, 0, 0) == 2.0f);
    CHECK(out.at(0, 0, 1) == 3.0f);
    o.masked_rows = MaskedRows::zeros;
    out = m.forward(x, x, x, mask, o);
    CHECK(out.at(0, 0, 0) == 0.0f);
    CHECK(out.at(0, 0, 1) == 0.0f);
    CHECK(out.at(0, 1, 0) > 2.0f);  // row 1 is not affected by the policy
  }
}

TEST_CASE("the float reference agrees with the double oracle", "[reference]") {
  const std::size_t n = 2, lq = 13, lk = 29, h = 3, d = 17;
  const auto q = test::random_normal(n * lq * h * d, 1);
  const auto k = test::random_normal(n * lk * h * d, 2);
  const auto v = test::random_normal(n * lk * h * d, 3);
  for (test::MaskKind kind : test::kAllMaskKinds) {
    INFO("mask " << test::mask_kind_name(kind));
    const auto mc = test::make_mask(kind, n, h, lq, lk);
    Options o;
    o.causal = mc.causal;
    const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
        vv{v.data(), n, lk, h, d};
    const auto ref = test::oracle_sdpa(qv, kv, vv, mc.mask, o);
    std::vector<float> out(ref.size());
    const std::size_t hd = h * d;
    using CH = reference::Heads<const float>;
    reference::attention<float>(CH{q.data(), n, lq, h, d, hd, lq * hd},
                                CH{k.data(), n, lk, h, d, hd, lk * hd},
                                CH{v.data(), n, lk, h, d, hd, lk * hd},
                                reference::Heads<float>{out.data(), n, lq, h, d, hd, lq * hd},
                                detail::MaskRule{mc.mask, mc.causal, lq, lk},
                                static_cast<float>(test::resolved_scale(o, d)), o.masked_rows);
    test::check_close(out.data(), ref, "reference::attention<float>");
  }
}

TEST_CASE("the naive path is the float reference, and it agrees with the double oracle",
          "[reference]") {
  const std::size_t n = 2, lq = 9, lk = 14, e = 45, heads = 3;
  const MultiHeadAttention m(e, heads, 5);
  const Tensor values = Tensor::randn(n, lk, e, 11);
  const Tensor keys = Tensor::randn(n, lk, e, 12);
  const Tensor query = Tensor::randn(n, lq, e, 13);
  Options o;
  o.path = Path::naive;
  const Tensor out = m.forward(values, keys, query, {}, o);

  std::vector<float> w[4];
  const Projection projections[4] = {Projection::query, Projection::key, Projection::value,
                                     Projection::output};
  for (int i = 0; i < 4; ++i) w[i] = m.weight(projections[i]);
  const reference::Weights<float> weights{
      w[0].data(), w[1].data(), w[2].data(), w[3].data(),
      nullptr,     nullptr,     nullptr,     m.bias(Projection::output).data()};
  std::vector<float> direct(out.size()), scratch;
  reference::multi_head_attention<float>(values.data(), keys.data(), query.data(), n, lk, lq, e,
                                         heads, weights, detail::MaskRule{{}, Causal::none, lq, lk},
                                         1.0f / std::sqrt(15.0f), MaskedRows::uniform,
                                         direct.data(), scratch);
  CHECK(std::memcmp(direct.data(), out.data(), out.size() * sizeof(float)) == 0);
  test::check_close(out.data(), test::oracle_forward(m, values, keys, query, {}, o),
                    "naive forward");
}
