// Strided [N, L, E] views in MultiHeadAttention::forward: PyTorch's batch_first=False layout
// (a contiguous [L, N, E] buffer, through sequence_first()), rows padded or cut from a wider
// buffer, and layouts mixed between the inputs and the output. Each result is held to the
// correctness table's tolerances against the double oracle on dense copies of the same numbers,
// on both paths, threads 1 and 2 bitwise equal, and the floats of `out`'s buffer that are not
// elements of the view keep their value.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using test::kPaths;
using test::path_name;

namespace {

constexpr float kSentinel = -7.0f;  // in out's buffer, where the view has no element

// A buffer holding an [n, l, e] tensor in one layout, and the same numbers dense.
struct Laid {
  std::vector<float> buffer;  // the strided storage
  std::vector<float> dense;   // [n, l, e] row-major
  std::size_t n, l, e, row_stride, batch_stride;

  TensorView<float> view() { return {buffer.data(), n, l, e, row_stride, batch_stride}; }
  ConstTensorView cview() const { return {buffer.data(), n, l, e, row_stride, batch_stride}; }
  ConstTensorView dense_view() const { return {dense.data(), n, l, e}; }
  // The view's elements, [n, l, e] row-major.
  std::vector<float> elements() const {
    std::vector<float> x(n * l * e);
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < l; ++i) {
        const float* row = buffer.data() + b * batch_stride + i * row_stride;
        std::copy(row, row + e, x.data() + (b * l + i) * e);
      }
    }
    return x;
  }
  // Every float of the buffer that is not an element of the view still holds kSentinel.
  bool gaps_untouched() const {
    std::vector<bool> element(buffer.size(), false);
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < l; ++i) {
        for (std::size_t k = 0; k < e; ++k) element[b * batch_stride + i * row_stride + k] = true;
      }
    }
    for (std::size_t j = 0; j < buffer.size(); ++j) {
      if (!element[j] && std::memcmp(&buffer[j], &kSentinel, sizeof(float)) != 0) return false;
    }
    return true;
  }
};

enum class Layout { dense, sequence_first, padded_rows, padded_batches };
constexpr Layout kLayouts[] = {Layout::dense, Layout::sequence_first, Layout::padded_rows,
                               Layout::padded_batches};

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::dense:
      return "dense [N, L, E]";
    case Layout::sequence_first:
      return "sequence_first [L, N, E]";
    case Layout::padded_rows:
      return "rows of a wider [N, L, E + 3] buffer";
    case Layout::padded_batches:
      return "[L, N, E] with batches 2 floats apart more";
  }
  return "?";
}

// Random normal numbers (or, for out, sentinels) in `layout`.
Laid make(Layout layout, std::size_t n, std::size_t l, std::size_t e, std::uint64_t seed,
          bool output = false) {
  Laid t{{}, {}, n, l, e, 0, 0};
  switch (layout) {
    case Layout::dense:
      t.row_stride = e;
      t.batch_stride = l * e;
      break;
    case Layout::sequence_first: {
      const ConstTensorView v = sequence_first<const float>(nullptr, l, n, e);
      t.row_stride = v.row_stride;
      t.batch_stride = v.batch_stride;
      break;
    }
    case Layout::padded_rows:
      t.row_stride = e + 3;
      t.batch_stride = l * (e + 3);
      break;
    case Layout::padded_batches:
      t.batch_stride = e + 2;
      t.row_stride = n * (e + 2);
      break;
  }
  const std::size_t extent = (n - 1) * t.batch_stride + (l - 1) * t.row_stride + e;
  t.buffer.assign(extent, kSentinel);
  t.dense = output ? std::vector<float>(n * l * e) : test::random_normal(n * l * e, seed);
  if (!output) {
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t i = 0; i < l; ++i) {
        std::copy(t.dense.begin() + (b * l + i) * e, t.dense.begin() + (b * l + i + 1) * e,
                  t.buffer.begin() + b * t.batch_stride + i * t.row_stride);
      }
    }
  }
  return t;
}

// forward() with every input in layout `in` and out in layout `out`, against the oracle, on
// both paths, threads 1 and 2 bitwise equal. kv: 0 = self-attention (one buffer three times),
// 1 = keys and values one buffer, 2 = three buffers.
void check_layouts(const MultiHeadAttention& m, Layout in, Layout out_layout, int kv, std::size_t n,
                   std::size_t lq, std::size_t lk, const Mask& mask, const Options& base) {
  const std::size_t e = m.embed_size();
  if (kv == 0) lk = lq;
  const Laid q = make(in, n, lq, e, 1);
  const Laid k = kv == 0 ? q : make(in, n, lk, e, 2);
  const Laid v = kv == 2 ? make(in, n, lk, e, 3) : k;
  const Laid& keys = kv == 0 ? q : k;
  const Laid& values = kv == 0 ? q : kv == 1 ? k : v;
  const auto ref =
      test::oracle_forward(m, values.dense_view(), keys.dense_view(), q.dense_view(), mask, base);
  for (const Path path : kPaths) {
    std::vector<float> first;
    for (const int threads : {1, 2}) {
      Options o = base;
      o.path = path;
      o.threads = threads;
      Laid out = make(out_layout, n, lq, e, 0, true);
      m.forward(values.cview(), keys.cview(), q.cview(), mask, out.view(), o);
      const std::string what = std::string(path_name(path)) + ", inputs " + layout_name(in) +
                               ", out " + layout_name(out_layout) + ", kv " + std::to_string(kv) +
                               ", threads " + std::to_string(threads);
      INFO(what);
      const std::vector<float> got = out.elements();
      test::check_close(got.data(), ref, what);
      CHECK(out.gaps_untouched());
      if (threads == 1) {
        first = got;
      } else {
        CHECK(test::first_difference(first, got).empty());
      }
    }
  }
}

}  // namespace

TEST_CASE("forward accepts batch_first=False [L, N, E] buffers and other strided views",
          "[module][layouts]") {
  MultiHeadAttention m(24, 3, 5);
  m.set_bias(Projection::key, test::random_normal(24, 9));
  for (const Layout in : kLayouts) {
    for (const Layout out : {Layout::dense, Layout::sequence_first, Layout::padded_rows}) {
      for (const int kv : {0, 1, 2}) {
        check_layouts(m, in, out, kv, 3, 37, 20, {}, {});
      }
    }
  }
}

TEST_CASE("strided views with masks, causal alignment, decoding and large row counts",
          "[module][layouts]") {
  const MultiHeadAttention m(32, 4, 6);
  std::vector<std::uint8_t> keep(2 * 19, 1);
  for (std::size_t k = 13; k < 19; ++k) keep[19 + k] = 0;  // batch 1's last 6 keys are padding
  const Mask padding{keep.data(), 2, 1, 1, 19};
  Options causal;
  causal.causal = Causal::bottom_right;
  for (const Layout in : {Layout::sequence_first, Layout::padded_batches}) {
    check_layouts(m, in, Layout::sequence_first, 2, 2, 11, 19, padding, {});
    check_layouts(m, in, Layout::sequence_first, 1, 2, 1, 19, padding, causal);  // decode
    check_layouts(m, in, Layout::dense, 0, 2, 70, 70, {}, causal);
  }
}

TEST_CASE("PyTorch's batch_first=False call: sequence_first views of [L, N, E] buffers",
          "[module][layouts]") {
  // As nn.MultiheadAttention(E, H) (batch_first=False) takes them: x is [L, N, E] and the output
  // comes back [L, N, E].
  const std::size_t l = 9, n = 2, e = 16;
  const MultiHeadAttention m(e, 4, 3);
  const std::vector<float> x = test::random_normal(l * n * e, 21);
  std::vector<float> out(l * n * e);
  m.forward(sequence_first(x.data(), l, n, e), sequence_first(x.data(), l, n, e),
            sequence_first(x.data(), l, n, e), {}, sequence_first(out.data(), l, n, e));
  // The same numbers transposed to [N, L, E] through the default layout.
  Tensor xt(n, l, e);
  for (std::size_t i = 0; i < l; ++i) {
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t k = 0; k < e; ++k) xt.at(b, i, k) = x[(i * n + b) * e + k];
    }
  }
  const Tensor expected = m.forward(xt, xt, xt);
  std::vector<double> ref(l * n * e);
  for (std::size_t i = 0; i < l; ++i) {
    for (std::size_t b = 0; b < n; ++b) {
      for (std::size_t k = 0; k < e; ++k) ref[(i * n + b) * e + k] = expected.at(b, i, k);
    }
  }
  test::check_close(out.data(), ref, "sequence_first vs the transposed dense call");
}

TEST_CASE("strided views that make rows overlap, or out overlapping an input, are refused",
          "[module][layouts][errors]") {
  const MultiHeadAttention m(4, 2, 1);
  const std::string where = "simdattn::MultiHeadAttention::forward: ";
  std::vector<float> buf(64, 1.0f), out_buf(64), kv_buf(24, 1.0f);
  const ConstTensorView kv{kv_buf.data(), 2, 3, 4};
  const TensorView<float> out{out_buf.data(), 2, 3, 4};
  auto check_invalid = [&](const ConstTensorView& q, const TensorView<float>& o,
                           const std::string& message) {
    CHECK_THROWS_MATCHES(m.forward(kv, kv, q, {}, o), std::invalid_argument,
                         Catch::Matchers::Message(where + message));
  };
  check_invalid({buf.data(), 2, 3, 4, 3, 12}, out,
                "query.row_stride 3 and batch_stride 12 make the rows of [N, L, E] = [2, 3, 4] "
                "overlap (a zero stride reads as dense)");
  check_invalid({buf.data(), 2, 3, 4, 4, 8}, out,
                "query.row_stride 4 and batch_stride 8 make the rows of [N, L, E] = [2, 3, 4] "
                "overlap (a zero stride reads as dense)");
  check_invalid({buf.data(), 2, 3, 4, 0, 4}, out,
                "query.row_stride 4 and batch_stride 4 make the rows of [N, L, E] = [2, 3, 4] "
                "overlap (a zero stride reads as dense)");
  check_invalid({buf.data(), 2, 3, 4}, {out_buf.data(), 2, 3, 4, 8, 2},
                "out.row_stride 8 and batch_stride 2 make the rows of [N, L, E] = [2, 3, 4] "
                "overlap (a zero stride reads as dense)");
  check_invalid({buf.data(), 2, 3, 4, std::size_t{1} << 62, 4}, out,
                "query overflows: 9223372036854775816 * 4 does not fit in size_t");
  // Interleaved: out's rows sit between the query's, sharing no float, inside its range.
  check_invalid({buf.data(), 2, 3, 4, 16, 4}, {buf.data() + 8, 2, 3, 4, 16, 4},
                "out overlaps an input (values, keys or query): in-place forward is not "
                "supported");
}

// step() takes no strided views yet: it must refuse them, never read them as row-major.
TEST_CASE("MultiHeadAttention::step refuses strided x and out", "[module][layouts][errors]") {
  const std::size_t e = 8, n = 2, t = 3;
  const MultiHeadAttention m(e, 2, 1);
  KvCache cache(test::cache_config(4, m.kv_heads(), m.head_dim()));
  const std::vector<SequenceId> ids = {cache.add_sequence(), cache.add_sequence()};
  const std::vector<float> x = test::random_normal(n * t * e, 4);
  std::vector<float> out(n * t * e);
  const std::string where = "simdattn::MultiHeadAttention::step: ";
  CHECK_THROWS_MATCHES(
      m.step(cache, ids, sequence_first(x.data(), t, n, e), {out.data(), n, t, e}),
      std::invalid_argument,
      Catch::Matchers::Message(where + "x must be a row-major [N, L, E] view (row_stride and "
                                       "batch_stride 0), got row_stride 16 and batch_stride 8"));
  CHECK_THROWS_MATCHES(
      m.step(cache, ids, {x.data(), n, t, e}, sequence_first(out.data(), t, n, e)),
      std::invalid_argument,
      Catch::Matchers::Message(where + "out must be a row-major [N, L, E] view (row_stride and "
                                       "batch_stride 0), got row_stride 16 and batch_stride 8"));
  CHECK(cache.length(ids[0]) == 0);
  m.step(cache, ids, {x.data(), n, t, e}, {out.data(), n, t, e});  // the row-major call runs
  CHECK(cache.length(ids[1]) == t);
}
