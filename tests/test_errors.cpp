// Every documented error: std::invalid_argument whose message names the argument and the values.
// Messages are checked whole, so a vague or wrong message fails here.
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "common.hpp"

using namespace simdattn;
using Catch::Matchers::Message;

namespace {

constexpr std::size_t kHuge = std::size_t{1} << 62;

#define CHECK_INVALID(expr, message) \
  CHECK_THROWS_MATCHES(expr, std::invalid_argument, Message(message))

}  // namespace

TEST_CASE("module construction errors", "[errors]") {
  CHECK_INVALID(MultiHeadAttention(0, 1),
                "simdattn::MultiHeadAttention: embed_size must be > 0, got 0");
  CHECK_INVALID(MultiHeadAttention(8, 0), "simdattn::MultiHeadAttention: heads must be > 0, got 0");
  CHECK_INVALID(MultiHeadAttention(10, 3),
                "simdattn::MultiHeadAttention: embed_size (10) must be divisible by heads (3)");
  // A size computed as a negative int and converted to size_t is caught as an overflow.
  CHECK_INVALID(MultiHeadAttention(std::size_t{1} << 32, 1),
                "simdattn::MultiHeadAttention: embed_size * embed_size * 3 overflows: "
                "4294967296 * 4294967296 does not fit in size_t");
  CHECK_INVALID(MultiHeadAttention(static_cast<std::size_t>(-8), 2),
                "simdattn::MultiHeadAttention: embed_size * embed_size * 3 overflows: "
                "18446744073709551608 * 18446744073709551608 does not fit in size_t");
  CHECK_INVALID(tutorial_scale(0), "simdattn::tutorial_scale: embed_size must be > 0, got 0");
}

TEST_CASE("an out-of-range Projection is refused", "[errors]") {
  MultiHeadAttention m(4, 2, 1);
  const std::vector<float> sixteen(16, 1.0f);
  const auto bogus = static_cast<Projection>(7);
  const std::string unknown = ": unknown Projection value 7";
  CHECK_INVALID(m.set_weight(bogus, sixteen), "simdattn::MultiHeadAttention::set_weight" + unknown);
  CHECK_INVALID(m.weight(bogus), "simdattn::MultiHeadAttention::weight" + unknown);
  CHECK_INVALID(m.set_bias(bogus, sixteen), "simdattn::MultiHeadAttention::set_bias" + unknown);
  CHECK_INVALID(m.clear_bias(bogus), "simdattn::MultiHeadAttention::clear_bias" + unknown);
  CHECK_INVALID(m.has_bias(bogus), "simdattn::MultiHeadAttention::has_bias" + unknown);
  CHECK_INVALID(m.bias(bogus), "simdattn::MultiHeadAttention::bias" + unknown);
}

TEST_CASE("a moved-from module or cache is an error, not a null dereference", "[errors]") {
  const std::string moved = " was moved from (it may only be destroyed or assigned)";
  const Tensor x = Tensor::randn(1, 3, 8, 1);
  MultiHeadAttention a(8, 2, KvHeads{1}, 5);
  const Tensor expected = a.forward(x, x, x);
  MultiHeadAttention b(std::move(a));
  CHECK(b.forward(x, x, x).values() == expected.values());

  // The noexcept getters read zero; everything else names the call.
  CHECK(a.embed_size() == 0);
  CHECK(a.heads() == 0);
  CHECK(a.head_dim() == 0);
  CHECK(a.kv_heads() == 0);
  const std::string module = "simdattn::MultiHeadAttention::";
  const std::string gone = ": the module" + moved;
  const std::vector<float> w(64, 0.5f), bias(8, 0.5f);
  Tensor out(1, 3, 8);
  CHECK_INVALID(a.forward(x, x, x), module + "forward" + gone);
  CHECK_INVALID(a.forward(x, x, x, Mask{}, out.view()), module + "forward" + gone);
  Gradients grads;
  CHECK_INVALID(a.backward(x, x, x, x, grads), module + "backward" + gone);
  CHECK_INVALID(a.reset_parameters(1), module + "reset_parameters" + gone);
  CHECK_INVALID(a.set_weight(Projection::query, w), module + "set_weight" + gone);
  CHECK_INVALID(a.weight(Projection::query), module + "weight" + gone);
  CHECK_INVALID(a.set_bias(Projection::query, bias), module + "set_bias" + gone);
  CHECK_INVALID(a.clear_bias(Projection::query), module + "clear_bias" + gone);
  CHECK_INVALID(a.has_bias(Projection::query), module + "has_bias" + gone);
  CHECK_INVALID(a.bias(Projection::output), module + "bias" + gone);
  // A copy of it is moved-from too.
  const MultiHeadAttention copy(a);
  CHECK(copy.embed_size() == 0);
  CHECK_INVALID(copy.forward(x, x, x), module + "forward" + gone);

  KvCacheConfig config;
  config.blocks = 2;
  config.kv_heads = 1;
  config.head_dim = 4;
  KvCache c1(config);
  const SequenceId id = c1.add_sequence();
  b.step(c1, {id}, x);
  KvCache c2(std::move(c1));
  CHECK(c2.length(id) == 3);
  CHECK(c1.free_blocks() == 0);
  CHECK(c1.capacity_blocks() == 0);
  CHECK(c1.kv_heads() == 0);
  CHECK(c1.head_dim() == 0);
  CHECK(c1.storage_data() == nullptr);
  CHECK(c1.storage_bytes() == 0);
  CHECK_FALSE(c1.contains(id));
  c1.clear();
  const std::string cache = "simdattn::KvCache::";
  const std::string cache_gone = ": the cache" + moved;
  std::vector<float> k(12), v(12);
  const ConstHeadsView kv{k.data(), 1, 3, 1, 4};
  CHECK_INVALID(c1.add_sequence(), cache + "add_sequence" + cache_gone);
  CHECK_INVALID(c1.fork(id), cache + "fork" + cache_gone);
  CHECK_INVALID(c1.release(id), cache + "release" + cache_gone);
  CHECK_INVALID(c1.truncate(id, 0), cache + "truncate" + cache_gone);
  CHECK_INVALID(c1.length(id), cache + "length" + cache_gone);
  CHECK_INVALID(c1.sequences(), cache + "sequences" + cache_gone);
  CHECK_INVALID(c1.append({id}, kv, kv), cache + "append" + cache_gone);
  CHECK_INVALID(c1.read(id, 0, 1, k.data(), v.data()), cache + "read" + cache_gone);
  CHECK_INVALID(b.step(c1, {id}, x), module + "step" + cache_gone);
  CHECK_INVALID(a.step(c2, {id}, x), module + "step" + gone);
  std::vector<float> q(24), o(24);
  CHECK_INVALID(scaled_dot_product_attention(c1, {id}, ConstHeadsView{q.data(), 1, 3, 2, 4}, kv, kv,
                                             HeadsView<float>{o.data(), 1, 3, 2, 4}),
                "simdattn::scaled_dot_product_attention (KvCache)" + cache_gone);
  CHECK(c2.length(id) == 3);  // the failed calls touched neither live object

  // Assigning makes them usable again.
  a = b;
  CHECK(a.forward(x, x, x).values() == expected.values());
  c1 = KvCache(config);
  CHECK(c1.free_blocks() == 2);
}

TEST_CASE("parameter setter errors leave the module unchanged", "[errors]") {
  MultiHeadAttention m(4, 2, 1);
  const auto before = m.weight(Projection::key);
  const auto bias_before = m.bias(Projection::output);
  const std::vector<float> fifteen(15, 1.0f), three(3, 1.0f);
  CHECK_INVALID(m.set_weight(Projection::query, nullptr, 16),
                "simdattn::MultiHeadAttention::set_weight: query weight is null");
  CHECK_INVALID(m.set_weight(Projection::key, fifteen),
                "simdattn::MultiHeadAttention::set_weight: key weight has 15 elements, "
                "[E, E] = [4, 4] needs 16");
  CHECK_INVALID(m.set_bias(Projection::value, nullptr, 4),
                "simdattn::MultiHeadAttention::set_bias: value bias is null");
  CHECK_INVALID(m.set_bias(Projection::output, three),
                "simdattn::MultiHeadAttention::set_bias: output bias has 3 elements, [E] = [4] "
                "needs 4");
  CHECK(m.weight(Projection::key) == before);
  CHECK(m.bias(Projection::output) == bias_before);
  CHECK_FALSE(m.has_bias(Projection::value));
}

TEST_CASE("Tensor errors", "[errors]") {
  CHECK_INVALID(Tensor(2, 2, 2, std::vector<float>(7)),
                "simdattn::Tensor: data has 7 elements, shape [2, 2, 2] needs 8");
  CHECK_INVALID(Tensor(std::size_t{1} << 40, std::size_t{1} << 40, 1),
                "simdattn::Tensor: n * l * e overflows: 1099511627776 * 1099511627776 does not "
                "fit in size_t");
  // at() checks each index against its own dimension: [0, 0, 4] is inside the data of a
  // [2, 2, 2] tensor, but not inside its shape.
  Tensor t = Tensor::randn(2, 2, 2, 1);
  const Tensor& ct = t;
  CHECK(t.at(1, 0, 1) == t.data()[5]);
  CHECK(ct.at(1, 1, 1) == t.data()[7]);
  CHECK_THROWS_MATCHES(t.at(0, 0, 4), std::out_of_range,
                       Message("simdattn::Tensor::at: index [0, 0, 4] is outside [2, 2, 2]"));
  CHECK_THROWS_MATCHES(ct.at(0, 2, 0), std::out_of_range,
                       Message("simdattn::Tensor::at: index [0, 2, 0] is outside [2, 2, 2]"));
  CHECK_THROWS_MATCHES(ct.at(2, 0, 0), std::out_of_range,
                       Message("simdattn::Tensor::at: index [2, 0, 0] is outside [2, 2, 2]"));
  // A moved-from tensor is empty, shape and data alike, so a view of it is refused as such.
  const std::vector<float> values = t.values();
  Tensor moved_to(std::move(t));
  CHECK(moved_to.values() == values);
  CHECK(t.shape_string() == "[0, 0, 0]");
  CHECK(t.size() == 0);
  CHECK_THROWS_AS(t.at(0, 0, 0), std::out_of_range);
  Tensor assigned;
  assigned = std::move(moved_to);
  CHECK(assigned.shape_string() == "[2, 2, 2]");
  CHECK(moved_to.n() == 0);
  CHECK(moved_to.l() == 0);
  CHECK(moved_to.e() == 0);
  const MultiHeadAttention m(2, 1, 1);
  CHECK_THROWS_AS(m.forward(t, t, t), std::invalid_argument);
}

TEST_CASE("forward errors", "[errors]") {
  const MultiHeadAttention m(4, 2, 1);
  const std::string where = "simdattn::MultiHeadAttention::forward: ";
  const Tensor x = Tensor::randn(1, 3, 4, 1);
  const Tensor x4 = Tensor::randn(1, 4, 4, 2);
  const Tensor x2 = Tensor::randn(2, 3, 4, 3);
  const Tensor e5 = Tensor::randn(1, 3, 5, 4);
  std::vector<float> out_buf(12);
  const TensorView<float> out{out_buf.data(), 1, 3, 4};

  SECTION("null pointers") {
    CHECK_INVALID(m.forward({nullptr, 1, 3, 4}, x, x, {}, out), where + "values.data is null");
    CHECK_INVALID(m.forward(x, {nullptr, 1, 3, 4}, x, {}, out), where + "keys.data is null");
    CHECK_INVALID(m.forward(x, x, {nullptr, 1, 3, 4}, {}, out), where + "query.data is null");
    CHECK_INVALID(m.forward(x, x, x, {}, TensorView<float>{nullptr, 1, 3, 4}),
                  where + "out.data is null");
    CHECK_INVALID(m.forward(x, x, ConstTensorView{nullptr, 1, 3, 4}), where + "query.data is null");
  }
  SECTION("zero sizes") {
    CHECK_INVALID(m.forward({x.data(), 0, 3, 4}, x, x, {}, out),
                  where + "values has a zero size: [0, 3, 4]");
    CHECK_INVALID(m.forward(x, {x.data(), 1, 0, 4}, x, {}, out),
                  where + "keys has a zero size: [1, 0, 4]");
    CHECK_INVALID(m.forward(x, x, ConstTensorView{x.data(), 1, 3, 0}),
                  where + "query has a zero size: [1, 3, 0]");
    CHECK_INVALID(m.forward(x, x, x, {}, TensorView<float>{out_buf.data(), 1, 0, 4}),
                  where + "out has a zero size: [1, 0, 4]");
    // An empty Tensor has no data: its size, not the null pointer, is what the message names.
    const Tensor empty(0, 3, 4);
    CHECK_INVALID(m.forward(x, x, empty), where + "query has a zero size: [0, 3, 4]");
  }
  SECTION("shapes that do not fit") {
    CHECK_INVALID(m.forward(x, x, e5),
                  where +
                      "query has embedding size 5 (shape [1, 3, 5]), the module has "
                      "embed_size 4");
    CHECK_INVALID(m.forward(x, x4, x),
                  where + "keys [1, 4, 4] and values [1, 3, 4] must have the same shape");
    CHECK_INVALID(m.forward(x, x, x2),
                  where + "batch sizes differ: query has N = 2, keys and values have N = 1");
    CHECK_INVALID(m.forward(x4, x4, x, {}, TensorView<float>{out_buf.data(), 1, 2, 4}),
                  where + "out has shape [1, 2, 4], the query needs [1, 3, 4]");
    CHECK_INVALID(
        m.forward(x, x, x, {}, TensorView<float>{out_buf.data(), 1, 2, 5}),
        where + "out has embedding size 5 (shape [1, 2, 5]), the module has embed_size 4");
  }
  SECTION("masks that do not broadcast") {
    const std::vector<std::uint8_t> bytes(64, 1);
    CHECK_INVALID(m.forward(x4, x4, x, Mask{bytes.data(), 2, 1, 1, 4}),
                  where +
                      "mask of shape [2, 1, 1, 4] does not broadcast to [N, H, Lq, Lk] = "
                      "[1, 2, 3, 4] (each mask dimension must be 1 or the full size)");
    CHECK_INVALID(m.forward(x4, x4, x, Mask{bytes.data(), 1, 1, 4, 3}),
                  where +
                      "mask of shape [1, 1, 4, 3] does not broadcast to [N, H, Lq, Lk] = "
                      "[1, 2, 3, 4] (each mask dimension must be 1 or the full size)");
  }
  SECTION("scale and threads") {
    Options o;
    o.scale = 0.0f;
    CHECK_INVALID(m.forward(x, x, x, {}, o),
                  where + "options.scale must be finite and > 0, got 0.000000");
    o.scale = -2.0f;
    CHECK_INVALID(m.forward(x, x, x, {}, o),
                  where + "options.scale must be finite and > 0, got -2.000000");
    o.scale = std::numeric_limits<float>::infinity();
    CHECK_INVALID(m.forward(x, x, x, {}, o),
                  where + "options.scale must be finite and > 0, got inf");
    o.scale = std::numeric_limits<float>::quiet_NaN();
    CHECK_INVALID(m.forward(x, x, x, {}, o),
                  where + "options.scale must be finite and > 0, got nan");
    Options t;
    t.threads = -1;
    CHECK_INVALID(m.forward(x, x, x, {}, t),
                  where + "options.threads must be in [0, 1024] (0 = OpenMP's default), got -1");
  }
  SECTION("overlapping output") {
    Tensor y = Tensor::randn(1, 3, 4, 5);
    CHECK_INVALID(m.forward(y, x, x, {}, y.view()),
                  where +
                      "out overlaps an input (values, keys or query): in-place forward is not "
                      "supported");
    std::vector<float> big = test::random_normal(24, 6);  // query in [0, 12), out in [6, 18)
    CHECK_INVALID(m.forward(x, x, ConstTensorView{big.data(), 1, 3, 4}, {},
                            TensorView<float>{big.data() + 6, 1, 3, 4}),
                  where +
                      "out overlaps an input (values, keys or query): in-place forward is not "
                      "supported");
    std::vector<float> shared(40);
    const Mask mask{reinterpret_cast<const std::uint8_t*>(shared.data()), 1, 1, 3, 3};
    CHECK_INVALID(m.forward(x, x, x, mask, TensorView<float>{shared.data() + 1, 1, 3, 4}),
                  where + "out overlaps the mask");
  }
  SECTION("sizes whose product overflows") {
    CHECK_INVALID(m.forward({x.data(), kHuge, 1, 4}, {x.data(), kHuge, 1, 4}, x, {}, out),
                  where + "values overflows: 4611686018427387904 * 4 does not fit in size_t");
    CHECK_INVALID(m.forward(x, x, ConstTensorView{x.data(), kHuge, 1, 4}),
                  where + "query overflows: 4611686018427387904 * 4 does not fit in size_t");
    // A row stride that fits, but not with the last row's E elements after it (a batch stride
    // given, as N = 1 never uses it, so that L x row_stride is not formed first).
    const std::size_t stride = std::numeric_limits<std::size_t>::max() - 1;
    CHECK_INVALID(m.forward(x, x, ConstTensorView{x.data(), 1, 2, 4, stride, 1}),
                  where + "query overflows: 18446744073709551614 + 4 does not fit in size_t");
  }
  SECTION("the returning form validates the query before allocating its result") {
    // 2^40 x 4 floats would be 16 TiB: the shape error must come first, not std::bad_alloc.
    CHECK_INVALID(m.forward(x, x, ConstTensorView{x.data(), std::size_t{1} << 40, 1, 5}),
                  where +
                      "query has embedding size 5 (shape [1099511627776, 1, 5]), the module "
                      "has embed_size 4");
  }
}

TEST_CASE("scaled_dot_product_attention errors", "[errors]") {
  const std::string where = "simdattn::scaled_dot_product_attention: ";
  const auto data = test::random_normal(2 * 5 * 2 * 3, 1);
  const ConstHeadsView q{data.data(), 1, 3, 2, 3}, k{data.data(), 1, 5, 2, 3};
  std::vector<float> out_buf(2 * 5 * 2 * 3);
  const HeadsView<float> out{out_buf.data(), 1, 3, 2, 3};
  auto with = [](ConstHeadsView v, auto edit) {
    edit(v);
    return v;
  };

  SECTION("null pointers and zero sizes") {
    CHECK_INVALID(scaled_dot_product_attention({nullptr, 1, 3, 2, 3}, k, k, out),
                  where + "query.data is null");
    CHECK_INVALID(scaled_dot_product_attention(q, {nullptr, 1, 5, 2, 3}, k, out),
                  where + "keys.data is null");
    CHECK_INVALID(scaled_dot_product_attention(q, k, {nullptr, 1, 5, 2, 3}, out),
                  where + "values.data is null");
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, {nullptr, 1, 3, 2, 3}),
                  where + "out.data is null");
    CHECK_INVALID(scaled_dot_product_attention(q, {data.data(), 1, 0, 2, 3}, k, out),
                  where + "keys has a zero size: [N, L, H, D] = [1, 0, 2, 3]");
    CHECK_INVALID(scaled_dot_product_attention({data.data(), 1, 3, 2, 0}, k, k, out),
                  where + "query has a zero size: [N, L, H, D] = [1, 3, 2, 0]");
  }
  SECTION("strides") {
    CHECK_INVALID(scaled_dot_product_attention(with(q, [](ConstHeadsView& v) { v.row_stride = 5; }),
                                               k, k, out),
                  where + "query.row_stride (5) is smaller than H * D (6)");
    const ConstHeadsView two{data.data(), 2, 2, 2, 3};
    CHECK_INVALID(scaled_dot_product_attention(
                      two, two, with(two, [](ConstHeadsView& v) { v.batch_stride = 10; }),
                      HeadsView<float>{out_buf.data(), 2, 2, 2, 3}),
                  where + "values.batch_stride (10) makes batches overlap (rows need 12)");
  }
  SECTION("mismatched shapes") {
    const ConstHeadsView k2{data.data(), 2, 5, 2, 3}, k3h{data.data(), 1, 5, 3, 2},
        k4d{data.data(), 1, 5, 2, 4}, k4{data.data(), 1, 4, 2, 3};
    CHECK_INVALID(scaled_dot_product_attention(q, k2, k, out),
                  where + "batch sizes N differ: query has 1, keys has 2");
    CHECK_INVALID(scaled_dot_product_attention(q, k, k3h, out),
                  where + "heads H differ: keys has 2, values has 3");
    CHECK_INVALID(
        scaled_dot_product_attention({data.data(), 1, 3, 3, 3}, k, k, {out_buf.data(), 1, 3, 3, 3}),
        where +
            "query heads H = 3 is not a multiple of the keys' and values' heads H = 2 "
            "(grouped-query attention needs H_q % H_kv == 0)");
    CHECK_INVALID(scaled_dot_product_attention(q, k4d, k, out),
                  where + "head_dim D differ: query has 3, keys has 4");
    CHECK_INVALID(scaled_dot_product_attention(q, k, k4, out),
                  where + "key lengths Lk differ: keys has 5, values has 4");
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, {out_buf.data(), 1, 2, 2, 3}),
                  where + "query lengths Lq differ: query has 3, out has 2");
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, {out_buf.data(), 2, 3, 2, 3}),
                  where + "batch sizes N differ: query has 1, out has 2");
  }
  SECTION("mask, scale, threads") {
    const std::vector<std::uint8_t> bytes(64, 1);
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, out, Mask{bytes.data(), 1, 2, 3, 4}),
                  where +
                      "mask of shape [1, 2, 3, 4] does not broadcast to [N, H, Lq, Lk] = "
                      "[1, 2, 3, 5] (each mask dimension must be 1 or the full size)");
    Options o;
    o.scale = -0.5f;
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, out, {}, o),
                  where + "options.scale must be finite and > 0, got -0.500000");
    Options t;
    t.threads = -3;
    CHECK_INVALID(scaled_dot_product_attention(q, k, k, out, {}, t),
                  where + "options.threads must be in [0, 1024] (0 = OpenMP's default), got -3");
  }
  SECTION("overlapping output") {
    std::vector<float> buf(out_buf.size());
    const ConstHeadsView qb{buf.data(), 1, 3, 2, 3};
    CHECK_INVALID(scaled_dot_product_attention(qb, k, k, {buf.data() + 4, 1, 3, 2, 3}),
                  where +
                      "out overlaps an input (query, keys or values): in-place attention is "
                      "not supported");
  }
  SECTION("sizes whose product overflows") {
    // Views that claim 2^31 rows pass on their own; their [1, 1, 2^31, 2^31] mask does not.
    const std::size_t rows = std::size_t{1} << 31;
    const std::uint8_t byte = 1;
    CHECK_INVALID(
        scaled_dot_product_attention({data.data(), 1, rows, 2, 3}, {data.data(), 1, rows, 2, 3},
                                     {data.data(), 1, rows, 2, 3}, {out_buf.data(), 1, rows, 2, 3},
                                     Mask{&byte, 1, 1, rows, rows}),
        where + "mask size overflows: 4611686018427387904 * 4 does not fit in size_t");
    CHECK_INVALID(scaled_dot_product_attention({data.data(), 1, 3, kHuge, kHuge}, k, k, out),
                  where +
                      "query overflows: 4611686018427387904 * 4611686018427387904 does not "
                      "fit in size_t");
    CHECK_INVALID(scaled_dot_product_attention({data.data(), kHuge, kHuge, 2, 3}, k, k, out),
                  where + "query overflows: 4611686018427387904 * 6 does not fit in size_t");
    // Strides whose terms each fit in bytes but whose sum, the last element's end, does not.
    const std::size_t row = std::size_t{1} << 60, batch = 3 * row;
    CHECK_INVALID(scaled_dot_product_attention({data.data(), 2, 2, 1, 1, row, batch}, k, k, out),
                  where + "query overflows: 4611686018427387905 * 4 does not fit in size_t");
  }
}

// Values no caller means but any caller can pass: a thread count an OpenMP runtime cannot start
// (libgomp crashed at 100000 and aborted the process at INT_MAX), and enumerations cast from
// integers outside them, which once ran silently as something else.
TEST_CASE("options out of range are refused by both entry points", "[errors]") {
  const MultiHeadAttention m(4, 2, 1);
  const Tensor x = Tensor::randn(1, 3, 4, 1);
  const ConstHeadsView q{x.data(), 1, 3, 2, 2};
  std::vector<float> out_buf(12);
  const HeadsView<float> out{out_buf.data(), 1, 3, 2, 2};
  const std::string forward = "simdattn::MultiHeadAttention::forward: ";
  const std::string sdpa = "simdattn::scaled_dot_product_attention: ";
  auto check_both = [&](const Options& o, const std::string& message) {
    CHECK_INVALID(m.forward(x, x, x, {}, o), forward + message);
    CHECK_INVALID(scaled_dot_product_attention(q, q, q, out, {}, o), sdpa + message);
  };
  for (const int threads : {kMaxThreads + 1, 100000, std::numeric_limits<int>::max(),
                            std::numeric_limits<int>::min()}) {
    Options o;
    o.threads = threads;
    check_both(o, "options.threads must be in [0, 1024] (0 = OpenMP's default), got " +
                      std::to_string(threads));
  }
  for (const Path path : {Path::optimized, Path::naive}) {
    Options o;
    o.path = path;
    o.causal = static_cast<Causal>(7);
    check_both(o, "options.causal has the unknown value 7 (none, top_left, bottom_right)");
    o.causal = Causal::none;
    o.masked_rows = static_cast<MaskedRows>(9);
    check_both(o, "options.masked_rows has the unknown value 9 (uniform, zeros)");
  }
  Options o;
  o.path = static_cast<Path>(5);
  check_both(o, "options.path has the unknown value 5 (optimized, naive)");
  o.path = static_cast<Path>(-1);
  check_both(o, "options.path has the unknown value -1 (optimized, naive)");
}

// The largest count accepted really runs: a problem above the drivers' serial limit, so that
// the team is started, gives the bits of one thread.
TEST_CASE("threads = kMaxThreads runs and matches one thread", "[errors]") {
  const std::size_t n = 1, l = 128, h = 2, d = 16;
  const auto data = test::random_normal(n * l * h * d, 11);
  const ConstHeadsView v{data.data(), n, l, h, d};
  std::vector<float> one(data.size()), many(data.size());
  Options o;
  o.threads = 1;
  scaled_dot_product_attention(v, v, v, {one.data(), n, l, h, d}, {}, o);
  o.threads = kMaxThreads;
  scaled_dot_product_attention(v, v, v, {many.data(), n, l, h, d}, {}, o);
  CHECK(one == many);
}
