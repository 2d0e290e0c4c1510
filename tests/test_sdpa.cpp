// scaled_dot_product_attention on strided views: the heads of [N, L, E] buffers in place, Q/K/V
// slices of one packed [N, L, 3E] buffer, padded batches, a strided output whose gaps stay
// untouched; the scale conventions; exact single-key cases.
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

TEST_CASE("sdpa uses the heads of [N, L, E] buffers in place with default strides", "[sdpa]") {
  const std::size_t n = 3, lq = 10, lk = 21, h = 4, d = 6, e = h * d;
  const auto q = test::random_normal(n * lq * e, 1), k = test::random_normal(n * lk * e, 2),
             v = test::random_normal(n * lk * e, 3);
  const ConstHeadsView qv{q.data(), n, lq, h, d}, kv{k.data(), n, lk, h, d},
      vv{v.data(), n, lk, h, d};
  // Head j of row i is e-slice [j * d, (j + 1) * d): compute one head by hand in double.
  const std::size_t b = 2, i = 7, j = 3;
  std::vector<double> scores(lk), expected(d, 0.0);
  double max_s = -1e300, sum = 0;
  for (std::size_t key = 0; key < lk; ++key) {
    double s = 0;
    for (std::size_t x = 0; x < d; ++x) {
      s += double(q[(b * lq + i) * e + j * d + x]) * k[(b * lk + key) * e + j * d + x];
    }
    scores[key] = s / std::sqrt(double(d));
    max_s = std::max(max_s, scores[key]);
  }
  for (double& s : scores) sum += (s = std::exp(s - max_s));
  for (std::size_t key = 0; key < lk; ++key) {
    for (std::size_t x = 0; x < d; ++x)
      expected[x] += scores[key] / sum * v[(b * lk + key) * e + j * d + x];
  }
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    std::vector<float> out(n * lq * e);
    scaled_dot_product_attention(qv, kv, vv, HeadsView<float>{out.data(), n, lq, h, d}, {}, o);
    test::check_close(out.data(), test::oracle_sdpa(qv, kv, vv, {}, o), "dense heads");
    for (std::size_t x = 0; x < d; ++x) {
      CHECK(out[(b * lq + i) * e + j * d + x] == Approx(expected[x]).epsilon(1e-5).margin(1e-6));
    }
  }
}

TEST_CASE("sdpa on Q, K, V slices of one packed [N, L, 3E] buffer (row_stride 3E)", "[sdpa]") {
  const std::size_t n = 2, l = 37, h = 3, d = 17, e = h * d;
  const auto qkv = test::random_normal(n * l * 3 * e, 10);
  const ConstHeadsView q{qkv.data(), n, l, h, d, 3 * e}, k{qkv.data() + e, n, l, h, d, 3 * e},
      v{qkv.data() + 2 * e, n, l, h, d, 3 * e};
  for (Path path : kPaths) {
    for (Causal causal : {Causal::none, Causal::top_left}) {
      INFO("path " << path_name(path) << " causal " << static_cast<int>(causal));
      Options o;
      o.path = path;
      o.causal = causal;
      std::vector<float> out(n * l * e);
      scaled_dot_product_attention(q, k, v, HeadsView<float>{out.data(), n, l, h, d}, {}, o);
      test::check_close(out.data(), test::oracle_sdpa(q, k, v, {}, o), "packed QKV");
    }
  }
}

TEST_CASE("sdpa with padded batches and a strided output leaves the gaps untouched", "[sdpa]") {
  const std::size_t n = 3, lq = 5, lk = 8, h = 2, d = 7, hd = h * d;
  // Inputs: rows of 20 floats (6 unused), batches 3 rows apart beyond their length.
  const std::size_t in_row = hd + 6, q_batch = (lq + 3) * in_row, k_batch = (lk + 3) * in_row;
  const auto qbuf = test::random_normal(n * q_batch, 20),
             kbuf = test::random_normal(n * k_batch, 21),
             vbuf = test::random_normal(n * k_batch, 22);
  const ConstHeadsView q{qbuf.data(), n, lq, h, d, in_row, q_batch},
      k{kbuf.data(), n, lk, h, d, in_row, k_batch}, v{vbuf.data(), n, lk, h, d, in_row, k_batch};
  const std::size_t out_row = hd + 5, out_batch = lq * out_row + 11;
  const float kSentinel = 12345.0f;
  const auto full = test::make_mask(test::MaskKind::full, n, h, lq, lk);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    std::vector<float> out(n * out_batch, kSentinel);
    scaled_dot_product_attention(
        q, k, v, HeadsView<float>{out.data(), n, lq, h, d, out_row, out_batch}, full.mask, o);
    const auto dense = test::gather<float>({out.data(), n, lq, h, d, out_row, out_batch});
    test::check_close(dense.data(), test::oracle_sdpa(q, k, v, full.mask, o), "strided");
    std::size_t untouched = 0, gaps = 0;
    for (std::size_t at = 0; at < out.size(); ++at) {
      const std::size_t in_batch = at % out_batch;
      const bool gap = in_batch >= lq * out_row || in_batch % out_row >= hd;
      if (!gap) continue;
      ++gaps;
      untouched += out[at] == kSentinel ? 1 : 0;
    }
    CHECK(gaps == n * (out_batch - lq * hd));
    CHECK(untouched == gaps);
  }
}

TEST_CASE("sdpa scale: 1/sqrt(head_dim) by default, any positive value when given",
          "[sdpa][scale]") {
  const std::size_t n = 2, l = 16, h = 2, d = 8;
  const auto q = test::random_normal(n * l * h * d, 30), k = test::random_normal(n * l * h * d, 31),
             v = test::random_normal(n * l * h * d, 32);
  const ConstHeadsView qv{q.data(), n, l, h, d}, kv{k.data(), n, l, h, d}, vv{v.data(), n, l, h, d};
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    std::vector<float> by_default(n * l * h * d), given(by_default.size());
    const HeadsView<float> out1{by_default.data(), n, l, h, d}, out2{given.data(), n, l, h, d};
    scaled_dot_product_attention(qv, kv, vv, out1, {}, o);
    Options explicit_scale = o;
    explicit_scale.scale = 1.0f / std::sqrt(8.0f);
    scaled_dot_product_attention(qv, kv, vv, out2, {}, explicit_scale);
    CHECK(std::memcmp(by_default.data(), given.data(), given.size() * sizeof(float)) == 0);
    Options tutorial = o;
    tutorial.scale = tutorial_scale(h * d);  // the tutorial divides by sqrt(embed_size)
    scaled_dot_product_attention(qv, kv, vv, out2, {}, tutorial);
    test::check_close(given.data(), test::oracle_sdpa(qv, kv, vv, {}, tutorial), "tutorial scale");
    CHECK(test::compare(given.data(), test::to_double(by_default).data(), given.size())
              .rel_frobenius > 1e-3);
  }
}

TEST_CASE("a single visible key returns its value exactly", "[sdpa]") {
  const std::size_t n = 2, lq = 9, h = 3, d = 19;
  const auto q = test::random_normal(n * lq * h * d, 40, 1e3f);
  const auto k = test::random_normal(n * h * d, 41), v = test::random_normal(n * h * d, 42);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    Options o;
    o.path = path;
    std::vector<float> out(n * lq * h * d);
    scaled_dot_product_attention({q.data(), n, lq, h, d}, {k.data(), n, 1, h, d},
                                 {v.data(), n, 1, h, d}, HeadsView<float>{out.data(), n, lq, h, d},
                                 {}, o);
    bool exact = true;
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < lq; ++i) {
        exact = exact && std::memcmp(out.data() + (b * lq + i) * h * d, v.data() + b * h * d,
                                     h * d * sizeof(float)) == 0;
      }
    }
    CHECK(exact);
  }
}

TEST_CASE("sdpa: every remainder of the tiles' query rows, keys and value columns",
          "[sdpa][sizes]") {
  // A query group's last rows (1 to a whole group, so every row count of the output tile too),
  // keys past whole score tiles and key blocks, and head sizes of whole and partial output tiles
  // (64 and 80 fill AVX-512's widest one), so that the micro-kernels run at each of their row
  // counts. Lq up to 4 takes the decode kernel. Causal or not, against the double oracle,
  // bitwise across threads.
  const std::size_t n = 1, h = 2;
  for (std::size_t d : {64, 80}) {
    for (std::size_t lq = 1; lq <= 33; ++lq) {
      const std::size_t lk = 60 + 3 * lq;
      const test::SdpaProblem p(n, lq, lk, h, d, 1000 * d + 3 * lq);
      Options o;
      o.causal = lq % 2 == 0 ? Causal::bottom_right : Causal::none;
      const auto ref = p.oracle({}, o);
      std::vector<float> by_threads[2];
      for (int t = 0; t < 2; ++t) {
        INFO("D " << d << " Lq " << lq << " Lk " << lk << " threads " << t + 1);
        o.threads = t + 1;
        by_threads[t].assign(ref.size(), std::nanf(""));
        scaled_dot_product_attention(p.qv(), p.kv(), p.vv(),
                                     HeadsView<float>{by_threads[t].data(), n, lq, h, d}, {}, o);
        test::check_close(by_threads[t].data(), ref, "sdpa");
      }
      CHECK(test::same_bits(by_threads[0], by_threads[1]));
    }
  }
}
