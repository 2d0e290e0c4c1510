// Parity with PyTorch: every fixture of tests/data/ (written by tools/make_golden.py from the
// tutorial's SelfAttention and from torch.nn.MultiheadAttention, computed in float64) through
// the naive and the optimized path. The suite runs once per ISA (SIMDATTN_ISA), so every ISA
// meets PyTorch here. Weights reach the module through the safetensors loader, as a user's do.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "common.hpp"
#include "simdattn/safetensors.hpp"

namespace {

using namespace simdattn;

// One fixture per case tools/make_golden.py writes. A fixture missing from tests/data, or one that
// no test reads, fails "golden: the fixture set is complete".
const char* const kCases[] = {
    "quick_start",  // the tutorial's quick start [1, 2, 256], H = 8
    "cross_attention", "causal",     "key_padding", "fully_masked_rows", "head_dim_15",
    "head_dim_3",      "inputs_1e3", "mha_cross",   "mha_key_padding",
};
const char* const kOtherFixtures[] = {"dtypes",  // read by test_safetensors.cpp
                                      // Gradients, read by test_backward.cpp.
                                      "grad_self", "grad_cross", "grad_causal", "grad_key_padding",
                                      "grad_head_dim_15", "grad_fully_masked_rows", "grad_mha"};

// Relative error bound against the float64 expectation (Frobenius norm and largest element).
constexpr double kTolerance = 1e-5;

std::string data_path(const std::string& file) {
  return std::string(SIMDATTN_TEST_DATA_DIR) + "/" + file;
}

std::string meta(const SafetensorsFile& f, const std::string& key) {
  const auto it = f.metadata().find(key);
  return it == f.metadata().end() ? std::string() : it->second;
}

// A float [N, L, E] input of the fixture, checked against the expected sizes.
std::vector<float> read_input(const SafetensorsFile& f, const std::string& name, std::size_t n,
                              std::size_t e) {
  const SafetensorsEntry& entry = f.entry(name);
  REQUIRE(entry.dtype == "F32");
  REQUIRE(entry.shape.size() == 3);
  REQUIRE(entry.shape[0] == n);
  REQUIRE(entry.shape[2] == e);
  return f.read_float(name);
}

}  // namespace

TEST_CASE("golden: the fixture set is complete", "[golden]") {
  std::vector<std::string> found;
  for (const auto& item : std::filesystem::directory_iterator(SIMDATTN_TEST_DATA_DIR)) {
    if (item.path().extension() == ".safetensors") found.push_back(item.path().stem().string());
  }
  std::vector<std::string> expected(std::begin(kCases), std::end(kCases));
  expected.insert(expected.end(), std::begin(kOtherFixtures), std::end(kOtherFixtures));
  std::sort(found.begin(), found.end());
  std::sort(expected.begin(), expected.end());
  CHECK(found == expected);
  CHECK(std::filesystem::exists(data_path("manifest.json")));
}

TEST_CASE("golden: PyTorch fixtures, naive and optimized paths", "[golden]") {
  const std::string name = GENERATE(from_range(std::begin(kCases), std::end(kCases)));
  INFO("fixture " << name << " (regenerate with /usr/bin/python3 tools/make_golden.py), ISA "
                  << isa_name(active_isa()));
  const SafetensorsFile f = SafetensorsFile::open(data_path(name + ".safetensors"));
  REQUIRE(meta(f, "case") == name);
  const std::size_t heads = std::stoul(meta(f, "heads"));
  const MultiHeadAttention module = load_multi_head_attention(f, heads, meta(f, "prefix"));
  const std::size_t e = module.embed_size();
  if (meta(f, "module") == "MultiheadAttention") {
    CHECK(module.has_bias(Projection::query));  // in_proj_bias reached the module
  } else {
    CHECK_FALSE(module.has_bias(Projection::query));
  }

  // Inputs: one tensor three times (self-attention), a shared keys/values tensor, or three.
  const std::string inputs = meta(f, "inputs");
  const std::size_t n = f.entry("query").shape[0];
  const std::vector<float> query = read_input(f, "query", n, e);
  std::vector<float> keys, values;
  if (inputs == "distinct") keys = read_input(f, "keys", n, e);
  if (inputs != "self") values = read_input(f, "values", n, e);
  const std::size_t lq = query.size() / (n * e);
  const ConstTensorView q{query.data(), n, lq, e};
  const ConstTensorView v =
      inputs == "self" ? q : ConstTensorView{values.data(), n, values.size() / (n * e), e};
  const ConstTensorView k =
      inputs == "distinct" ? ConstTensorView{keys.data(), n, keys.size() / (n * e), e} : v;
  REQUIRE((inputs == "self" || inputs == "shared_kv" || inputs == "distinct"));

  std::vector<std::uint8_t> mask_bytes;
  Mask mask;
  if (f.contains("mask")) {
    const SafetensorsEntry& m = f.entry("mask");
    REQUIRE(m.dtype == "U8");
    REQUIRE(m.shape.size() == 4);
    mask_bytes = f.read_bytes("mask");
    mask = Mask{mask_bytes.data(), m.shape[0], m.shape[1], m.shape[2], m.shape[3]};
  }

  int checked = 0;
  for (const std::string& tensor : f.tensor_names()) {
    if (tensor.rfind("expected.", 0) != 0) continue;
    const std::string convention = tensor.substr(9);
    REQUIRE((convention == "scale_embed" || convention == "scale_head_dim"));
    const std::vector<double> expected = f.read_double(tensor);
    REQUIRE(expected.size() == n * lq * e);
    Options options;
    if (convention == "scale_embed") options.scale = tutorial_scale(e);
    for (Path path : {Path::naive, Path::optimized}) {
      options.path = path;
      const std::string what =
          name + " " + convention + " " + (path == Path::naive ? "naive" : "optimized");
      const Tensor out = module.forward(v, k, q, mask, options);
      test::check_close(out.data(), expected, what, kTolerance, kTolerance);
      // A torch.tril mask is Causal::top_left: the same expectation without a mask buffer.
      if (meta(f, "mask_equals_causal") == "top_left") {
        Options causal = options;
        causal.causal = Causal::top_left;
        const Tensor out_causal = module.forward(v, k, q, Mask{}, causal);
        test::check_close(out_causal.data(), expected, what + " as Causal::top_left", kTolerance,
                          kTolerance);
      }
      ++checked;
    }
  }
  // The tutorial's fixtures hold both scale conventions, nn.MultiheadAttention's its own.
  CHECK(checked == (meta(f, "module") == "SelfAttention" ? 4 : 2));
}
