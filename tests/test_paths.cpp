// The correctness table (README, "Tests and CI") through the public API on both paths: against
// the double oracle, threads 1 and 2, inputs normal and scaled by 1e3, relative Frobenius error
// <= 1e-5 and largest element error <= 1e-4 x max |ref|. CTest runs this once per ISA
// (SIMDATTN_ISA).
//
// The table samples head_dim {1, 3, 15, 17, 32, 64, 80, 128} x L {1, 2, 7, 33, 100, 257, 1024}
// so that every head_dim, every length (as Lq and as Lk), N = 1 and 3 and every mask kind
// appear several times, Lq != Lk in most rows, at a cost the sanitizer build can afford.
#include <cstring>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::MaskKind;
using test::path_name;

namespace {

constexpr float kInputScales[] = {1.0f, 1e3f};
constexpr int kThreads[] = {1, 2};

struct CoreCase {
  std::size_t n, h, d, lq, lk;
  MaskKind mask;
};

// Every head_dim and length appears; the big ones only where masks or shapes keep it cheap.
constexpr CoreCase kCoreCases[] = {
    {1, 2, 1, 1, 1, MaskKind::none},
    {3, 1, 3, 2, 7, MaskKind::causal_top_left},
    {1, 4, 15, 7, 2, MaskKind::causal_bottom_right},  // Lq > Lk: rows with no key
    {3, 2, 17, 33, 100, MaskKind::lower_triangular},
    {1, 2, 32, 100, 33, MaskKind::key_padding},
    {1, 2, 64, 257, 257, MaskKind::full},
    {1, 1, 80, 1, 1024, MaskKind::none},  // decode
    {3, 2, 128, 2, 257, MaskKind::causal_bottom_right},
    {1, 1, 128, 1024, 7, MaskKind::causal_top_left},
    {1, 1, 3, 1024, 1024, MaskKind::fully_masked_rows},
    {3, 3, 1, 257, 33, MaskKind::full},
    {1, 2, 15, 33, 1024, MaskKind::causal_bottom_right},
    {3, 1, 17, 100, 2, MaskKind::fully_masked_rows},
    {1, 2, 32, 257, 1, MaskKind::lower_triangular},
    {1, 1, 64, 7, 1024, MaskKind::key_padding},
    {3, 1, 80, 33, 33, MaskKind::causal_top_left},
    {1, 2, 128, 100, 100, MaskKind::fully_masked_rows},
    {3, 2, 64, 1, 257, MaskKind::full},
    {1, 8, 17, 257, 100, MaskKind::causal_bottom_right},
    {3, 4, 3, 1024, 33, MaskKind::key_padding},
    {1, 1, 1, 1024, 257, MaskKind::lower_triangular},
    {1, 3, 80, 2, 2, MaskKind::fully_masked_rows},
    {3, 2, 15, 7, 7, MaskKind::none},
    {1, 1, 128, 257, 1024, MaskKind::causal_top_left},
    {1, 1, 32, 1024, 1024, MaskKind::causal_bottom_right},
    {3, 1, 1, 1024, 1024, MaskKind::none},
};

enum class Layout { self, shared_kv, separate };

struct ModuleCase {
  std::size_t n, heads, d, lq, lk;
  MaskKind mask;
  Layout layout;  // self needs lq == lk
};

constexpr ModuleCase kModuleCases[] = {
    {1, 8, 32, 2, 2, MaskKind::none, Layout::self},  // the tutorial's [1, 2, 256]
    {3, 4, 64, 33, 33, MaskKind::causal_top_left, Layout::self},
    {1, 2, 80, 257, 7, MaskKind::key_padding, Layout::shared_kv},
    {3, 1, 17, 7, 33, MaskKind::full, Layout::separate},
    {1, 3, 15, 1, 1024, MaskKind::causal_bottom_right, Layout::shared_kv},
    {3, 2, 128, 33, 2, MaskKind::fully_masked_rows, Layout::separate},
    {1, 16, 3, 257, 257, MaskKind::lower_triangular, Layout::self},
    {1, 1, 1, 1024, 1024, MaskKind::causal_top_left, Layout::self},
    {3, 5, 3, 100, 100, MaskKind::causal_bottom_right, Layout::separate},
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("correctness table: scaled_dot_product_attention on both paths", "[paths]") {
  std::size_t index = 0;
  for (const CoreCase& c : kCoreCases) {
    const auto m = test::make_mask(c.mask, c.n, c.h, c.lq, c.lk, 100 + index);
    Options o;
    o.causal = m.causal;
    o.masked_rows = index % 2 == 0 ? MaskedRows::uniform : MaskedRows::zeros;
    for (float input_scale : kInputScales) {
      const std::uint64_t seed = 1000 + 10 * index;
      const auto q = test::random_normal(c.n * c.lq * c.h * c.d, seed, input_scale);
      const auto k = test::random_normal(c.n * c.lk * c.h * c.d, seed + 1, input_scale);
      const auto v = test::random_normal(c.n * c.lk * c.h * c.d, seed + 2, input_scale);
      const ConstHeadsView qv{q.data(), c.n, c.lq, c.h, c.d}, kv{k.data(), c.n, c.lk, c.h, c.d},
          vv{v.data(), c.n, c.lk, c.h, c.d};
      const auto ref = test::oracle_sdpa(qv, kv, vv, m.mask, o);
      for (Path path : kPaths) {
        std::vector<float> by_threads[2];
        for (int t = 0; t < 2; ++t) {
          INFO("case " << index << ": N " << c.n << " H " << c.h << " D " << c.d << " Lq " << c.lq
                       << " Lk " << c.lk << ", mask " << test::mask_kind_name(c.mask)
                       << ", inputs x" << input_scale << ", path " << path_name(path)
                       << ", threads " << kThreads[t]);
          o.path = path;
          o.threads = kThreads[t];
          std::vector<float>& out = by_threads[t];
          out.assign(ref.size(), 0.0f);
          scaled_dot_product_attention(
              qv, kv, vv, HeadsView<float>{out.data(), c.n, c.lq, c.h, c.d}, m.mask, o);
          test::check_close(out.data(), ref, "sdpa");
        }
        INFO("case " << index << ", path " << path_name(path) << ", inputs x" << input_scale);
        CHECK(same_bits(by_threads[0], by_threads[1]));  // bitwise, whatever the thread count
      }
    }
    ++index;
  }
}

TEST_CASE("correctness table: MultiHeadAttention::forward on both paths", "[paths][module]") {
  std::size_t index = 0;
  for (const ModuleCase& c : kModuleCases) {
    const std::size_t e = c.heads * c.d;
    MultiHeadAttention module(e, c.heads, 500 + index);
    if (index % 3 == 1) {  // Q/K/V biases on some rows, as nn.MultiheadAttention has them
      for (Projection p : {Projection::query, Projection::key, Projection::value}) {
        module.set_bias(p, test::random_normal(e, 600 + index + static_cast<int>(p), 0.1f));
      }
    }
    const auto m = test::make_mask(c.mask, c.n, c.heads, c.lq, c.lk, 700 + index);
    Options o;
    o.causal = m.causal;
    o.masked_rows = index % 2 == 0 ? MaskedRows::uniform : MaskedRows::zeros;
    for (float input_scale : kInputScales) {
      const std::uint64_t seed = 2000 + 10 * index;
      const Tensor kv(c.n, c.lk, e, test::random_normal(c.n * c.lk * e, seed, input_scale));
      const Tensor v2(c.n, c.lk, e, test::random_normal(c.n * c.lk * e, seed + 1, input_scale));
      const Tensor q(c.n, c.lq, e, test::random_normal(c.n * c.lq * e, seed + 2, input_scale));
      const Tensor& query = c.layout == Layout::self ? kv : q;
      const Tensor& values = c.layout == Layout::separate ? v2 : kv;
      const auto ref = test::oracle_forward(module, values, kv, query, m.mask, o);
      for (Path path : kPaths) {
        std::vector<float> by_threads[2];
        for (int t = 0; t < 2; ++t) {
          INFO("module case " << index << ": N " << c.n << " heads " << c.heads << " head_dim "
                              << c.d << " Lq " << c.lq << " Lk " << c.lk << ", mask "
                              << test::mask_kind_name(c.mask) << ", layout "
                              << static_cast<int>(c.layout) << ", inputs x" << input_scale
                              << ", path " << path_name(path) << ", threads " << kThreads[t]);
          o.path = path;
          o.threads = kThreads[t];
          by_threads[t] = module.forward(values, kv, query, m.mask, o).values();
          test::check_close(by_threads[t].data(), ref, "forward");
        }
        INFO("module case " << index << ", path " << path_name(path) << ", inputs x"
                            << input_scale);
        CHECK(same_bits(by_threads[0], by_threads[1]));
      }
    }
    ++index;
  }
}
