// MultiHeadAttention: shapes, heads and head sizes, input layouts, scale conventions, parameters
// (setters, getters, seeded initialisation) and the two forms of forward().
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

constexpr Projection kProjections[] = {Projection::query, Projection::key, Projection::value,
                                       Projection::output};

}  // namespace

TEST_CASE("the tutorial's quick start: self and cross attention shapes", "[module]") {
  const MultiHeadAttention attention(256, 8);
  const Tensor x = Tensor::randn(1, 2, 256, 1);
  const Tensor encoder = Tensor::randn(1, 20, 256, 2);
  const Tensor decoder = Tensor::randn(1, 10, 256, 3);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const Tensor self = attention.forward(x, x, x, {}, o);
    CHECK(self.shape_string() == "[1, 2, 256]");
    test::check_close(self.data(), test::oracle_forward(attention, x, x, x), "self");
    const Tensor cross = attention.forward(encoder, encoder, decoder, {}, o);
    CHECK(cross.shape_string() == "[1, 10, 256]");
    test::check_close(cross.data(), test::oracle_forward(attention, encoder, encoder, decoder),
                      "cross");
  }
}

TEST_CASE("heads 1..16 with head_dim 1, 3, 15, 17, N > 1, self and cross", "[module]") {
  const std::size_t dims[] = {1, 3, 15, 17};
  for (std::size_t heads = 1; heads <= 16; ++heads) {
    const std::size_t d = dims[heads % 4], e = heads * d, n = 1 + heads % 3;
    const std::size_t lq = 3 + heads % 5, lk = 11 - heads % 4;
    const MultiHeadAttention m(e, heads, heads);
    CHECK(m.embed_size() == e);
    CHECK(m.heads() == heads);
    CHECK(m.head_dim() == d);
    const Tensor x = Tensor::randn(n, lk, e, 100 + heads);
    const Tensor query = Tensor::randn(n, lq, e, 200 + heads);
    const auto ref_self = test::oracle_forward(m, x, x, x);
    const auto ref_cross = test::oracle_forward(m, x, x, query);
    for (Path path : kPaths) {
      INFO("heads " << heads << " head_dim " << d << " N " << n << " Lq " << lq << " Lk " << lk
                    << " path " << path_name(path));
      Options o;
      o.path = path;
      const Tensor self = m.forward(x, x, x, {}, o);
      CHECK((self.n() == n && self.l() == lk && self.e() == e));
      test::check_close(self.data(), ref_self, "self");
      const Tensor cross = m.forward(x, x, query, {}, o);
      CHECK((cross.n() == n && cross.l() == lq && cross.e() == e));
      test::check_close(cross.data(), ref_cross, "cross");
    }
  }
}

TEST_CASE("one buffer, shared keys/values, and separate buffers give the same result", "[module]") {
  // The optimized path has three routes (one fused QKV GEMM, a fused KV GEMM, three GEMMs); the
  // naive path reads each distinct tensor once.
  const std::size_t n = 3, l = 19, e = 48, heads = 4;
  MultiHeadAttention m(e, heads, 8);
  m.set_bias(Projection::key, test::random_normal(e, 4));
  m.set_bias(Projection::value, test::random_normal(e, 5));
  const Tensor x = Tensor::randn(n, l, e, 9);
  const Tensor x_copy1(n, l, e, x.values()), x_copy2(n, l, e, x.values());
  const Tensor query = Tensor::randn(n, 7, e, 10), other = Tensor::randn(n, l, e, 11);
  const auto ref_self = test::oracle_forward(m, x, x, x);
  const auto ref_cross = test::oracle_forward(m, x, x, query);
  // The query shared with the keys only, or with the values only.
  const auto ref_query_keys = test::oracle_forward(m, other, x, x);
  const auto ref_query_values = test::oracle_forward(m, x, other, x);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    test::check_close(m.forward(x, x, x, {}, o).data(), ref_self, "one buffer");
    test::check_close(m.forward(x_copy1, x_copy2, x, {}, o).data(), ref_self, "three buffers");
    test::check_close(m.forward(x, x, query, {}, o).data(), ref_cross, "shared keys/values");
    test::check_close(m.forward(x_copy1, x, query, {}, o).data(), ref_cross, "separate K and V");
    test::check_close(m.forward(other, x, x, {}, o).data(), ref_query_keys, "query = keys");
    test::check_close(m.forward(x, other, x, {}, o).data(), ref_query_values, "query = values");
  }
}

TEST_CASE("scale: 1/sqrt(head_dim) by default, the tutorial's 1/sqrt(embed_size) on request",
          "[module][scale]") {
  const std::size_t n = 2, l = 12, e = 64, heads = 4;
  const MultiHeadAttention m(e, heads, 21);
  const Tensor x = Tensor::randn(n, l, e, 22);
  CHECK(tutorial_scale(e) == 1.0f / std::sqrt(64.0f));
  CHECK(tutorial_scale(256) == 0.0625f);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const Tensor by_default = m.forward(x, x, x, {}, o);
    Options explicit_scale = o;
    explicit_scale.scale = 1.0f / std::sqrt(16.0f);  // head_dim 16
    const Tensor explicit_out = m.forward(x, x, x, {}, explicit_scale);
    CHECK(std::memcmp(by_default.data(), explicit_out.data(), by_default.size() * 4) == 0);

    Options tutorial = o;
    tutorial.scale = tutorial_scale(e);
    const Tensor tutorial_out = m.forward(x, x, x, {}, tutorial);
    test::check_close(tutorial_out.data(), test::oracle_forward(m, x, x, x, {}, tutorial),
                      "tutorial scale");
    // With several heads the two conventions differ measurably.
    const auto c = test::compare(tutorial_out.data(), test::to_double(by_default.values()).data(),
                                 by_default.size());
    CHECK(c.rel_frobenius > 1e-3);

    Options odd = o;
    odd.scale = 0.37f;
    test::check_close(m.forward(x, x, x, {}, odd).data(), test::oracle_forward(m, x, x, x, {}, odd),
                      "scale 0.37");
  }
}

TEST_CASE("weights and biases round-trip through setters and getters", "[module][params]") {
  // E = 48: Q, K and V are whole GEMM panels, packed as slices of one copy; E = 12: apart.
  const std::size_t e = GENERATE(as<std::size_t>{}, 12, 48);
  INFO("E = " << e);
  MultiHeadAttention m(e, 3, 1);
  std::vector<float> w[4];
  for (int i = 0; i < 4; ++i) {
    w[i] = test::random_normal(e * e, 30 + i);
    m.set_weight(kProjections[i], w[i]);
  }
  for (int i = 0; i < 4; ++i) CHECK(m.weight(kProjections[i]) == w[i]);

  for (int i = 0; i < 3; ++i) {
    CHECK_FALSE(m.has_bias(kProjections[i]));
    CHECK(m.bias(kProjections[i]).empty());
  }
  CHECK(m.has_bias(Projection::output));
  std::vector<float> b[4];
  for (int i = 0; i < 4; ++i) {
    b[i] = test::random_normal(e, 40 + i);
    m.set_bias(kProjections[i], b[i].data(), b[i].size());  // the pointer form
  }
  for (int i = 0; i < 4; ++i) {
    CHECK(m.has_bias(kProjections[i]));
    CHECK(m.bias(kProjections[i]) == b[i]);
    CHECK(m.weight(kProjections[i]) == w[i]);  // a bias never touches a weight
  }

  // forward() uses every parameter that was set: the oracle reads them through the getters.
  const Tensor values = Tensor::randn(2, 9, e, 50), keys = Tensor::randn(2, 9, e, 51),
               query = Tensor::randn(2, 5, e, 52);
  // Cross-attention (a GEMM per projection), self-attention (one against [Wq; Wk; Wv]) and
  // keys and values from one buffer (one against [Wk; Wv]).
  auto check_forward = [&](const char* what, const MultiHeadAttention& mod) {
    for (Path path : kPaths) {
      Options o;
      o.path = path;
      INFO("path " << path_name(path));
      test::check_close(mod.forward(values, keys, query, {}, o).data(),
                        test::oracle_forward(mod, values, keys, query), what);
      test::check_close(mod.forward(query, query, query, {}, o).data(),
                        test::oracle_forward(mod, query, query, query), what);
      test::check_close(mod.forward(keys, keys, query, {}, o).data(),
                        test::oracle_forward(mod, keys, keys, query), what);
    }
  };
  check_forward("with all biases", m);
  // One weight replaced: every GEMM that reads it sees the new one, and only it.
  w[1] = test::random_normal(e * e, 60);
  m.set_weight(Projection::key, w[1]);
  for (int i = 0; i < 4; ++i) CHECK(m.weight(kProjections[i]) == w[i]);
  check_forward("after set_weight(key)", m);

  m.clear_bias(Projection::value);
  CHECK_FALSE(m.has_bias(Projection::value));
  CHECK(m.bias(Projection::value).empty());
  CHECK(m.bias(Projection::key) == b[1]);
  m.clear_bias(Projection::output);
  CHECK(m.has_bias(Projection::output));
  CHECK(m.bias(Projection::output) == std::vector<float>(e, 0.0f));
  check_forward("after clear_bias", m);

  // Copies are deep, packed weights included: a copy computes with its own after the module it
  // came from is gone, and with what was set on it after the copy; a moved-to module keeps the
  // parameters.
  auto source = std::make_unique<MultiHeadAttention>(e, 3, 7);
  for (int i = 0; i < 4; ++i) source->set_weight(kProjections[i], w[i]);
  source->set_bias(Projection::key, b[1]);
  MultiHeadAttention copy = *source;
  source.reset();
  const MultiHeadAttention decoy(e, 3, 99);  // likely to reuse the freed source's memory
  check_forward("a copy", copy);
  copy = m;
  check_forward("a copy assigned", copy);
  copy.set_weight(Projection::query, w[3]);
  CHECK(m.weight(Projection::query) == w[0]);
  CHECK(copy.weight(Projection::query) == w[3]);
  check_forward("a copy after set_weight(query)", copy);
  check_forward("the original after its copy's set_weight", m);
  MultiHeadAttention moved = std::move(copy);
  CHECK(moved.weight(Projection::query) == w[3]);
  CHECK(moved.bias(Projection::key) == b[1]);
  copy = m;
  CHECK(copy.weight(Projection::key) == w[1]);
}

TEST_CASE("seeded initialisation is deterministic and matches nn.Linear's distribution",
          "[module][params]") {
  const std::size_t e = 96;
  const MultiHeadAttention a(e, 4, 1234), b(e, 4, 1234), c(e, 4, 1235), d0(e, 4), d1(e, 4, 0);
  for (Projection p : kProjections) {
    CHECK(a.weight(p) == b.weight(p));
    CHECK(a.weight(p) != c.weight(p));
    CHECK(d0.weight(p) == d1.weight(p));  // the default seed is 0
  }
  CHECK(a.bias(Projection::output) == b.bias(Projection::output));
  CHECK(a.bias(Projection::output) != c.bias(Projection::output));
  // The four projections are drawn independently, not copies of one matrix.
  CHECK(a.weight(Projection::query) != a.weight(Projection::key));

  // U(-1/sqrt(in), 1/sqrt(in)) for weights and the output bias: bounds, mean, variance b^2/3.
  const double bound = 1.0 / std::sqrt(static_cast<double>(e));
  for (Projection p : kProjections) {
    const auto& w = a.weight(p);
    REQUIRE(w.size() == e * e);
    double sum = 0, sum2 = 0, lo = 1, hi = -1;
    for (float x : w) {
      sum += x;
      sum2 += double(x) * x;
      lo = std::min<double>(lo, x);
      hi = std::max<double>(hi, x);
    }
    const double mean = sum / w.size(), var = sum2 / w.size() - mean * mean;
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
    CHECK(hi - lo > 1.9 * bound);  // fills the interval
    CHECK(std::fabs(mean) < 0.02 * bound);
    CHECK(var == Approx(bound * bound / 3).epsilon(0.05));
  }
  for (float x : a.bias(Projection::output)) CHECK(std::fabs(x) <= bound);
  for (Projection p : {Projection::query, Projection::key, Projection::value}) {
    CHECK_FALSE(a.has_bias(p));
  }

  // reset_parameters(seed) is the constructor's draw, and removes the Q/K/V biases.
  MultiHeadAttention r(e, 4, 7);
  r.set_bias(Projection::query, std::vector<float>(e, 1.0f));
  r.reset_parameters(1234);
  for (Projection p : kProjections) CHECK(r.weight(p) == a.weight(p));
  CHECK(r.bias(Projection::output) == a.bias(Projection::output));
  CHECK_FALSE(r.has_bias(Projection::query));
}

TEST_CASE("forward's buffer form writes every output element and equals the returning form",
          "[module]") {
  const std::size_t n = 2, lq = 6, lk = 10, e = 40, heads = 5;
  const MultiHeadAttention m(e, heads, 3);
  const Tensor kv = Tensor::randn(n, lk, e, 60);
  const Tensor query = Tensor::randn(n, lq, e, 61);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    const Tensor returned = m.forward(kv, kv, query, {}, o);
    std::vector<float> buffer(n * lq * e, std::numeric_limits<float>::quiet_NaN());
    m.forward(kv, kv, query, {}, TensorView<float>{buffer.data(), n, lq, e}, o);
    CHECK(std::memcmp(buffer.data(), returned.data(), buffer.size() * sizeof(float)) == 0);
    // A second call reuses scratch: same answer.
    m.forward(kv, kv, query, {}, TensorView<float>{buffer.data(), n, lq, e}, o);
    CHECK(std::memcmp(buffer.data(), returned.data(), buffer.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("Tensor: zero-filled, row-major, deterministic randn, PyTorch-style shape string",
          "[module][tensor]") {
  const Tensor z(2, 3, 4);
  CHECK(z.size() == 24);
  CHECK(z.values() == std::vector<float>(24, 0.0f));
  std::vector<float> data(24);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  const Tensor t(2, 3, 4, data);
  CHECK(t.at(1, 2, 3) == 23.0f);
  CHECK(t.at(1, 0, 2) == 14.0f);
  CHECK(t.shape_string() == "[2, 3, 4]");
  const ConstTensorView v = t;
  CHECK((v.data == t.data() && v.n == 2 && v.l == 3 && v.e == 4));
  const Tensor r1 = Tensor::randn(3, 5, 7, 42), r2 = Tensor::randn(3, 5, 7, 42),
               r3 = Tensor::randn(3, 5, 7, 43);
  CHECK(r1.values() == r2.values());
  CHECK(r1.values() != r3.values());
  double sum2 = 0;
  for (float x : r1.values()) sum2 += double(x) * x;
  CHECK(sum2 / r1.size() == Approx(1.0).epsilon(0.35));  // standard normal, 105 samples
}
