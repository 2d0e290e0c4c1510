// Parity with PyTorch: every fixture of tests/data/ (written by tools/make_golden.py from the
// tutorial's SelfAttention and from torch.nn.MultiheadAttention, computed in float64) through
// the naive and the optimized path: outputs, and where a fixture holds them the attention
// weights (need_weights, per head and averaged), with float attn_masks as Options::bias and
// key_padding_masks as Options::key_padding. The suite runs once per ISA (SIMDATTN_ISA), so every
// ISA meets PyTorch here. Weights reach the module through the safetensors loader, as a user's do.
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
    "quick_start", "cross_attention", "causal", "key_padding", "fully_masked_rows", "head_dim_15",
    "head_dim_3", "inputs_1e3", "mha_cross", "mha_key_padding",
    // Float attn_mask (Options::bias) with -inf entries and key padding; need_weights.
    "mha_float_mask", "mha_float_mask_cross", "bias_weights"};
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

// PyTorch's float attn_mask as a Bias: nn.MultiheadAttention takes [Lq, Lk] (every batch and
// head) or [N * H, Lq, Lk] (row b * H + h, so [N, H, Lq, Lk] row-major); the tutorial's math
// takes simdattn's own [N|1, H|1, Lq|1, Lk].
Bias read_bias(const SafetensorsFile& f, std::vector<float>& storage, std::size_t n,
               std::size_t heads) {
  if (!f.contains("attn_mask")) return {};
  const SafetensorsEntry& entry = f.entry("attn_mask");
  REQUIRE(entry.dtype == "F32");
  storage = f.read_float("attn_mask");
  const std::vector<std::size_t>& s = entry.shape;
  if (s.size() == 2) return {storage.data(), 1, 1, s[0], s[1]};
  if (s.size() == 3) {
    REQUIRE(s[0] == n * heads);
    return {storage.data(), n, heads, s[1], s[2]};
  }
  REQUIRE(s.size() == 4);
  return {storage.data(), s[0], s[1], s[2], s[3]};
}

// One forward with need_weights: the output again and the weights against the fixture's.
void check_weights(const MultiHeadAttention& module, const ConstTensorView& v,
                   const ConstTensorView& k, const ConstTensorView& q, const Mask& mask,
                   Options options, const std::vector<double>& expected_out,
                   const std::vector<double>& expected_weights, bool average,
                   const std::string& what) {
  std::vector<float> weights(expected_weights.size(), -1.0f);
  options.weights = {weights.data(), weights.size(), average};
  const std::string label = what + (average ? " weights averaged" : " weights per head");
  const Tensor out = module.forward(v, k, q, mask, options);
  test::check_close(out.data(), expected_out, label + " (output)", kTolerance, kTolerance);
  test::check_close(weights.data(), expected_weights, label, kTolerance, kTolerance);
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
  std::vector<float> bias_storage;
  const Bias bias = read_bias(f, bias_storage, n, heads);
  // key_padding_mask [N, Lk] in PyTorch's convention (nonzero = padding), as Options::key_padding
  // and, inverted, as the keep-mask [N, 1, 1, Lk] that it equals.
  std::vector<std::uint8_t> padding_bytes, padding_keep;
  KeyPadding padding;
  Mask padding_as_mask;
  if (f.contains("key_padding_mask")) {
    const SafetensorsEntry& m = f.entry("key_padding_mask");
    REQUIRE(m.dtype == "U8");
    REQUIRE(m.shape.size() == 2);
    REQUIRE(m.shape[0] == n);
    REQUIRE(!f.contains("mask"));
    padding_bytes = f.read_bytes("key_padding_mask");
    padding = KeyPadding{padding_bytes.data(), m.shape[0], m.shape[1]};
    for (std::uint8_t b : padding_bytes) padding_keep.push_back(b == 0 ? 1 : 0);
    padding_as_mask = Mask{padding_keep.data(), n, 1, 1, m.shape[1]};
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
    options.bias = bias;
    options.key_padding = padding;
    const bool has_weights = f.contains("weights." + convention);
    REQUIRE(has_weights == f.contains("weights_averaged." + convention));
    std::vector<double> weights, averaged;
    if (has_weights) {
      weights = f.read_double("weights." + convention);
      averaged = f.read_double("weights_averaged." + convention);
      REQUIRE(weights.size() == n * heads * lq * k.l);
      REQUIRE(averaged.size() == weights.size() / heads);
    }
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
      if (padding.data != nullptr) {
        Options as_mask = options;
        as_mask.key_padding = {};
        const Tensor out_mask = module.forward(v, k, q, padding_as_mask, as_mask);
        test::check_close(out_mask.data(), expected, what + " key padding as Mask", kTolerance,
                          kTolerance);
      }
      if (has_weights) {
        for (bool average : {false, true}) {
          check_weights(module, v, k, q, mask, options, expected, average ? averaged : weights,
                        average, what);
        }
      }
      ++checked;
    }
  }
  // The tutorial's fixtures hold both scale conventions, nn.MultiheadAttention's its own.
  CHECK(checked == (meta(f, "module") == "SelfAttention" ? 4 : 2));
}
