// Grouped-query and multi-query attention in scaled_dot_product_attention: K/V views with fewer
// heads than the query (PyTorch's enable_gqa: query head h reads K/V head h / (H / H_kv)),
// against the double oracle that repeats each K/V head for its group, on both paths, every mask
// kind, decode and tile lengths, threads 1 and 2 bitwise; and bitwise equal to plain multi-head
// attention over K/V whose heads were repeated by hand. CTest runs this once per ISA.
#include <cstring>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::MaskKind;
using test::path_name;

namespace {

constexpr int kThreads[] = {1, 2};

struct GqaCase {
  std::size_t n, h, kvh, d, lq, lk;
  MaskKind mask;
};

// kv_heads 1 (multi-query), 2 and 4; head_dim 1, 3, 17, 64; decode (Lq <= 4) and tiles.
constexpr GqaCase kCases[] = {
    {1, 4, 1, 64, 1, 1024, MaskKind::none},
    {2, 8, 2, 17, 3, 257, MaskKind::causal_bottom_right},
    {1, 4, 2, 3, 33, 100, MaskKind::full},
    {3, 8, 4, 64, 100, 33, MaskKind::causal_top_left},
    {1, 16, 4, 15, 257, 257, MaskKind::fully_masked_rows},
    {2, 4, 1, 1, 7, 7, MaskKind::key_padding},
    {1, 6, 3, 32, 2, 300, MaskKind::lower_triangular},
};

// [N, L, H_kv, D] repeated to [N, L, H, D]: head h is K/V head h / (H / H_kv).
std::vector<float> repeat_heads(const std::vector<float>& x, std::size_t n, std::size_t l,
                                std::size_t kvh, std::size_t h, std::size_t d) {
  std::vector<float> out(n * l * h * d);
  for (std::size_t r = 0; r < n * l; ++r) {
    for (std::size_t j = 0; j < h; ++j) {
      const float* src = x.data() + (r * kvh + j / (h / kvh)) * d;
      std::copy(src, src + d, out.data() + (r * h + j) * d);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("grouped-query attention: sdpa with fewer K/V heads matches the repeating oracle",
          "[gqa]") {
  std::size_t index = 0;
  for (const GqaCase& c : kCases) {
    const auto m = test::make_mask(c.mask, c.n, c.h, c.lq, c.lk, 40 + index);
    Options o;
    o.causal = m.causal;
    o.masked_rows = index % 2 == 0 ? MaskedRows::uniform : MaskedRows::zeros;
    const auto q = test::random_normal(c.n * c.lq * c.h * c.d, 300 + 10 * index);
    const auto k = test::random_normal(c.n * c.lk * c.kvh * c.d, 301 + 10 * index);
    const auto v = test::random_normal(c.n * c.lk * c.kvh * c.d, 302 + 10 * index);
    const auto k_rep = repeat_heads(k, c.n, c.lk, c.kvh, c.h, c.d);
    const auto v_rep = repeat_heads(v, c.n, c.lk, c.kvh, c.h, c.d);
    const ConstHeadsView qv{q.data(), c.n, c.lq, c.h, c.d};
    const ConstHeadsView kv{k.data(), c.n, c.lk, c.kvh, c.d}, vv{v.data(), c.n, c.lk, c.kvh, c.d};
    const ConstHeadsView kr{k_rep.data(), c.n, c.lk, c.h, c.d},
        vr{v_rep.data(), c.n, c.lk, c.h, c.d};
    const auto ref = test::oracle_sdpa(qv, kr, vr, m.mask, o);  // repeated heads: plain MHA
    for (Path path : kPaths) {
      std::vector<float> by_threads[2];
      for (int t = 0; t < 2; ++t) {
        INFO("case " << index << ": N " << c.n << " H " << c.h << " H_kv " << c.kvh << " D " << c.d
                     << " Lq " << c.lq << " Lk " << c.lk << ", mask "
                     << test::mask_kind_name(c.mask) << ", path " << path_name(path) << ", threads "
                     << kThreads[t]);
        o.path = path;
        o.threads = kThreads[t];
        by_threads[t].assign(ref.size(), 0.0f);
        scaled_dot_product_attention(qv, kv, vv, {by_threads[t].data(), c.n, c.lq, c.h, c.d},
                                     m.mask, o);
        test::check_close(by_threads[t].data(), ref, "gqa");
        // The same arithmetic as plain multi-head attention over the repeated heads.
        std::vector<float> mha(ref.size());
        scaled_dot_product_attention(qv, kr, vr, {mha.data(), c.n, c.lq, c.h, c.d}, m.mask, o);
        CHECK(test::same_bits(by_threads[t], mha));
      }
      INFO("case " << index << ", path " << path_name(path));
      CHECK(test::same_bits(by_threads[0], by_threads[1]));
    }
    ++index;
  }
}

TEST_CASE("grouped-query attention: strided K/V views of a packed [N, L, (H + 2 H_kv) D] buffer",
          "[gqa]") {
  // A fused QKV projection's output, as a GQA model produces it: Q, K, V side by side per row.
  const std::size_t n = 2, l = 37, h = 8, kvh = 2, d = 16;
  const std::size_t row = (h + 2 * kvh) * d;
  const auto qkv = test::random_normal(n * l * row, 5);
  const ConstHeadsView q{qkv.data(), n, l, h, d, row};
  const ConstHeadsView k{qkv.data() + h * d, n, l, kvh, d, row};
  const ConstHeadsView v{qkv.data() + (h + kvh) * d, n, l, kvh, d, row};
  Options o;
  o.causal = Causal::top_left;
  const auto kd = test::gather<float>(k), vd = test::gather<float>(v);
  const auto kr = repeat_heads(kd, n, l, kvh, h, d), vr = repeat_heads(vd, n, l, kvh, h, d);
  const auto ref = test::oracle_sdpa(q, {kr.data(), n, l, h, d}, {vr.data(), n, l, h, d}, {}, o);
  for (Path path : kPaths) {
    INFO("path " << path_name(path));
    o.path = path;
    std::vector<float> out(n * l * h * d);
    scaled_dot_product_attention(q, k, v, {out.data(), n, l, h, d}, {}, o);
    test::check_close(out.data(), ref, "gqa strided");
  }
}

TEST_CASE("grouped-query module: kv_heads = heads is the plain module, bit for bit",
          "[gqa][module]") {
  const MultiHeadAttention plain(64, 8, 5);
  const MultiHeadAttention same(64, 8, KvHeads{8}, 5);
  CHECK(same.kv_heads() == 8);
  for (Projection p : {Projection::query, Projection::key, Projection::value, Projection::output}) {
    CHECK(same.weight(p) == plain.weight(p));
    CHECK(same.bias(p) == plain.bias(p));
  }
  const Tensor x = Tensor::randn(2, 37, 64, 1), q = Tensor::randn(2, 3, 64, 2);
  for (Path path : kPaths) {
    Options o;
    o.path = path;
    o.causal = Causal::top_left;
    INFO("path " << path_name(path));
    CHECK(test::same_bits(same.forward(x, x, x, {}, o).values(),
                          plain.forward(x, x, x, {}, o).values()));
    CHECK(test::same_bits(same.forward(x, x, q, {}, o).values(),
                          plain.forward(x, x, q, {}, o).values()));
  }
}

TEST_CASE(
    "grouped-query module: kv_heads 1, 2, 4 against the oracle, and equal to the plain "
    "module with K/V weight rows repeated per group",
    "[gqa][module]") {
  const std::size_t e = 64, heads = 8, d = 8;
  for (std::size_t kvh : {1, 2, 4}) {
    MultiHeadAttention gqa(e, heads, KvHeads{kvh}, 10 + kvh);
    CHECK(gqa.weight(Projection::key).size() == kvh * d * e);
    gqa.set_bias(Projection::key, test::random_normal(kvh * d, 3, 0.1f));
    gqa.set_bias(Projection::value, test::random_normal(kvh * d, 4, 0.1f));
    // The plain module whose head h has the weights of K/V head h / (heads / kvh).
    MultiHeadAttention repeated(e, heads, 1);
    repeated.set_weight(Projection::query, gqa.weight(Projection::query));
    repeated.set_weight(Projection::output, gqa.weight(Projection::output));
    repeated.set_bias(Projection::output, gqa.bias(Projection::output));
    for (Projection p : {Projection::key, Projection::value}) {
      // Rows [kv head][d][E]: repeat whole heads of d x E (and d for the bias).
      repeated.set_weight(p, repeat_heads(gqa.weight(p), 1, 1, kvh, heads, d * e));
      repeated.set_bias(p, repeat_heads(gqa.bias(p), 1, 1, kvh, heads, d));
    }
    const Tensor x = Tensor::randn(2, 33, e, 7), y = Tensor::randn(2, 20, e, 8),
                 z = Tensor::randn(2, 33, e, 10), q = Tensor::randn(2, 2, e, 9);
    struct Layout {
      const char* name;
      const Tensor &values, &keys, &query;
    };
    // The optimized path's three routes (one QKV GEMM, one K/V GEMM, three GEMMs); at kv_heads 1
    // the K and V rows (8 of them) are no whole panel of the packed weights.
    const Layout layouts[] = {{"self", x, x, x}, {"shared K/V", y, y, x}, {"separate", z, x, q}};
    for (const Layout& l : layouts) {
      for (Path path : kPaths) {
        Options o;
        o.path = path;
        o.causal = &l.query == &l.keys ? Causal::top_left : Causal::none;
        INFO("kv_heads " << kvh << ", " << l.name << ", path " << path_name(path));
        const Tensor out = gqa.forward(l.values, l.keys, l.query, {}, o);
        test::check_close(out.data(), test::oracle_forward(gqa, l.values, l.keys, l.query, {}, o),
                          "gqa module");
        CHECK(test::same_bits(out.values(),
                              repeated.forward(l.values, l.keys, l.query, {}, o).values()));
      }
    }
  }
}

TEST_CASE("grouped-query module: refused shapes", "[gqa][module][errors]") {
  CHECK_THROWS_WITH(MultiHeadAttention(64, 8, KvHeads{3}),
                    Catch::Contains("kv_heads (3) must be > 0 and divide heads (8)"));
  CHECK_THROWS_WITH(MultiHeadAttention(64, 8, KvHeads{0}),
                    Catch::Contains("kv_heads (0) must be > 0 and divide heads (8)"));
  MultiHeadAttention m(64, 8, KvHeads{2}, 1);
  const auto before = m.weight(Projection::key);
  CHECK_THROWS_WITH(m.set_weight(Projection::key, std::vector<float>(64 * 64)),
                    Catch::Contains("key weight has 4096 elements, [kv_heads * head_dim, E] = "
                                    "[16, 64] needs 1024"));
  CHECK_THROWS_WITH(m.set_bias(Projection::value, std::vector<float>(64)),
                    Catch::Contains("value bias has 64 elements, [kv_heads * head_dim] = [16] "
                                    "needs 16"));
  CHECK(m.weight(Projection::key) == before);
  m.set_weight(Projection::query, std::vector<float>(64 * 64, 0.5f));  // E x E as before
}
