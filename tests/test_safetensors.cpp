// The safetensors loader: PyTorch's names and prefixes, F16/BF16 conversion, round trips, and a
// clear error for every kind of bad file, with the module left exactly as it was.
//
// Files are assembled here byte by byte (the header JSON by hand: the suite has no JSON
// library), so each test states the exact file it feeds the loader.
#include <unistd.h>  // getpid: CTest may run the suite for several ISAs at once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common.hpp"
#include "simdattn/safetensors.hpp"

namespace {

using namespace simdattn;

constexpr Projection kAll[] = {Projection::query, Projection::key, Projection::value,
                               Projection::output};

// --- assembling files ------------------------------------------------------------------------

struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<std::size_t> shape;
  std::vector<std::uint8_t> bytes;
};

template <class T>
std::vector<std::uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<std::uint8_t> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

RawTensor f32(const std::string& name, std::vector<std::size_t> shape,
              const std::vector<float>& v) {
  return {name, "F32", std::move(shape), bytes_of(v)};
}

std::string shape_json(const std::vector<std::size_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// 8-byte little-endian length, header, data: the whole file format.
std::vector<std::uint8_t> assemble(const std::string& header, const std::vector<std::uint8_t>& data,
                                   std::uint64_t claimed_length = ~0ull) {
  const std::uint64_t n = claimed_length == ~0ull ? header.size() : claimed_length;
  std::vector<std::uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// A well-formed file of `tensors`, laid out one after the other, with string metadata.
std::vector<std::uint8_t> build(const std::vector<RawTensor>& tensors,
                                const std::map<std::string, std::string>& metadata = {}) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      header += (first ? "\"" : ",\"") + k + "\":\"" + v + "\"";
      first = false;
    }
    header += "}";
  }
  std::vector<std::uint8_t> data;
  for (const RawTensor& t : tensors) {
    if (header.size() > 1) header += ",";
    header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + shape_json(t.shape) +
              ",\"data_offsets\":[" + std::to_string(data.size()) + "," +
              std::to_string(data.size() + t.bytes.size()) + "]}";
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // the writers' padding
  return assemble(header, data);
}

// The tutorial's state dict of `m` (with Q/K/V biases only if `m` has them).
std::vector<RawTensor> tutorial_tensors(const MultiHeadAttention& m,
                                        const std::string& prefix = "") {
  const std::size_t e = m.embed_size();
  const char* names[] = {"queries", "keys", "values", "fc_out"};
  std::vector<RawTensor> out;
  for (int i = 0; i < 4; ++i) {
    const std::size_t rows = m.weight(kAll[i]).size() / e;  // kv_heads x head_dim for K and V
    out.push_back(f32(prefix + names[i] + ".weight", {rows, e}, m.weight(kAll[i])));
    if (m.has_bias(kAll[i])) {
      out.push_back(f32(prefix + names[i] + ".bias", {rows}, m.bias(kAll[i])));
    }
  }
  return out;
}

// nn.MultiheadAttention's state dict of `m`: query, key and value stacked in in_proj.
std::vector<RawTensor> torch_mha_tensors(const MultiHeadAttention& m,
                                         const std::string& prefix = "") {
  const std::size_t e = m.embed_size();
  std::vector<float> w, b;
  for (int i = 0; i < 3; ++i) {
    w.insert(w.end(), m.weight(kAll[i]).begin(), m.weight(kAll[i]).end());
    const std::vector<float> bias = m.has_bias(kAll[i]) ? m.bias(kAll[i]) : std::vector<float>(e);
    b.insert(b.end(), bias.begin(), bias.end());
  }
  return {f32(prefix + "in_proj_weight", {3 * e, e}, w), f32(prefix + "in_proj_bias", {3 * e}, b),
          f32(prefix + "out_proj.weight", {e, e}, m.weight(Projection::output)),
          f32(prefix + "out_proj.bias", {e}, m.bias(Projection::output))};
}

// A module with random weights and biases on every projection (none is left at its default).
MultiHeadAttention random_module(std::size_t e, std::size_t heads, std::uint64_t seed,
                                 std::size_t kv_heads = 0) {
  MultiHeadAttention m(e, heads, KvHeads{kv_heads == 0 ? heads : kv_heads}, seed);
  for (int i = 0; i < 4; ++i) {
    m.set_bias(kAll[i], test::random_normal(m.weight(kAll[i]).size() / e, seed * 10 + i));
  }
  return m;
}

// --- checking ----------------------------------------------------------------------------------

struct Snapshot {
  std::vector<float> weight[4], bias[4];
  explicit Snapshot(const MultiHeadAttention& m) {
    for (int i = 0; i < 4; ++i) {
      weight[i] = m.weight(kAll[i]);
      bias[i] = m.bias(kAll[i]);
    }
  }
  bool operator==(const Snapshot& o) const {
    for (int i = 0; i < 4; ++i) {
      if (weight[i] != o.weight[i] || bias[i] != o.bias[i]) return false;
    }
    return true;
  }
};

// The SafetensorsError's message, or "" if `f` did not throw one.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "";
}

// Loads a bad file into a module; checks that the error names the file and `problem`, and that
// the module is exactly as before.
void check_rejected(const std::vector<std::uint8_t>& file, const std::string& problem,
                    std::size_t e = 24) {
  MultiHeadAttention m = random_module(e, 3, 99);
  const Snapshot before(m);
  const std::string message = error_of([&] {
    load_weights(m, SafetensorsFile::from_memory(file.data(), file.size(), "bad.safetensors"));
  });
  INFO("message: " << message);
  CHECK_THAT(message, Catch::Contains("'bad.safetensors'"));
  CHECK_THAT(message, Catch::Contains(problem));
  CHECK(Snapshot(m) == before);
}

std::filesystem::path temp_file(const std::string& name, const std::vector<std::uint8_t>& bytes) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("simdattn_test_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

// The value of an IEEE binary16 pattern, computed from its definition (not from bits).
double half_value(std::uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  const double magnitude = exponent == 0    ? std::ldexp(mantissa, -24)
                           : exponent == 31 ? (mantissa == 0 ? INFINITY : NAN)
                                            : std::ldexp(1024 + mantissa, exponent - 25);
  return sign ? -magnitude : magnitude;
}

}  // namespace

// --- loading ------------------------------------------------------------------------------------

TEST_CASE("safetensors: tutorial names round trip, from memory and from a file", "[safetensors]") {
  const MultiHeadAttention source = random_module(24, 3, 1);
  const auto file = build(tutorial_tensors(source));
  MultiHeadAttention target(24, 3, 2);
  REQUIRE_FALSE(Snapshot(target) == Snapshot(source));
  load_weights(target, SafetensorsFile::from_memory(file.data(), file.size(), "memory"));
  CHECK(Snapshot(target) == Snapshot(source));

  // The same file on disk, and a module created from it, compute what the source computes.
  const auto path = temp_file("round_trip.safetensors", file);
  MultiHeadAttention from_disk(24, 3, 3);
  load_weights(from_disk, path.string());
  const MultiHeadAttention created = load_multi_head_attention(path.string(), 3);
  std::filesystem::remove(path);
  CHECK(Snapshot(from_disk) == Snapshot(source));
  CHECK(Snapshot(created) == Snapshot(source));
  CHECK(created.heads() == 3);
  const Tensor x = Tensor::randn(2, 5, 24, 4);
  const Tensor expected = source.forward(x, x, x);
  CHECK(created.forward(x, x, x).values() == expected.values());

  // Loading into a moved-from module names that, whatever the file holds.
  MultiHeadAttention moved_to(std::move(target));
  CHECK_THROWS_WITH(
      load_weights(target, SafetensorsFile::from_memory(file.data(), file.size(), "memory")),
      "simdattn::load_weights: the module was moved from (it may only be destroyed or assigned)");
}

TEST_CASE("safetensors: nn.MultiheadAttention names split in_proj into query, key, value",
          "[safetensors]") {
  const MultiHeadAttention source = random_module(20, 4, 5);
  const auto file = build(torch_mha_tensors(source));
  const auto f = SafetensorsFile::from_memory(file.data(), file.size(), "mha");
  const MultiHeadAttention m = load_multi_head_attention(f, 4);
  CHECK(Snapshot(m) == Snapshot(source));
  for (Projection p : kAll) CHECK(m.has_bias(p));
}

TEST_CASE("safetensors: biases the file lacks are removed", "[safetensors]") {
  MultiHeadAttention source(16, 2, 7);  // the tutorial's: no Q/K/V bias
  std::vector<RawTensor> tensors = tutorial_tensors(source);
  tensors.pop_back();  // fc_out.bias: an nn.Linear(bias=False) output projection
  const auto file = build(tensors);
  MultiHeadAttention m = random_module(16, 2, 8);
  load_weights(m, SafetensorsFile::from_memory(file.data(), file.size(), "no bias"));
  for (int i = 0; i < 3; ++i) CHECK_FALSE(m.has_bias(kAll[i]));
  CHECK(m.bias(Projection::output) == std::vector<float>(16, 0.0f));
  CHECK(m.weight(Projection::key) == source.weight(Projection::key));
}

TEST_CASE("safetensors: a module inside a larger model, chosen by prefix", "[safetensors]") {
  const MultiHeadAttention a = random_module(12, 2, 11), b = random_module(12, 3, 12);
  std::vector<RawTensor> tensors = torch_mha_tensors(a, "encoder.layers.0.self_attn.");
  for (RawTensor& t : tutorial_tensors(b, "decoder.attn.")) tensors.push_back(std::move(t));
  tensors.push_back(f32("encoder.layers.0.norm1.weight", {12}, test::random_normal(12, 13)));
  const auto file = build(tensors);
  const auto f = SafetensorsFile::from_memory(file.data(), file.size(), "model");

  MultiHeadAttention m(12, 2);
  load_weights(m, f, "encoder.layers.0.self_attn.");
  CHECK(Snapshot(m) == Snapshot(a));
  CHECK(Snapshot(load_multi_head_attention(f, 3, "decoder.attn")) == Snapshot(b));  // '.' added

  // A wrong prefix names the prefixes that would have worked.
  const std::string message = error_of([&] { load_weights(m, f, "encoder.layers.1.self_attn"); });
  CHECK_THAT(message, Catch::Contains("missing tensor"));
  CHECK_THAT(message, Catch::Contains("'encoder.layers.1.self_attn.in_proj_weight'"));
  CHECK_THAT(message, Catch::Contains("'encoder.layers.0.self_attn.'"));
  CHECK_THAT(message, Catch::Contains("'decoder.attn.'"));
  CHECK(Snapshot(m) == Snapshot(a));
}

TEST_CASE("safetensors: F16 and BF16 weights are converted to float32 exactly", "[safetensors]") {
  const std::size_t e = 8;
  // Weights whose F16 and BF16 patterns are known: w = (i - 32) / 16 is exact in both.
  std::vector<std::uint16_t> half(e * e), brain(e * e);
  std::vector<float> expected(e * e);
  for (std::size_t i = 0; i < e * e; ++i) {
    expected[i] = (static_cast<float>(i) - 32.0f) / 16.0f;
    std::uint32_t bits;
    std::memcpy(&bits, &expected[i], 4);
    brain[i] = static_cast<std::uint16_t>(bits >> 16);  // exact: the low bits are zero
    const double v = expected[i];
    std::uint16_t h = 0;  // the F16 pattern, found by search over the definition
    while (half_value(h) != v) ++h;
    half[i] = h;
  }
  for (const char* dtype : {"F16", "BF16"}) {
    const auto& raw = std::string(dtype) == "F16" ? half : brain;
    std::vector<RawTensor> tensors;
    for (const char* name : {"queries.weight", "keys.weight", "values.weight", "fc_out.weight"}) {
      tensors.push_back({name, dtype, {e, e}, bytes_of(raw)});
    }
    tensors.push_back({"fc_out.bias",
                       dtype,
                       {e},
                       bytes_of(std::vector<std::uint16_t>(raw.begin(), raw.begin() + e))});
    const auto file = build(tensors);
    const MultiHeadAttention m =
        load_multi_head_attention(SafetensorsFile::from_memory(file.data(), file.size(), dtype), 2);
    INFO(dtype);
    for (Projection p : kAll) CHECK(m.weight(p) == expected);
    CHECK(m.bias(Projection::output) == std::vector<float>(expected.begin(), expected.begin() + e));
  }
}

TEST_CASE("safetensors: every F16 pattern and BF16's special values convert exactly",
          "[safetensors]") {
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
  const auto file = build(
      {{"h", "F16", {all.size()}, bytes_of(all)}, {"b", "BF16", {all.size()}, bytes_of(all)}});
  const auto f = SafetensorsFile::from_memory(file.data(), file.size(), "all patterns");
  const std::vector<float> h = f.read_float("h"), b = f.read_float("b");
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const double want = half_value(all[i]);
    const bool ok = std::isnan(want) ? std::isnan(h[i]) && std::signbit(h[i]) == bool(i >> 15)
                                     : h[i] == want && std::signbit(h[i]) == std::signbit(want);
    if (!ok && wrong++ < 5) FAIL_CHECK("F16 0x" << std::hex << i << ": " << h[i] << " vs " << want);
    // BF16 is the top half of a float32: its value is that float's.
    std::uint32_t bits = static_cast<std::uint32_t>(i) << 16;
    float bf;
    std::memcpy(&bf, &bits, 4);
    std::uint32_t got;
    std::memcpy(&got, &b[i], 4);
    if (got != bits && wrong++ < 5) FAIL_CHECK("BF16 0x" << std::hex << i << " -> " << bf);
  }
  CHECK(wrong == 0);
  CHECK(h[0x3C00] == 1.0f);
  CHECK(h[0x0001] == std::ldexp(1.0f, -24));  // the smallest subnormal
  CHECK(h[0x7BFF] == 65504.0f);
  CHECK(b[0x4049] == 3.140625f);
  CHECK(std::isinf(b[0xFF80]));
}

TEST_CASE("safetensors: PyTorch's own F16/BF16 roundings load as PyTorch widens them",
          "[safetensors]") {
  const auto f = SafetensorsFile::open(std::string(SIMDATTN_TEST_DATA_DIR) + "/dtypes.safetensors");
  for (const char* tag : {"bf16", "f16"}) {
    INFO(tag);
    const MultiHeadAttention low = load_multi_head_attention(f, 2, tag);
    const MultiHeadAttention widened =
        load_multi_head_attention(f, 2, std::string(tag) + "_as_f32");
    CHECK(Snapshot(low) == Snapshot(widened));
    const std::vector<float> specials = f.read_float(std::string("specials.") + tag);
    const std::vector<float> want = f.read_float(std::string("specials.") + tag + "_as_f32");
    REQUIRE(specials.size() == want.size());
    CHECK(bytes_of(specials) == bytes_of(want));  // bitwise: NaN, -0 and subnormals included
  }
}

TEST_CASE("safetensors: SafetensorsFile reads metadata, entries and any dtype", "[safetensors]") {
  const std::vector<double> d = {1.0 / 3.0, -2.0, 1e-300};
  const std::vector<std::uint8_t> mask = {1, 0, 7};
  const auto file =
      build({{"z", "F64", {3}, bytes_of(d)},
             {"a", "U8", {1, 3}, mask},
             {"f", "F32", {3}, bytes_of(std::vector<float>{1.0f / 3.0f, -2.0f, 1e-30f})},
             // 1, -2 and 2^-24 (F16's smallest subnormal); 1, -2 and 2^-133.
             {"h", "F16", {3}, bytes_of(std::vector<std::uint16_t>{0x3c00, 0xc000, 0x0001})},
             {"b", "BF16", {3}, bytes_of(std::vector<std::uint16_t>{0x3f80, 0xc000, 0x0001})},
             {"empty", "F32", {0, 4}, {}},
             {"new", "F4", {2}, {0xAB}},  // a dtype from the future: bytes only
             // Its sizes cannot be checked against the bytes: any shape passes.
             {"vast", "F4", {std::size_t{1} << 61}, {}}},
            {{"heads", "3"}, {"format", "pt"}});
  const auto f = SafetensorsFile::from_memory(file.data(), file.size(), "mixed");
  CHECK(f.name() == "mixed");
  CHECK(f.tensor_names() ==
        std::vector<std::string>{"a", "b", "empty", "f", "h", "new", "vast", "z"});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.entry("a").shape == std::vector<std::size_t>{1, 3});
  CHECK(f.entry("a").numel() == 3);
  CHECK(f.read_double("z") == d);
  // Narrower floats widen exactly.
  CHECK(f.read_double("f") == std::vector<double>{double(1.0f / 3.0f), -2.0, double(1e-30f)});
  CHECK(f.read_double("h") == std::vector<double>{1.0, -2.0, std::ldexp(1.0, -24)});
  CHECK(f.read_double("b") == std::vector<double>{1.0, -2.0, std::ldexp(1.0, -133)});
  CHECK(f.read_bytes("a") == mask);
  CHECK(f.read_bytes("new") == std::vector<std::uint8_t>{0xAB});
  CHECK(f.read_float("empty").empty());
  CHECK_THAT(error_of([&] { f.read_float("z"); }),
             Catch::Contains("wrong dtype: tensor 'z' is F64"));
  CHECK_THAT(error_of([&] { f.read_double("a"); }),
             Catch::Contains("wrong dtype: tensor 'a' is U8"));
  // Refused before anything is allocated for the 2^61 elements it claims.
  CHECK_THAT(error_of([&] { f.read_float("vast"); }),
             Catch::Contains("wrong dtype: tensor 'vast' is F4"));
  CHECK_THAT(error_of([&] { f.read_double("vast"); }),
             Catch::Contains("wrong dtype: tensor 'vast' is F4"));
  CHECK_THAT(error_of([&] { f.entry("c"); }), Catch::Contains("missing tensor 'c'"));
  CHECK_THROWS_MATCHES(
      SafetensorsFile::from_memory(nullptr, 5, "null"), std::invalid_argument,
      Catch::Matchers::Message("simdattn::SafetensorsFile::from_memory: data is null, size 5"));
}

// --- bad files ----------------------------------------------------------------------------------

TEST_CASE("safetensors: truncated file and header length past the end", "[safetensors]") {
  const auto good = build(tutorial_tensors(random_module(24, 3, 1)));
  check_rejected(std::vector<std::uint8_t>(good.begin(), good.begin() + 5),
                 "truncated file: 5 bytes");
  check_rejected(std::vector<std::uint8_t>(good.begin(), good.begin() + 7),
                 "truncated file: 7 bytes");
  check_rejected({}, "truncated file: 0 bytes");
  check_rejected(assemble("{}", {}, 1000), "header length 1000 is past the end of the file");
  // One byte past the end: "{}" is the 2 bytes after the length.
  check_rejected(assemble("{}", {}, 3),
                 "header length 3 is past the end of the file (only 2 bytes follow it)");
  check_rejected(assemble("{}", {}, ~0ull - 1), "is past the end of the file");
  // Cut inside the data: the last tensor's offsets now point past the end.
  check_rejected(std::vector<std::uint8_t>(good.begin(), good.end() - 4),
                 "data offsets out of range");
}

TEST_CASE("safetensors: invalid JSON or header", "[safetensors]") {
  check_rejected(assemble("{\"a\":", {}), "invalid JSON in the header");
  check_rejected(assemble("", {}), "invalid JSON in the header");
  check_rejected(assemble("{\"a\":{}} trailing", {}), "invalid JSON in the header");
  check_rejected(assemble("{\"\xff\":1}", {}), "invalid JSON in the header");  // not UTF-8
  check_rejected(assemble(std::string(100000, '[') + std::string(100000, ']'), {}),
                 "nested deeper than");
  // The limit is 16 levels below the header object: 16 open, 17 refused.
  auto nested = [](int levels) {
    return "{\"t\": " + std::string(levels, '[') + std::string(levels, ']') + "}";
  };
  check_rejected(assemble(nested(16), {}), "invalid header: tensor 't' is [");
  check_rejected(assemble(nested(17), {}), "nested deeper than 16 levels");
  check_rejected(assemble("[1, 2]", {}), "invalid header: a JSON array, expected an object");
  check_rejected(assemble("{\"t\": 3}", {}), "invalid header: tensor 't' is 3, expected an object");
  check_rejected(
      assemble(R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", std::vector<std::uint8_t>(4)),
      "tensor 't' has no string \"dtype\"");
  check_rejected(assemble(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
                          std::vector<std::uint8_t>(4)),
                 "tensor 't' has shape -1, expected non-negative integers");
  check_rejected(assemble(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}})",
                          std::vector<std::uint8_t>(4)),
                 "tensor 't' has data_offsets 0.0");
  check_rejected(assemble(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})",
                          std::vector<std::uint8_t>(4)),
                 "has no \"data_offsets\": [begin, end]");
  check_rejected(assemble(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
                          std::vector<std::uint8_t>(8)),
                 "has no \"data_offsets\": [begin, end]");
  check_rejected(assemble(R"({"__metadata__": 3})", {}),
                 "invalid header: \"__metadata__\" is not an object");
  check_rejected(assemble(R"({"__metadata__": {"heads": 3}})", {}),
                 "\"__metadata__\" value of 'heads' is 3, expected a string");
  check_rejected(
      assemble(
          R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 4]}})",
          std::vector<std::uint8_t>(4)),
      "too many elements");
}

TEST_CASE("safetensors: out-of-range, overlapping or mis-sized data offsets", "[safetensors]") {
  const std::vector<std::uint8_t> data(64);
  check_rejected(
      assemble(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [56, 72]}})", data),
      "data offsets out of range: tensor 't' has data_offsets [56, 72] but the data "
      "section holds 64 bytes");
  check_rejected(
      assemble(
          R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [18446744073709551600, 18446744073709551615]}})",
          data),
      "data offsets out of range");
  check_rejected(assemble(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", data),
                 "data_offsets [8, 4] that end before they begin");
  check_rejected(assemble(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                              "b": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}})",
                          data),
                 "overlapping data offsets: tensor 'a' [0, 16] and tensor 'b' [12, 28]");
  // One tensor inside another, listed after one that ends before both.
  check_rejected(assemble(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                              "b": {"dtype": "U8", "shape": [40], "data_offsets": [4, 44]},
                              "c": {"dtype": "U8", "shape": [4], "data_offsets": [20, 24]}})",
                          data),
                 "overlapping data offsets: tensor 'b' [4, 44] and tensor 'c' [20, 24]");
  check_rejected(
      assemble(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", data),
      "data offsets do not match the shape: tensor 't' has data_offsets [0, 12] (12 "
      "bytes) but F32 [4] needs 16");
  // 2^62 elements fit in size_t, their 2^64 bytes do not.
  check_rejected(
      assemble(
          R"({"t": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 16]}})",
          data),
      "invalid header: tensor 't' has shape [4611686018427387904]: too many bytes");
  // An empty tensor occupies no bytes, wherever its offsets point.
  const auto inside = assemble(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                   "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]}})",
                               std::vector<std::uint8_t>(16));
  const auto f = SafetensorsFile::from_memory(inside.data(), inside.size(), "empty inside");
  CHECK(f.read_float("e").empty());
  CHECK(f.read_float("a").size() == 4);
}

TEST_CASE("safetensors: missing tensor, wrong shape, wrong dtype", "[safetensors]") {
  const MultiHeadAttention m = random_module(24, 3, 1);
  std::vector<RawTensor> tensors = tutorial_tensors(m);

  auto without = [&](const std::string& name) {
    std::vector<RawTensor> out;
    for (const RawTensor& t : tensors) {
      if (t.name != name) out.push_back(t);
    }
    return build(out);
  };
  check_rejected(without("keys.weight"),
                 "missing tensor 'keys.weight' of the tutorial's SelfAttention");
  check_rejected(without("fc_out.weight"), "missing tensor 'fc_out.weight'");
  check_rejected(build({f32("other", {2}, {1.0f, 2.0f})}),
                 "missing tensor: no 'queries.weight' (the tutorial's SelfAttention) nor "
                 "'in_proj_weight' (nn.MultiheadAttention); the file has 1 tensors: other");

  auto replaced = [&](const std::string& name, RawTensor t) {
    std::vector<RawTensor> out = tensors;
    for (RawTensor& r : out) {
      if (r.name == name) r = std::move(t);
    }
    return build(out);
  };
  check_rejected(
      replaced("keys.weight", f32("keys.weight", {24, 23}, test::random_normal(24 * 23, 2))),
      "wrong shape: tensor 'keys.weight' is [24, 23], the tutorial's SelfAttention "
      "with embed size 24 needs [24, 24]");
  check_rejected(
      replaced("fc_out.weight", f32("fc_out.weight", {24 * 24}, m.weight(Projection::output))),
      "wrong shape: tensor 'fc_out.weight' is [576], expected [E, E]");
  check_rejected(replaced("fc_out.weight", f32("fc_out.weight", {0, 0}, {})),
                 "wrong shape: tensor 'fc_out.weight' is [0, 0], expected [E, E] with E > 0");
  // The last tensor read is bad: everything before it was read already, nothing committed.
  check_rejected(replaced("fc_out.bias", f32("fc_out.bias", {23}, test::random_normal(23, 3))),
                 "wrong shape: tensor 'fc_out.bias' is [23]");
  const std::vector<double> w64(24 * 24, 0.5);
  check_rejected(replaced("values.weight", {"values.weight", "F64", {24, 24}, bytes_of(w64)}),
                 "wrong dtype: tensor 'values.weight' is F64, expected F32, F16 or BF16");
  check_rejected(
      replaced("values.weight",
               {"values.weight", "I32", {24, 24}, std::vector<std::uint8_t>(24 * 24 * 4)}),
      "wrong dtype: tensor 'values.weight' is I32");

  std::vector<RawTensor> mha = torch_mha_tensors(m);
  mha[0] = f32("in_proj_weight", {24, 24}, m.weight(Projection::query));
  check_rejected(build(mha),
                 "wrong shape: tensor 'in_proj_weight' is [24, 24], "
                 "nn.MultiheadAttention with embed size 24 needs [72, 24]");
}

TEST_CASE("safetensors: embed size and heads must match the module", "[safetensors]") {
  const auto e32 = build(tutorial_tensors(random_module(32, 4, 1)));
  check_rejected(e32,
                 "embed size mismatch: tensor 'fc_out.weight' is [32, 32] (E = 32) but "
                 "the module has embed_size 24");
  check_rejected(build(tutorial_tensors(random_module(24, 4, 1)), {{"heads", "4"}}),
                 "heads mismatch: the metadata has \"heads\": \"4\" but the module has heads = 3");
  check_rejected(build(tutorial_tensors(random_module(24, 4, 1)), {{"heads", "three"}}),
                 "heads mismatch");

  const auto f = SafetensorsFile::from_memory(e32.data(), e32.size(), "e32.safetensors");
  CHECK_THAT(error_of([&] { load_multi_head_attention(f, 5); }),
             Catch::Contains("'e32.safetensors': embed size 32 is not divisible by heads = 5"));
  CHECK_THROWS_AS(load_multi_head_attention(f, 0), std::invalid_argument);
  CHECK(load_multi_head_attention(f, 8).head_dim() == 4);
  // The metadata's heads are the module's own under its prefix.
  const auto prefixed = build(tutorial_tensors(random_module(24, 4, 1), "a."), {{"a.heads", "4"}});
  const auto g = SafetensorsFile::from_memory(prefixed.data(), prefixed.size(), "p");
  CHECK(load_multi_head_attention(g, 4, "a").heads() == 4);
  CHECK_THAT(error_of([&] { load_multi_head_attention(g, 2, "a"); }),
             Catch::Contains("\"a.heads\": \"4\""));
}

TEST_CASE("safetensors: grouped-query modules, kv_heads from the key projection's rows",
          "[safetensors][gqa]") {
  const MultiHeadAttention source = random_module(24, 6, 3, 2);  // head_dim 4, K/V [8, 24]
  const auto file = build(tutorial_tensors(source));
  const auto f = SafetensorsFile::from_memory(file.data(), file.size(), "gqa.safetensors");
  const MultiHeadAttention created = load_multi_head_attention(f, 6);
  CHECK(created.kv_heads() == 2);
  CHECK(Snapshot(created) == Snapshot(source));
  MultiHeadAttention target(24, 6, KvHeads{2}, 4);
  load_weights(target, f);
  CHECK(Snapshot(target) == Snapshot(source));
  const Tensor x = Tensor::randn(2, 5, 24, 4);
  CHECK(created.forward(x, x, x).values() == source.forward(x, x, x).values());
  // The same file with 3 heads: head_dim 8, and 8 rows are 1 kv head, which divides 3.
  CHECK(load_multi_head_attention(f, 3).kv_heads() == 1);
  // 4 heads: head_dim 6 does not divide the 8 rows.
  CHECK_THAT(error_of([&] { load_multi_head_attention(f, 4); }),
             Catch::Contains("key/value projections of 8 out features are not kv_heads x "
                             "head_dim with kv_heads dividing heads = 4 (head_dim 6)"));
  // Into a module without grouped-query attention (3 heads of 8: K/V [24, 24]).
  check_rejected(file,
                 "wrong shape: tensor 'keys.weight' is [8, 24], the module's key projection is "
                 "[kv_heads * head_dim, E] = [24, 24]");
  const auto meta = build(tutorial_tensors(source), {{"kv_heads", "1"}});
  const auto g = SafetensorsFile::from_memory(meta.data(), meta.size(), "meta");
  CHECK_THAT(error_of([&] { load_multi_head_attention(g, 6); }),
             Catch::Contains("kv_heads mismatch: the metadata has \"kv_heads\": \"1\" but the "
                             "module has kv_heads = 2"));
  // nn.MultiheadAttention has no grouped-query form.
  MultiHeadAttention gqa = random_module(24, 6, 5, 2);
  const Snapshot before(gqa);
  const auto torch_file = build(torch_mha_tensors(random_module(24, 6, 6)));
  CHECK_THAT(error_of([&] {
               load_weights(gqa, SafetensorsFile::from_memory(torch_file.data(), torch_file.size(),
                                                              "torch"));
             }),
             Catch::Contains("nn.MultiheadAttention has no grouped-query attention"));
  CHECK(Snapshot(gqa) == before);
}

TEST_CASE("safetensors: modules simdattn cannot represent are refused", "[safetensors]") {
  const MultiHeadAttention m = random_module(24, 3, 1);
  std::vector<RawTensor> both = tutorial_tensors(m);
  for (RawTensor& t : torch_mha_tensors(m)) both.push_back(std::move(t));
  check_rejected(build(both), "ambiguous module");

  for (const char* name : {"bias_k", "bias_v"}) {
    std::vector<RawTensor> bias_kv = torch_mha_tensors(m);
    bias_kv.push_back(f32(name, {1, 1, 24}, test::random_normal(24, 1)));
    check_rejected(build(bias_kv), "add_bias_kv=True");
  }

  std::vector<RawTensor> kdim = torch_mha_tensors(m);
  kdim[0] = f32("q_proj_weight", {24, 24}, m.weight(Projection::query));
  check_rejected(build(kdim), "kdim/vdim != embed_dim");
}

TEST_CASE("safetensors: files on disk name their path in errors", "[safetensors]") {
  const auto missing = std::filesystem::temp_directory_path() / "simdattn_no_such_file.safetensors";
  MultiHeadAttention m(24, 3);
  const Snapshot before(m);
  CHECK_THAT(error_of([&] { load_weights(m, missing.string()); }),
             Catch::Contains("'" + missing.string() + "': cannot open the file"));

  const std::string directory = std::filesystem::temp_directory_path().string();
  CHECK_THAT(error_of([&] { load_weights(m, directory); }),
             Catch::Contains("'" + directory + "': cannot read the file"));

  const auto good = build(tutorial_tensors(random_module(24, 3, 1)));
  const auto cut =
      temp_file("cut.safetensors", std::vector<std::uint8_t>(good.begin(), good.end() - 100));
  const std::string message = error_of([&] { load_weights(m, cut.string()); });
  const auto tiny = temp_file("tiny.safetensors", {1, 2, 3});
  const std::string tiny_message = error_of([&] { load_multi_head_attention(tiny.string(), 3); });
  std::filesystem::remove(cut);
  std::filesystem::remove(tiny);
  CHECK_THAT(message, Catch::Contains("'" + cut.string() + "': data offsets out of range"));
  CHECK_THAT(tiny_message, Catch::Contains("'" + tiny.string() + "': truncated file: 3 bytes"));
  CHECK(Snapshot(m) == before);

  // Tensors are read on demand: a file cut or removed after opening is an error, not garbage.
  const auto later = temp_file("later.safetensors", good);
  const SafetensorsFile f = SafetensorsFile::open(later.string());
  const std::string tensor = f.tensor_names().front();
  CHECK(f.read_float(tensor).size() == f.entry(tensor).numel());
  std::filesystem::resize_file(later, 8);
  const std::string cut_later = error_of([&] { f.read_float(tensor); });
  std::filesystem::remove(later);
  const std::string removed = error_of([&] { f.read_float(tensor); });
  CHECK_THAT(cut_later, Catch::Contains("'" + later.string() +
                                        "': truncated file: tensor data ends early (did the "
                                        "file change after opening?)"));
  CHECK_THAT(removed,
             Catch::Contains("'" + later.string() + "': cannot open the file again: No such file"));
}
