// simdattn: the tutorial's SelfAttention module (multi-head attention with projections).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {

/// The four linear layers of the module, named by what they project.
/// Tutorial names: queries, keys, values, fc_out.
enum class Projection { query, key, value, output };

/// Multi-head attention as the tutorial's `SelfAttention(embed_size, heads)`:
///
///     Q = query Wq^T (+ bq), K = keys Wk^T (+ bk), V = values Wv^T (+ bv)     (E -> E)
///     split E into `heads` heads of head_dim = E / heads
///     O = softmax(Q K^T * scale, masked scores = -1e20) V                     per head
///     out = concat_heads(O) Wo^T + bo
///
/// Weights use PyTorch's nn.Linear layout, [out_features, in_features] row-major, so weights
/// trained in PyTorch load without transposing. The output bias always exists (zeros if never
/// set); the Q/K/V biases are optional (the tutorial has none; nn.MultiheadAttention has them).
///
/// forward() is const and may be called from several threads at once on one module; setters
/// must not run concurrently with anything else on the same module.
class MultiHeadAttention {
 public:
  /// Throws std::invalid_argument if embed_size or heads is 0 or embed_size % heads != 0.
  /// Parameters are initialised as PyTorch's nn.Linear does (uniform in +-1/sqrt(embed_size)
  /// for weights and the output bias) from a deterministic generator seeded with `seed`.
  MultiHeadAttention(std::size_t embed_size, std::size_t heads, std::uint64_t seed = 0);
  ~MultiHeadAttention();
  MultiHeadAttention(const MultiHeadAttention& other);
  MultiHeadAttention& operator=(const MultiHeadAttention& other);
  MultiHeadAttention(MultiHeadAttention&& other) noexcept;
  MultiHeadAttention& operator=(MultiHeadAttention&& other) noexcept;

  std::size_t embed_size() const noexcept;
  std::size_t heads() const noexcept;
  std::size_t head_dim() const noexcept;

  /// Re-draws every weight and the output bias as the constructor does; removes Q/K/V biases.
  void reset_parameters(std::uint64_t seed);

  /// Copies an [E, E] weight ([out, in], row-major). Throws std::invalid_argument if `data`
  /// is null or count != E * E; the module is unchanged then.
  void set_weight(Projection p, const float* data, std::size_t count);
  void set_weight(Projection p, const std::vector<float>& w) { set_weight(p, w.data(), w.size()); }
  /// The weight as set, [E, E] row-major.
  const std::vector<float>& weight(Projection p) const;

  /// Copies an [E] bias. Throws std::invalid_argument if `data` is null or count != E.
  void set_bias(Projection p, const float* data, std::size_t count);
  void set_bias(Projection p, const std::vector<float>& b) { set_bias(p, b.data(), b.size()); }
  /// Removes a Q/K/V bias; for the output projection, sets the bias to zeros.
  void clear_bias(Projection p);
  /// False for a Q/K/V projection without bias; always true for the output projection.
  bool has_bias(Projection p) const;
  /// The bias, [E]; empty when has_bias(p) is false.
  const std::vector<float>& bias(Projection p) const;

  /// The tutorial's forward(values, keys, query, mask), writing into the caller's buffer.
  /// values and keys: [N, Lk, E]; query: [N, Lq, E]; out: [N, Lq, E] (no allocation for it).
  /// Self-attention passes one tensor three times; cross-attention a query of another length.
  /// The mask is [N|1, H|1, Lq|1, Lk|1] (see Mask). `out` must not overlap any input.
  /// Throws std::invalid_argument naming the argument and the values on any mismatch.
  void forward(const ConstTensorView& values, const ConstTensorView& keys,
               const ConstTensorView& query, const Mask& mask, const TensorView<float>& out,
               const Options& options = {}) const;

  /// Convenience form returning a new [N, Lq, E] tensor.
  Tensor forward(const ConstTensorView& values, const ConstTensorView& keys,
                 const ConstTensorView& query, const Mask& mask = {},
                 const Options& options = {}) const;

  struct Impl;  // weights and their packed copies; defined in the library

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace simdattn
