// from_pytorch: the README's "From PyTorch to simdattn", steps 2 and 3. Loads the module that
// tools/export_pytorch.py exported, runs it on the input PyTorch saw, and compares with
// PyTorch's output. Run it in the directory holding attn.safetensors and io.safetensors; exit
// status 0 when the outputs agree to a relative error of 1e-5. The README shows the block
// between the blank lines below verbatim (CI checks it).
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "simdattn/safetensors.hpp"
#include "simdattn/simdattn.hpp"
#include "usage.hpp"

namespace {

int run() {
  const auto weights = simdattn::SafetensorsFile::open("attn.safetensors");
  const std::size_t heads = std::stoul(weights.metadata().at("heads"));  // export_pytorch.py's
  const simdattn::MultiHeadAttention attn = simdattn::load_multi_head_attention(weights, heads);

  const auto io = simdattn::SafetensorsFile::open("io.safetensors");
  const auto& shape = io.entry("x").shape;  // [N, L, E]
  const simdattn::Tensor x(shape[0], shape[1], shape[2], io.read_float("x"));
  const simdattn::Tensor out = attn.forward(x, x, x);        // (values, keys, query)
  const std::vector<float> expected = io.read_float("out");  // PyTorch's output

  if (expected.size() != out.size()) {
    std::fprintf(stderr, "io.safetensors: out has %zu values, simdattn computed %zu\n",
                 expected.size(), out.size());
    return 1;
  }
  double diff2 = 0, ref2 = 0, max_diff = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const double d = static_cast<double>(out.data()[i]) - expected[i];
    diff2 += d * d;
    ref2 += static_cast<double>(expected[i]) * expected[i];
    max_diff = std::fmax(max_diff, std::fabs(d));
  }
  const double rel = std::sqrt(diff2 / ref2);
  std::printf("simdattn %s, ISA %s: E = %zu, heads = %zu, output %s\n", simdattn::kVersion,
              simdattn::isa_name(simdattn::active_isa()), attn.embed_size(), attn.heads(),
              out.shape_string().c_str());
  std::printf("vs PyTorch: relative error %.1e, largest difference %.1e: %s\n", rel, max_diff,
              rel <= 1e-5 ? "same output" : "DIFFERENT");
  return rel <= 1e-5 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int status = tools::check_no_arguments(
      argc, argv,
      "Loads attn.safetensors and io.safetensors (written by tools/export_pytorch.py)\n"
      "from the current directory, runs the module on PyTorch's input and compares the\n"
      "outputs; exit status 0 when they agree to a relative error of 1e-5.");
  if (status >= 0) return status;
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
