// simdattn: the tutorial's SelfAttention module (multi-head attention with projections).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "simdattn/types.hpp"

namespace simdattn {
namespace detail {
struct ModuleAccess;
}

/// The four linear layers of the module, named by what they project.
/// Tutorial names: queries, keys, values, fc_out.
enum class Projection { query, key, value, output };

/// The number of key/value heads of a grouped-query module (a distinct type, so that it cannot
/// be mistaken for the seed): MultiHeadAttention(1024, 16, KvHeads{4}).
struct KvHeads {
  std::size_t value = 0;
};

class KvCache;
class Gradients;
using SequenceId = std::uint64_t;

/// Multi-head attention as the tutorial's `SelfAttention(embed_size, heads)`:
///
///     Q = query Wq^T (+ bq), K = keys Wk^T (+ bk), V = values Wv^T (+ bv)     (E -> E)
///     split E into `heads` heads of head_dim = E / heads
///     O = softmax(Q K^T * scale, masked keys given no weight) V               per head
///     out = concat_heads(O) Wo^T + bo
///
/// Weights use PyTorch's nn.Linear layout, [out_features, in_features] row-major, so weights
/// trained in PyTorch load without transposing. The output bias always exists (zeros if never
/// set); the Q/K/V biases are optional (the tutorial has none; nn.MultiheadAttention has them).
///
/// Grouped-query attention (GQA; multi-query with kv_heads = 1): with kv_heads < heads, the key
/// and value projections are [kv_heads * head_dim, E] and query head h reads K/V head
/// h / (heads / kv_heads), as in PyTorch's enable_gqa and Llama-style models. kv_heads = heads
/// (the default) is the tutorial's module, bit for bit.
///
/// Generation: step() runs the module on the new tokens of sequences whose earlier keys and
/// values are kept in a KvCache (kv_cache.hpp), projecting only the new tokens.
///
/// Memory: the four weights as set, and one copy of them packed for the optimized GEMM, about
/// twice the weights' floats (2 x 4 x E^2 with kv_heads = heads: 32 MiB at E = 1024) where E and
/// kv_heads x head_dim are multiples of 16; where they are not, Q, K and V are also packed
/// apart and the module holds 13 E^2 floats with kv_heads = heads.
///
/// forward() and step() are const and may be called from several threads at once on one module
/// (step() with a different cache per thread); setters must not run concurrently with anything
/// else on the same module.
class MultiHeadAttention {
 public:
  /// Throws std::invalid_argument if embed_size or heads is 0 or embed_size % heads != 0.
  /// Parameters are initialised as PyTorch's nn.Linear does (uniform in +-1/sqrt(embed_size)
  /// for weights and the output bias) from a deterministic generator seeded with `seed`.
  MultiHeadAttention(std::size_t embed_size, std::size_t heads, std::uint64_t seed = 0);
  /// Grouped-query attention with kv_heads key/value heads. Throws std::invalid_argument as
  /// above, or if kv_heads is 0 or does not divide heads. kv_heads = heads draws the same
  /// parameters as the constructor above.
  MultiHeadAttention(std::size_t embed_size, std::size_t heads, KvHeads kv_heads,
                     std::uint64_t seed = 0);
  ~MultiHeadAttention();
  MultiHeadAttention(const MultiHeadAttention& other);
  MultiHeadAttention& operator=(const MultiHeadAttention& other);
  /// Moving leaves `other` empty until it is assigned a module: its getters return 0, a copy of
  /// it is empty too, and every other member function (and any call that takes it) throws
  /// std::invalid_argument saying it was moved from.
  MultiHeadAttention(MultiHeadAttention&& other) noexcept;
  MultiHeadAttention& operator=(MultiHeadAttention&& other) noexcept;

  std::size_t embed_size() const noexcept;
  std::size_t heads() const noexcept;
  std::size_t head_dim() const noexcept;
  /// Key/value heads: heads unless built with KvHeads.
  std::size_t kv_heads() const noexcept;

  /// Re-draws every weight and the output bias as the constructor does; removes Q/K/V biases.
  /// Throws std::bad_alloc, with the module unchanged, if the memory is not there.
  void reset_parameters(std::uint64_t seed);

  /// Copies a weight ([out, in], row-major): [E, E] for the query and output projections,
  /// [kv_heads * head_dim, E] for the key and value projections (= [E, E] without GQA). Throws
  /// std::invalid_argument if `data` is null or count is not out * E; the module is unchanged
  /// then.
  void set_weight(Projection p, const float* data, std::size_t count);
  void set_weight(Projection p, const std::vector<float>& w) { set_weight(p, w.data(), w.size()); }
  /// The weight as set, [out, E] row-major.
  const std::vector<float>& weight(Projection p) const;

  /// Copies a bias of the projection's out features ([E], or [kv_heads * head_dim] for key and
  /// value). Throws std::invalid_argument if `data` is null or count differs.
  void set_bias(Projection p, const float* data, std::size_t count);
  void set_bias(Projection p, const std::vector<float>& b) { set_bias(p, b.data(), b.size()); }
  /// Removes a Q/K/V bias; for the output projection, sets the bias to zeros.
  void clear_bias(Projection p);
  /// False for a Q/K/V projection without bias; always true for the output projection.
  bool has_bias(Projection p) const;
  /// The bias, [out]; empty when has_bias(p) is false.
  const std::vector<float>& bias(Projection p) const;

  /// The tutorial's forward(values, keys, query, mask), writing into the caller's buffer.
  /// values and keys: [N, Lk, E]; query: [N, Lq, E]; out: [N, Lq, E] (no allocation for it).
  /// Self-attention passes one tensor three times; cross-attention a query of another length.
  /// The mask is [N|1, H|1, Lq|1, Lk|1] (see Mask). `out` must not overlap any input. Each
  /// view may have its own strides (TensorView): sequence_first() takes PyTorch's
  /// batch_first=False [L, N, E] buffers as they are.
  /// Throws std::invalid_argument naming the argument and the values on any mismatch.
  void forward(const ConstTensorView& values, const ConstTensorView& keys,
               const ConstTensorView& query, const Mask& mask, const TensorView<float>& out,
               const Options& options = {}) const;

  /// Convenience form returning a new [N, Lq, E] tensor.
  Tensor forward(const ConstTensorView& values, const ConstTensorView& keys,
                 const ConstTensorView& query, const Mask& mask = {},
                 const Options& options = {}) const;

  /// One step of generation (self-attention with a KV cache): x holds T new tokens of each of N
  /// sequences, [N, T, E], batch b belonging to ids[b]. Projects only the new tokens (one GEMM
  /// against [Wq; Wk; Wv]), appends their keys and values to the cache, attends from each new
  /// token to its sequence's whole history with causal alignment to the end (bottom-right: new
  /// token t of a sequence that held P tokens sees tokens [0, P + t]), and applies the output
  /// projection: out [N, T, E]. T = 1 decodes one token; T > 1 is a prompt or a chunk of it,
  /// and prefill in chunks gives the same result as one call (within float rounding) and as
  /// forward(x, x, x) with Causal::top_left over the whole sequence. Sequences of one call may
  /// have different lengths (no padding).
  ///
  /// The cache must hold kv_heads() heads of head_dim(). options.causal must be none or
  /// bottom_right (the step is always causal as above); options.masked_rows does not apply;
  /// options.window (sliding window) applies and bounds the keys a step reads; options.softcap,
  /// options.alibi and options.sinks apply with the positions of forward() over the whole
  /// sequence (token P + t for new token t); bias, key_padding and weights are not supported
  /// (see kv_cache.hpp).
  /// Throws std::invalid_argument, with the cache unchanged, on a shape mismatch, a cache of
  /// other heads or head_dim, ids.size() != N, an unknown or repeated id, T = 0, too few free
  /// blocks, a top-left causal option, an unsupported option or a bad value of a supported one,
  /// x or out with strides other than row-major, or `out` overlapping x (or the slopes or
  /// sinks); std::bad_alloc, with the append taken back, if scratch memory runs out
  /// (kv_cache.hpp, "Errors").
  void step(KvCache& cache, const std::vector<SequenceId>& ids, const ConstTensorView& x,
            const TensorView<float>& out, const Options& options = {}) const;
  /// Convenience form returning a new [N, T, E] tensor.
  Tensor step(KvCache& cache, const std::vector<SequenceId>& ids, const ConstTensorView& x,
              const Options& options = {}) const;

  /// The backward pass (training): the gradients of a loss with respect to every weight and
  /// bias and to the inputs, given d_out = dLoss/dout for out = forward(values, keys, query,
  /// mask, options) with the same arguments (the parameters unchanged since). See Gradients
  /// (training.hpp) for where each goes; an input passed more than once (self-attention) gets
  /// the sum of its gradients, as autograd gives them. Recomputes the forward's activations
  /// (projections, heads' output, row log-sum-exp) rather than keeping them between the calls,
  /// then runs the attention core's backward and the projections' gradients on the forward's
  /// packed GEMM; results are bitwise equal for every thread count.
  /// With grouped K/V heads (kv_heads < heads), the gradients of the key and value projections
  /// are shaped as their weights, [kv_heads x head_dim, E], and a K/V head's sums over the query
  /// heads that read it. Throws std::invalid_argument as forward() does (d_out must be [N, Lq,
  /// E]); on inputs or d_out that are not dense [N, L, E] (row_stride E, batch_stride L x E:
  /// strided and sequence_first() views are forward()'s only); on an argument that lies inside
  /// grads' tensors (they are reallocated); and on the Options that the attention core's
  /// backward refuses (softcap, bias, ALiBi, sinks, attention weights out; training.hpp).
  void backward(const ConstTensorView& values, const ConstTensorView& keys,
                const ConstTensorView& query, const ConstTensorView& d_out, Gradients& grads,
                const Mask& mask = {}, const Options& options = {}) const;

  struct Impl;  // weights and their packed copies; defined in the library

 private:
  friend struct detail::ModuleAccess;  // the library's own components, see module_impl.hpp
  std::unique_ptr<Impl> impl_;
};

}  // namespace simdattn
