// Reliability: aliasing between the output and the inputs.
// The documented rule (README, "Reliability"): `out` must not overlap the memory range of any
// input (query, keys, values, mask), judged by address range from each view's first to last
// element; any overlap, even of one float, even between interleaved strided views that share
// no element, is rejected with std::invalid_argument before anything is read or written.
// In-place attention is not supported: the kernels read keys and values for every query row
// while rows of `out` are being written. Inputs may alias each other freely (self-attention).
#include <vector>

#include "common.hpp"

namespace simdattn {
namespace {

using test::SdpaProblem;

const std::string kSdpaOverlap =
    "simdattn::scaled_dot_product_attention: out overlaps an input (query, keys or values): "
    "in-place attention is not supported";
const std::string kForwardOverlap =
    "simdattn::MultiHeadAttention::forward: out overlaps an input (values, keys or query): "
    "in-place forward is not supported";

// CHECKs that call() throws std::invalid_argument with exactly `message` and leaves `guard`
// (the memory the call would have written) bit for bit as it was.
template <class Call>
void check_rejected(Call call, const std::string& message, const std::vector<float>& guard) {
  const std::vector<float> before = guard;
  CHECK_THROWS_WITH(call(), message);
  CHECK_THROWS_AS(call(), std::invalid_argument);
  CHECK(test::first_difference(guard, before) == "");
}

}  // namespace

TEST_CASE("scaled_dot_product_attention: out equal to or overlapping an input is rejected",
          "[reliability][aliasing]") {
  SdpaProblem p(2, 9, 9, 2, 5, 60);  // Lq = Lk: out has the shape of every input
  const std::size_t size = p.q.size();
  SECTION("out is the query, the keys or the values") {
    for (std::vector<float>* in : {&p.q, &p.k, &p.v}) {
      const HeadsView<float> out{in->data(), p.n, p.lq, p.h, p.d};
      check_rejected([&] { scaled_dot_product_attention(p.qv(), p.kv(), p.vv(), out); },
                     kSdpaOverlap, *in);
    }
  }
  SECTION("overlap by one element at either end, and out inside an input") {
    std::vector<float> buf(3 * size, 1.0f);
    std::copy(p.q.begin(), p.q.end(), buf.begin() + size);
    const ConstHeadsView q{buf.data() + size, p.n, p.lq, p.h, p.d};
    for (std::size_t at :
         {std::size_t{1}, 2 * size - 1}) {  // out ends on q's first / starts on q's last
      INFO("out at " << at);
      check_rejected(
          [&] {
            scaled_dot_product_attention(q, p.kv(), p.vv(), {buf.data() + at, p.n, p.lq, p.h, p.d});
          },
          kSdpaOverlap, buf);
    }
    // out shifted by one row inside q's own buffer.
    check_rejected(
        [&] {
          scaled_dot_product_attention(q, p.kv(), p.vv(),
                                       {buf.data() + size + p.h * p.d, p.n, p.lq, p.h, p.d});
        },
        kSdpaOverlap, buf);
  }
  SECTION("interleaved strided views overlap by range and are rejected") {
    // Row r of a [N * L, 2 * H * D] buffer holds q's row in its first half and out's in its
    // second: no element is shared, but the ranges interleave. The rule is by range.
    std::vector<float> buf(2 * size);
    const std::size_t hd = p.h * p.d;
    for (std::size_t r = 0; r < p.n * p.lq; ++r) {
      std::copy(p.q.begin() + r * hd, p.q.begin() + (r + 1) * hd, buf.begin() + 2 * r * hd);
    }
    const ConstHeadsView q{buf.data(), p.n, p.lq, p.h, p.d, 2 * hd};
    check_rejected(
        [&] {
          scaled_dot_product_attention(q, p.kv(), p.vv(),
                                       {buf.data() + hd, p.n, p.lq, p.h, p.d, 2 * hd});
        },
        kSdpaOverlap, buf);
  }
}

TEST_CASE("scaled_dot_product_attention: out right next to its inputs is accepted and right",
          "[reliability][aliasing]") {
  // One buffer [q | out | k | v] with no gap: touching ranges do not overlap.
  SdpaProblem p(2, 7, 11, 3, 5, 61);
  const std::size_t qs = p.q.size(), ks = p.k.size();
  std::vector<float> buf(2 * qs + 2 * ks);
  std::copy(p.q.begin(), p.q.end(), buf.begin());
  std::copy(p.k.begin(), p.k.end(), buf.begin() + 2 * qs);
  std::copy(p.v.begin(), p.v.end(), buf.begin() + 2 * qs + ks);
  const ConstHeadsView q{buf.data(), p.n, p.lq, p.h, p.d};
  const ConstHeadsView k{buf.data() + 2 * qs, p.n, p.lk, p.h, p.d};
  const ConstHeadsView v{buf.data() + 2 * qs + ks, p.n, p.lk, p.h, p.d};
  for (Path path : test::kPaths) {
    Options o;
    o.path = path;
    INFO("path " << test::path_name(path));
    scaled_dot_product_attention(q, k, v, {buf.data() + qs, p.n, p.lq, p.h, p.d}, {}, o);
    const std::vector<float> out(buf.begin() + qs, buf.begin() + 2 * qs);
    CHECK(test::first_difference(out, p.run({}, o)) == "");
    CHECK(test::first_difference(std::vector<float>(buf.begin(), buf.begin() + qs), p.q) == "");
  }
}

TEST_CASE("scaled_dot_product_attention: inputs may alias each other", "[reliability][aliasing]") {
  // Self-attention on one buffer equals the same numbers in three buffers, bit for bit.
  SdpaProblem p(2, 13, 13, 2, 6, 62);
  p.k = p.q;
  p.v = p.q;
  for (Path path : test::kPaths) {
    for (test::MaskKind kind : test::kAllMaskKinds) {
      const auto m = test::make_mask(kind, p.n, p.h, p.lq, p.lk);
      Options o;
      o.path = path;
      o.causal = m.causal;
      INFO("path " << test::path_name(path) << ", mask " << test::mask_kind_name(kind));
      std::vector<float> out(p.q.size());
      scaled_dot_product_attention(p.qv(), p.qv(), p.qv(), {out.data(), p.n, p.lq, p.h, p.d},
                                   m.mask, o);
      CHECK(test::first_difference(out, p.run(m.mask, o)) == "");
    }
  }
}

TEST_CASE("scaled_dot_product_attention: out overlapping the mask is rejected",
          "[reliability][aliasing][masks]") {
  // The mask is an input like the others (forward() already rejects this overlap): a kernel
  // writing out while it reads mask bytes would see its own results as mask bytes.
  SdpaProblem p(1, 8, 8, 1, 4, 63);
  std::vector<float> out(p.q.size(), 0.0f);
  const Mask mask{reinterpret_cast<const std::uint8_t*>(out.data()) + 4, 1, 1, p.lq, p.lk};
  for (float& x : out) x = 1.0f;  // mask bytes: non-zero, a valid mask on its own
  check_rejected(
      [&] {
        scaled_dot_product_attention(p.qv(), p.kv(), p.vv(), {out.data(), 1, p.lq, 1, p.d}, mask);
      },
      "simdattn::scaled_dot_product_attention: out overlaps the mask", out);
}

TEST_CASE("forward: out equal to or overlapping an input is rejected", "[reliability][aliasing]") {
  const std::size_t e = 8, n = 2, l = 5;
  const MultiHeadAttention m(e, 2, 64);
  auto x = test::random_normal(n * l * e, 65);
  auto y = test::random_normal(n * l * e, 66);
  const ConstTensorView xv{x.data(), n, l, e}, yv{y.data(), n, l, e};
  const TensorView<float> onto_x{x.data(), n, l, e};
  for (Path path : test::kPaths) {
    Options o;
    o.path = path;
    INFO("path " << test::path_name(path));
    check_rejected([&] { m.forward(xv, xv, xv, {}, onto_x, o); }, kForwardOverlap, x);
    check_rejected([&] { m.forward(xv, yv, yv, {}, onto_x, o); }, kForwardOverlap, x);
    check_rejected([&] { m.forward(yv, xv, yv, {}, onto_x, o); }, kForwardOverlap, x);
    check_rejected([&] { m.forward(yv, yv, xv, {}, onto_x, o); }, kForwardOverlap, x);
    // One float of overlap: out's last element is x's first.
    std::vector<float> buf(2 * n * l * e);
    std::copy(x.begin(), x.end(), buf.begin() + n * l * e - 1);
    check_rejected(
        [&] {
          m.forward({buf.data() + n * l * e - 1, n, l, e}, yv, yv, {}, {buf.data(), n, l, e}, o);
        },
        kForwardOverlap, buf);
  }
}

TEST_CASE("forward: options.weights overlapping an input or out is rejected",
          "[reliability][aliasing]") {
  // Slots of 100 floats in one buffer: values, keys, query, out (80 floats each), then the
  // attention weights [N, H, Lq, Lk] = [2, 2, 5, 5].
  const std::size_t e = 8, n = 2, l = 5, slot = 100;
  const MultiHeadAttention m(e, 2, 64);
  std::vector<float> buf = test::random_normal(5 * slot, 67);
  auto at = [&](std::size_t i) { return buf.data() + i * slot; };
  const char* names[] = {"values", "keys", "query", "out"};
  for (Path path : test::kPaths) {
    INFO("path " << test::path_name(path));
    Options o;
    o.path = path;
    auto call = [&] {
      m.forward({at(0), n, l, e}, {at(1), n, l, e}, {at(2), n, l, e}, {}, {at(3), n, l, e}, o);
    };
    for (std::size_t i = 0; i < 4; ++i) {
      o.weights = AttentionWeights{at(i), slot, false};
      check_rejected(
          call,
          std::string("simdattn::MultiHeadAttention::forward: options.weights overlaps ") +
              names[i],
          buf);
    }
    o.weights = AttentionWeights{at(4), slot, false};
    CHECK_NOTHROW(call());
  }
}

}  // namespace simdattn
