// simdattn_demo: the PyTorch tutorial's quick start ("Example usage") in C++, followed by the
// README's option examples, then the same calls on the naive path: the optimized path must agree
// with the scalar reference to 1e-5 (relative Frobenius), or the demo exits with status 1.
//
// The blocks between "README:" markers are quoted verbatim in README.md; .ci/run checks that
// they still match, so the README's code is code that compiles and runs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <simdattn/simdattn.hpp>
#include <vector>

#include "usage.hpp"

namespace {

constexpr double kAgreementLimit = 1e-5;

// ||a - b||_F / ||b||_F over n elements.
double relative_error(const float* a, const float* b, std::size_t n) {
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return ref > 0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

double relative_error(const simdattn::Tensor& a, const simdattn::Tensor& b) {
  return relative_error(a.data(), b.data(), a.size());
}

int run() {
  // README:example:begin
  const std::size_t embed_size = 256, heads = 8;
  const simdattn::MultiHeadAttention attention(embed_size, heads);  // seeded, like nn.Linear

  // Self-attention: values, keys and query are the same [N, L, E] tensor.
  const simdattn::Tensor x = simdattn::Tensor::randn(1, 2, embed_size, /*seed=*/0);
  const simdattn::Tensor output = attention.forward(x, x, x);  // (values, keys, query, mask)
  std::printf("Input: %s\n", x.shape_string().c_str());
  std::printf("Output: %s\n", output.shape_string().c_str());

  // Cross-attention: 10 decoder positions attend to 20 encoder positions.
  const simdattn::Tensor encoder_output = simdattn::Tensor::randn(1, 20, embed_size, 1);
  const simdattn::Tensor decoder_input = simdattn::Tensor::randn(1, 10, embed_size, 2);
  const simdattn::Tensor cross = attention.forward(encoder_output, encoder_output, decoder_input);
  std::printf("Encoder output: %s\n", encoder_output.shape_string().c_str());
  std::printf("Decoder input: %s\n", decoder_input.shape_string().c_str());
  std::printf("Cross-attention output: %s\n", cross.shape_string().c_str());
  // README:example:end

  // README:options:begin
  // The tutorial's exact arithmetic: energy / sqrt(embed_size), causal (lower-triangular) mask.
  simdattn::Options options;
  options.scale = simdattn::tutorial_scale(embed_size);
  options.causal = simdattn::Causal::top_left;
  options.threads = 2;  // this call only; 0 (the default) is OpenMP's choice
  const simdattn::Tensor causal = attention.forward(x, x, x, {}, options);

  // Key padding, [N, 1, 1, Lk] like PyTorch's broadcasting: the last 5 encoder positions are
  // padding (0 = masked). The result goes into the caller's buffer: no allocation for it.
  std::vector<std::uint8_t> keep(20, 1);
  std::fill(keep.begin() + 15, keep.end(), 0);
  const simdattn::Mask padding{keep.data(), /*n=*/1, /*h=*/1, /*lq=*/1, /*lk=*/20};
  std::vector<float> buffer(1 * 10 * embed_size);
  attention.forward(encoder_output, encoder_output, decoder_input, padding,
                    simdattn::TensorView<float>{buffer.data(), 1, 10, embed_size});

  // The attention core alone, on the heads of [N, L, E] buffers in place ([N, L, H, D] views).
  const std::size_t head_dim = embed_size / heads;
  const simdattn::ConstHeadsView q{decoder_input.data(), 1, 10, heads, head_dim};
  const simdattn::ConstHeadsView kv{encoder_output.data(), 1, 20, heads, head_dim};
  std::vector<float> core(1 * 10 * embed_size);
  simdattn::scaled_dot_product_attention(q, kv, kv, {core.data(), 1, 10, heads, head_dim});
  // README:options:end

  // Every call again on the naive path (the scalar reference that mirrors the tutorial).
  simdattn::Options naive;
  naive.path = simdattn::Path::naive;
  simdattn::Options options_naive = options;
  options_naive.path = simdattn::Path::naive;
  std::vector<float> buffer_naive(buffer.size()), core_naive(core.size());
  attention.forward(encoder_output, encoder_output, decoder_input, padding,
                    simdattn::TensorView<float>{buffer_naive.data(), 1, 10, embed_size}, naive);
  simdattn::scaled_dot_product_attention(q, kv, kv, {core_naive.data(), 1, 10, heads, head_dim}, {},
                                         naive);
  const double error =
      std::max({relative_error(output, attention.forward(x, x, x, {}, naive)),
                relative_error(cross, attention.forward(encoder_output, encoder_output,
                                                        decoder_input, {}, naive)),
                relative_error(causal, attention.forward(x, x, x, {}, options_naive)),
                relative_error(buffer.data(), buffer_naive.data(), buffer.size()),
                relative_error(core.data(), core_naive.data(), core.size())});
  // NaN compares false: it counts as a disagreement.
  const bool agree = error <= kAgreementLimit;
  std::printf("ISA %s: optimized and naive paths %s, relative error %.2g (limit %.0e)\n",
              simdattn::isa_name(simdattn::active_isa()), agree ? "agree" : "DISAGREE", error,
              kAgreementLimit);
  if (!agree) return 1;
  std::printf("Self-Attention works\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int status = tools::check_no_arguments(
      argc, argv,
      "The tutorial's quick start in C++ (self- and cross-attention), the README's option\n"
      "examples, then the same calls on the naive path; exits with status 1 unless the\n"
      "two paths agree to a relative error of 1e-5.");
  if (status >= 0) return status;
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "simdattn_demo: %s\n", e.what());
    return 1;
  }
}
