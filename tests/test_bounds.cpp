// Reliability: a call reads only its views and writes only `out`'s elements.
// Every buffer here has exactly the size of its view's extent (so ASan, which runs this suite
// in CI, sees one float past the end), and every float of a buffer that is not an element of
// the view is a guard: NaN in inputs (a kernel that reads one poisons a result, which the
// comparison with the oracle sees), a sentinel in `out` (a kernel that writes one is seen).
// Strides leave gaps between rows and batches; views start at an odd float offset.
#include <limits>
#include <vector>

#include "common.hpp"

namespace simdattn {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kSentinel = 1234.5f;

// An [n, l, h, d] view with gaps (row padding `pad`, batch padding 3) in a guard-filled buffer.
struct Guarded {
  std::vector<float> buf;
  HeadsView<float> view;
  Guarded(std::size_t n, std::size_t l, std::size_t h, std::size_t d, std::size_t pad, float guard,
          const std::vector<float>& dense) {
    const std::size_t offset = 1, row = h * d + pad, batch = l * row + 3;
    buf.assign(offset + (n - 1) * batch + (l - 1) * row + h * d, guard);
    view = {buf.data() + offset, n, l, h, d, row, batch};
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t i = 0; i < l; ++i)
        for (std::size_t x = 0; x < h * d; ++x) at(b, i, x) = dense[(b * l + i) * h * d + x];
  }
  float& at(std::size_t b, std::size_t i, std::size_t x) {
    return view.data[b * view.batch_stride + i * view.row_stride + x];
  }
  ConstHeadsView cview() const {
    return {view.data, view.n, view.l, view.h, view.d, view.row_stride, view.batch_stride};
  }
  // The view's elements, dense; and whether every other float still holds `guard`'s bits.
  std::vector<float> elements() {
    std::vector<float> out;
    for (std::size_t b = 0; b < view.n; ++b)
      for (std::size_t i = 0; i < view.l; ++i)
        for (std::size_t x = 0; x < view.h * view.d; ++x) out.push_back(at(b, i, x));
    return out;
  }
  bool guards_intact(float guard) {
    std::vector<char> inside(buf.size(), 0);
    for (std::size_t b = 0; b < view.n; ++b)
      for (std::size_t i = 0; i < view.l; ++i)
        for (std::size_t x = 0; x < view.h * view.d; ++x) inside[&at(b, i, x) - buf.data()] = 1;
    for (std::size_t j = 0; j < buf.size(); ++j) {
      if (!inside[j] && std::memcmp(&buf[j], &guard, sizeof(float)) != 0) return false;
    }
    return true;
  }
};

}  // namespace

TEST_CASE("scaled_dot_product_attention reads only its views and writes only out's elements",
          "[reliability][bounds]") {
  // Tile and decode paths; head_dim 13 and 16 (vector tails and none), Lk across key blocks.
  const test::SdpaProblem problems[] = {{2, 21, 70, 3, 13, 90},
                                        {2, 3, 70, 3, 13, 91},
                                        {2, 19, 65, 2, 16, 92},
                                        {1, 2, 129, 2, 16, 93}};
  for (const test::SdpaProblem& p : problems) {
    const Guarded q(p.n, p.lq, p.h, p.d, 2, kNaN, p.q);
    const Guarded k(p.n, p.lk, p.h, p.d, 3, kNaN, p.k);
    const Guarded v(p.n, p.lk, p.h, p.d, 1, kNaN, p.v);
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk);
      for (Path path : test::kPaths) {
        for (MaskedRows policy : {MaskedRows::uniform, MaskedRows::zeros}) {
          Options o;
          o.path = path;
          o.causal = m.causal;
          o.masked_rows = policy;
          INFO("Lq " << p.lq << ", D " << p.d << ", mask " << test::mask_kind_name(kind)
                     << ", path " << test::path_name(path));
          Guarded out(p.n, p.lq, p.h, p.d, 2, kSentinel,
                      std::vector<float>(p.q.size(), kNaN));  // unwritten elements show as NaN
          scaled_dot_product_attention(q.cview(), k.cview(), v.cview(), out.view, m.mask, o);
          const auto got = out.elements();
          CHECK(test::all_finite(got));
          test::check_close(got.data(), p.oracle(m.mask, o), "vs oracle");
          CHECK(out.guards_intact(kSentinel));
        }
      }
    }
  }
}

TEST_CASE("forward reads only its tensors and writes only out", "[reliability][bounds][module]") {
  // Each tensor sits in its own buffer between NaN guards; out between sentinels.
  const std::size_t e = 20, heads = 4, n = 2, lq = 17, lk = 70;
  const MultiHeadAttention m(e, heads, 94);
  auto guarded = [](const std::vector<float>& x, float guard) {
    std::vector<float> buf(x.size() + 2, guard);
    std::copy(x.begin(), x.end(), buf.begin() + 1);
    return buf;
  };
  const auto q = guarded(test::random_normal(n * lq * e, 95), kNaN);
  const auto k = guarded(test::random_normal(n * lk * e, 96), kNaN);
  const auto v = guarded(test::random_normal(n * lk * e, 97), kNaN);
  const ConstTensorView qv{q.data() + 1, n, lq, e}, kv{k.data() + 1, n, lk, e},
      vv{v.data() + 1, n, lk, e};
  struct Case {
    const char* name;
    ConstTensorView values, keys, query;
  };
  const ConstTensorView self{k.data() + 1, n, lk, e};
  for (const Case& c : {Case{"cross", vv, kv, qv}, Case{"shared keys/values", kv, kv, qv},
                        Case{"self", self, self, self}}) {
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto mask = test::make_mask(kind, n, heads, c.query.l, c.keys.l);
      for (Path path : test::kPaths) {
        Options o;
        o.path = path;
        o.causal = mask.causal;
        INFO(c.name << ", mask " << test::mask_kind_name(kind) << ", path "
                    << test::path_name(path));
        auto out = guarded(std::vector<float>(n * c.query.l * e, kNaN), kSentinel);
        m.forward(c.values, c.keys, c.query, mask.mask, {out.data() + 1, n, c.query.l, e}, o);
        const std::vector<float> got(out.begin() + 1, out.end() - 1);
        CHECK(test::all_finite(got));
        test::check_close(got.data(),
                          test::oracle_forward(m, c.values, c.keys, c.query, mask.mask, o),
                          "vs oracle");
        CHECK(out.front() == kSentinel);
        CHECK(out.back() == kSentinel);
      }
    }
  }
}

}  // namespace simdattn
