// The README's streaming example: a grouped-query module generates tokens with a paged KV cache
// (bf16 storage), two sequences of different lengths decode in one batch, and the result is
// checked against the module without a cache (one causal forward over each whole sequence).
// Exits with status 1 if they disagree beyond the bf16 storage's bound.
#include <cmath>
#include <cstdio>
#include <vector>

#include "simdattn/simdattn.hpp"
#include "usage.hpp"

namespace {

// The rows [first, first + count) of an [1, L, E] tensor, as a new [1, count, E] tensor.
simdattn::Tensor rows(const simdattn::Tensor& t, std::size_t first, std::size_t count) {
  const std::size_t e = t.e();
  return simdattn::Tensor(1, count, e,
                          std::vector<float>(t.data() + first * e, t.data() + (first + count) * e));
}

double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double d2 = 0, r2 = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    d2 += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    r2 += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(d2 / r2);
}

}  // namespace

int main(int argc, char** argv) {
  const int status = tools::check_no_arguments(
      argc, argv,
      "Generates tokens with a grouped-query module and a bf16 paged KV cache (two\n"
      "sequences decoding in one batch); exits with status 1 unless the result matches\n"
      "the module without a cache.");
  if (status >= 0) return status;
  const std::size_t embed_size = 256, heads = 8, kv_heads = 2, steps = 16;
  const simdattn::Tensor prompt_a = simdattn::Tensor::randn(1, 100, embed_size, 1);
  const simdattn::Tensor prompt_b = simdattn::Tensor::randn(1, 7, embed_size, 2);
  std::vector<float> generated_a, generated_b;  // every token fed to each sequence, in order

  // A grouped-query module (8 query heads share 2 K/V heads) and a cache for 2 sequences of up
  // to 1024 tokens, stored as bfloat16: half the bytes per decode step.
  const simdattn::MultiHeadAttention attention(embed_size, heads, simdattn::KvHeads{kv_heads});
  simdattn::KvCacheConfig config;
  config.blocks = 2 * simdattn::KvCache::blocks_for(1024);
  config.kv_heads = attention.kv_heads();
  config.head_dim = attention.head_dim();
  config.storage = simdattn::KvStorage::bf16;
  simdattn::KvCache cache(config);

  // Prefill: each prompt in one call (or in chunks: the result is the same).
  const simdattn::SequenceId a = cache.add_sequence(), b = cache.add_sequence();
  const simdattn::Tensor out_a = attention.step(cache, {a}, prompt_a);  // [1, 100, E]
  const simdattn::Tensor out_b = attention.step(cache, {b}, prompt_b);  // [1, 7, E]

  // Decode: both sequences step together, [2, 1, E] in, [2, 1, E] out. Here each output is
  // fed back as the next input; a language model would sample a token and embed it.
  std::vector<float> next(out_a.values().end() - embed_size, out_a.values().end());
  next.insert(next.end(), out_b.values().end() - embed_size, out_b.values().end());
  for (std::size_t step = 0; step < steps; ++step) {
    generated_a.insert(generated_a.end(), next.begin(), next.begin() + embed_size);
    generated_b.insert(generated_b.end(), next.begin() + embed_size, next.end());
    const simdattn::Tensor x(2, 1, embed_size, next);
    next = attention.step(cache, {a, b}, x).values();
  }
  std::printf("Sequence lengths: %zu and %zu tokens, %zu of %zu blocks free\n", cache.length(a),
              cache.length(b), cache.free_blocks(), config.blocks);
  cache.release(b);  // a finished sequence returns its blocks

  // The same outputs without a cache: one causal forward over each whole sequence.
  double worst = 0;
  for (int s = 0; s < 2; ++s) {
    const simdattn::Tensor& prompt = s == 0 ? prompt_a : prompt_b;
    std::vector<float> all = prompt.values();
    const std::vector<float>& fed = s == 0 ? generated_a : generated_b;
    all.insert(all.end(), fed.begin(), fed.end());
    const std::size_t length = prompt.l() + steps;
    const simdattn::Tensor sequence(1, length, embed_size, all);
    simdattn::Options causal;
    causal.causal = simdattn::Causal::top_left;
    const simdattn::Tensor full = attention.forward(sequence, sequence, sequence, {}, causal);
    // The step outputs: the prompt's last row, then each decode step's (the next input).
    std::vector<float> stepped(fed.begin(), fed.end());
    stepped.insert(stepped.end(), next.begin() + s * embed_size,
                   next.begin() + (s + 1) * embed_size);
    const simdattn::Tensor want = rows(full, prompt.l() - 1, steps + 1);
    const double err = rel_error(stepped, want.values());
    worst = err > worst ? err : worst;
  }
  const double limit = 1e-2;  // bf16 storage (include/simdattn/kv_cache.hpp)
  std::printf("Cached decoding agrees with the full forward: relative error %.1e (limit %g)\n",
              worst, limit);
  return worst <= limit ? 0 : 1;
}
